//! Retrieval metrics with trec_eval's definitions, so lore's numbers can be compared with
//! published ones (checked against pytrec_eval in `tests/eval_metrics.rs`).
//!
//! - A run's documents are ordered as trec_eval orders them: score descending, ties by
//!   document id descending (byte order). Ranks in run files are ignored.
//! - Relevant means a judgement > 0; nDCG uses the judgement as a linear gain with a
//!   `log2(rank + 1)` discount and the ideal ranking of all the query's judgements.
//! - Queries are those of the qrels; one without results scores 0 and still counts; results
//!   for queries without judgements are ignored.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// Judgements: query id → document id → graded relevance.
pub type Qrels = BTreeMap<String, HashMap<String, i32>>;
/// Results: query id → (document id, score) in any order.
pub type Run = BTreeMap<String, Vec<(String, f64)>>;

/// The four figures `lore eval retrieval` reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Metrics {
    #[serde(rename = "ndcg@10")]
    pub ndcg_10: f64,
    #[serde(rename = "recall@10")]
    pub recall_10: f64,
    #[serde(rename = "recall@100")]
    pub recall_100: f64,
    #[serde(rename = "mrr@10")]
    pub mrr_10: f64,
}

/// Sorts a query's results into trec_eval's order.
pub fn trec_order(results: &mut [(String, f64)]) {
    results.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| b.0.as_bytes().cmp(a.0.as_bytes()))
    });
}

/// Metrics of one query's results (in trec_eval order) against its judgements.
pub fn query_metrics(ranked: &[(String, f64)], judged: &HashMap<String, i32>) -> Metrics {
    let relevant = judged.values().filter(|&&r| r > 0).count();
    if relevant == 0 {
        return Metrics::default();
    }
    let gain = |doc: &str| judged.get(doc).copied().filter(|&r| r > 0).unwrap_or(0);
    let discount = |i: usize| 1.0 / ((i + 2) as f64).log2();
    let dcg: f64 = ranked
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, (d, _))| f64::from(gain(d)) * discount(i))
        .sum();
    let mut ideal: Vec<i32> = judged.values().copied().filter(|&r| r > 0).collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, &g)| f64::from(g) * discount(i))
        .sum();
    let found_in = |k: usize| ranked.iter().take(k).filter(|(d, _)| gain(d) > 0).count();
    let first = ranked.iter().take(10).position(|(d, _)| gain(d) > 0);
    Metrics {
        ndcg_10: if idcg > 0.0 { dcg / idcg } else { 0.0 },
        recall_10: found_in(10) as f64 / relevant as f64,
        recall_100: found_in(100) as f64 / relevant as f64,
        mrr_10: first.map_or(0.0, |i| 1.0 / (i + 1) as f64),
    }
}

/// Per-query metrics and their means over every query in `qrels`.
pub fn evaluate(qrels: &Qrels, run: &Run) -> (Metrics, BTreeMap<String, Metrics>) {
    let mut per_query = BTreeMap::new();
    let mut sum = Metrics::default();
    for (query, judged) in qrels {
        let mut ranked = run.get(query).cloned().unwrap_or_default();
        trec_order(&mut ranked);
        let m = query_metrics(&ranked, judged);
        sum.ndcg_10 += m.ndcg_10;
        sum.recall_10 += m.recall_10;
        sum.recall_100 += m.recall_100;
        sum.mrr_10 += m.mrr_10;
        per_query.insert(query.clone(), m);
    }
    let n = qrels.len().max(1) as f64;
    let mean = Metrics {
        ndcg_10: sum.ndcg_10 / n,
        recall_10: sum.recall_10 / n,
        recall_100: sum.recall_100 / n,
        mrr_10: sum.mrr_10 / n,
    };
    (mean, per_query)
}

/// Writes `run` in the TREC format (`qid Q0 docid rank score tag`), in trec_eval order.
pub fn write_trec(run: &Run, tag: &str, out: &mut impl std::io::Write) -> std::io::Result<()> {
    for (query, results) in run {
        let mut ranked = results.clone();
        trec_order(&mut ranked);
        for (i, (doc, score)) in ranked.iter().enumerate() {
            writeln!(out, "{query} Q0 {doc} {} {score} {tag}", i + 1)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(pairs: &[(&str, i32)]) -> HashMap<String, i32> {
        pairs.iter().map(|(d, r)| (d.to_string(), *r)).collect()
    }

    fn ranked(docs: &[&str]) -> Vec<(String, f64)> {
        docs.iter()
            .enumerate()
            .map(|(i, d)| (d.to_string(), 100.0 - i as f64))
            .collect()
    }

    #[test]
    fn one_relevant_document_at_rank_two() {
        let m = query_metrics(&ranked(&["x", "a", "y"]), &judged(&[("a", 1)]));
        assert!((m.ndcg_10 - 1.0 / 3f64.log2()).abs() < 1e-12);
        assert_eq!((m.recall_10, m.recall_100, m.mrr_10), (1.0, 1.0, 0.5));
    }

    #[test]
    fn ties_sort_by_descending_document_id() {
        let mut r = vec![
            ("a".to_string(), 1.0),
            ("c".to_string(), 1.0),
            ("b".to_string(), 2.0),
        ];
        trec_order(&mut r);
        assert_eq!(
            r.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>(),
            ["b", "c", "a"]
        );
    }

    #[test]
    fn a_query_without_results_counts_as_zero() {
        let qrels: Qrels = [
            ("q1".to_string(), judged(&[("a", 1)])),
            ("q2".to_string(), judged(&[("b", 1)])),
        ]
        .into();
        let run: Run = [
            ("q1".to_string(), ranked(&["a"])),
            ("q9".to_string(), ranked(&["b"])),
        ]
        .into();
        let (mean, per) = evaluate(&qrels, &run);
        assert_eq!(per.len(), 2);
        assert_eq!(mean.mrr_10, 0.5);
    }
}
