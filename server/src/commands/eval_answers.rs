//! `lore eval answers`: how well each way of adapting the model answers the user's own
//! questions over the knowledge base: zero-shot (the model alone), retrieval-augmented
//! (lore ask's default), with few-shot examples, with chain of thought, or through a LoRA
//! adapter. Per variant: answer accuracy, right-file citations, abstention on questions the
//! documents cannot answer, unsupported sentences, answer length, tokens and time.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lore_finetune::{ChatRequest, Generator};
use lore_finetune::{Message, Role};
use lore_retrieve::grounding;
use lore_retrieve::prompt::{FewShot, PromptOptions};
use lore_server::answer::{Grounding, Verdict};
use serde::{Deserialize, Serialize};

use super::ask::{AnswerSettings, Answered, Retrieved, Retriever, answer, read_few_shot};
use super::chat::{start_generator, stream_answer};
use crate::cli::{Cli, EvalAnswersArgs};
use crate::models::store_config;

/// One line of the questions file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QaItem {
    pub question: String,
    /// The answer is right when it contains any of these (case-insensitive).
    #[serde(default)]
    pub answer_keywords: Vec<String>,
    /// A reference answer: used for scoring when no keywords are given (most of its content
    /// words must appear), and as a few-shot example for other questions.
    #[serde(default)]
    pub answer: Option<String>,
    /// Files that hold the answer (path suffixes). None: the documents cannot answer it, and
    /// the right answer declines.
    #[serde(default)]
    pub gold_files: Vec<String>,
}

impl QaItem {
    fn answerable(&self) -> bool {
        !self.gold_files.is_empty()
    }

    /// Whether `text` states this question's answer.
    fn is_right(&self, text: &str) -> bool {
        let text = text.to_lowercase();
        if !self.answer_keywords.is_empty() {
            return self
                .answer_keywords
                .iter()
                .any(|k| text.contains(&k.to_lowercase()));
        }
        let Some(reference) = &self.answer else {
            return false;
        };
        let words: Vec<String> = reference
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() > 3)
            .map(str::to_lowercase)
            .collect();
        let found = words.iter().filter(|w| text.contains(w.as_str())).count();
        !words.is_empty() && found * 5 >= words.len() * 3
    }

    /// Whether `path` is one of the gold files (either may be the longer suffix).
    fn is_gold(&self, path: &str) -> bool {
        self.gold_files
            .iter()
            .any(|g| path_ends_with(path, g) || path_ends_with(g, path))
    }
}

/// `path` ends with the path components of `suffix`.
fn path_ends_with(path: &str, suffix: &str) -> bool {
    let suffix = suffix.trim_start_matches("./");
    path == suffix
        || path
            .strip_suffix(suffix)
            .is_some_and(|head| head.ends_with('/'))
}

pub fn read_questions(path: &Path) -> anyhow::Result<Vec<QaItem>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: QaItem = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: expected {{\"question\", \"answer_keywords\" or \"answer\", \"gold_files\"}}",
                path.display(),
                i + 1
            )
        })?;
        anyhow::ensure!(
            !item.question.trim().is_empty(),
            "{}:{}: the question is empty",
            path.display(),
            i + 1
        );
        anyhow::ensure!(
            !item.answerable() || !item.answer_keywords.is_empty() || item.answer.is_some(),
            "{}:{}: an answerable question needs answer_keywords or answer",
            path.display(),
            i + 1
        );
        items.push(item);
    }
    anyhow::ensure!(!items.is_empty(), "{} holds no questions", path.display());
    Ok(items)
}

/// A way of answering, as named on the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Variant {
    /// The model alone: no passages.
    ZeroShot,
    /// Retrieved passages, lore ask's prompt.
    Rag,
    /// Plus worked examples (--few-shot, else two other questions of the set with their
    /// reference answers).
    RagFewShot,
    /// Plus "think step by step".
    RagCot,
    /// Retrieved passages, answered through a LoRA adapter.
    RagAdapter(PathBuf),
}

impl Variant {
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        Ok(match name.trim() {
            "zero-shot" => Self::ZeroShot,
            "rag" => Self::Rag,
            "rag+few-shot" => Self::RagFewShot,
            "rag+cot" => Self::RagCot,
            other => match other.strip_prefix("rag+adapter:") {
                Some(dir) if !dir.is_empty() => Self::RagAdapter(PathBuf::from(dir)),
                _ => anyhow::bail!(
                    "unknown variant `{other}`: use zero-shot, rag, rag+few-shot, rag+cot or rag+adapter:DIR"
                ),
            },
        })
    }

    fn name(&self) -> String {
        match self {
            Self::ZeroShot => "zero-shot".into(),
            Self::Rag => "rag".into(),
            Self::RagFewShot => "rag+few-shot".into(),
            Self::RagCot => "rag+cot".into(),
            Self::RagAdapter(dir) => format!("rag+adapter:{}", dir.display()),
        }
    }
}

/// One question answered by one variant, as scored.
#[derive(Debug, Clone, Serialize)]
struct Scored {
    variant: String,
    question: String,
    answerable: bool,
    answer: String,
    right: bool,
    cited_gold: bool,
    cited: Vec<String>,
    verdict: Verdict,
    sentences: usize,
    words: usize,
    prompt_tokens: usize,
    completion_tokens: usize,
    seconds: f64,
}

/// The figures for one variant.
#[derive(Debug, Serialize)]
struct VariantReport {
    variant: String,
    answerable: usize,
    unanswerable: usize,
    /// Answerable questions whose answer states the answer.
    accuracy: f64,
    /// Answerable questions whose answer cites (or draws on) a gold file.
    right_file_cited: f64,
    /// Unanswerable questions declined.
    declined_unanswerable: f64,
    /// Answerable questions declined.
    declined_answerable: f64,
    /// Of the sentences of answers that do not decline, the share no passage supports.
    unsupported_sentences: f64,
    /// Mean support score of answers that do not decline.
    mean_support: f64,
    median_words: f64,
    mean_prompt_tokens: f64,
    mean_completion_tokens: f64,
    seconds_per_answer: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    questions: usize,
    model: String,
    mode: lore_retrieve::Mode,
    k: u16,
    min_similarity: f32,
    variants: Vec<VariantReport>,
}

pub fn run(cli: &Cli, args: &EvalAnswersArgs) -> anyhow::Result<ExitCode> {
    let mut items = read_questions(&args.questions)?;
    if let Some(limit) = args.limit {
        items.truncate(limit);
    }
    anyhow::ensure!(!args.variants.is_empty(), "--variants: name at least one");
    let variants: Vec<Variant> = args
        .variants
        .iter()
        .map(|v| Variant::parse(v))
        .collect::<anyhow::Result<_>>()?;
    let grounding = args.grounding.settings()?;
    let given_shots = match &args.few_shot {
        Some(p) => Some(read_few_shot(p)?),
        None => None,
    };
    let store = store_config(&cli.store)?;
    let mut retriever = Retriever::open(
        cli,
        &store,
        if args.retrieval_only {
            lore_retrieve::Mode::Hybrid
        } else {
            args.mode
        },
    )?;
    retriever.fusion = args.rank.fusion();
    retriever.candidates = args.rank.candidates;
    if args.retrieval_only {
        return retrieval_only(&retriever, &items, args);
    }
    let (generator, sampling) = start_generator(cli, &args.generation)?;
    for (i, v) in variants.iter().enumerate() {
        if let Variant::RagAdapter(dir) = v {
            let Generator::Local(worker) = &generator else {
                anyhow::bail!("rag+adapter needs the local model, not --llm-url");
            };
            worker.load_adapter(&format!("variant-{i}"), dir)?;
        }
    }
    let mut answers_out = match &args.answers_out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };

    let bar = progress_bar((items.len() * variants.len()) as u64, !args.json);
    let mut scored: Vec<Vec<Scored>> = vec![Vec::new(); variants.len()];
    for (qi, item) in items.iter().enumerate() {
        // One retrieval per question, shared by the variants that use passages.
        let found = if variants.iter().any(|v| *v != Variant::ZeroShot) {
            retriever.search(&item.question, args.mode, usize::from(args.k))?
        } else {
            Retrieved::default()
        };
        for (vi, variant) in variants.iter().enumerate() {
            bar.set_message(variant.name());
            let t = Instant::now();
            let mut settings = AnswerSettings {
                options: PromptOptions::default(),
                max_tokens: args.generation.max_tokens_or(128),
                sampling: sampling.clone(),
                user_stops: &args.generation.stop,
                grounding,
                adapter: None,
                stream: false,
                show_prompt: false,
                end: lore_server::answer::answer_end(args.max_sentences, false),
            };
            let answered = match variant {
                Variant::ZeroShot => zero_shot(&generator, &item.question, &settings)?,
                Variant::Rag => answer(&generator, &item.question, &found, &settings)?,
                Variant::RagFewShot => {
                    settings.options.few_shot = match &given_shots {
                        Some(shots) => shots.clone(),
                        None => shots_from_set(&items, qi),
                    };
                    answer(&generator, &item.question, &found, &settings)?
                }
                Variant::RagCot => {
                    settings.options.chain_of_thought = true;
                    settings.max_tokens = args.generation.max_tokens_or(384);
                    settings.end = Default::default();
                    answer(&generator, &item.question, &found, &settings)?
                }
                Variant::RagAdapter(_) => {
                    settings.adapter = Some(format!("variant-{vi}"));
                    answer(&generator, &item.question, &found, &settings)?
                }
            };
            let one = score(
                item,
                variant,
                answered,
                t.elapsed().as_secs_f64() + found.seconds,
            );
            if let Some(out) = &mut answers_out {
                use std::io::Write;
                serde_json::to_writer(&mut *out, &one)?;
                out.write_all(b"\n")?;
            }
            scored[vi].push(one);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let report = Report {
        questions: items.len(),
        model: generator.name().to_string(),
        mode: args.mode,
        k: args.k,
        min_similarity: grounding.min_dense,
        variants: scored
            .iter()
            .zip(&variants)
            .map(|(s, v)| summarise(v, s))
            .collect(),
    };
    if args.json {
        super::print_json(&report)?;
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// Retrieval alone, per mode, on the answerable questions: whether a gold file is among the
/// top k passages, and the reciprocal rank of the first one.
#[derive(Debug, Serialize)]
struct RetrievalReport {
    mode: lore_retrieve::Mode,
    questions: usize,
    k: u16,
    /// Share of questions with a gold file in the top k.
    gold_in_top_k: f64,
    /// Share with a gold file first.
    gold_first: f64,
    /// Mean reciprocal rank of the first gold passage (0 past k).
    mrr: f64,
}

fn retrieval_only(
    retriever: &Retriever,
    items: &[QaItem],
    args: &EvalAnswersArgs,
) -> anyhow::Result<ExitCode> {
    use lore_retrieve::Mode;
    let answerable: Vec<&QaItem> = items.iter().filter(|i| i.answerable()).collect();
    anyhow::ensure!(
        !answerable.is_empty(),
        "no answerable question to retrieve for"
    );
    let modes = [Mode::Hybrid, Mode::Dense, Mode::Lexical];
    let bar = progress_bar((answerable.len() * modes.len()) as u64, !args.json);
    let mut reports = Vec::new();
    for mode in modes {
        let (mut in_k, mut first, mut rr) = (0usize, 0usize, 0.0f64);
        for item in &answerable {
            let found = retriever.search(&item.question, mode, usize::from(args.k))?;
            if let Some(rank) = found.hits.iter().position(|h| item.is_gold(&h.path)) {
                in_k += 1;
                first += usize::from(rank == 0);
                rr += 1.0 / (rank + 1) as f64;
            }
            bar.inc(1);
        }
        let n = answerable.len();
        reports.push(RetrievalReport {
            mode,
            questions: n,
            k: args.k,
            gold_in_top_k: share(in_k, n),
            gold_first: share(first, n),
            mrr: rr / n as f64,
        });
    }
    bar.finish_and_clear();
    if args.json {
        super::print_json(&reports)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} answerable questions, fusion {}, {} candidates per retriever",
        answerable.len(),
        retriever.fusion,
        retriever.candidates
    );
    println!(
        "{:<8} {:>10} {:>10} {:>7}",
        "mode", "gold@k", "gold@1", "MRR"
    );
    for r in &reports {
        println!(
            "{:<8} {:>9.1}% {:>9.1}% {:>7.3}",
            r.mode.name(),
            100.0 * r.gold_in_top_k,
            100.0 * r.gold_first,
            r.mrr
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(len: u64, visible: bool) -> ProgressBar {
    let target = if visible && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} answers  {msg}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Two worked examples from the set itself, never the question being asked: the next
/// answerable questions with reference answers.
fn shots_from_set(items: &[QaItem], asked: usize) -> Vec<FewShot> {
    (1..items.len())
        .map(|step| (asked + step) % items.len())
        .filter_map(|i| {
            let item = &items[i];
            let answer = item.answer.as_ref()?;
            item.answerable().then(|| FewShot {
                question: item.question.clone(),
                answer: answer.clone(),
                passages: Vec::new(),
            })
        })
        .take(2)
        .collect()
}

/// The model alone, told to say when it does not know.
fn zero_shot(
    generator: &Generator,
    question: &str,
    settings: &AnswerSettings,
) -> anyhow::Result<Answered> {
    let messages = vec![
        Message::new(
            Role::System,
            format!(
                "Answer the question in one or two sentences. If you do not know the answer, \
                 reply only: {}",
                grounding::ABSTENTION
            ),
        ),
        Message::new(Role::User, question.to_string()),
    ];
    let events = generator.chat(ChatRequest {
        messages,
        max_tokens: settings.max_tokens,
        sampling: settings.sampling.clone(),
        stop: lore_server::answer::stops(settings.user_stops),
        adapter: None,
        end: settings.end,
        ..Default::default()
    })?;
    let generation = stream_answer(events, false)?;
    let text = generation.text.trim().to_string();
    // No passages: the prompt below only carries the question for the verdict.
    let prompt =
        lore_retrieve::prompt::build(question, &[], &PromptOptions::default(), usize::MAX, &|_| 0);
    let verdict = Verdict::judge(&prompt, &text, None, &Grounding::default());
    Ok(Answered {
        text,
        prompt,
        citations: Vec::new(),
        verdict,
        generation: Some(generation),
    })
}

fn score(item: &QaItem, variant: &Variant, a: Answered, seconds: f64) -> Scored {
    let (prompt_tokens, completion_tokens) = a
        .generation
        .as_ref()
        .map_or((0, 0), |g| (g.prompt_tokens, g.completion_tokens));
    let cited: Vec<String> = a.citations.iter().map(|c| c.path.clone()).collect();
    Scored {
        variant: variant.name(),
        question: item.question.clone(),
        answerable: item.answerable(),
        right: !a.verdict.abstained && item.is_right(&a.text),
        cited_gold: cited.iter().any(|p| item.is_gold(p)),
        sentences: grounding::sentences(&a.text).len(),
        words: a.text.split_whitespace().count(),
        cited,
        verdict: a.verdict,
        answer: a.text,
        prompt_tokens,
        completion_tokens,
        seconds,
    }
}

fn share(count: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        count as f64 / of as f64
    }
}

fn summarise(variant: &Variant, scored: &[Scored]) -> VariantReport {
    let answerable: Vec<&Scored> = scored.iter().filter(|s| s.answerable).collect();
    let unanswerable: Vec<&Scored> = scored.iter().filter(|s| !s.answerable).collect();
    let stated: Vec<&Scored> = scored.iter().filter(|s| !s.verdict.abstained).collect();
    let sentences: usize = stated.iter().map(|s| s.sentences).sum();
    let unsupported: usize = stated.iter().map(|s| s.verdict.unsupported.len()).sum();
    let mut words: Vec<usize> = scored.iter().map(|s| s.words).collect();
    words.sort_unstable();
    let median = match words.len() {
        0 => 0.0,
        n if n % 2 == 1 => words[n / 2] as f64,
        n => (words[n / 2 - 1] + words[n / 2]) as f64 / 2.0,
    };
    let n = scored.len().max(1) as f64;
    VariantReport {
        variant: variant.name(),
        answerable: answerable.len(),
        unanswerable: unanswerable.len(),
        accuracy: share(
            answerable.iter().filter(|s| s.right).count(),
            answerable.len(),
        ),
        right_file_cited: share(
            answerable.iter().filter(|s| s.cited_gold).count(),
            answerable.len(),
        ),
        declined_unanswerable: share(
            unanswerable.iter().filter(|s| s.verdict.abstained).count(),
            unanswerable.len(),
        ),
        declined_answerable: share(
            answerable.iter().filter(|s| s.verdict.abstained).count(),
            answerable.len(),
        ),
        unsupported_sentences: share(unsupported, sentences),
        mean_support: if stated.is_empty() {
            0.0
        } else {
            stated
                .iter()
                .map(|s| f64::from(s.verdict.support))
                .sum::<f64>()
                / stated.len() as f64
        },
        median_words: median,
        mean_prompt_tokens: scored.iter().map(|s| s.prompt_tokens as f64).sum::<f64>() / n,
        mean_completion_tokens: scored
            .iter()
            .map(|s| s.completion_tokens as f64)
            .sum::<f64>()
            / n,
        seconds_per_answer: scored.iter().map(|s| s.seconds).sum::<f64>() / n,
    }
}

fn print_table(r: &Report) {
    println!(
        "{} questions, model {}, {} retrieval, k={}, decline below cosine {}",
        r.questions,
        r.model,
        r.mode.name(),
        r.k,
        r.min_similarity
    );
    println!(
        "{:<28} {:>8} {:>10} {:>9} {:>10} {:>11} {:>7} {:>7} {:>8} {:>8}",
        "variant",
        "accuracy",
        "right file",
        "declined",
        "false decl",
        "unsupported",
        "words",
        "prompt",
        "compl",
        "s/answer"
    );
    for v in &r.variants {
        println!(
            "{:<28} {:>7.1}% {:>9.1}% {:>8.1}% {:>9.1}% {:>10.1}% {:>7.0} {:>7.0} {:>8.1} {:>8.2}",
            v.variant,
            100.0 * v.accuracy,
            100.0 * v.right_file_cited,
            100.0 * v.declined_unanswerable,
            100.0 * v.declined_answerable,
            100.0 * v.unsupported_sentences,
            v.median_words,
            v.mean_prompt_tokens,
            v.mean_completion_tokens,
            v.seconds_per_answer
        );
    }
    println!(
        "accuracy and right file over {} answerable questions; declined over {} unanswerable; \
         false decl: answerable questions declined; unsupported: answer sentences no passage supports",
        r.variants.first().map_or(0, |v| v.answerable),
        r.variants.first().map_or(0, |v| v.unanswerable)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(keywords: &[&str], gold: &[&str]) -> QaItem {
        QaItem {
            question: "q".into(),
            answer_keywords: keywords.iter().map(|s| s.to_string()).collect(),
            answer: None,
            gold_files: gold.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn answers_are_right_by_any_keyword_or_most_reference_words() {
        let i = item(
            &["--locked", "Cargo.lock"],
            &["cargo/commands/cargo-build.html"],
        );
        assert!(i.is_right("Pass --LOCKED [1]."));
        assert!(!i.is_right("Use the frozen flag."));
        let by_reference = QaItem {
            answer: Some("Lincoln was born in Kentucky in 1809".into()),
            ..item(&[], &["a.md"])
        };
        assert!(by_reference.is_right("He was born in kentucky in 1809, Lincoln's home."));
        assert!(!by_reference.is_right("He was born in Ohio."));
    }

    #[test]
    fn gold_files_match_on_whole_path_components() {
        let i = item(&["x"], &["cargo/reference/config.html"]);
        assert!(i.is_gold("/usr/share/doc/rust/html/cargo/reference/config.html"));
        assert!(i.is_gold("cargo/reference/config.html"));
        assert!(!i.is_gold("html/cargo/reference/myconfig.html"));
        assert!(!item(&[], &[]).answerable());
    }

    #[test]
    fn variants_parse_and_bad_names_are_refused() {
        assert_eq!(Variant::parse("rag+cot").ok(), Some(Variant::RagCot));
        assert_eq!(
            Variant::parse("rag+adapter:out/a").ok(),
            Some(Variant::RagAdapter("out/a".into()))
        );
        assert!(Variant::parse("rag+adapter:").is_err());
        assert!(Variant::parse("fine-tune").is_err());
    }

    #[test]
    fn few_shot_examples_never_include_the_question_asked() {
        let mut items: Vec<QaItem> = (0..4)
            .map(|i| QaItem {
                question: format!("q{i}"),
                answer: Some(format!("a{i}")),
                ..item(&["k"], &["f"])
            })
            .collect();
        items[2].gold_files.clear();
        let shots = shots_from_set(&items, 1);
        let asked: Vec<&str> = shots.iter().map(|s| s.question.as_str()).collect();
        assert_eq!(asked, ["q3", "q0"]);
    }
}
