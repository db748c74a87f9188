//! `lore ask`: retrieve passages, decline when none comes close, build the in-context
//! prompt, stream a grounded answer, judge it against its passages, then list the sources it
//! cited. [`Retriever`] and [`answer`] are the steps `lore eval answers` reuses.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use lore_embed::{BertEmbedder, Embedder};
use lore_finetune::Generation;
use lore_finetune::Message;
use lore_finetune::SamplingConfig;
use lore_finetune::{ChatRequest, Generator};
use lore_retrieve::grounding::ABSTENTION;
use lore_retrieve::prompt::{Citation, FewShot, Prompt, PromptOptions, build};
use lore_retrieve::{Hit, KnowledgeBase, Mode, SearchRequest, Status, StoreConfig};
use lore_server::answer::{Grounding, Verdict};
use serde_json::json;

use crate::cli::{AskArgs, Cli};
use crate::commands::chat::{start_generator, stream_answer};
use crate::models::{load_for_kb, store_config};

pub(crate) fn read_few_shot(path: &std::path::Path) -> anyhow::Result<Vec<FewShot>> {
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

/// The knowledge base and its embedding model, opened once for any number of questions.
pub(crate) struct Retriever {
    /// `None` when the knowledge base holds no documents.
    kb: Option<(KnowledgeBase, Option<BertEmbedder>)>,
    data_dir: std::path::PathBuf,
    /// How hybrid search fuses its two rankings, and how many candidates each gives.
    pub fusion: lore_retrieve::Fusion,
    pub candidates: usize,
}

/// What retrieval found for one question.
#[derive(Debug, Clone, Default)]
pub(crate) struct Retrieved {
    pub hits: Vec<Hit>,
    pub best_dense: Option<f32>,
    pub warnings: Vec<String>,
    pub seconds: f64,
}

impl Retriever {
    pub fn open(cli: &Cli, store: &StoreConfig, mode: Mode) -> anyhow::Result<Self> {
        let kb = match Status::read_at(&cli.data_dir, store) {
            Ok(status) if status.files > 0 => {
                let embedder = if mode.needs_vector() {
                    Some(load_for_kb(&status.model, None, cli.models_dir.as_deref())?)
                } else {
                    None
                };
                Some((
                    KnowledgeBase::open_existing(&cli.data_dir, store)?,
                    embedder,
                ))
            }
            _ => None,
        };
        Ok(Self {
            kb,
            data_dir: cli.data_dir.clone(),
            fusion: lore_retrieve::Fusion::default(),
            candidates: lore_retrieve::search::DEFAULT_CANDIDATES,
        })
    }

    /// Searches for `question`. An empty or missing knowledge base is not an error: there
    /// are no passages, and the answer declines.
    pub fn search(&self, question: &str, mode: Mode, k: usize) -> anyhow::Result<Retrieved> {
        let t = Instant::now();
        let Some((kb, embedder)) = &self.kb else {
            return Ok(Retrieved {
                warnings: vec![format!(
                    "{} holds no documents: nothing to answer from",
                    self.data_dir.display()
                )],
                ..Retrieved::default()
            });
        };
        let mut request = SearchRequest::new(question.to_string(), mode, k);
        request.fusion = self.fusion;
        request.candidates = self.candidates;
        request.validate()?;
        // The question is embedded inside the search, while its BM25 side runs.
        let results = kb.search_embedding(&request, || {
            let vector = match embedder {
                Some(e) => e.embed(&[question.to_string()])?.pop(),
                None => None,
            };
            vector.ok_or_else(|| lore_embed::Error::Runtime("no vector for the question".into()))
        })?;
        Ok(Retrieved {
            hits: results.hits,
            best_dense: results.best_dense,
            warnings: results.warnings,
            seconds: t.elapsed().as_secs_f64(),
        })
    }
}

/// How to answer: the prompt's options and the generation and grounding settings.
pub(crate) struct AnswerSettings<'a> {
    pub options: PromptOptions,
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    pub user_stops: &'a [String],
    pub grounding: Grounding,
    /// A loaded adapter's name, or the generator's default.
    pub adapter: Option<String>,
    /// Print the answer as it arrives.
    pub stream: bool,
    /// Print the rendered prompt on stderr.
    pub show_prompt: bool,
    /// Where the answer ends early.
    pub end: lore_finetune::AnswerEnd,
}

/// One answered question: what `lore ask` prints and `lore eval answers` scores.
#[derive(Debug)]
pub(crate) struct Answered {
    pub text: String,
    pub prompt: Prompt,
    pub citations: Vec<Citation>,
    pub verdict: Verdict,
    /// `None` when retrieval declined and the model was not asked.
    pub generation: Option<Generation>,
}

/// Answers `question` from `found`: declines without the model when retrieval found nothing
/// close enough, else asks the model and judges its answer against the passages.
pub(crate) fn answer(
    generator: &Generator,
    question: &str,
    found: &Retrieved,
    settings: &AnswerSettings,
) -> anyhow::Result<Answered> {
    let budget = generator.context().saturating_sub(settings.max_tokens);
    let count = |text: &str| generator.count_tokens(text);
    let prompt = build(question, &found.hits, &settings.options, budget, &count);
    if settings
        .grounding
        .declines_before_generating(!found.hits.is_empty(), found.best_dense)
    {
        if settings.stream {
            println!("{ABSTENTION}");
        }
        return Ok(Answered {
            text: ABSTENTION.to_string(),
            citations: Vec::new(),
            verdict: Verdict::declined(found.best_dense),
            generation: None,
            prompt,
        });
    }
    let messages = lore_server::answer::messages(&prompt);
    if settings.show_prompt {
        eprintln!("{}", generator.render(&messages)?);
    }
    let events = generator.chat(ChatRequest {
        messages,
        max_tokens: settings.max_tokens,
        sampling: settings.sampling.clone(),
        stop: lore_server::answer::stops(settings.user_stops),
        adapter: settings.adapter.clone(),
        end: settings.end,
        ..Default::default()
    })?;
    let generation = stream_answer(events, settings.stream)?;
    let text = generation.text.clone();
    let verdict = Verdict::judge(&prompt, text.trim(), found.best_dense, &settings.grounding);
    let citations = if verdict.abstained {
        Vec::new()
    } else {
        prompt.citations(&text)
    };
    Ok(Answered {
        text,
        prompt,
        citations,
        verdict,
        generation: Some(generation),
    })
}

pub fn run(cli: &Cli, args: &AskArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!args.question.trim().is_empty(), "the question is empty");
    let few_shot = match &args.few_shot {
        Some(p) => read_few_shot(p)?,
        None => Vec::new(),
    };
    let history = match &args.history {
        Some(p) => read_history(p)?,
        None => Vec::new(),
    };
    let grounding = args.grounding.settings()?;
    let store = store_config(&cli.store)?;
    let retriever = Retriever::open(cli, &store, args.mode)?;
    let (generator, sampling) = start_generator(cli, &args.generation)?;
    let question = if history.is_empty() {
        args.question.clone()
    } else {
        let standalone = rewrite(&generator, &history, &args.question)?;
        if !args.json {
            eprintln!("searching for: {standalone}");
        }
        standalone
    };
    let found = retriever.search(&question, args.mode, usize::from(args.k))?;
    for w in &found.warnings {
        eprintln!("warning: {w}");
    }
    let settings = AnswerSettings {
        options: PromptOptions {
            system: args.system.clone(),
            few_shot,
            chain_of_thought: args.cot,
        },
        max_tokens: args
            .generation
            .max_tokens_or(if args.cot { 384 } else { 128 }),
        sampling,
        user_stops: &args.generation.stop,
        grounding,
        adapter: None,
        stream: !args.json,
        show_prompt: args.show_prompt,
        end: lore_server::answer::answer_end(args.max_sentences, args.cot),
    };
    let out = answer(&generator, &question, &found, &settings)?;
    let (prompt_tokens, completion_tokens, prefill_s, decode_s) =
        out.generation.as_ref().map_or((0, 0, 0.0, 0.0), |g| {
            (
                g.prompt_tokens,
                g.completion_tokens,
                g.prefill_s,
                g.decode_s,
            )
        });
    if args.json {
        super::print_json(&json!({
            "answer": out.text,
            "rewritten_question": (!history.is_empty()).then_some(&question),
            "abstained": out.verdict.abstained,
            "grounded": out.verdict.grounded,
            "verdict": out.verdict,
            "citations": out.citations,
            "sources": out.prompt.sources,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
            "timings": {"retrieve_s": found.seconds, "prefill_s": prefill_s, "decode_s": decode_s},
            "warnings": found.warnings,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    print_sources(&out);
    Ok(ExitCode::SUCCESS)
}

/// Reads `--history`: a JSON array of {"role", "content"} messages.
fn read_history(path: &std::path::Path) -> anyhow::Result<Vec<Message>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let messages: Vec<Message> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected a JSON array of {{\"role\": \"user\"|\"assistant\"|\"system\", \"content\"}}",
            path.display()
        )
    })?;
    Ok(messages)
}

/// The question rewritten to stand alone given the conversation (greedy, one line).
fn rewrite(generator: &Generator, history: &[Message], question: &str) -> anyhow::Result<String> {
    let events = generator.chat(lore_server::answer::rewrite_chat(
        history,
        question,
        SamplingConfig::default(),
    ))?;
    let g = stream_answer(events, false)?;
    Ok(lore_server::answer::standalone_question(&g.text, question))
}

/// The sources after a streamed answer, and what the grounding check found.
fn print_sources(out: &Answered) {
    if out.verdict.abstained {
        if out.verdict.declined_by == Some(lore_server::answer::DeclinedBy::Restated) {
            println!("\n(the answer only restates the question: treated as not answering)");
        }
        if !out.prompt.sources.is_empty() {
            println!("\nclosest passages (not enough to answer from):");
            for c in &out.prompt.sources {
                println!("  [{}] {}:{}-{}", c.n, c.path, c.start_line, c.end_line);
            }
        }
        return;
    }
    if out.citations.is_empty() {
        println!("\n(no passage cited)");
    } else {
        println!("\nsources:");
        for c in &out.citations {
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
    for sentence in &out.verdict.unsupported {
        println!("unsupported by the passages: {sentence}");
    }
}
