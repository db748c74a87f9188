//! Training data: rows read from JSONL, JSON or CSV in the shapes people bring, rendered with
//! the model's chat template exactly as serving renders them, tokenized, and masked so that
//! only the assistant's tokens (and its end-of-turn marker) are trained.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokenizers::Tokenizer;

use crate::chat::{ChatTemplate, Message, Role};
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// One training example before tokenization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Example {
    /// A conversation; the assistant's turns are trained.
    Chat(Vec<Message>),
    /// Plain text, trained whole (autotrain's `--text-column`).
    Text(String),
}

/// How rows are read.
#[derive(Debug, Clone, Default)]
pub struct DataOptions {
    /// Train on this column's raw text instead of recognising a conversation.
    pub text_column: Option<String>,
    /// A system message for conversations that bring none of their own.
    pub system: Option<String>,
}

/// A row's place in its file, for error messages.
fn at(path: &Path, line: usize) -> String {
    format!("{}:{line}", path.display())
}

/// Reads every example of a `.jsonl`, `.json` (an array of rows) or `.csv` file.
pub fn read_examples(path: &Path, options: &DataOptions) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Request(format!("{}: {e}", path.display())))?;
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let rows: Vec<(usize, Map<String, Value>)> = match ext.as_str() {
        "csv" => csv_rows(path, &text)?,
        "json" => {
            let value: Value = serde_json::from_str(&text).map_err(|e| {
                Error::Request(format!("{}: not valid JSON ({e})", at(path, e.line())))
            })?;
            let Value::Array(items) = value else {
                return Err(Error::Request(format!(
                    "{}: a .json dataset must be an array of rows (use .jsonl for one row per line)",
                    path.display()
                )));
            };
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Object(m) => Ok((i + 1, m)),
                    _ => Err(Error::Request(format!(
                        "{}: row {} is not an object",
                        path.display(),
                        i + 1
                    ))),
                })
                .collect::<Result<_>>()?
        }
        "jsonl" | "ndjson" => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| match serde_json::from_str::<Value>(l) {
                Ok(Value::Object(m)) => Ok((i + 1, m)),
                Ok(_) => Err(Error::Request(format!(
                    "{}: the row is not a JSON object",
                    at(path, i + 1)
                ))),
                Err(e) => Err(Error::Request(format!(
                    "{}: not valid JSON ({e})",
                    at(path, i + 1)
                ))),
            })
            .collect::<Result<_>>()?,
        other => {
            return Err(Error::Request(format!(
                "{}: unknown dataset format `.{other}` (use .jsonl, .json or .csv)",
                path.display()
            )));
        }
    };
    if rows.is_empty() {
        return Err(Error::Request(format!(
            "{}: the dataset is empty",
            path.display()
        )));
    }
    rows.into_iter()
        .map(|(line, row)| {
            example(&row, options).map_err(|m| Error::Request(format!("{}: {m}", at(path, line))))
        })
        .collect()
}

fn csv_rows(path: &Path, text: &str) -> Result<Vec<(usize, Map<String, Value>)>> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| Error::Request(format!("{}: {e}", path.display())))?
        .clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line() as usize);
            Error::Request(format!("{}: {e}", at(path, line)))
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let row = headers
            .iter()
            .zip(record.iter())
            .map(|(h, v)| (h.to_string(), Value::String(v.to_string())))
            .collect();
        rows.push((line, row));
    }
    Ok(rows)
}

/// Recognises one row: a text column, chat `messages` (or ShareGPT `conversations`),
/// prompt/completion (or response/output), Alpaca's instruction/input/output, or
/// question/answer. A `system` field, or the default system message, opens a conversation.
fn example(
    row: &Map<String, Value>,
    options: &DataOptions,
) -> std::result::Result<Example, String> {
    let text = |key: &str| -> std::result::Result<Option<String>, String> {
        match row.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("field `{key}` must be a string, not {other}")),
        }
    };
    if let Some(column) = &options.text_column {
        return match text(column)? {
            Some(t) if !t.trim().is_empty() => Ok(Example::Text(t)),
            Some(_) => Err(format!("column `{column}` is empty")),
            None => Err(format!("the row has no `{column}` column (--text-column)")),
        };
    }
    let system = text("system")?.or_else(|| options.system.clone());
    let mut messages: Vec<Message> = system
        .filter(|s| !s.trim().is_empty())
        .map(|s| vec![Message::new(Role::System, s)])
        .unwrap_or_default();
    if let Some(turns) = row.get("messages").or_else(|| row.get("conversations")) {
        let Value::Array(turns) = turns else {
            return Err("`messages` must be a list of {role, content} objects".into());
        };
        for (i, turn) in turns.iter().enumerate() {
            let role = turn
                .get("role")
                .or_else(|| turn.get("from"))
                .and_then(Value::as_str)
                .ok_or_else(|| format!("message {} has no `role`", i + 1))?;
            let role = match role {
                "system" => Role::System,
                "user" | "human" => Role::User,
                "assistant" | "gpt" | "bot" => Role::Assistant,
                other => return Err(format!("message {} has an unknown role `{other}`", i + 1)),
            };
            let content = turn
                .get("content")
                .or_else(|| turn.get("value"))
                .and_then(Value::as_str)
                .ok_or_else(|| format!("message {} has no string `content`", i + 1))?;
            if role == Role::System && messages.first().is_some_and(|m| m.role == Role::System) {
                messages.remove(0);
            }
            messages.push(Message::new(role, content));
        }
        return check_chat(messages);
    }
    let pairs: [(&str, &[&str]); 3] = [
        ("prompt", &["completion", "response", "output", "chosen"]),
        ("question", &["answer"]),
        ("instruction", &["output", "response"]),
    ];
    for (ask, answers) in pairs {
        let Some(mut user) = text(ask)? else { continue };
        if ask == "instruction"
            && let Some(input) = text("input")?.filter(|i| !i.trim().is_empty())
        {
            user = format!("{user}\n\n{input}");
        }
        let mut reply = None;
        for key in answers {
            if let Some(r) = text(key)? {
                reply = Some(r);
                break;
            }
        }
        let reply = reply.ok_or_else(|| {
            format!(
                "the row has `{ask}` but no answer field ({})",
                answers.join(" / ")
            )
        })?;
        messages.push(Message::new(Role::User, user));
        messages.push(Message::new(Role::Assistant, reply));
        return check_chat(messages);
    }
    if let Some(t) = text("text")? {
        if t.trim().is_empty() {
            return Err("`text` is empty".into());
        }
        return Ok(Example::Text(t));
    }
    let keys: Vec<&str> = row.keys().map(String::as_str).collect();
    Err(format!(
        "the row has none of the recognised fields (messages; prompt + completion; instruction + output; question + answer; text); it has: {}",
        keys.join(", ")
    ))
}

fn check_chat(messages: Vec<Message>) -> std::result::Result<Example, String> {
    match messages.iter().rposition(|m| m.role == Role::Assistant) {
        None => Err("the conversation has no assistant message to learn from".into()),
        Some(_)
            if messages
                .iter()
                .any(|m| m.role == Role::Assistant && m.content.trim().is_empty()) =>
        {
            Err("an assistant message is empty".into())
        }
        Some(_) => Ok(Example::Chat(messages)),
    }
}

/// A tokenized example: ids and, per id, whether it is a training target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub tokens: Vec<u32>,
    pub trained: Vec<bool>,
    /// Tokens cut by the length limit.
    pub truncated: usize,
}

/// Renders and tokenizes examples the way serving does.
#[derive(Debug)]
pub struct Encoder<'a> {
    pub tokenizer: &'a Tokenizer,
    pub template: ChatTemplate,
    /// Appended to plain-text examples so tuned models learn to stop.
    pub end_of_text: Option<u32>,
    pub max_len: usize,
}

impl Encoder<'_> {
    /// The text and its trained byte ranges: each assistant reply with its end-of-turn
    /// marker. The text is [`ChatTemplate::render`]'s, so training and serving agree.
    fn render(&self, messages: &[Message]) -> (String, Vec<(usize, usize)>) {
        let mut text = String::new();
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let before = self.template.render(&messages[..i], false);
            let head = self.template.render(&messages[..i], true);
            let with = self.template.render(&messages[..=i], false);
            debug_assert!(with.starts_with(&before));
            if m.role == Role::Assistant && with.starts_with(&head) {
                let end_marker = self.template.end_of_turn();
                let stop = with[head.len()..]
                    .find(end_marker)
                    .map_or(with.len(), |p| head.len() + p + end_marker.len());
                spans.push((head.len(), stop));
            }
            text = with;
        }
        (text, spans)
    }

    pub fn encode(&self, example: &Example) -> Result<Encoded> {
        let (text, spans, whole) = match example {
            Example::Chat(m) => {
                let (t, s) = self.render(m);
                (t, s, false)
            }
            Example::Text(t) => (t.clone(), Vec::new(), true),
        };
        let encoding = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut tokens = encoding.get_ids().to_vec();
        let mut trained: Vec<bool> = if whole {
            vec![true; tokens.len()]
        } else {
            encoding
                .get_offsets()
                .iter()
                .map(|&(start, end)| {
                    spans
                        .iter()
                        .any(|&(s, e)| start >= s && end <= e && end > start)
                })
                .collect()
        };
        if whole && let Some(eot) = self.end_of_text {
            tokens.push(eot);
            trained.push(true);
        }
        let truncated = tokens.len().saturating_sub(self.max_len);
        tokens.truncate(self.max_len);
        trained.truncate(self.max_len);
        Ok(Encoded {
            tokens,
            trained,
            truncated,
        })
    }
}

/// Examples ready to train on, with what was dropped on the way.
#[derive(Debug, Default)]
pub struct Prepared {
    pub train: Vec<Encoded>,
    pub valid: Vec<Encoded>,
    pub duplicates: usize,
    /// Examples left with no trained token after truncation.
    pub empty: usize,
    pub truncated: usize,
}

/// The random stream the validation split draws from.
const SPLIT_STREAM: u64 = 0x5917;

/// Where the validation set comes from.
#[derive(Debug, Clone)]
pub enum Validation {
    /// This fraction of the data, drawn with the seed.
    Split(f64),
    File(PathBuf),
}

/// Reads, deduplicates, encodes and splits the data.
pub fn prepare(
    data: &Path,
    validation: &Validation,
    options: &DataOptions,
    encoder: &Encoder,
    seed: u64,
) -> Result<Prepared> {
    let mut out = Prepared::default();
    let mut seen = HashSet::new();
    let mut encode_all = |examples: Vec<Example>, out: &mut Prepared| -> Result<Vec<Encoded>> {
        let mut kept = Vec::new();
        for e in examples {
            if !seen.insert(e.clone()) {
                out.duplicates += 1;
                continue;
            }
            let enc = encoder.encode(&e)?;
            if enc.truncated > 0 {
                out.truncated += 1;
            }
            if enc.trained.iter().skip(1).any(|&t| t) {
                kept.push(enc);
            } else {
                out.empty += 1;
            }
        }
        Ok(kept)
    };
    let examples = read_examples(data, options)?;
    let mut all = encode_all(examples, &mut out)?;
    match validation {
        Validation::File(path) => {
            let valid = read_examples(path, options)?;
            out.valid = encode_all(valid, &mut out)?;
            out.train = all;
        }
        Validation::Split(fraction) => {
            if !(0.0..1.0).contains(fraction) {
                return Err(Error::Request(
                    "the validation split must be in [0, 1)".into(),
                ));
            }
            SplitMix64::derive(seed, SPLIT_STREAM).shuffle(&mut all);
            let n = all.len();
            let mut k = (n as f64 * fraction).round() as usize;
            if *fraction > 0.0 && n >= 2 {
                k = k.clamp(1, n - 1);
            }
            out.valid = all.split_off(n - k);
            out.train = all;
        }
    }
    if out.train.is_empty() {
        return Err(Error::Request(format!(
            "{}: no example is left to train on ({} duplicates, {} with nothing to learn after truncation)",
            data.display(),
            out.duplicates,
            out.empty
        )));
    }
    Ok(out)
}
