//! lore's metrics against pytrec_eval's on the same run files. The reference numbers were
//! made by `scripts/eval_reference.py` (pytrec_eval-terrier 0.5.11; see the README beside
//! each run) and are committed, so this test needs no Python.

#![allow(clippy::unwrap_used)] // a test fails loudly on any error

use std::path::Path;

use lore_retrieve::eval::{evaluate, read_trec_run};

fn data(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data")
        .join(rel)
}

fn qrels_of(path: &Path) -> lore_retrieve::eval::Qrels {
    let mut qrels = lore_retrieve::eval::Qrels::new();
    for line in std::fs::read_to_string(path).unwrap().lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        qrels
            .entry(f[0].to_string())
            .or_default()
            .insert(f[1].to_string(), f[2].trim().parse().unwrap());
    }
    qrels
}

fn check(dir: &str) {
    let run = read_trec_run(&data(&format!("{dir}/run.trec"))).unwrap();
    let qrels = qrels_of(&data(&format!("{dir}/qrels.tsv")));
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data(&format!("{dir}/reference.json"))).unwrap(),
    )
    .unwrap();
    let (mean, per_query) = evaluate(&qrels, &run);
    let close = |ours: f64, theirs: &serde_json::Value, what: &str| {
        let theirs = theirs
            .as_f64()
            .unwrap_or_else(|| panic!("{what} missing from the reference"));
        assert!(
            (ours - theirs).abs() < 1e-12,
            "{what}: lore {ours} vs pytrec_eval {theirs}"
        );
    };
    for (name, ours) in [
        ("ndcg@10", mean.ndcg_10),
        ("recall@10", mean.recall_10),
        ("recall@100", mean.recall_100),
        ("mrr@10", mean.mrr_10),
    ] {
        close(
            ours,
            &reference["mean"][name],
            &format!("{dir} mean {name}"),
        );
    }
    let theirs = reference["per_query"].as_object().unwrap();
    assert_eq!(per_query.len(), theirs.len(), "{dir}: queries evaluated");
    for (q, m) in &per_query {
        for (name, ours) in [
            ("ndcg@10", m.ndcg_10),
            ("recall@10", m.recall_10),
            ("recall@100", m.recall_100),
            ("mrr@10", m.mrr_10),
        ] {
            close(ours, &theirs[q][name], &format!("{dir} {q} {name}"));
        }
    }
}

#[test]
fn hand_made_run_with_ties_matches_pytrec_eval() {
    check("eval-ties");
}

#[test]
fn lores_own_runs_match_pytrec_eval() {
    check("eval-lore-runs");
}
