//! One ingest run: walk → read → (skip unchanged) → extract → chunk → embed → commit.
//!
//! This is the composition of the three library crates; the crash-safety protocol itself
//! lives in `lore_retrieve::KnowledgeBase`. The CLI owns the knowledge base for the whole
//! run ([`ingest`]); the server shares it with searches ([`run`] over a [`KbAccess`]), so
//! the lock is taken per manifest lookup and per commit, never across embedding.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use lore_embed::Embedder;
use lore_ingest::{
    Chunk, Chunker, ChunkerConfig, FileEntry, FoundFile, ManifestSettings, RawFile, SkippedFile,
    WalkOptions, WalkResult, read_file, to_document, walk,
};
use lore_retrieve::{Batch, FileUpdate, KnowledgeBase, OpenOptions, StoreConfig};
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::progress::Progress;

/// Bumped whenever extraction or chunking changes the chunks a file yields, so that existing
/// knowledge bases redo every file. 2: HTML keeps `<main>`, drops page chrome and rustdoc's
/// repeated trait and `Deref` docs, fences `<pre>`.
const EXTRACTOR_VERSION: u32 = 2;
/// Chunks embedded per embedder call: large enough for full batches across small files.
const EMBED_GROUP: usize = 256;

/// What to ingest and how.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    pub roots: Vec<PathBuf>,
    pub walk: WalkOptions,
    pub chunker: ChunkerConfig,
    pub rebuild: bool,
    pub commit_chunks: usize,
    /// Tags for every chunk of the files this run stores.
    pub tags: BTreeMap<String, String>,
    pub store: StoreConfig,
    /// Leave the knowledge base's own folder out of the walk (off only for the server's
    /// upload folder, which lives inside it).
    pub exclude_data_dir: bool,
}

/// The outcome, as `lore ingest --json` prints it.
#[derive(Debug, Default, Serialize)]
pub struct IngestReport {
    pub new: usize,
    pub changed: usize,
    pub unchanged: usize,
    pub removed: usize,
    pub skipped: usize,
    pub chunks_written: usize,
    pub chunks_deleted: usize,
    pub elapsed_s: f64,
    /// Seconds spent inside the embedder (the rest is pipeline overhead).
    pub embed_s: f64,
    /// Files an interrupted earlier run left half-written, purged and redone by this one.
    pub recovered: usize,
    pub chunk_tokens: usize,
    pub overlap_tokens: usize,
    pub data_dir: String,
    pub model: String,
    pub skipped_files: Vec<SkippedFile>,
    pub warnings: Vec<String>,
    /// Whether the vector store's write-ahead log was compacted at the end of the run.
    pub compacted: bool,
    /// Roots that did not exist (nothing under them was touched).
    pub missing_roots: Vec<String>,
    /// Whether the vector store built its ANN (HNSW) index at the end of the run.
    pub indexed: bool,
    /// Where the vectors live.
    pub vector_store: String,
    /// Stopped early on request: what was committed stays, the rest waits for the next run.
    pub cancelled: bool,
}

/// How a run reaches the knowledge base. Locks are taken per call and never held while
/// files are read or embedded.
pub trait KbAccess {
    fn read<R>(&self, f: impl FnOnce(&KnowledgeBase) -> R) -> R;
    fn write<R>(&self, f: impl FnOnce(&mut KnowledgeBase) -> R) -> R;
}

/// The CLI's case: the run owns the knowledge base; the lock is never contended.
impl KbAccess for RwLock<KnowledgeBase> {
    fn read<R>(&self, f: impl FnOnce(&KnowledgeBase) -> R) -> R {
        f(&self.read().unwrap_or_else(PoisonError::into_inner))
    }
    fn write<R>(&self, f: impl FnOnce(&mut KnowledgeBase) -> R) -> R {
        f(&mut self.write().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A run checked and walked, before the knowledge base is opened.
#[derive(Debug)]
pub struct Plan {
    chunker: Chunker,
    settings: ManifestSettings,
    found: WalkResult,
}

impl Plan {
    /// Checks the request and walks its roots: fails on invalid globs or settings, or when no
    /// root exists, before anything is written.
    pub fn new(
        data_dir: &Path,
        embedder: &dyn Embedder,
        tokenizer: Tokenizer,
        request: &IngestRequest,
    ) -> anyhow::Result<Self> {
        let info = embedder.info();
        // Chunks must fit the model's window with its special tokens, or their ends go unseen.
        let window = info.max_seq_len.saturating_sub(info.special_tokens).max(1);
        let chunker_config = ChunkerConfig {
            max_tokens: request.chunker.max_tokens.min(window),
            overlap_tokens: request.chunker.overlap_tokens,
        };
        let chunker = Chunker::new(tokenizer, chunker_config)?;
        let mut walk_options = request.walk.clone();
        if request.exclude_data_dir {
            walk_options.exclude_dirs.push(data_dir.to_path_buf());
        }
        let found = walk(&request.roots, &walk_options)?;
        // Nothing to read at all: stop here, before opening the knowledge base creates it.
        // (Some roots missing among others: the rest are ingested and the missing reported.)
        if !request.roots.is_empty() && found.missing_roots.len() == request.roots.len() {
            let missing: Vec<String> = found
                .missing_roots
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            anyhow::bail!("not found: {}", missing.join(", "));
        }
        Ok(Self {
            chunker,
            settings: ManifestSettings {
                chunker: chunker_config,
                extractor_version: EXTRACTOR_VERSION,
            },
            found,
        })
    }

    /// How to open the knowledge base for this run.
    pub fn open_options(&self, embedder: &dyn Embedder, request: &IngestRequest) -> OpenOptions {
        OpenOptions {
            model: embedder.info().clone(),
            settings: self.settings.clone(),
            rebuild: request.rebuild,
            store: request.store.clone(),
        }
    }
}

/// Files read and chunked, waiting for their vectors.
#[derive(Default)]
struct Pending {
    files: Vec<(String, FileEntry)>,
    chunks: Vec<Chunk>,
}

/// Runs one ingest, owning the knowledge base for the whole run.
///
/// Fails before touching the store on invalid globs or settings, and with the store's error
/// when it is locked, built with another model, or a write fails (the next run then repairs
/// the interrupted batch).
pub fn ingest(
    data_dir: &Path,
    embedder: &dyn Embedder,
    tokenizer: Tokenizer,
    request: &IngestRequest,
    progress: &Progress,
) -> anyhow::Result<IngestReport> {
    let started = Instant::now();
    let plan = Plan::new(data_dir, embedder, tokenizer, request)?;
    let kb = KnowledgeBase::open(data_dir, &plan.open_options(embedder, request))?;
    let kb = RwLock::new(kb);
    let mut report = run(&kb, plan, embedder, request, progress)?;
    let kb = kb.into_inner().unwrap_or_else(PoisonError::into_inner);
    report.compacted = kb.close()?;
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Runs one ingest over a knowledge base opened with [`Plan::open_options`], committing
/// every `commit_chunks` and stopping early (after a commit) when `progress` is cancelled.
pub fn run(
    kb: &impl KbAccess,
    plan: Plan,
    embedder: &dyn Embedder,
    request: &IngestRequest,
    progress: &Progress,
) -> anyhow::Result<IngestReport> {
    let started = Instant::now();
    let Plan {
        chunker,
        settings,
        found,
    } = plan;
    let chunker_config = settings.chunker;
    let data_dir = kb.read(|kb| kb.location());
    let redo_all = kb.read(|kb| kb.manifest().settings != settings);
    if redo_all && kb.read(|kb| !kb.manifest().files.is_empty()) {
        tracing::info!("chunking settings changed: every file is redone");
    }

    let mut report = IngestReport {
        recovered: kb.read(|kb| kb.recovered()),
        chunk_tokens: chunker_config.max_tokens,
        overlap_tokens: chunker_config.overlap_tokens,
        data_dir: data_dir.display().to_string(),
        model: embedder.info().name.clone(),
        skipped_files: found.skipped.clone(),
        missing_roots: found
            .missing_roots
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        ..Default::default()
    };

    // New settings describe the whole base only once every recorded file was redone, so
    // they are recorded only by a run that walked every one of them.
    let covers_all = kb.read(|kb| kb.manifest().files.keys().all(|k| found.covers(k)));

    // Removals: recorded files this walk was responsible for (see `WalkResult::covers`)
    // that it did not yield.
    let seen: BTreeSet<&str> = found.files.iter().map(|f| f.key.as_str()).collect();
    let mut removals: Vec<String> = kb.read(|kb| {
        kb.manifest()
            .files
            .keys()
            .filter(|k| found.covers(k) && !seen.contains(k.as_str()))
            .cloned()
            .collect()
    });

    progress.start(found.files.len() as u64);
    let mut pending = Pending::default();
    let mut batch = Batch::default();
    let mut batch_chunks = 0;
    let mut embed_time = Duration::ZERO;
    for file in &found.files {
        if progress.cancelled() {
            report.cancelled = true;
            break;
        }
        progress.advance(1);
        let (known, same_tags) = kb.read(|kb| {
            let known = kb.manifest().files.get(&file.key);
            (
                known.map(|e| e.hash.clone()),
                known.is_some_and(|e| e.tags == request.tags),
            )
        });
        let raw = match read_file(file) {
            Ok(raw) => raw,
            Err(e) => {
                report.skipped_files.push(SkippedFile {
                    path: file.key.clone(),
                    reason: e.file_reason(),
                });
                removals.extend(known.map(|_| file.key.clone()));
                continue;
            }
        };
        // Unchanged files are decided on the hash alone: no extraction, chunking or embedding.
        if known.as_deref() == Some(raw.hash.as_str()) && same_tags && !redo_all {
            report.unchanged += 1;
            continue;
        }
        let Some((entry, chunks, warnings)) =
            prepare(file, raw, &chunker, &request.tags, &mut report)
        else {
            removals.extend(known.map(|_| file.key.clone()));
            continue;
        };
        report.warnings.extend(warnings);
        if known.is_some() {
            report.changed += 1;
        } else {
            report.new += 1;
        }
        pending.files.push((file.key.clone(), entry));
        pending.chunks.extend(chunks);
        // Never hold more chunks unembedded than one commit may carry.
        if pending.chunks.len() >= EMBED_GROUP.min(request.commit_chunks) {
            batch_chunks += embed_pending(embedder, &mut pending, &mut batch, &mut embed_time)?;
            progress.set_chunks(report.chunks_written + batch_chunks);
        }
        if batch_chunks >= request.commit_chunks {
            report.removed += removals.len();
            batch.removals.append(&mut removals);
            commit(kb, &mut batch, &mut report)?;
            batch_chunks = 0;
        }
    }
    embed_pending(embedder, &mut pending, &mut batch, &mut embed_time)?;
    if !report.cancelled {
        // A cancelled run leaves removals and new settings to the next full run: recording
        // the settings now would mark files it never reached as redone.
        report.removed += removals.len();
        batch.removals.append(&mut removals);
    }
    commit(kb, &mut batch, &mut report)?;
    if !report.cancelled {
        if !redo_all || covers_all {
            kb.write(|kb| kb.set_settings(settings))?;
        } else {
            report.warnings.push(format!(
                "the chunking settings ({} tokens, overlap {}) differ from the knowledge base's: \
                 only the files this run walked were redone; ingest every folder again (or \
                 use --rebuild) to redo the rest",
                chunker_config.max_tokens, chunker_config.overlap_tokens
            ));
        }
    }
    if report.chunks_written > 0 {
        // The embedded engine has no background optimiser: build the HNSW index now, or
        // searches over large bases stay brute force.
        progress.message("building the vector index");
        report.indexed = kb.read(|kb| kb.optimize())?;
    }
    report.vector_store = kb.read(|kb| kb.describe_store());
    progress.finish();

    report.skipped = report.skipped_files.len();
    report.embed_s = embed_time.as_secs_f64();
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Extracts and chunks one file already read; `None` (with the reason recorded) when it is
/// skipped.
fn prepare(
    file: &FoundFile,
    raw: RawFile,
    chunker: &Chunker,
    tags: &BTreeMap<String, String>,
    report: &mut IngestReport,
) -> Option<(FileEntry, Vec<Chunk>, Vec<String>)> {
    let mut skip = |reason: String| {
        report.skipped_files.push(SkippedFile {
            path: file.key.clone(),
            reason,
        });
    };
    let size = raw.bytes.len() as u64;
    let loaded = match to_document(file, raw) {
        Ok(loaded) => loaded,
        Err(e) => {
            skip(e.file_reason());
            return None;
        }
    };
    let chunks = match chunker.chunk(&loaded.document) {
        Ok(mut chunks) => {
            for c in &mut chunks {
                c.tags = tags.clone();
            }
            chunks
        }
        Err(e) => {
            skip(e.file_reason());
            return None;
        }
    };
    let entry = FileEntry {
        hash: loaded.document.content_hash.clone(),
        size,
        kind: loaded.document.kind,
        chunk_ids: chunks.iter().map(|c| c.id.clone()).collect(),
        tags: tags.clone(),
    };
    let warnings = loaded
        .warnings
        .into_iter()
        .map(|w| format!("{}: {w}", file.key))
        .collect();
    Some((entry, chunks, warnings))
}

/// Embeds the pending chunks and moves their files into `batch`; returns the chunk count.
fn embed_pending(
    embedder: &dyn Embedder,
    pending: &mut Pending,
    batch: &mut Batch,
    embed_time: &mut Duration,
) -> anyhow::Result<usize> {
    if pending.files.is_empty() {
        return Ok(0);
    }
    let texts: Vec<String> = pending.chunks.iter().map(|c| c.text.clone()).collect();
    let t = Instant::now();
    let mut vectors = embedder.embed(&texts)?.into_iter();
    *embed_time += t.elapsed();
    let mut chunks = std::mem::take(&mut pending.chunks).into_iter();
    let count = texts.len();
    for (path, entry) in pending.files.drain(..) {
        let n = entry.chunk_ids.len();
        let file_chunks: Vec<Chunk> = chunks.by_ref().take(n).collect();
        let file_vectors: Vec<_> = vectors.by_ref().take(n).collect();
        batch.updates.push(FileUpdate {
            path,
            entry,
            chunks: file_chunks,
            vectors: file_vectors,
        });
    }
    Ok(count)
}

fn commit(kb: &impl KbAccess, batch: &mut Batch, report: &mut IngestReport) -> anyhow::Result<()> {
    let stats = kb.write(|kb| kb.apply(std::mem::take(batch)))?;
    report.chunks_written += stats.chunks_written;
    report.chunks_deleted += stats.chunks_deleted;
    Ok(())
}
