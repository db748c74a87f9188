//! `lore ask`: retrieve passages, build the in-context prompt, stream a grounded answer, then
//! list the sources it cited.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use lore_embed::Embedder;
use lore_finetune::generator::ChatRequest;
use lore_retrieve::prompt::{FewShot, PromptOptions, build};
use lore_retrieve::{KnowledgeBase, SearchRequest, Status};
use serde_json::json;

use crate::cli::{AskArgs, Cli};
use crate::commands::chat::{start_generator, stream_answer};
use crate::models::{load_for_kb, store_config};

fn read_few_shot(path: &std::path::Path) -> anyhow::Result<Vec<FewShot>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<FewShot>(l).with_context(|| {
                format!(
                    "{}:{}: expected {{\"question\", \"answer\"}}",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}

pub fn run(cli: &Cli, args: &AskArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!args.question.trim().is_empty(), "the question is empty");
    let few_shot = match &args.few_shot {
        Some(p) => read_few_shot(p)?,
        None => Vec::new(),
    };
    let store = store_config(&cli.store)?;
    let t = Instant::now();
    // An empty or missing knowledge base is not an error here: the model answers without
    // passages and the prompt tells it so.
    let (hits, warnings) = match Status::read(&cli.data_dir) {
        Ok(status) if status.files > 0 => {
            let request = SearchRequest::new(args.question.clone(), args.mode, usize::from(args.k));
            request.validate()?;
            let vector = if args.mode.needs_vector() {
                let embedder = load_for_kb(&status.model, None, cli.models_dir.as_deref())?;
                embedder.embed(std::slice::from_ref(&args.question))?.pop()
            } else {
                None
            };
            let kb = KnowledgeBase::open_existing(&cli.data_dir, &store)?;
            let results = kb.search(&request, vector.as_deref())?;
            (results.hits, results.warnings)
        }
        _ => (
            Vec::new(),
            vec![format!(
                "{} holds no documents: answering without passages",
                cli.data_dir.display()
            )],
        ),
    };
    let retrieve_s = t.elapsed().as_secs_f64();
    for w in &warnings {
        eprintln!("warning: {w}");
    }

    let (generator, sampling) = start_generator(cli, &args.generation)?;
    let options = PromptOptions {
        system: args.system.clone(),
        few_shot,
        chain_of_thought: args.cot,
    };
    let budget = generator
        .context()
        .saturating_sub(args.generation.max_tokens);
    let count = |text: &str| generator.count_tokens(text);
    let prompt = build(&args.question, &hits, &options, budget, &count);
    let messages = lore_server::answer::messages(&prompt);
    if args.show_prompt {
        eprintln!("{}", generator.render(&messages));
    }
    let stop = lore_server::answer::stops(&args.generation.stop);
    let events = generator.chat(ChatRequest {
        messages,
        max_tokens: args.generation.max_tokens,
        sampling,
        stop,
        adapter: None,
    })?;
    let out = stream_answer(events, !args.json)?;
    let citations = prompt.citations(&out.text);
    if args.json {
        super::print_json(&json!({
            "answer": out.text,
            "citations": citations,
            "sources": prompt.sources,
            "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens},
            "timings": {"retrieve_s": retrieve_s, "prefill_s": out.prefill_s, "decode_s": out.decode_s},
            "warnings": warnings,
        }))?;
    } else if citations.is_empty() {
        println!("\n(no passage cited)");
    } else {
        println!("\nsources:");
        for c in &citations {
            let how = if c.inferred {
                " (not cited by number: the passage the answer draws on)"
            } else {
                ""
            };
            println!(
                "  [{}] {}:{}-{}{how}",
                c.n, c.path, c.start_line, c.end_line
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
