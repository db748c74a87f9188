//! `lore finetune gen-data`: a dataset for a use case, written by the configured generator.

use std::process::ExitCode;

use lore_finetune::FinishReason;
use lore_finetune::SamplingConfig;
use lore_finetune::gendata::{
    DatasetFile, pairs_request, parse_pairs, parse_system, system_path, system_request,
};
use lore_finetune::{ChatRequest, Generator};
use serde_json::json;

use super::chat::{start_generator, stream_answer};
use crate::cli::{Cli, GenDataArgs};

/// Sampling used when the user left `--temperature` at 0: greedy decoding would write the
/// same examples again and again.
const DEFAULT_TEMPERATURE: f32 = 0.9;

fn ask(
    generator: &Generator,
    messages: Vec<lore_finetune::Message>,
    sampling: &SamplingConfig,
    max_tokens: usize,
) -> anyhow::Result<(String, bool)> {
    let events = generator.chat(ChatRequest {
        messages,
        max_tokens,
        sampling: sampling.clone(),
        stop: Vec::new(),
        adapter: None,
        end: Default::default(),
        ..Default::default()
    })?;
    let out = stream_answer(events, false)?;
    let cut = out.finish_reason == FinishReason::Length;
    Ok((out.text, cut))
}

pub fn run(cli: &Cli, args: &GenDataArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!args.use_case.trim().is_empty(), "--use-case is empty");
    anyhow::ensure!(args.examples > 0, "--examples must be at least 1");
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let ext = args
        .output
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("");
    anyhow::ensure!(ext == "jsonl", "--output must be a .jsonl file");
    if let Some(parent) = args.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("--output {}: {e}", args.output.display()))?;
    }
    let (generator, mut sampling) = start_generator(cli, &args.generation)?;
    if sampling.temperature == 0.0 {
        sampling.temperature = DEFAULT_TEMPERATURE;
    }
    let base_seed = sampling.seed;
    let mut file = DatasetFile::open(&args.output)?;
    let system_file = system_path(&args.output);
    let mut requests = 0u64;
    let system = match std::fs::read_to_string(&system_file) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
        _ => {
            let mut found = None;
            for attempt in 0..args.max_failures.max(1) {
                sampling.seed = base_seed.wrapping_add(attempt as u64);
                requests += 1;
                let (reply, cut) = ask(&generator, system_request(&args.use_case), &sampling, 160)?;
                if let Some(s) = parse_system(&reply).filter(|_| !cut) {
                    found = Some(s);
                    break;
                }
            }
            let system = found.ok_or_else(|| {
                anyhow::anyhow!(
                    "the generator wrote no usable system message in {} tries; try a larger model (--model or --llm-url)",
                    args.max_failures.max(1)
                )
            })?;
            lore_durable::write(&system_file, format!("{system}\n").as_bytes())
                .map_err(|e| anyhow::anyhow!("{}: {e}", system_file.display()))?;
            system
        }
    };
    let (start_rows, mut malformed, mut failures) = (file.rows, 0usize, 0usize);
    while file.rows < args.examples && failures < args.max_failures {
        requests += 1;
        sampling.seed = base_seed.wrapping_add(1000 + requests);
        let want = args.batch.min(args.examples - file.rows);
        let (reply, cut) = ask(
            &generator,
            pairs_request(&args.use_case, want, &file.recent),
            &sampling,
            args.generation.max_tokens_or(256).max(200 * want),
        )?;
        let (mut pairs, bad) = parse_pairs(&reply);
        malformed += bad;
        // A reply cut by the token limit may end inside its last response.
        if cut && pairs.pop().is_some() {
            malformed += 1;
        }
        let pairs: Vec<_> = pairs.into_iter().take(args.examples - file.rows).collect();
        let added = file.append(&system, pairs)?;
        if added == 0 {
            failures += 1;
        } else {
            failures = 0;
        }
        if !args.json {
            eprintln!(
                "{}/{} examples ({added} new from request {requests})",
                file.rows, args.examples
            );
        }
    }
    let summary = json!({
        "output": args.output,
        "system_file": system_file,
        "system": system,
        "examples": file.rows,
        "new": file.rows - start_rows,
        "requests": requests,
        "dropped_malformed": malformed,
        "dropped_duplicates": file.duplicates,
        "complete": file.rows >= args.examples,
    });
    if args.json {
        super::print_json(&summary)?;
    }
    if file.rows < args.examples {
        eprintln!(
            "stopped after {} requests in a row gave nothing new: {} of {} examples written to {} (rerun to continue, or use a larger model)",
            args.max_failures,
            file.rows,
            args.examples,
            args.output.display()
        );
        return Ok(ExitCode::from(3));
    }
    if !args.json {
        eprintln!(
            "wrote {} examples to {} and the system message to {}; train with: lore finetune --data {}",
            file.rows,
            args.output.display(),
            system_file.display(),
            args.output.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
