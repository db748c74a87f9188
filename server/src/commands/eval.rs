//! `lore eval retrieval`: ingest a BEIR-format corpus into a throw-away knowledge base, run
//! every judged query in each search mode, and report nDCG@10, Recall@10/100 and MRR@10
//! (trec_eval's definitions; see `lore_retrieve::eval`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use lore_embed::{EmbedWorker, Embedder};
use lore_ingest::{ChunkerConfig, WalkOptions};
use lore_retrieve::eval::{
    Metrics, Run, evaluate, read_corpus, read_qrels, read_queries, write_trec,
};
use lore_retrieve::{KnowledgeBase, Mode, SearchRequest};
use serde::Serialize;

use crate::cli::{Cli, EvalRetrievalArgs};
use crate::models::{load_embedder, store_config};
use lore_server::pipeline::{IngestRequest, ingest};
use lore_server::progress::Progress;

/// Documents ranked per query (Recall@100 needs 100).
const DEPTH: usize = 100;

#[derive(Serialize)]
struct ModeReport {
    mode: Mode,
    #[serde(flatten)]
    metrics: Metrics,
    /// Mean search time per query, without query embedding.
    search_ms: f64,
}

#[derive(Serialize)]
struct Report {
    documents: usize,
    queries: usize,
    chunks: usize,
    model: String,
    fusion: lore_retrieve::Fusion,
    candidates: usize,
    ingest_s: f64,
    /// Mean query embedding time.
    embed_ms: f64,
    modes: Vec<ModeReport>,
}

pub fn run(cli: &Cli, args: &EvalRetrievalArgs) -> anyhow::Result<ExitCode> {
    // Read and check all three inputs before any work.
    let corpus = read_corpus(&args.corpus)?;
    let queries = read_queries(&args.queries)?;
    let doc_ids: HashSet<&str> = corpus.iter().map(|d| d.id.as_str()).collect();
    let query_ids: HashSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
    let qrels = read_qrels(&args.qrels, &doc_ids, &query_ids)?;
    let judged: Vec<&lore_retrieve::eval::Query> = queries
        .iter()
        .filter(|q| qrels.contains_key(&q.id))
        .collect();
    if let Some(q) = judged.iter().find(|q| q.text.trim().is_empty()) {
        anyhow::bail!("{}: query {:?} is empty", args.queries.display(), q.id);
    }
    if args.modes.is_empty() {
        anyhow::bail!("--modes: name at least one of hybrid, dense, lexical");
    }
    let fusion = args.rank.fusion();

    let scratch = tempfile::tempdir().context("creating a temporary folder")?;
    let work = args
        .keep
        .clone()
        .unwrap_or_else(|| scratch.path().to_path_buf());
    let docs_dir = work.join("docs");
    let data_dir = work.join("kb");
    write_documents(&docs_dir, &corpus)?;

    let embedder = load_embedder(&args.model, cli.models_dir.as_deref())?;
    let tokenizer = embedder.tokenizer().clone();
    let worker = EmbedWorker::spawn(embedder);
    let request = IngestRequest {
        roots: vec![docs_dir.clone()],
        walk: WalkOptions::default(),
        chunker: ChunkerConfig::default(),
        rebuild: true,
        commit_chunks: 2048,
        tags: BTreeMap::new(),
        store: store_config(&cli.store)?,
        exclude_data_dir: true,
    };
    let ingested = ingest(
        &data_dir,
        &worker,
        tokenizer,
        &request,
        &Progress::new(!args.json),
    )?;
    if !ingested.skipped_files.is_empty() {
        eprintln!(
            "warning: {} documents had no text and cannot be retrieved",
            ingested.skipped_files.len()
        );
    }
    let kb = KnowledgeBase::open_existing(&data_dir, &request.store)?;

    let texts: Vec<String> = judged.iter().map(|q| q.text.clone()).collect();
    let t = Instant::now();
    let vectors = worker.embed(&texts)?;
    let embed_ms = t.elapsed().as_secs_f64() * 1e3 / texts.len().max(1) as f64;

    let mut modes = Vec::new();
    for &mode in &args.modes {
        let mut run = Run::new();
        let t = Instant::now();
        for (query, vector) in judged.iter().zip(&vectors) {
            let mut request = SearchRequest::new(query.text.clone(), mode, DEPTH);
            request.fusion = fusion;
            request.candidates = args.rank.candidates.max(DEPTH);
            request.collapse = false;
            request.per_file = true;
            let results = match kb.search(&request, Some(vector)) {
                Ok(r) => r,
                // A query of stop words has no BM25 ranking: an empty result, as in trec_eval.
                Err(lore_retrieve::Error::BadQuery(_)) if mode == Mode::Lexical => {
                    Default::default()
                }
                Err(e) => return Err(e.into()),
            };
            let ranked = results
                .hits
                .iter()
                .filter_map(|h| doc_index(&h.path).and_then(|i| corpus.get(i)))
                .map(|d| d.id.clone())
                .zip(results.hits.iter().map(|h| f64::from(h.score)))
                .collect();
            run.insert(query.id.clone(), ranked);
        }
        let search_ms = t.elapsed().as_secs_f64() * 1e3 / judged.len().max(1) as f64;
        if let Some(dir) = &args.run_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(format!("{}.trec", mode.name()));
            let mut out = std::io::BufWriter::new(
                std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?,
            );
            write_trec(&run, &format!("lore-{}", mode.name()), &mut out)?;
        }
        let (metrics, _) = evaluate(&qrels, &run);
        modes.push(ModeReport {
            mode,
            metrics,
            search_ms,
        });
    }
    let report = Report {
        documents: corpus.len(),
        queries: qrels.len(),
        chunks: kb.manifest().chunk_count(),
        model: worker.info().name.clone(),
        fusion,
        candidates: args.rank.candidates.max(DEPTH),
        ingest_s: ingested.elapsed_s,
        embed_ms,
        modes,
    };
    if args.json {
        super::print_json(&report)?;
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// One file per document, named by its index (ids may hold any character); the title becomes
/// a heading so BM25 and the heading path see it.
fn write_documents(dir: &Path, corpus: &[lore_retrieve::eval::CorpusDoc]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (i, doc) in corpus.iter().enumerate() {
        let body = if doc.title.trim().is_empty() {
            format!("{}\n", doc.text)
        } else {
            format!("# {}\n\n{}\n", doc.title.trim(), doc.text)
        };
        let path: PathBuf = dir.join(format!("{i:07}.md"));
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn doc_index(path: &str) -> Option<usize> {
    Path::new(path).file_stem()?.to_str()?.parse().ok()
}

fn print_table(r: &Report) {
    let fusion = r.fusion;
    println!(
        "{} documents ({} chunks), {} judged queries, model {}, hybrid fusion: {fusion}, {} candidates per retriever",
        r.documents, r.chunks, r.queries, r.model, r.candidates
    );
    println!(
        "{:<8} {:>8} {:>10} {:>11} {:>8} {:>11}",
        "mode", "nDCG@10", "Recall@10", "Recall@100", "MRR@10", "search ms"
    );
    for m in &r.modes {
        println!(
            "{:<8} {:>8.4} {:>10.4} {:>11.4} {:>8.4} {:>11.2}",
            m.mode.name(),
            m.metrics.ndcg_10,
            m.metrics.recall_10,
            m.metrics.recall_100,
            m.metrics.mrr_10,
            m.search_ms
        );
    }
    println!(
        "query embedding: {:.2} ms per query; ingest {:.1} s",
        r.embed_ms, r.ingest_s
    );
}
