//! The knowledge base's folder: what lives where, the model record and the process lock.
//!
//! ```text
//! .lore/
//!   kb.json        format version and the embedding model that built it (written first)
//!   lock           held (flock) by the one process using the knowledge base
//!   manifest.json  file → hash → chunk ids, and the pending journal (see lore-ingest)
//!   qdrant/        the in-process Qdrant shard: vectors and chunk payloads
//!   tantivy/       the BM25 index
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use lore_embed::ModelInfo;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// 2: tantivy analyzers and fields for filters, tags and heading indexes (lore 0.2).
pub(crate) const FORMAT_VERSION: u32 = 2;

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn meta(&self) -> PathBuf {
        self.dir.join("kb.json")
    }
    pub fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }
    pub fn vectors(&self) -> PathBuf {
        self.dir.join("qdrant")
    }
    pub fn lexical(&self) -> PathBuf {
        self.dir.join("tantivy")
    }
}

/// `kb.json`: what built this knowledge base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KbMeta {
    pub format_version: u32,
    /// This knowledge base's identity (a UUID), which also marks the Qdrant server
    /// collection it fills. Absent in files written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub model: ModelInfo,
    /// Where the vectors live (absent in files of format 1: embedded).
    #[serde(default)]
    pub vectors: VectorBackend,
}

/// Where a knowledge base keeps its vectors, as recorded in `kb.json` (never the API key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum VectorBackend {
    /// Qdrant's engine in process, in `qdrant/`.
    #[default]
    Embedded,
    /// A Qdrant server or cluster.
    Qdrant { url: String, collection: String },
}

impl std::fmt::Display for VectorBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VectorBackend::Embedded => f.write_str("the embedded Qdrant engine"),
            VectorBackend::Qdrant { url, collection } => {
                write!(f, "the Qdrant server {url} (collection {collection})")
            }
        }
    }
}

impl KbMeta {
    pub(crate) fn read(layout: &Layout) -> Result<Option<Self>> {
        let path = layout.meta();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    pub(crate) fn write(&self, layout: &Layout) -> Result<()> {
        let path = layout.meta();
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Store(e.to_string()))?;
        write_atomic(&path, &bytes)
    }
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    lore_durable::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Takes the process lock on the data directory without waiting: a second lore gets
/// [`Error::Locked`] at once rather than hanging. The lock ends with the process, even on a
/// `kill -9`.
pub(crate) fn lock(layout: &Layout) -> Result<File> {
    let path = layout.lock();
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked(layout.dir.clone())),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}

/// Removes a file; a file that is already gone is fine.
pub(crate) fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// Removes a folder and everything in it; a folder that is already gone is fine.
pub(crate) fn remove_dir(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// Bytes allocated on disk under `path` (the engine's files are sparse: apparent sizes lie).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| disk_usage(&e.path())).sum())
            .unwrap_or(0)
    } else {
        meta.blocks() * 512
    }
}
