//! `lore chat`: plain generation (local model or remote endpoint), streamed to the terminal.

use std::io::Write;
use std::process::ExitCode;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use anyhow::Context;
use lore_finetune::Generation;
use lore_finetune::SamplingConfig;
use lore_finetune::{ChatRequest, Generator};
use lore_finetune::{Event, LanguageModel, LmWorker, resolve_model};
use lore_finetune::{Message, Role};
use lore_finetune::{RemoteChat, RemoteConfig};
use serde_json::json;

use crate::cli::{ChatArgs, Cli, GenerationArgs};
use crate::models::models_dir;

/// Checks the generation flags and starts the generator they name: the local model on its
/// worker thread, or a remote OpenAI-compatible endpoint.
pub(crate) fn start_generator(
    cli: &Cli,
    args: &GenerationArgs,
) -> anyhow::Result<(Generator, SamplingConfig)> {
    let sampling = SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repeat_penalty,
        repetition_window: 64,
        seed: args.seed,
    };
    sampling.validate().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        args.max_tokens != Some(0),
        "--max-tokens must be at least 1"
    );
    if args.adapter.is_some() {
        anyhow::ensure!(
            args.llm_url.is_none(),
            "--adapter applies to the local model; a remote endpoint serves its own"
        );
    }
    if let Some(url) = &args.llm_url {
        let model = args
            .llm_model
            .clone()
            .context("--llm-url needs --llm-model (the remote model's name)")?;
        anyhow::ensure!(args.llm_context > 0, "--llm-context must be at least 1");
        let client = RemoteChat::new(RemoteConfig {
            url: url.clone(),
            model,
            api_key: std::env::var("LORE_LLM_API_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
            read_timeout: Duration::from_secs(300),
        })?;
        let context = args.llm_context;
        return Ok((Generator::Remote { client, context }, sampling));
    }
    let models = models_dir(cli.models_dir.as_deref());
    let spec = args.model_spec(&models);
    let path = resolve_model(&spec, &models)?;
    let format = args.weights.format();
    if let Some(dir) = &args.adapter {
        lore_server::adapter_base::check(dir, &spec, &path)?;
    }
    let mut model = LanguageModel::load(&path, format)?;
    if let Some(dir) = &args.adapter {
        model.add_adapter("adapter", dir).map_err(|e| {
            match lore_finetune::peft_base(dir).filter(|base| *base != spec) {
                Some(base) => anyhow::anyhow!(
                    "{e}\nthe adapter in {} was trained on `{base}`, not `{spec}`: leave out \
                     --model (and LORE_LM) to load its base, or name that base",
                    dir.display()
                ),
                None => anyhow::Error::from(e),
            }
        })?;
    }
    Ok((Generator::Local(Box::new(LmWorker::spawn(model))), sampling))
}

pub fn run(cli: &Cli, args: &ChatArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!args.prompt.trim().is_empty(), "the prompt is empty");
    let (generator, sampling) = start_generator(cli, &args.generation)?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(Message::new(Role::System, system.clone()));
    }
    messages.push(Message::new(Role::User, args.prompt.clone()));
    let events = generator.chat(ChatRequest {
        messages,
        max_tokens: args.generation.max_tokens_or(256),
        sampling,
        stop: args.generation.stop.clone(),
        adapter: None,
        end: Default::default(),
        ..Default::default()
    })?;
    let out = stream_answer(events, !args.json)?;
    if args.json {
        super::print_json(&json!({
            "answer": out.text,
            "model": generator.name(),
            "finish_reason": out.finish_reason,
            "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens},
            "timings": {
                "prefill_s": out.prefill_s,
                "decode_s": out.decode_s,
                "prefill_tokens_per_s": out.prompt_tokens as f64 / out.prefill_s.max(1e-9),
                "decode_tokens_per_s": out.completion_tokens as f64 / out.decode_s.max(1e-9),
            },
        }))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for a generation to finish, printing its text as it arrives when `show` is set
/// (then a final newline).
pub(crate) fn stream_answer(events: Receiver<Event>, show: bool) -> anyhow::Result<Generation> {
    let mut stdout = std::io::stdout();
    for event in events {
        match event {
            Event::Text(piece) if show => {
                print!("{piece}");
                stdout.flush()?;
            }
            Event::Text(_) => {}
            Event::Done(result) => {
                if show {
                    println!();
                }
                return Ok(result?);
            }
        }
    }
    anyhow::bail!("the language model thread stopped without an answer")
}
