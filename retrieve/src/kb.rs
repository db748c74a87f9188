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

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;

use lore_embed::{Embedding, ModelInfo};
use lore_ingest::{Chunk, ChunkId, FileEntry, Manifest, ManifestSettings};

use crate::edge::EdgeStore;
use crate::layout::{FORMAT_VERSION, KbMeta, Layout, VectorBackend, lock, remove_dir};
use crate::lexical::LexicalIndex;
use crate::server::{CollectionShape, Owner, QdrantServerStore};
use crate::store::VectorStore;
use crate::{Error, Result};

mod migrate;
pub use migrate::Migrated;

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
    fn backend(&self) -> VectorBackend {
        match self {
            StoreConfig::Embedded => VectorBackend::Embedded,
            StoreConfig::Qdrant(q) => VectorBackend::Qdrant {
                url: q.url.clone(),
                collection: q.collection.clone(),
            },
        }
    }

    /// Opens the vector store of the knowledge base `id` (a server collection is checked
    /// to be that knowledge base's; one written before ids existed is not checked).
    fn open(&self, layout: &Layout, dim: usize, id: Option<&str>) -> Result<Box<dyn VectorStore>> {
        Ok(match self {
            StoreConfig::Embedded => Box::new(EdgeStore::open(&layout.vectors(), dim)?),
            StoreConfig::Qdrant(q) => {
                let owner = id.map(|id| Owner {
                    id: id.to_string(),
                    take_over: q.take_over,
                });
                Box::new(QdrantServerStore::open_as(
                    &q.url,
                    q.api_key.as_deref(),
                    &q.collection,
                    dim,
                    owner.as_ref(),
                    q.shape,
                )?)
            }
        })
    }
}

/// Fails unless the base in `dir` keeps its vectors where `store` says.
fn check_backend(dir: &Path, meta: &KbMeta, store: &StoreConfig) -> Result<()> {
    let requested = store.backend();
    if meta.vectors == requested {
        return Ok(());
    }
    let hint = match &meta.vectors {
        VectorBackend::Embedded => {
            "drop --qdrant-url (and LORE_QDRANT_URL), or use another --data-dir".into()
        }
        VectorBackend::Qdrant { url, collection } => {
            format!(
                "pass --qdrant-url {url} --qdrant-collection {collection}, or use another --data-dir"
            )
        }
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

/// An open, locked knowledge base.
pub struct KnowledgeBase {
    pub(crate) layout: Layout,
    meta: KbMeta,
    pub(crate) manifest: Manifest,
    pub(crate) vectors: Box<dyn VectorStore>,
    pub(crate) lexical: LexicalIndex,
    /// Held for the lifetime of the value; released by the OS even on `kill -9`.
    _lock: File,
    recovered: usize,
}

impl std::fmt::Debug for KnowledgeBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnowledgeBase")
            .field("dir", &self.layout.dir)
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
                Self::reset(&layout, &options.model, &options.store)?
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
                Some(_) => Self::reset(&layout, &options.model, &options.store)?,
            },
            // kb.json is written before any store: without it, whatever is here is debris
            // of an interrupted first run.
            None => Self::reset(&layout, &options.model, &options.store)?,
        };
        let manifest = match Manifest::load(&layout.manifest())? {
            Some(m) => m,
            None => {
                // Stores without a manifest cannot be trusted: start them empty.
                remove_dir(&layout.vectors())?;
                remove_dir(&layout.lexical())?;
                let vectors = options
                    .store
                    .open(&layout, meta.model.dim, meta.id.as_deref())?;
                vectors.clear()?;
                Manifest::new(options.settings.clone())
            }
        };
        Self::assemble(layout, meta, manifest, &options.store, lock)
    }

    /// Opens both stores and recovers from an interrupted run (shared by both opens).
    fn assemble(
        layout: Layout,
        meta: KbMeta,
        manifest: Manifest,
        store: &StoreConfig,
        lock: File,
    ) -> Result<Self> {
        let vectors = store.open(&layout, meta.model.dim, meta.id.as_deref())?;
        let lexical = LexicalIndex::open(&layout.lexical())?;
        let mut kb = Self {
            layout,
            meta,
            manifest,
            vectors,
            lexical,
            _lock: lock,
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
    pub fn open_existing(dir: &Path, store: &StoreConfig) -> Result<Self> {
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
        Self::assemble(layout, meta, manifest, store, lock)
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

    fn reset(layout: &Layout, model: &ModelInfo, store: &StoreConfig) -> Result<KbMeta> {
        remove_dir(&layout.vectors())?;
        remove_dir(&layout.lexical())?;
        match std::fs::remove_file(layout.manifest()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(layout.manifest(), e));
            }
            _ => {}
        }
        let id = uuid::Uuid::new_v4().to_string();
        if let StoreConfig::Qdrant(_) = store {
            // A server collection outlives the folder: empty it too, once it is known to
            // be this knowledge base's (or free, or taken over on request).
            store.open(layout, model.dim, Some(&id))?.clear()?;
        }
        let meta = KbMeta {
            format_version: FORMAT_VERSION,
            id: Some(id),
            model: model.clone(),
            vectors: store.backend(),
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
        self.vectors.delete_paths(&pending)?;
        self.lexical.delete_paths(&pending)?;
        self.vectors.commit()?;
        self.lexical.commit()?;
        for path in &pending {
            self.manifest.files.remove(path);
        }
        self.manifest.pending.clear();
        self.manifest.save(&self.layout.manifest())?;
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
        self.manifest.pending.extend(paths.iter().cloned());
        self.manifest.save(&self.layout.manifest())?;
        tracing::debug!(files = paths.len(), "batch pending");

        let chunks_deleted = paths
            .iter()
            .filter_map(|p| self.manifest.files.get(p))
            .map(|e| e.chunk_ids.len())
            .sum();
        self.vectors.delete_paths(&paths)?;
        self.lexical.delete_paths(&paths)?;
        let mut chunks_written = 0;
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
        self.manifest.save(&self.layout.manifest())?;
        tracing::debug!("manifest saved");
        Ok(BatchStats {
            chunks_written,
            chunks_deleted,
        })
    }

    /// Records the chunking settings the whole base now follows (after a complete run).
    pub fn set_settings(&mut self, settings: ManifestSettings) -> Result<()> {
        if self.manifest.settings != settings {
            self.manifest.settings = settings;
            self.manifest.save(&self.layout.manifest())?;
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
        let Self { vectors, _lock, .. } = self;
        // The shard must be closed to be swapped; the process lock stays held until the end.
        drop(vectors);
        if needed {
            tracing::info!(wal, segments, "compacting the vector store");
            EdgeStore::compact(&dir, dim)?;
        }
        drop(_lock);
        Ok(needed)
    }
}

/// Compact when the WAL is bigger than this and than `COMPACT_RATIO` × the segments.
const COMPACT_MIN_WAL: u64 = 64 * 1024 * 1024;
const COMPACT_RATIO: u64 = 2;
