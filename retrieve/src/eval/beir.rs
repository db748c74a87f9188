//! Reading a retrieval benchmark in the BEIR layout: `corpus.jsonl` (`_id`, `title`,
//! `text`), `queries.jsonl` (`_id`, `text`) and a qrels TSV (`query-id`, `corpus-id`,
//! `score`, with or without its header line). Errors name the file and line.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::metrics::Qrels;

/// A benchmark input that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BeirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// One corpus document.
#[derive(Debug, Clone, Deserialize)]
pub struct CorpusDoc {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub title: String,
    pub text: String,
}

/// One query.
#[derive(Debug, Clone, Deserialize)]
pub struct Query {
    #[serde(rename = "_id")]
    pub id: String,
    pub text: String,
}

fn read(path: &Path) -> Result<String, BeirError> {
    std::fs::read_to_string(path).map_err(|source| BeirError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn jsonl<T: for<'de> Deserialize<'de>>(
    path: &Path,
    id: impl Fn(&T) -> &str,
) -> Result<Vec<T>, BeirError> {
    let text = read(path)?;
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| BeirError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let item: T = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let key = id(&item).to_string();
        if key.trim().is_empty() {
            return Err(bad("empty `_id`".into()));
        }
        if !seen.insert(key.clone()) {
            return Err(bad(format!("duplicate `_id` {key:?}")));
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(BeirError::File {
            path: path.to_path_buf(),
            reason: "no entries".into(),
        });
    }
    Ok(items)
}

pub fn read_corpus(path: &Path) -> Result<Vec<CorpusDoc>, BeirError> {
    jsonl(path, |d: &CorpusDoc| &d.id)
}

pub fn read_queries(path: &Path) -> Result<Vec<Query>, BeirError> {
    jsonl(path, |q: &Query| &q.id)
}

/// Reads qrels; fails on a malformed line or a judgement naming an unknown document or query
/// (a typo there would silently lower every score).
pub fn read_qrels(
    path: &Path,
    docs: &HashSet<&str>,
    queries: &HashSet<&str>,
) -> Result<Qrels, BeirError> {
    let text = read(path)?;
    let mut qrels = Qrels::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| BeirError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
        // Also accept TREC qrels (`qid 0 docid rel`, whitespace separated).
        let fields: Vec<&str> = if fields.len() == 3 {
            fields
        } else {
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                [q, _, d, r] => vec![q, d, r],
                _ => return Err(bad("expected query-id<TAB>corpus-id<TAB>score".into())),
            }
        };
        let Ok(score) = fields[2].parse::<i32>() else {
            if i == 0 {
                continue; // the header
            }
            return Err(bad(format!("score {:?} is not an integer", fields[2])));
        };
        if !queries.contains(fields[0]) {
            return Err(bad(format!(
                "query {:?} is not in the queries file",
                fields[0]
            )));
        }
        if !docs.contains(fields[1]) {
            return Err(bad(format!(
                "document {:?} is not in the corpus",
                fields[1]
            )));
        }
        qrels
            .entry(fields[0].to_string())
            .or_default()
            .insert(fields[1].to_string(), score);
    }
    if qrels.is_empty() {
        return Err(BeirError::File {
            path: path.to_path_buf(),
            reason: "no judgements".into(),
        });
    }
    Ok(qrels)
}

/// Reads a TREC run file (`qid Q0 docid rank score tag`); ranks are ignored.
pub fn read_trec_run(path: &Path) -> Result<super::metrics::Run, BeirError> {
    let text = read(path)?;
    let mut run = super::metrics::Run::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: &str| BeirError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            reason: reason.into(),
        };
        let [q, _, d, _, score, ..] = line.split_whitespace().collect::<Vec<_>>()[..] else {
            return Err(bad("expected `qid Q0 docid rank score tag`"));
        };
        let score: f64 = score
            .parse()
            .map_err(|_| bad("the score is not a number"))?;
        run.entry(q.to_string())
            .or_default()
            .push((d.to_string(), score));
    }
    Ok(run)
}
