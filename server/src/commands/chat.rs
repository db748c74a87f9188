//! `lore chat`: plain generation with the local language model, streamed to the terminal.

use std::io::Write;
use std::process::ExitCode;

use lore_finetune::GgmlDType;
use lore_finetune::chat::{Message, Role};
use lore_finetune::generate::GenerateRequest;
use lore_finetune::linear::WeightFormat;
use lore_finetune::runtime::{Event, LanguageModel, LmWorker, resolve_model};
use lore_finetune::sampling::SamplingConfig;
use serde_json::json;

use crate::cli::{ChatArgs, Cli, GenerationArgs, WeightsArg};
use crate::models::models_dir;

/// Checks the generation flags and loads the model on its worker thread.
pub(crate) fn start_model(
    cli: &Cli,
    args: &GenerationArgs,
) -> anyhow::Result<(LmWorker, SamplingConfig)> {
    let sampling = SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repeat_penalty,
        repetition_window: 64,
        seed: args.seed,
    };
    sampling.validate().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(args.max_tokens > 0, "--max-tokens must be at least 1");
    if let Some(adapter) = &args.adapter {
        anyhow::bail!(
            "--adapter {}: LoRA adapters are not supported yet (they arrive with `lore finetune`)",
            adapter.display()
        );
    }
    let path = resolve_model(&args.model, &models_dir(cli.models_dir.as_deref()))?;
    let format = match args.weights {
        WeightsArg::Native => WeightFormat::Native,
        WeightsArg::Q4_0 => WeightFormat::Blocks(GgmlDType::Q4_0),
        WeightsArg::Q8_0 => WeightFormat::Blocks(GgmlDType::Q8_0),
    };
    let model = LanguageModel::load(&path, format)?;
    Ok((LmWorker::spawn(model), sampling))
}

pub fn run(cli: &Cli, args: &ChatArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!args.prompt.trim().is_empty(), "the prompt is empty");
    let (worker, sampling) = start_model(cli, &args.generation)?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(Message::new(Role::System, system.clone()));
    }
    messages.push(Message::new(Role::User, args.prompt.clone()));
    let request = GenerateRequest {
        prompt: worker.template.render(&messages, true),
        max_tokens: args.generation.max_tokens,
        sampling,
        stop: args.generation.stop.clone(),
    };
    let events = worker.generate(request)?;
    let mut stdout = std::io::stdout();
    for event in events {
        match event {
            Event::Text(piece) => {
                if !args.json {
                    print!("{piece}");
                    stdout.flush()?;
                }
            }
            Event::Done(result) => {
                let out = result?;
                if args.json {
                    super::print_json(&json!({
                        "answer": out.text,
                        "model": worker.name,
                        "finish_reason": out.finish_reason,
                        "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens},
                        "timings": {
                            "prefill_s": out.prefill_s,
                            "decode_s": out.decode_s,
                            "prefill_tokens_per_s": out.prompt_tokens as f64 / out.prefill_s.max(1e-9),
                            "decode_tokens_per_s": out.completion_tokens as f64 / out.decode_s.max(1e-9),
                        },
                    }))?;
                } else {
                    println!();
                }
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    anyhow::bail!("the language model thread stopped without an answer")
}
