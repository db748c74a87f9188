//! Shared fixtures for lore's cross-crate tests: the built `lore` binary, the real models,
//! sample documents.
//!
//! Tests that need the real embedding model look for it where `scripts/fetch-models` puts it.
//! When it is absent they skip with a message, unless `LORE_REQUIRE_MODELS=1` (as in CI),
//! where its absence fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

pub mod server;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `lore` binary built next to this test executable (`cargo build` builds it first).
pub fn lore_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/lore
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("lore");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` before the tests",
        bin.display()
    );
    bin
}

/// The folder `scripts/fetch-models` fills.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("LORE_MODELS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share")
            })
            .join("lore/models"),
    }
}

/// `found`, or `None` (the test is skipped) when the model in `dir` is not fetched; a
/// missing model fails instead when `LORE_REQUIRE_MODELS=1` (as `scripts/test` sets).
fn fetched(dir: &Path, found: Option<PathBuf>) -> Option<PathBuf> {
    if found.is_some() {
        return found;
    }
    skip_unless_required(
        "LORE_REQUIRE_MODELS",
        &dir.display().to_string(),
        "scripts/fetch-models",
    )
}

/// A prerequisite `what` is missing: `None` (the test is skipped), or a failure when
/// `require_var=1` says the test must run (as `scripts/test` sets). `fix` says what
/// provides it.
pub fn skip_unless_required<T>(require_var: &str, what: &str, fix: &str) -> Option<T> {
    assert!(
        std::env::var(require_var).as_deref() != Ok("1"),
        "{what} is missing and {require_var}=1: run {fix}"
    );
    eprintln!("SKIPPED: {what} is missing (run {fix})");
    None
}

/// The real default embedding model's folder (see [`fetched`]).
pub fn real_embedding_model() -> Option<PathBuf> {
    let dir = models_dir().join("all-MiniLM-L6-v2");
    let found = dir.join("model.safetensors").exists().then(|| dir.clone());
    fetched(&dir, found)
}

/// The small language model the tests answer and train with unless a test says otherwise:
/// SmolLM2-135M runs a test's answers several times faster than the default answerer (which
/// the answer-quality test uses).
pub const SMALL_LM: &str = "SmolLM2-135M-Instruct";

/// A `lore` invocation with the data dir and model set, and a clean environment.
pub fn lore(data_dir: &Path, model: &Path) -> Command {
    let mut cmd = Command::new(lore_bin());
    cmd.env_remove("LORE_DATA_DIR")
        .env_remove("LORE_MODEL")
        .env("LORE_DATA_DIR", data_dir)
        .env("LORE_MODEL", model)
        .env("LORE_LM", SMALL_LM)
        .env("RUST_LOG", "warn");
    cmd
}

/// Runs the command, fails with its stderr unless it exits 0, and parses its stdout as JSON.
pub fn run_json(cmd: &mut Command) -> Result<serde_json::Value> {
    let out = cmd.output().context("spawning lore")?;
    check(&out)?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "stdout is not one JSON object: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

pub fn check(out: &Output) -> Result<()> {
    if !out.status.success() {
        bail!(
            "lore failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Copies the sample articles shipped in `examples/articles` into `dest`, each cut to at
/// most `max_bytes` (at a line boundary) and at most `count` of them, sorted by name.
pub fn copy_articles(dest: &Path, count: usize, max_bytes: usize) -> Result<Vec<PathBuf>> {
    let src = repo_root().join("examples/articles");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&src)
        .with_context(|| format!("reading {}", src.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    std::fs::create_dir_all(dest)?;
    let mut out = Vec::new();
    for path in names
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .take(count)
    {
        let text = std::fs::read_to_string(&path)?;
        let mut cut = text.len().min(max_bytes);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let cut = text[..cut].rfind('\n').map_or(cut, |i| i + 1);
        let target = dest.join(path.file_name().expect("file name"));
        std::fs::write(&target, &text[..cut])?;
        out.push(target);
    }
    Ok(out)
}

/// The integer field `key` of a JSON object (panics with the object when absent).
pub fn int(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer {key:?} in {v}"))
}

/// A question about `examples/articles`, worded unlike the text, with the file and a verbatim
/// snippet of the passage that answers it (`tests/data/article_questions.jsonl`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ArticleQuestion {
    pub question: String,
    pub path: String,
    pub answer: String,
}

impl ArticleQuestion {
    /// Whether a hit (its path and text) holds this question's answer passage.
    pub fn answered_by(&self, path: &str, text: &str) -> bool {
        path.ends_with(&self.path) && squash(text).contains(&squash(&self.answer))
    }
}

pub fn article_questions() -> Result<Vec<ArticleQuestion>> {
    read_jsonl("tests/data/article_questions.jsonl")
}

/// One value per line of the repository file `relative`.
fn read_jsonl<T: serde::de::DeserializeOwned>(relative: &str) -> Result<Vec<T>> {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{relative}:{}", i + 1)))
        .collect()
}

/// Runs the command and checks that it fails, without a panic, saying `says` on stderr.
pub fn fails_with(cmd: &mut Command, says: &str) {
    let out = cmd.output().expect("spawning lore");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure ({says}), got success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains(says), "expected {says:?} in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Whitespace runs collapsed to one space (chunk text keeps the file's line breaks).
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The real small language model's GGUF file, SmolLM2-135M (see [`fetched`]).
pub fn real_language_model() -> Option<PathBuf> {
    gguf_in(&models_dir().join(SMALL_LM))
}

/// The real default answerer's GGUF file, Qwen2.5-Coder-0.5B (see [`fetched`]).
pub fn real_answerer() -> Option<PathBuf> {
    gguf_in(&models_dir().join("Qwen2.5-Coder-0.5B-Instruct"))
}

fn gguf_in(dir: &Path) -> Option<PathBuf> {
    let gguf = std::fs::read_dir(dir).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "gguf"))
    });
    fetched(dir, gguf)
}

/// A simple factual question about one of `examples/articles`, with the short answers that
/// count as stating the fact (`tests/data/ask_questions.jsonl`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AskQuestion {
    pub question: String,
    pub path: String,
    pub facts: Vec<String>,
}

impl AskQuestion {
    /// Whether `answer` states the fact (case-insensitively).
    pub fn stated_in(&self, answer: &str) -> bool {
        let answer = answer.to_lowercase();
        self.facts
            .iter()
            .any(|f| answer.contains(&f.to_lowercase()))
    }
}

pub fn ask_questions() -> Result<Vec<AskQuestion>> {
    read_jsonl("tests/data/ask_questions.jsonl")
}
