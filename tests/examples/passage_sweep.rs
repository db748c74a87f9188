//! Passage-level retrieval on the article questions under several fusion settings, over an
//! existing knowledge base of `examples/articles`:
//!
//! ```text
//! lore --data-dir /tmp/kb ingest examples/articles
//! cargo run --release -p lore-tests --example passage_sweep -- /tmp/kb [MODEL_DIR]
//! ```
//!
//! Prints, per setting, the share of questions whose answer passage is in the top 5.

#![allow(clippy::unwrap_used)] // a test fails loudly on any error

use std::path::PathBuf;

use lore_embed::{BertEmbedder, Embedder, EmbedderConfig};
use lore_retrieve::{Fusion, KnowledgeBase, Mode, SearchRequest, StoreConfig};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let data = PathBuf::from(args.next().unwrap_or_else(|| ".lore".into()));
    let model = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| lore_tests::models_dir().join("all-MiniLM-L6-v2"));
    let questions = lore_tests::article_questions()?;
    let kb = KnowledgeBase::open_existing(&data, &StoreConfig::Embedded)?;
    let embedder = BertEmbedder::load(&model, &EmbedderConfig::default())?;
    let vectors = embedder.embed(
        &questions
            .iter()
            .map(|q| q.question.clone())
            .collect::<Vec<_>>(),
    )?;
    let mut settings: Vec<(String, Mode, Fusion, bool)> = vec![
        ("dense".into(), Mode::Dense, Fusion::default(), true),
        ("lexical".into(), Mode::Lexical, Fusion::default(), true),
        (
            "dense, no collapse".into(),
            Mode::Dense,
            Fusion::default(),
            false,
        ),
    ];
    for k in [10.0, 30.0, 60.0] {
        settings.push((format!("rrf k={k}"), Mode::Hybrid, Fusion::Rrf { k }, true));
    }
    settings.push((
        "scaled (default)".into(),
        Mode::Hybrid,
        Fusion::default(),
        true,
    ));
    for w in [0.5, 0.6, 0.7, 0.75, 0.8] {
        settings.push((
            format!("weighted w={w}"),
            Mode::Hybrid,
            Fusion::Weighted { dense_weight: w },
            true,
        ));
    }
    for (name, mode, fusion, collapse) in settings {
        let (mut top5, mut top1) = (0, 0);
        for (q, v) in questions.iter().zip(&vectors) {
            let mut request = SearchRequest::new(q.question.clone(), mode, 5);
            request.fusion = fusion;
            request.collapse = collapse;
            let hits = kb.search(&request, Some(v))?.hits;
            let good = |h: &lore_retrieve::Hit| q.answered_by(&h.path, &h.text);
            top5 += usize::from(hits.iter().any(good));
            top1 += usize::from(hits.first().is_some_and(good));
        }
        let n = questions.len() as f64;
        println!(
            "{name:<22} top5 {:5.1}%  top1 {:5.1}%",
            100.0 * top5 as f64 / n,
            100.0 * top1 as f64 / n
        );
    }
    Ok(())
}
