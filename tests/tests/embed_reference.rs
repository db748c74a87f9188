//! `lore embed --json` against vectors made by sentence-transformers for the same model and
//! texts (tests/data/embed_reference.json, produced by scripts/embed_reference.py).

use lore_tests::{lore, real_embedding_model, repo_root, run_json};

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("vector")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

#[test]
fn vectors_match_sentence_transformers() -> anyhow::Result<()> {
    let Some(model) = real_embedding_model() else {
        return Ok(());
    };
    let reference: serde_json::Value = serde_json::from_slice(&std::fs::read(
        repo_root().join("tests/data/embed_reference.json"),
    )?)?;
    let texts: Vec<String> = reference["texts"]
        .as_array()
        .expect("texts")
        .iter()
        .map(|t| t.as_str().expect("str").to_string())
        .collect();
    let tmp = tempfile::tempdir()?;
    let out = run_json(
        lore(tmp.path(), &model)
            .arg("embed")
            .arg("--json")
            .args(&texts),
    )?;
    assert_eq!(out["dim"], 384);
    let ours = out["embeddings"].as_array().expect("embeddings");
    let theirs = reference["embeddings"].as_array().expect("embeddings");
    assert_eq!(ours.len(), texts.len());
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let c = cosine(&floats(a), &floats(b));
        assert!(c >= 0.9999, "text {i} ({:?}): cosine {c}", texts[i]);
    }
    // Alone, a short text is a query-sized call: on AVX-512 machines the encoder multiplies it
    // by f16 copies of the weights, and it must still match the reference.
    for (i, text) in texts
        .iter()
        .enumerate()
        .filter(|(_, t)| t.split_whitespace().count() <= 12)
    {
        let out = run_json(
            lore(tmp.path(), &model)
                .arg("embed")
                .arg("--json")
                .arg(text),
        )?;
        let alone = floats(&out["embeddings"][0]);
        let c = cosine(&alone, &floats(&theirs[i]));
        assert!(c >= 0.9999, "text {i} ({text:?}) alone: cosine {c}");
    }
    Ok(())
}
