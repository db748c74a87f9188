//! Answer quality with the default answerer on real documentation: pages of the Cargo book
//! and the Rust Reference as the toolchain ships them (HTML), a fixed slice of the QA set
//! (`tests/data/qa/ci-slice.jsonl`, every sixth answerable question and every third
//! unanswerable one of `cargo-reference.jsonl`), scored by `lore eval answers`. To bound the
//! test's time, the knowledge base holds the slice's gold pages and every fourth other page
//! of the two books (the full books run in `scripts/eval-answers`). The thresholds sit below
//! what the full set measured with the default answerer (README, "Answer quality": 32% right,
//! 37% citing the gold page, median 15 words): a regression guard, not the targets,
//! which lore does not meet yet.

#![allow(clippy::unwrap_used)] // a test fails loudly on any error

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use lore_tests::{
    lore_bin, models_dir, real_answerer, real_embedding_model, repo_root, run_json,
    skip_unless_required,
};

/// The toolchain's HTML documentation, or `None` (skip) where the toolchain has none.
fn rust_docs() -> Option<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let dir =
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("share/doc/rust/html");
    if dir.join("cargo").is_dir() && dir.join("reference").is_dir() {
        Some(dir)
    } else {
        skip_unless_required(
            "LORE_REQUIRE_MODELS",
            &format!("{}/{{cargo,reference}}", dir.display()),
            "rustup component add rust-docs",
        )
    }
}

/// Copies the slice's gold pages and every fourth other page of the two books (by path
/// order) from `html` into `to`, keeping their paths under `html/`; returns the count.
fn copy_pages(html: &Path, slice: &Path, to: &Path) -> usize {
    let gold: BTreeSet<String> = std::fs::read_to_string(slice)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .flat_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["gold_files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut pages = Vec::new();
    for book in ["cargo", "reference"] {
        let mut stack = vec![html.join(book)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "html") {
                    let rel = path
                        .strip_prefix(html)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    pages.push(rel);
                }
            }
        }
    }
    pages.sort();
    let others = pages.iter().filter(|p| !gold.contains(*p)).step_by(4);
    let chosen: BTreeSet<&String> = others.chain(gold.iter()).collect();
    for rel in &chosen {
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(html.join(rel), dest).unwrap();
    }
    chosen.len()
}

#[test]
fn the_default_answerer_answers_cites_declines_and_stays_short() {
    let (Some(embedder), Some(_), Some(html)) =
        (real_embedding_model(), real_answerer(), rust_docs())
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kb");
    let lore = || {
        let mut cmd = Command::new(lore_bin());
        cmd.env_remove("LORE_LM")
            .env_remove("LORE_DATA_DIR")
            .arg("--data-dir")
            .arg(&data)
            .arg("--models-dir")
            .arg(models_dir())
            .env("LORE_MODEL", &embedder)
            .env("RUST_LOG", "warn");
        cmd
    };
    let slice = repo_root().join("tests/data/qa/ci-slice.jsonl");
    let docs = dir.path().join("html");
    let copied = copy_pages(&html, &slice, &docs);
    let ingested = run_json(lore().arg("ingest").arg(&docs).arg("--json")).unwrap();
    eprintln!("ingested {copied} pages: {ingested}");

    let out = dir.path().join("answers.jsonl");
    let report = run_json(
        lore()
            .args(["eval", "answers", "--json", "--questions"])
            .arg(&slice)
            .arg("--answers-out")
            .arg(&out),
    )
    .unwrap();
    eprintln!("{}", std::fs::read_to_string(&out).unwrap());
    eprintln!("{report:#}");
    let v = &report["variants"][0];
    assert_eq!(v["variant"], "rag");
    assert!(
        report["model"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("qwen2.5-coder-0.5b"),
        "{report}"
    );
    let figure = |key: &str| v[key].as_f64().unwrap();
    assert!(figure("accuracy") >= 0.2, "accuracy {}", figure("accuracy"));
    assert!(
        figure("right_file_cited") >= 0.2,
        "right file cited {}",
        figure("right_file_cited")
    );
    assert!(
        figure("median_words") <= 60.0,
        "median answer {} words",
        figure("median_words")
    );

    // A follow-up: "it" becomes what the conversation was about before retrieval.
    let history = dir.path().join("history.json");
    std::fs::write(
        &history,
        serde_json::json!([
            {"role": "user", "content": "How do I make cargo use a git repository for a dependency?"},
            {"role": "assistant", "content": "Give the dependency a `git` key with the repository's URL [1]."},
        ])
        .to_string(),
    )
    .unwrap();
    let v = run_json(
        lore()
            .args(["ask", "Can I pin it to a branch?", "--json", "--history"])
            .arg(&history),
    )
    .unwrap();
    eprintln!("{v:#}");
    let rewritten = v["rewritten_question"].as_str().unwrap().to_lowercase();
    assert!(
        rewritten.contains("git") || rewritten.contains("dependency"),
        "the follow-up was not made to stand alone: {v}"
    );
    assert!(!v["answer"].as_str().unwrap().trim().is_empty(), "{v}");
}
