//! Search latency at scale: builds a knowledge base of N synthetic chunks, then times real
//! queries in each mode, split into query embedding and search, with the process's RSS.
//!
//! ```text
//! search_latency build DIR N      # N chunks of text drawn from examples/articles' words
//! search_latency query DIR        # a fresh process: load, then time every query per mode
//! ```
//! `scripts/bench-search` runs both for 10k and 100k chunks. Chunk vectors are synthetic
//! (unit vectors clustered around 256 random topics): embedding 100k real chunks would take
//! over an hour here, and latency depends on the index, not on what the vectors mean.
//! Queries are real questions, embedded by the real model at query time.
//!
//! With `BENCH_QDRANT_URL` set (a Qdrant server's gRPC URL), the vectors go to that server's
//! collection `bench` instead of the embedded engine, so the same figures compare the two.

#![allow(clippy::unwrap_used)] // a test fails loudly on any error

use std::path::{Path, PathBuf};
use std::time::Instant;

use lore_embed::{BertEmbedder, Embedder, EmbedderConfig};
use lore_ingest::{Chunk, ChunkId, ChunkerConfig, DocKind, FileEntry, ManifestSettings};
use lore_retrieve::{
    Batch, CollectionShape, FileUpdate, KnowledgeBase, Mode, OpenOptions, QdrantConfig,
    SearchRequest, StoreConfig,
};

/// The embedded engine, or the Qdrant server `BENCH_QDRANT_URL` names.
fn store() -> StoreConfig {
    match std::env::var("BENCH_QDRANT_URL") {
        Ok(url) if !url.is_empty() => StoreConfig::Qdrant(QdrantConfig {
            url,
            api_key: None,
            collection: "bench".into(),
            take_over: true,
            shape: CollectionShape::default(),
        }),
        _ => StoreConfig::Embedded,
    }
}

const CHUNKS_PER_FILE: usize = 100;
const WORDS_PER_CHUNK: usize = 150;
const TOPICS: usize = 256;

/// A small deterministic generator (SplitMix64), so runs build the same base.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Roughly normal, from the sum of uniforms.
    fn gauss(&mut self) -> f32 {
        (0..4)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32)
            .sum::<f32>()
            - 2.0
    }
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn model_dir() -> PathBuf {
    std::env::var_os("LORE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| lore_tests::models_dir().join("all-MiniLM-L6-v2"))
}

fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn build(dir: &Path, n: usize) -> anyhow::Result<()> {
    let embedder = BertEmbedder::load(&model_dir(), &EmbedderConfig::default())?;
    let dim = embedder.info().dim;
    let mut words: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(lore_tests::repo_root().join("examples/articles"))? {
        let text = std::fs::read_to_string(entry?.path())?;
        words.extend(text.split_whitespace().map(String::from));
    }
    let mut rng = Rng(42);
    let topics: Vec<Vec<f32>> = (0..TOPICS)
        .map(|_| unit((0..dim).map(|_| rng.gauss()).collect()))
        .collect();
    let options = OpenOptions {
        model: embedder.info().clone(),
        settings: ManifestSettings {
            chunker: ChunkerConfig::default(),
            extractor_version: 1,
        },
        rebuild: true,
        store: store(),
    };
    let started = Instant::now();
    let mut kb = KnowledgeBase::open(dir, &options)?;
    let mut batch = Batch::default();
    let mut made = 0;
    let mut file = 0;
    while made < n {
        let path = format!("synthetic/f{file:05}.md");
        let mut chunks = Vec::new();
        let mut vectors = Vec::new();
        for i in 0..CHUNKS_PER_FILE.min(n - made) {
            let start = rng.below(words.len() - WORDS_PER_CHUNK);
            let text = words[start..start + WORDS_PER_CHUNK].join(" ");
            let span = i * 10_000..i * 10_000 + text.len();
            chunks.push(Chunk {
                id: ChunkId::derive(&path, &span, &text),
                path: path.clone(),
                kind: DocKind::Markdown,
                text,
                byte_start: span.start,
                byte_end: span.end,
                start_line: i * 10 + 1,
                end_line: i * 10 + 9,
                heading: Some(format!("Section {}", i / 10)),
                page: None,
                tags: Default::default(),
            });
            let topic = &topics[rng.below(TOPICS)];
            vectors.push(unit(topic.iter().map(|t| t + 0.08 * rng.gauss()).collect()));
        }
        made += chunks.len();
        let entry = FileEntry {
            hash: format!("synthetic-{file}"),
            size: 0,
            kind: DocKind::Markdown,
            chunk_ids: chunks.iter().map(|c| c.id.clone()).collect(),
            tags: Default::default(),
        };
        batch.updates.push(FileUpdate {
            path,
            entry,
            chunks,
            vectors,
        });
        file += 1;
        if batch.updates.len() * CHUNKS_PER_FILE >= 10_000 || made >= n {
            kb.apply(std::mem::take(&mut batch))?;
        }
    }
    let written = started.elapsed().as_secs_f64();
    let t = Instant::now();
    let indexed = kb.optimize()?;
    println!(
        "built {n} chunks in {written:.1} s, HNSW index {} in {:.1} s",
        if indexed { "built" } else { "not needed" },
        t.elapsed().as_secs_f64()
    );
    kb.close()?;
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The 82 questions every timing uses: the QA set's and the BEIR sample's, as users ask them.
fn questions() -> anyhow::Result<Vec<String>> {
    let root = lore_tests::repo_root();
    let mut questions = Vec::new();
    for (file, key) in [
        ("tests/data/article_questions.jsonl", "question"),
        ("tests/data/beir-mini/queries.jsonl", "text"),
    ] {
        for line in std::fs::read_to_string(root.join(file))?.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            questions.push(v[key].as_str().unwrap_or_default().to_string());
        }
    }
    Ok(questions)
}

fn query(dir: &Path) -> anyhow::Result<()> {
    let embedder = BertEmbedder::load(&model_dir(), &EmbedderConfig::default())?;
    let t = Instant::now();
    let kb = KnowledgeBase::open_existing(dir, &store())?;
    let open_s = t.elapsed().as_secs_f64();
    let questions = questions()?;
    // Warm up: the first query pays for page faults in the index files.
    let v = embedder.embed(&questions[..1])?;
    kb.search(
        &SearchRequest::new(questions[0].clone(), Mode::Hybrid, 10),
        Some(&v[0]),
    )?;
    println!(
        "opened in {open_s:.2} s; {} queries × 3 rounds per mode, k = 10",
        questions.len()
    );
    println!(
        "{:<8} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9}",
        "mode", "embed p50", "embed p99", "search p50", "search p99", "total p50", "total p99"
    );
    for mode in Mode::ALL {
        let (mut embed, mut search, mut total) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            for q in &questions {
                // As `lore search` and the server run it: the query is embedded inside the
                // search, while the BM25 side runs on the other core. "search" is the rest of
                // the wall time.
                let e = std::sync::Mutex::new(0.0);
                let t = Instant::now();
                let hits = kb
                    .search_embedding(&SearchRequest::new(q.clone(), mode, 10), || {
                        let t = Instant::now();
                        let v = embedder.embed(std::slice::from_ref(q))?.pop();
                        *e.lock().unwrap_or_else(|e| e.into_inner()) =
                            t.elapsed().as_secs_f64() * 1e3;
                        v.ok_or_else(|| lore_embed::Error::Runtime("no vector".into()))
                    })?
                    .hits;
                let all = t.elapsed().as_secs_f64() * 1e3;
                let e = e.into_inner().unwrap_or_else(|e| e.into_inner());
                anyhow::ensure!(!hits.is_empty(), "no hits for {q:?}");
                embed.push(e);
                search.push(all - e);
                total.push(all);
            }
        }
        for v in [&mut embed, &mut search, &mut total] {
            v.sort_by(f64::total_cmp);
        }
        println!(
            "{:<8} {:>9.2} {:>9.2} {:>10.2} {:>10.2} {:>9.2} {:>9.2}",
            mode.name(),
            percentile(&embed, 0.5),
            percentile(&embed, 0.99),
            percentile(&search, 0.5),
            percentile(&search, 0.99),
            percentile(&total, 0.5),
            percentile(&total, 0.99)
        );
    }
    let (rss, peak) = rss_mib();
    println!("RSS {rss:.0} MiB (peak {peak:.0} MiB) with the model and the knowledge base loaded");
    Ok(())
}

/// The query length the issue's latency goal names.
const SHORT_QUERY: usize = 16;

/// One query at a time, 82 questions × 3 rounds, through the f32 path (gemm) and the packed f16
/// path for small calls, in one run: p50/p99 of each, their ratio, and how far apart the
/// two paths' vectors are.
fn embed_paths() -> anyhow::Result<()> {
    let questions = questions()?;
    let load = |small_call_tokens| {
        BertEmbedder::load(
            &model_dir(),
            &EmbedderConfig {
                small_call_tokens,
                ..EmbedderConfig::default()
            },
        )
    };
    let paths = [
        ("f32 (gemm)", load(0)?),
        (
            "f16 small",
            load(EmbedderConfig::default().small_call_tokens)?,
        ),
    ];
    let mut p50s = Vec::new();
    let mut vectors = Vec::new();
    for (name, embedder) in &paths {
        embedder.embed(&questions[..1])?;
        let mut times = Vec::new();
        let mut last = Vec::new();
        for _ in 0..3 {
            last.clear();
            for q in &questions {
                let t = Instant::now();
                let v = embedder.embed(std::slice::from_ref(q))?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
                last.extend(v);
            }
        }
        let tokens: Vec<usize> = questions
            .iter()
            .map(|q| {
                embedder
                    .tokenizer()
                    .encode(q.as_str(), true)
                    .map(|e| e.get_ids().len())
            })
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // The speed goal is stated for a 16-token query: the p50 of the questions of at most
        // 16 tokens (special tokens included), besides that of all of them.
        let mut short: Vec<f64> = times
            .iter()
            .enumerate()
            .filter(|(i, _)| tokens[i % questions.len()] <= SHORT_QUERY)
            .map(|(_, &t)| t)
            .collect();
        short.sort_by(f64::total_cmp);
        times.sort_by(f64::total_cmp);
        let mut sorted_tokens = tokens.clone();
        sorted_tokens.sort_unstable();
        if !short.is_empty() {
            println!(
                "{name:<10} queries of ≤ {SHORT_QUERY} tokens ({} of {}): p50 {:.2} ms; median query {} tokens",
                short.len() / 3,
                questions.len(),
                percentile(&short, 0.5),
                sorted_tokens[sorted_tokens.len() / 2]
            );
        }
        println!(
            "{name:<10} one query ({}–{} tokens): p50 {:.2} ms, p99 {:.2} ms",
            tokens.iter().min().unwrap_or(&0),
            tokens.iter().max().unwrap_or(&0),
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
        p50s.push(percentile(&times, 0.5));
        vectors.push(last);
    }
    let min_cosine = vectors[0]
        .iter()
        .zip(&vectors[1])
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>())
        .fold(1.0f32, f32::min);
    println!(
        "f16 small path: {:.2}× the f32 path's speed at p50; min cosine between the paths' vectors {min_cosine:.7}",
        p50s[0] / p50s[1]
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["build", dir, n] => build(Path::new(dir), n.parse()?),
        ["query", dir] => query(Path::new(dir)),
        ["embed"] => embed_paths(),
        _ => anyhow::bail!("usage: search_latency build DIR N | search_latency query DIR"),
    }
}
