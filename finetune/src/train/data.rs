//! Training data: rows read from JSONL, JSON or CSV in the shapes people bring, rendered with
//! the model's chat template exactly as serving renders them, tokenized, and masked so that
//! only the assistant's tokens (and its end-of-turn marker) are trained.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokenizers::Tokenizer;

use crate::lm::chat::{ChatTemplate, Message, Role};
use crate::ops::rng::SplitMix64;
use crate::{Error, Result};

/// One training example before tokenization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Example {
    /// A conversation; the assistant's turns are trained.
    Chat(Vec<Message>),
    /// TRL's conversational prompt/completion: both lists of messages; only the completion's
    /// assistant turns are trained (the prompt's earlier turns are context).
    Completion {
        prompt: Vec<Message>,
        completion: Vec<Message>,
    },
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

/// Reads every example of a `.jsonl`, `.json` (an array of rows) or `.csv` file, each with
/// its line (or row) number for messages about it.
pub fn read_examples(path: &Path, options: &DataOptions) -> Result<Vec<(usize, Example)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
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
            example(&row, options)
                .map(|e| (line, e))
                .map_err(|m| Error::Request(format!("{}: {m}", at(path, line))))
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
    let key = ["messages", "conversations"]
        .into_iter()
        .find(|k| row.contains_key(*k));
    if let Some(key) = key {
        for m in turns(&row[key], key)? {
            if m.role == Role::System && messages.first().is_some_and(|m| m.role == Role::System) {
                messages.remove(0);
            }
            messages.push(m);
        }
        return check_chat(messages);
    }
    // TRL's conversational prompt/completion: two lists of messages.
    if let (Some(Value::Array(_)), Some(completion)) = (row.get("prompt"), row.get("completion")) {
        for m in turns(&row["prompt"], "prompt")? {
            if m.role == Role::System && messages.first().is_some_and(|m| m.role == Role::System) {
                messages.remove(0);
            }
            messages.push(m);
        }
        let completion = turns(completion, "completion")?;
        if !completion.iter().any(|m| m.role == Role::Assistant) {
            return Err("`completion` has no assistant message to learn from".into());
        }
        if completion
            .iter()
            .any(|m| m.role == Role::Assistant && m.content.trim().is_empty())
        {
            return Err("an assistant message is empty".into());
        }
        return Ok(Example::Completion {
            prompt: messages,
            completion,
        });
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

/// A list of `{role, content}` messages (or ShareGPT's `{from, value}`) in field `key`.
fn turns(value: &Value, key: &str) -> std::result::Result<Vec<Message>, String> {
    let Value::Array(turns) = value else {
        return Err(format!(
            "`{key}` must be a list of {{role, content}} objects"
        ));
    };
    turns
        .iter()
        .enumerate()
        .map(|(i, turn)| {
            let role = turn
                .get("role")
                .or_else(|| turn.get("from"))
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{key}: message {} has no `role`", i + 1))?;
            let role = match role {
                "system" | "developer" => Role::System,
                "user" | "human" => Role::User,
                "assistant" | "gpt" | "bot" => Role::Assistant,
                other => {
                    return Err(format!(
                        "{key}: message {} has an unknown role `{other}`",
                        i + 1
                    ));
                }
            };
            let content = turn
                .get("content")
                .or_else(|| turn.get("value"))
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{key}: message {} has no string `content`", i + 1))?;
            Ok(Message::new(role, content))
        })
        .collect()
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
    pub template: &'a ChatTemplate,
    /// Appended to plain-text examples so tuned models learn to stop.
    pub end_of_text: Option<u32>,
    pub max_len: usize,
}

impl Encoder<'_> {
    pub fn encode(&self, example: &Example) -> Result<Encoded> {
        let (text, spans, whole) = match example {
            Example::Chat(m) => {
                let (t, s) = self.template.assistant_spans(m, 0)?;
                (t, s, false)
            }
            Example::Completion { prompt, completion } => {
                let all: Vec<Message> = prompt.iter().chain(completion).cloned().collect();
                let (t, s) = self.template.assistant_spans(&all, prompt.len())?;
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
    let mut encode_all = |path: &Path,
                          examples: Vec<(usize, Example)>,
                          out: &mut Prepared|
     -> Result<Vec<Encoded>> {
        let mut kept = Vec::new();
        for (line, e) in examples {
            if !seen.insert(e.clone()) {
                out.duplicates += 1;
                continue;
            }
            // A template that refuses the row, or a reply it rewrites, is named by its line.
            let enc = encoder.encode(&e).map_err(|err| match err {
                Error::Request(m) => Error::Request(format!("{}: {m}", at(path, line))),
                other => other,
            })?;
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
    let mut all = encode_all(data, examples, &mut out)?;
    match validation {
        Validation::File(path) => {
            let valid = read_examples(path, options)?;
            out.valid = encode_all(path, valid, &mut out)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(rows: &[&str]) -> Result<Vec<Example>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("data.jsonl");
        std::fs::write(&path, rows.join("\n")).expect("write");
        Ok(read_examples(&path, &DataOptions::default())?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    #[test]
    fn trls_four_dataset_shapes_are_read() {
        let examples = read(&[
            r#"{"text": "The sky is blue."}"#,
            r#"{"prompt": "The sky is", "completion": " blue."}"#,
            r#"{"messages": [{"role": "user", "content": "Colour?"}, {"role": "assistant", "content": "Blue."}]}"#,
            r#"{"prompt": [{"role": "user", "content": "Colour?"}], "completion": [{"role": "assistant", "content": "Blue."}]}"#,
        ])
        .expect("read");
        assert_eq!(examples[0], Example::Text("The sky is blue.".into()));
        let chat = Example::Chat(vec![
            Message::new(Role::User, "Colour?"),
            Message::new(Role::Assistant, "Blue."),
        ]);
        assert_eq!(
            examples[1],
            Example::Chat(vec![
                Message::new(Role::User, "The sky is"),
                Message::new(Role::Assistant, " blue."),
            ])
        );
        assert_eq!(examples[2], chat);
        assert_eq!(
            examples[3],
            Example::Completion {
                prompt: vec![Message::new(Role::User, "Colour?")],
                completion: vec![Message::new(Role::Assistant, "Blue.")],
            }
        );
        let err = read(&[
            r#"{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "user", "content": "Hi"}]}"#,
        ])
        .expect_err("no assistant");
        assert!(err.to_string().contains("no assistant message"), "{err}");
    }

    #[test]
    fn only_the_completions_replies_are_trained() {
        let template = ChatTemplate::chatml();
        let prompt = [
            Message::new(Role::User, "First?"),
            Message::new(Role::Assistant, "context reply"),
            Message::new(Role::User, "Second?"),
        ];
        let completion = vec![Message::new(Role::Assistant, "trained reply")];
        let all: Vec<Message> = prompt.iter().chain(&completion).cloned().collect();
        let (text, spans) = template.assistant_spans(&all, prompt.len()).expect("spans");
        let trained: Vec<&str> = spans.iter().map(|&(a, b)| &text[a..b]).collect();
        assert_eq!(trained, ["trained reply<|im_end|>"]);
        // As a plain conversation, both replies are trained.
        let (text, spans) = template.assistant_spans(&all, 0).expect("spans");
        assert_eq!(spans.len(), 2, "{text}");
    }
}
