//! Dataset generation as gpt-llm-trainer does it: a generator model is asked for a system
//! message for the use case, then for prompt/response pairs in batches. Replies are parsed
//! leniently; malformed and duplicate pairs are dropped; rows are appended as they arrive, so
//! a rerun resumes where the last one stopped.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::fs::write_atomically;
use crate::lm::chat::{Message, Role};
use crate::{Error, Result};

/// The longest prompt or response kept, in characters.
const MAX_FIELD_CHARS: usize = 4000;

/// The request for a system message.
pub fn system_request(use_case: &str) -> Vec<Message> {
    vec![
        Message::new(
            Role::System,
            "You write system messages that tell an AI assistant how to behave.",
        ),
        Message::new(
            Role::User,
            format!(
                "Write the system message for an assistant with this job:\n{use_case}\n\n\
                 Answer with the system message only, in one to three sentences, starting with \"You are\"."
            ),
        ),
    ]
}

/// The request for `batch` new pairs; `recent` prompts are listed so the model avoids them.
pub fn pairs_request(use_case: &str, batch: usize, recent: &[String]) -> Vec<Message> {
    let mut ask = format!(
        "Use case: {use_case}\n\n\
         Write {batch} different examples of a request a user might send and the ideal reply for \
         this use case. Vary the topics, length and phrasing. Write each example in exactly this form:\n\n\
         PROMPT: <the user's request>\nRESPONSE: <the ideal reply>\n\n\
         Do not number the examples or add anything else."
    );
    if !recent.is_empty() {
        ask.push_str("\n\nDo not repeat these prompts:\n");
        for p in recent {
            ask.push_str(&format!("- {p}\n"));
        }
    }
    vec![
        Message::new(
            Role::System,
            "You write varied, high-quality training examples for fine-tuning an AI assistant.",
        ),
        Message::new(Role::User, ask),
    ]
}

/// A cleaned system message, or `None` when the reply holds none.
pub fn parse_system(reply: &str) -> Option<String> {
    let text = reply
        .trim()
        .trim_start_matches("System message:")
        .trim()
        .trim_matches('"')
        .trim();
    (text.len() >= 10 && text.len() <= MAX_FIELD_CHARS).then(|| text.to_string())
}

/// The `PROMPT:` / `RESPONSE:` pairs of a reply and how many malformed pieces were dropped.
pub fn parse_pairs(reply: &str) -> (Vec<(String, String)>, usize) {
    let mut pairs = Vec::new();
    let mut malformed = 0;
    let marker = |s: &str, m: &str| -> Option<usize> {
        let upper = s.to_ascii_uppercase();
        upper.find(m)
    };
    let mut rest = reply;
    // Everything before the first PROMPT: is preamble.
    let Some(first) = marker(rest, "PROMPT:") else {
        return (pairs, usize::from(!reply.trim().is_empty()));
    };
    rest = &rest[first + "PROMPT:".len()..];
    loop {
        let next = marker(rest, "PROMPT:");
        let piece = match next {
            Some(n) => &rest[..n],
            None => rest,
        };
        match marker(piece, "RESPONSE:") {
            Some(r) => {
                let prompt = clean(&piece[..r]);
                let response = clean(&piece[r + "RESPONSE:".len()..]);
                if prompt.is_empty()
                    || response.is_empty()
                    || prompt == response
                    || prompt.len() > MAX_FIELD_CHARS
                    || response.len() > MAX_FIELD_CHARS
                {
                    malformed += 1;
                } else {
                    pairs.push((prompt, response));
                }
            }
            None => malformed += 1,
        }
        match next {
            Some(n) => rest = &rest[n + "PROMPT:".len()..],
            None => break,
        }
    }
    (pairs, malformed)
}

fn clean(s: &str) -> String {
    s.trim()
        .trim_matches(|c: char| c == '<' || c == '>' || c == '"' || c == '*')
        .trim()
        .to_string()
}

/// How prompts are compared for duplicates.
fn key(prompt: &str) -> String {
    prompt
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// The dataset file being written, with what it already holds.
#[derive(Debug)]
pub struct DatasetFile {
    pub path: PathBuf,
    pub rows: usize,
    seen: HashSet<String>,
    pub recent: Vec<String>,
    pub duplicates: usize,
}

impl DatasetFile {
    /// Opens `path`, keeping the valid rows of an earlier run (a torn last line from a crash
    /// is dropped and the file rewritten without it).
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = Self {
            path: path.to_path_buf(),
            rows: 0,
            seen: HashSet::new(),
            recent: Vec::new(),
            duplicates: 0,
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return Ok(file);
        };
        let mut kept = String::new();
        let mut torn = false;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let prompt = serde_json::from_str::<Value>(line).ok().and_then(|v| {
                v["messages"]
                    .as_array()?
                    .iter()
                    .find(|m| m["role"] == "user")?["content"]
                    .as_str()
                    .map(str::to_string)
            });
            match prompt {
                Some(p) => {
                    file.remember(&p);
                    file.rows += 1;
                    kept.push_str(line);
                    kept.push('\n');
                }
                None => torn = true,
            }
        }
        if torn {
            write_atomically(path, |tmp| {
                std::fs::write(tmp, kept.as_bytes()).map_err(|e| Error::io(tmp, e))
            })?;
        }
        Ok(file)
    }

    fn remember(&mut self, prompt: &str) -> bool {
        let fresh = self.seen.insert(key(prompt));
        if fresh {
            self.recent.push(prompt.to_string());
            if self.recent.len() > 8 {
                self.recent.remove(0);
            }
        }
        fresh
    }

    /// Appends the pairs not seen before; returns how many were new.
    pub fn append(&mut self, system: &str, pairs: Vec<(String, String)>) -> Result<usize> {
        let path = self.path.clone();
        let io = |e: std::io::Error| Error::io(path.to_path_buf(), e);
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        let mut added = 0;
        for (prompt, response) in pairs {
            if !self.remember(&prompt) {
                self.duplicates += 1;
                continue;
            }
            let row = json!({"messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": response},
            ]});
            writeln!(out, "{row}").map_err(io)?;
            added += 1;
        }
        out.sync_data().map_err(io)?;
        self.rows += added;
        Ok(added)
    }
}

/// Where the generated system message is kept: beside the dataset.
pub fn system_path(dataset: &Path) -> PathBuf {
    let stem = dataset
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into());
    dataset.with_file_name(format!("{stem}.system.txt"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_parsed_leniently_and_bad_ones_counted() {
        let reply = "Sure! Here they are.\nPROMPT: How do I boil an egg?\nRESPONSE: Put it in boiling water for 8 minutes.\n\n\
                     prompt: What is 2+2?\nResponse: 4\nPROMPT: no answer here\nPROMPT: <Same>\nRESPONSE: <Same>";
        let (pairs, malformed) = parse_pairs(reply);
        assert_eq!(
            pairs,
            vec![
                (
                    "How do I boil an egg?".to_string(),
                    "Put it in boiling water for 8 minutes.".to_string()
                ),
                ("What is 2+2?".to_string(), "4".to_string()),
            ]
        );
        assert_eq!(malformed, 2);
        assert_eq!(parse_pairs("I cannot help with that."), (vec![], 1));
        assert_eq!(
            parse_system("\"You are a pirate.\""),
            Some("You are a pirate.".into())
        );
        assert_eq!(parse_system("ok"), None);
    }

    #[test]
    fn the_file_resumes_drops_torn_lines_and_duplicates() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("d.jsonl");
        let mut f = DatasetFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let added = f
            .append(
                "sys",
                vec![
                    ("Hi there".into(), "Hello".into()),
                    ("hi, there!".into(), "Dup".into()),
                ],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((added, f.duplicates), (1, 1));
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text.push_str("{\"messages\": [{\"role\"");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        let again = DatasetFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.rows, 1);
        assert_eq!(
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .count(),
            1
        );
        assert_eq!(system_path(&path), dir.path().join("d.system.txt"));
    }
}
