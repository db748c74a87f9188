//! A knowledge base on disk: both stores, the manifest, and the protocol that keeps them
//! in agreement across crashes.
//!
//! Commit protocol for one batch of files (see `lore_ingest::Manifest`):
//! 1. the batch's paths go into the manifest's `pending` set, saved atomically;
//! 2. their old chunks are deleted from both stores by path, the new ones written;
//! 3. the vector store flushes, then tantivy commits;
//! 4. the manifest records the files' new entries and clears `pending`, saved atomically.
//!
//! A crash anywhere leaves either the old state or paths in `pending`. Opening the knowledge
//! base purges pending paths from both stores and forgets them, so the next ingest redoes
//! them as new (or as removed, if the file is gone) and converges to a clean run's state.
//!
//! Two homes, one protocol: in a data folder (the embedded Qdrant engine, tantivy,
//! `manifest.json`, a process lock), or wholly on a Qdrant server (`remote.rs`: dense and
//! BM25 vectors on the chunk points, the manifest in a catalog collection, a writer lease), so
//! that replicas with empty data folders can search it.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;

use lore_embed::{Embedding, ModelInfo};
use lore_ingest::{Chunk, ChunkId, FileEntry, Manifest, ManifestSettings};

use crate::edge::EdgeStore;
use crate::layout::{FORMAT_VERSION, KbMeta, Layout, VectorBackend, lock, remove_dir, remove_file};
use crate::lexical::{LexicalIndex, LexicalStore};
use crate::qdrant::CollectionShape;
use crate::store::VectorStore;
use crate::{Error, Result};

mod journal;
mod migrate;
mod remote;
use journal::{Guard, Journal};
pub use migrate::Migrated;
pub(crate) use remote::open_catalog;

/// How to open a knowledge base for writing.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The model that will embed new chunks; must match the one that built the base.
    pub model: ModelInfo,
    /// Chunking settings of this run (a new manifest records them).
    pub settings: ManifestSettings,
    /// Start over when the base was built with another model, instead of refusing.
    pub rebuild: bool,
    /// Where the vectors live.
    pub store: StoreConfig,
}

/// Where to keep vectors: the embedded engine, or a Qdrant server for scale.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    #[default]
    Embedded,
    Qdrant(QdrantConfig),
}

/// A Qdrant server or cluster (gRPC, usually port 6334).
#[derive(Clone, PartialEq, Eq)]
pub struct QdrantConfig {
    pub url: String,
    pub api_key: Option<String>,
    pub collection: String,
    /// Take over a collection another knowledge base (or another program) filled.
    pub take_over: bool,
    /// Shards and replicas of a collection lore creates (checked on an existing one).
    pub shape: CollectionShape,
}

impl std::fmt::Debug for QdrantConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("QdrantConfig")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "…"))
            .field("collection", &self.collection)
            .field("take_over", &self.take_over)
            .field("shape", &self.shape)
            .finish()
    }
}

impl StoreConfig {
    pub(crate) fn backend(&self) -> VectorBackend {
        match self {
            StoreConfig::Embedded => VectorBackend::Embedded,
            StoreConfig::Qdrant(q) => VectorBackend::Qdrant {
                url: q.url.clone(),
                collection: q.collection.clone(),
            },
        }
    }
}

/// Fails unless the base in `dir` keeps its vectors where `store` says.
pub(crate) fn check_backend(dir: &Path, meta: &KbMeta, store: &StoreConfig) -> Result<()> {
    let requested = store.backend();
    if meta.vectors == requested {
        return Ok(());
    }
    let hint = match &meta.vectors {
        VectorBackend::Embedded => {
            "drop --qdrant-url (and LORE_QDRANT_URL), or use another --data-dir".into()
        }
        VectorBackend::Qdrant { url, collection } if !Layout::new(dir).manifest().exists() => {
            format!(
                "it was moved there (`lore migrate`): pass --qdrant-url {url} \
                 --qdrant-collection {collection}, or use another --data-dir"
            )
        }
        VectorBackend::Qdrant { url, collection } => format!(
            "an earlier lore kept this knowledge base's manifest and BM25 index here and only \
             its vectors on {url} (collection {collection}); lore now keeps all of it on the \
             server: ingest again with --qdrant-url {url} --qdrant-collection {collection} \
             --qdrant-take-over, or use another --data-dir"
        ),
    };
    Err(Error::BackendMismatch {
        dir: dir.to_path_buf(),
        built: meta.vectors.to_string(),
        requested: requested.to_string(),
        hint,
    })
}

/// One file's new content, ready to store.
#[derive(Debug, Clone)]
pub struct FileUpdate {
    pub path: String,
    pub entry: FileEntry,
    pub chunks: Vec<Chunk>,
    pub vectors: Vec<Embedding>,
}

/// A unit of commit: files to (re)write and files to remove.
#[derive(Debug, Default)]
pub struct Batch {
    pub updates: Vec<FileUpdate>,
    pub removals: Vec<String>,
}

/// What a batch changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    pub chunks_written: usize,
    pub chunks_deleted: usize,
}

/// Whether manifest and stores agree, chunk by chunk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Audit {
    pub manifest_chunks: usize,
    pub vector_chunks: usize,
    pub lexical_chunks: usize,
    /// Ids in one place but not in all three.
    pub mismatched: Vec<String>,
    pub pending: usize,
}

impl Audit {
    pub fn consistent(&self) -> bool {
        self.mismatched.is_empty()
            && self.pending == 0
            && self.manifest_chunks == self.vector_chunks
            && self.manifest_chunks == self.lexical_chunks
    }
}

/// An open knowledge base: locked (or leased) for writing, or a replica's read-only view.
pub struct KnowledgeBase {
    pub(crate) layout: Layout,
    meta: KbMeta,
    pub(crate) manifest: Manifest,
    pub(crate) vectors: Box<dyn VectorStore>,
    pub(crate) lexical: Box<dyn LexicalStore>,
    journal: Journal,
    /// Held for the lifetime of the value.
    guard: Guard,
    recovered: usize,
}

impl std::fmt::Debug for KnowledgeBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnowledgeBase")
            .field("at", &self.location())
            .finish_non_exhaustive()
    }
}

impl KnowledgeBase {
    /// Opens (creating if needed) the knowledge base in `dir` for writing, and recovers from
    /// an interrupted run.
    ///
    /// Fails with [`Error::Locked`] when another process uses it, and with
    /// [`Error::ModelMismatch`] when it was built with another model and `rebuild` is off.
    pub fn open(dir: &Path, options: &OpenOptions) -> Result<Self> {
        if let StoreConfig::Qdrant(q) = &options.store {
            return Self::open_remote(q, options);
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let layout = Layout::new(dir);
        let lock = lock(&layout)?;
        let meta = match KbMeta::read(&layout)? {
            Some(meta) if meta.format_version != FORMAT_VERSION => {
                if !options.rebuild {
                    return Err(Error::OldFormat {
                        dir: dir.to_path_buf(),
                        found: meta.format_version,
                        expected: FORMAT_VERSION,
                    });
                }
                Self::reset(&layout, &options.model)?
            }
            Some(meta) => match meta.model.incompatibility(&options.model) {
                None => {
                    check_backend(dir, &meta, &options.store)?;
                    meta
                }
                Some(reason) if !options.rebuild => {
                    return Err(Error::ModelMismatch {
                        dir: dir.to_path_buf(),
                        built: meta.model.name,
                        requested: options.model.name.clone(),
                        reason,
                    });
                }
                Some(_) => Self::reset(&layout, &options.model)?,
            },
            // kb.json is written before any store: without it, whatever is here is debris
            // of an interrupted first run.
            None => Self::reset(&layout, &options.model)?,
        };
        let manifest = match Manifest::load(&layout.manifest())? {
            Some(m) => m,
            None => {
                // Stores without a manifest cannot be trusted: start them empty.
                remove_dir(&layout.vectors())?;
                remove_dir(&layout.lexical())?;
                Manifest::new(options.settings.clone())
            }
        };
        Self::assemble(layout, meta, manifest, lock)
    }

    /// Opens both local stores and recovers from an interrupted run (shared by both opens).
    fn assemble(layout: Layout, meta: KbMeta, manifest: Manifest, lock: File) -> Result<Self> {
        let vectors = Box::new(EdgeStore::open(&layout.vectors(), meta.model.dim)?);
        let lexical = Box::new(LexicalIndex::open(&layout.lexical())?);
        let journal = Journal::File(layout.manifest());
        let mut kb = Self {
            layout,
            meta,
            manifest,
            vectors,
            lexical,
            journal,
            guard: Guard::Lock(lock),
            recovered: 0,
        };
        kb.recover()?;
        Ok(kb)
    }

    /// Opens an existing knowledge base for searching (it still takes the process lock: the
    /// embedded engine allows one process per shard). The model comes from `kb.json`.
    ///
    /// Fails with [`Error::NotAKnowledgeBase`] when `dir` holds none, [`Error::OldFormat`]
    /// when an older lore wrote it, and [`Error::BackendMismatch`] when `store` differs from
    /// where it keeps its vectors.
    ///
    /// With a Qdrant server, nothing local is read: the knowledge base is opened from the
    /// server as a read-only replica (see [`KnowledgeBase::refresh`]).
    pub fn open_existing(dir: &Path, store: &StoreConfig) -> Result<Self> {
        if let StoreConfig::Qdrant(q) = store {
            return Self::open_replica(q);
        }
        let layout = Layout::new(dir);
        let meta =
            KbMeta::read(&layout)?.ok_or_else(|| Error::NotAKnowledgeBase(dir.to_path_buf()))?;
        if meta.format_version != FORMAT_VERSION {
            return Err(Error::OldFormat {
                dir: dir.to_path_buf(),
                found: meta.format_version,
                expected: FORMAT_VERSION,
            });
        }
        check_backend(dir, &meta, store)?;
        let lock = lock(&layout)?;
        let Some(manifest) = Manifest::load(&layout.manifest())? else {
            return Err(Error::Empty(dir.to_path_buf()));
        };
        Self::assemble(layout, meta, manifest, lock)
    }

    /// Builds the vector store's ANN index over recent writes (the embedded engine has no
    /// background optimiser; below its threshold of about 6k vectors search is exact and
    /// this does nothing). Returns whether it built anything.
    pub fn optimize(&self) -> Result<bool> {
        self.vectors.optimize()
    }

    /// Where the vectors live, for status output.
    pub fn describe_store(&self) -> String {
        self.vectors.describe()
    }

    fn reset(layout: &Layout, model: &ModelInfo) -> Result<KbMeta> {
        remove_dir(&layout.vectors())?;
        remove_dir(&layout.lexical())?;
        remove_file(&layout.manifest())?;
        let meta = KbMeta {
            format_version: FORMAT_VERSION,
            id: Some(uuid::Uuid::new_v4().to_string()),
            model: model.clone(),
            vectors: VectorBackend::Embedded,
        };
        meta.write(layout)?;
        Ok(meta)
    }

    /// Purges the paths an interrupted batch left pending (see the module docs).
    fn recover(&mut self) -> Result<()> {
        if self.manifest.pending.is_empty() {
            return Ok(());
        }
        let pending: Vec<String> = self.manifest.pending.iter().cloned().collect();
        tracing::info!(
            files = pending.len(),
            "recovering from an interrupted ingest"
        );
        self.guard.check_writer()?;
        self.vectors.delete_paths(&pending)?;
        self.lexical.delete_paths(&pending)?;
        self.vectors.commit()?;
        self.lexical.commit()?;
        for path in &pending {
            self.manifest.files.remove(path);
        }
        self.manifest.pending.clear();
        self.journal.forget(&self.manifest, &pending)?;
        self.recovered = pending.len();
        Ok(())
    }

    /// Files purged by recovery when this base was opened.
    pub fn recovered(&self) -> usize {
        self.recovered
    }

    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// Where the knowledge base lives, for messages: its data folder, or its server and
    /// collection.
    pub fn location(&self) -> std::path::PathBuf {
        match &self.meta.vectors {
            VectorBackend::Embedded => self.layout.dir.clone(),
            remote => remote.to_string().into(),
        }
    }

    pub fn model(&self) -> &ModelInfo {
        &self.meta.model
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Applies one batch with the commit protocol of the module docs.
    ///
    /// Fails on a store or disk error; the batch's files then stay pending and are redone by
    /// the next run.
    pub fn apply(&mut self, batch: Batch) -> Result<BatchStats> {
        let paths: BTreeSet<String> = batch
            .updates
            .iter()
            .map(|u| u.path.clone())
            .chain(batch.removals.iter().cloned())
            .collect();
        if paths.is_empty() {
            return Ok(BatchStats::default());
        }
        let paths: Vec<String> = paths.into_iter().collect();
        self.guard.check_writer()?;
        self.manifest.pending.extend(paths.iter().cloned());
        self.journal.begin(&self.manifest, &paths)?;
        tracing::debug!(files = paths.len(), "batch pending");

        let chunks_deleted = paths
            .iter()
            .filter_map(|p| self.manifest.files.get(p))
            .map(|e| e.chunk_ids.len())
            .sum();
        self.vectors.delete_paths(&paths)?;
        self.lexical.delete_paths(&paths)?;
        let mut chunks_written = 0;
        self.guard.check_writer()?;
        for update in &batch.updates {
            self.vectors.upsert(&update.chunks, &update.vectors)?;
            self.lexical.add(&update.chunks)?;
            chunks_written += update.chunks.len();
        }
        tracing::debug!(chunks_written, "batch written");
        self.vectors.commit()?;
        tracing::debug!("vectors committed");
        self.lexical.commit()?;
        tracing::debug!("lexical committed");

        for path in &batch.removals {
            self.manifest.files.remove(path);
        }
        for update in batch.updates {
            self.manifest.files.insert(update.path, update.entry);
        }
        self.manifest.pending.clear();
        self.guard.check_writer()?;
        self.journal.finish(&self.manifest, &paths)?;
        tracing::debug!("manifest saved");
        Ok(BatchStats {
            chunks_written,
            chunks_deleted,
        })
    }

    /// Records the chunking settings the whole base now follows (after a complete run).
    pub fn set_settings(&mut self, settings: ManifestSettings) -> Result<()> {
        if self.manifest.settings != settings {
            self.guard.check_writer()?;
            self.manifest.settings = settings;
            self.journal.settings(&self.manifest)?;
        }
        Ok(())
    }

    /// Compares manifest, vector store and lexical index chunk by chunk.
    pub fn audit(&self) -> Result<Audit> {
        let manifest: BTreeSet<ChunkId> = self
            .manifest
            .files
            .values()
            .flat_map(|e| e.chunk_ids.iter().cloned())
            .collect();
        let vector_ids = self.vectors.chunk_ids()?;
        let lexical_ids = self.lexical.chunk_ids()?;
        let vectors: BTreeSet<ChunkId> = vector_ids.iter().cloned().collect();
        let lexical: BTreeSet<ChunkId> = lexical_ids.iter().cloned().collect();
        let all: BTreeSet<&ChunkId> = manifest.iter().chain(&vectors).chain(&lexical).collect();
        let mismatched = all
            .into_iter()
            .filter(|id| !(manifest.contains(id) && vectors.contains(id) && lexical.contains(id)))
            .map(|id| id.to_string())
            .collect();
        Ok(Audit {
            manifest_chunks: self.manifest.chunk_count(),
            vector_chunks: vector_ids.len(),
            lexical_chunks: lexical_ids.len(),
            mismatched,
            pending: self.manifest.pending.len(),
        })
    }

    /// Bytes on disk, per store.
    pub fn disk_bytes(&self) -> (u64, u64) {
        (
            self.vectors.disk_bytes().unwrap_or(0),
            self.lexical.disk_bytes(),
        )
    }

    /// Closes the knowledge base, first compacting the vector store when its write-ahead log
    /// has outgrown the data it logs (0.7.2 never truncates it). Returns whether it compacted.
    pub fn close(self) -> Result<bool> {
        let dir = self.layout.vectors();
        let (wal, segments) = EdgeStore::wal_and_segment_bytes(&dir);
        let needed = self.meta.vectors == VectorBackend::Embedded
            && wal > COMPACT_MIN_WAL
            && wal > COMPACT_RATIO * segments.max(1);
        let dim = self.meta.model.dim;
        let Self { vectors, guard, .. } = self;
        // The shard must be closed to be swapped; the process lock stays held until the end.
        drop(vectors);
        if needed {
            tracing::info!(wal, segments, "compacting the vector store");
            EdgeStore::compact(&dir, dim)?;
        }
        drop(guard);
        Ok(needed)
    }
}

/// Compact when the WAL is bigger than this and than `COMPACT_RATIO` × the segments.
const COMPACT_MIN_WAL: u64 = 64 * 1024 * 1024;
const COMPACT_RATIO: u64 = 2;
