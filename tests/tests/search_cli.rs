//! `lore search` and `lore eval retrieval` end to end: the real model, real stores, the real
//! binary, and questions about real articles written in other words than the text.

#![allow(clippy::unwrap_used)] // a test fails loudly on any error

use std::path::Path;

use lore_embed::{BertEmbedder, Embedder, EmbedderConfig};
use lore_retrieve::{KnowledgeBase, Mode, SearchRequest, StoreConfig};
use lore_tests::{
    article_questions, fails_with, int, lore, real_embedding_model, repo_root, run_json,
};

/// Lists every file under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.push((
                    e.path().display().to_string(),
                    meta.len(),
                    meta.modified().unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn search_real_articles_in_every_mode_then_its_cli() -> anyhow::Result<()> {
    let Some(model) = real_embedding_model() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("kb");
    let articles = repo_root().join("examples/articles");
    let report = run_json(
        lore(&data, &model)
            .args(["ingest", "--json", "--tag", "source=wikipedia"])
            .arg(&articles),
    )?;
    assert_eq!(int(&report, "new"), 30);

    // Quality: each question must find its answer's passage in the top 5.
    let questions = article_questions()?;
    assert!(questions.len() >= 50);
    {
        let kb = KnowledgeBase::open_existing(&data, &StoreConfig::Embedded)?;
        let embedder = BertEmbedder::load(&model, &EmbedderConfig::default())?;
        let texts: Vec<String> = questions.iter().map(|q| q.question.clone()).collect();
        let vectors = embedder.embed(&texts)?;
        let mut found = [0usize; 3];
        for (q, v) in questions.iter().zip(&vectors) {
            for (m, mode) in Mode::ALL.into_iter().enumerate() {
                let hits = kb
                    .search(&SearchRequest::new(q.question.clone(), mode, 5), Some(v))?
                    .hits;
                if hits.iter().any(|h| q.answered_by(&h.path, &h.text)) {
                    found[m] += 1;
                } else if mode == Mode::Hybrid {
                    eprintln!("hybrid missed: {:?} (answer in {})", q.question, q.path);
                }
            }
        }
        let n = questions.len() as f64;
        eprintln!(
            "answer passage in top 5 of {} questions: hybrid {:.1}%, dense {:.1}%, lexical {:.1}%",
            questions.len(),
            100.0 * found[0] as f64 / n,
            100.0 * found[1] as f64 / n,
            100.0 * found[2] as f64 / n
        );
        assert!(
            found[0] as f64 >= 0.85 * n,
            "hybrid found {} of {}",
            found[0],
            questions.len()
        );
        assert!(
            found[0] >= found[1] && found[0] >= found[2],
            "hybrid {found:?} must match or beat dense and lexical"
        );
    }

    // The CLI's JSON: exactly the documented fields, best first.
    let out = run_json(lore(&data, &model).args([
        "search",
        "--json",
        "-k",
        "3",
        "When did work on the character encoding standard begin?",
    ]))?;
    let hits = out["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 3);
    let mut keys: Vec<&str> = hits[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "chunk_id",
            "end_line",
            "heading",
            "page",
            "path",
            "score",
            "start_line",
            "text"
        ]
    );
    assert!(
        hits[0]["path"].as_str().unwrap().ends_with("ascii.md"),
        "{out}"
    );
    assert!(hits[0]["page"].is_null());
    assert!(
        hits.windows(2)
            .all(|w| w[0]["score"].as_f64() >= w[1]["score"].as_f64())
    );

    // `lore search … | head`: a reader that goes away ends lore quietly, as SIGPIPE would.
    let mut child = lore(&data, &model)
        .args(["search", "-k", "20", "character encoding"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");

    // Filters narrow hits to what they name.
    let paths = |args: &[&str]| -> Vec<String> {
        let out = run_json(
            lore(&data, &model)
                .args(["search", "--json", "-k", "5"])
                .args(args),
        )
        .unwrap();
        out["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["path"].as_str().unwrap().to_string())
            .collect()
    };
    let in_one = paths(&[
        "history of the alphabet",
        "--filter",
        &format!("path:{}", articles.join("a.md").display()),
    ]);
    assert!(
        !in_one.is_empty() && in_one.iter().all(|p| p.ends_with("/a.md")),
        "{in_one:?}"
    );
    let globbed = paths(&[
        "a president",
        "--filter",
        "path:**/abraham*.md",
        "--mode",
        "lexical",
    ]);
    assert!(
        !globbed.is_empty() && globbed.iter().all(|p| p.ends_with("abraham-lincoln.md")),
        "{globbed:?}"
    );
    assert_eq!(paths(&["anything", "--filter", "type:pdf"]).len(), 0);
    assert_eq!(
        paths(&["anything", "--filter", "source=wikipedia"]).len(),
        5
    );
    assert_eq!(
        paths(&["anything", "--filter", "tag:source=elsewhere"]).len(),
        0
    );
    let human = lore(&data, &model)
        .args(["search", "teleprinter code", "-k", "2", "--mode", "lexical"])
        .output()?;
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains(" 1. ") && human.contains("**teleprinter**"),
        "{human}"
    );

    // Bad input: a clear error, a non-zero exit, nothing written.
    let before = snapshot(&data);
    fails_with(
        lore(&data, &model).args(["search", "   "]),
        "query is empty",
    );
    fails_with(
        lore(&data, &model).args(["search", "x", "--filter", "colour:red"]),
        "unknown field `colour`",
    );
    fails_with(
        lore(&data, &model).args(["search", "x", "--filter", "path:[oops"]),
        "[oops",
    );
    fails_with(
        lore(&data, &model).args(["search", "x", "--mode", "fuzzy"]),
        "unknown mode",
    );
    fails_with(
        lore(&data, &model).args(["search", "the of and", "--mode", "lexical"]),
        "no words BM25",
    );
    fails_with(
        lore(&data, &model).args(["search", "x", "--mmr", "1.5"]),
        "MMR",
    );
    let tiny = tmp.path().join("tiny-model");
    lore_embed::testing::write_tiny_bert(&tiny, 64)?;
    fails_with(
        lore(&data, &model)
            .args(["search", "x", "--model"])
            .arg(&tiny),
        "was built with the embedding model",
    );
    assert_eq!(
        snapshot(&data),
        before,
        "a failed search changed the knowledge base"
    );

    // A query longer than the model's window is truncated for the dense side, with a warning.
    let long = "the history of the Latin alphabet and its letters ".repeat(80);
    let out = run_json(lore(&data, &model).args(["search", "--json", &long]))?;
    assert!(
        out["warnings"].to_string().contains("reads only the first"),
        "{out}"
    );
    assert!(!out["hits"].as_array().unwrap().is_empty());

    // No knowledge base, or an empty one: say so, create nothing.
    let nowhere = tmp.path().join("nowhere");
    fails_with(
        lore(&nowhere, &model).args(["search", "x"]),
        "not a lore knowledge base",
    );
    assert!(!nowhere.exists());
    let empty_docs = tmp.path().join("empty-docs");
    std::fs::create_dir_all(&empty_docs)?;
    let empty = tmp.path().join("empty-kb");
    run_json(
        lore(&empty, &model)
            .args(["ingest", "--json"])
            .arg(&empty_docs),
    )?;
    fails_with(
        lore(&empty, &model).args(["search", "x"]),
        "holds no documents",
    );
    Ok(())
}

#[test]
fn eval_retrieval_reports_every_mode_and_its_runs_score_the_same() -> anyhow::Result<()> {
    let Some(model) = real_embedding_model() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let mini = repo_root().join("tests/data/beir-mini");
    let runs = tmp.path().join("runs");
    let out = run_json(
        lore(&tmp.path().join("unused"), &model)
            .args(["eval", "retrieval", "--json", "--corpus"])
            .arg(mini.join("corpus.jsonl"))
            .arg("--queries")
            .arg(mini.join("queries.jsonl"))
            .arg("--qrels")
            .arg(mini.join("qrels.tsv"))
            .arg("--run-dir")
            .arg(&runs),
    )?;
    assert_eq!(int(&out, "documents"), 56);
    assert_eq!(int(&out, "queries"), 22);
    assert_eq!(out["fusion"]["method"], "scaled");
    assert!((out["fusion"]["dense_weight"].as_f64().unwrap() - 0.85).abs() < 1e-6);
    assert!((out["fusion"]["code_dense_weight"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    let modes = out["modes"].as_array().unwrap();
    assert_eq!(
        modes
            .iter()
            .map(|m| m["mode"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["hybrid", "dense", "lexical"]
    );
    let qrels = {
        let mut q = lore_retrieve::eval::Qrels::new();
        for line in std::fs::read_to_string(mini.join("qrels.tsv"))?
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split('\t').collect();
            q.entry(f[0].into())
                .or_default()
                .insert(f[1].into(), f[2].parse()?);
        }
        q
    };
    let mut ndcg = std::collections::HashMap::new();
    for m in modes {
        let name = m["mode"].as_str().unwrap();
        // The printed figures are those of the run file it wrote (which pytrec_eval would score).
        let run = lore_retrieve::eval::read_trec_run(&runs.join(format!("{name}.trec")))?;
        let (mean, _) = lore_retrieve::eval::evaluate(&qrels, &run);
        assert!(
            (m["ndcg@10"].as_f64().unwrap() - mean.ndcg_10).abs() < 1e-9,
            "{name}"
        );
        assert!(
            (m["mrr@10"].as_f64().unwrap() - mean.mrr_10).abs() < 1e-9,
            "{name}"
        );
        assert!(mean.recall_100 >= mean.recall_10);
        // Floors: the figures measured on this set (README) less 0.05, so a change that
        // costs a mode a few relevant documents fails here rather than in a benchmark.
        let floor = match name {
            "hybrid" => 0.9238 - 0.05,
            "dense" => 0.8902 - 0.05,
            _ => 0.8221 - 0.05,
        };
        assert!(
            mean.ndcg_10 >= floor,
            "{name} nDCG@10 {:.4} is below its floor {floor:.4}",
            mean.ndcg_10
        );
        ndcg.insert(name.to_string(), mean.ndcg_10);
    }
    // Fusion must not lose to either retriever alone on this set.
    assert!(
        ndcg["hybrid"] >= ndcg["dense"] && ndcg["hybrid"] >= ndcg["lexical"],
        "hybrid below a single mode: {ndcg:?}"
    );

    // Bad benchmark files name the file and line.
    let bad = tmp.path().join("bad.tsv");
    std::fs::write(&bad, "query-id\tcorpus-id\tscore\nq01\tno-such-doc\t1\n")?;
    let out = lore(&tmp.path().join("unused"), &model)
        .args(["eval", "retrieval", "--corpus"])
        .arg(mini.join("corpus.jsonl"))
        .arg("--queries")
        .arg(mini.join("queries.jsonl"))
        .arg("--qrels")
        .arg(&bad)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("bad.tsv:2") && stderr.contains("no-such-doc"),
        "{stderr}"
    );
    Ok(())
}
