//! What a knowledge base holds, read without opening (or locking) its stores.

use std::path::Path;

use lore_embed::ModelInfo;
use lore_ingest::{Manifest, ManifestSettings};
use serde::Serialize;

use crate::layout::{KbMeta, Layout, VectorBackend, disk_usage};
use crate::{Error, Result, StoreConfig};

/// A summary for `lore status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub data_dir: String,
    pub model: ModelInfo,
    pub files: usize,
    pub chunks: usize,
    pub settings: Option<ManifestSettings>,
    /// Files an interrupted ingest left half-written (the next ingest repairs them).
    pub pending: usize,
    pub disk_bytes: DiskBytes,
    /// Where the vectors live.
    pub vectors: VectorBackend,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskBytes {
    pub total: u64,
    pub vectors: u64,
    pub lexical: u64,
}

impl Status {
    /// Reads the status of the knowledge base `store` names: in `dir`, or on a Qdrant server
    /// (its catalog; nothing local is read).
    ///
    /// Fails with [`Error::NotAKnowledgeBase`] when there is none.
    pub fn read_at(dir: &Path, store: &StoreConfig) -> Result<Self> {
        let StoreConfig::Qdrant(q) = store else {
            return Self::read(dir);
        };
        let (_, catalog, meta) = crate::kb::open_catalog(q)?;
        let manifest = catalog.load_manifest(meta.settings.clone())?;
        Ok(Self {
            data_dir: store.backend().to_string(),
            model: meta.model,
            files: manifest.files.len(),
            chunks: manifest.chunk_count(),
            settings: Some(manifest.settings.clone()),
            pending: manifest.pending.len(),
            vectors: store.backend(),
            // The data lives on the server's disks.
            disk_bytes: DiskBytes {
                total: 0,
                vectors: 0,
                lexical: 0,
            },
        })
    }

    /// Reads the status of the knowledge base in `dir`.
    ///
    /// Fails with [`Error::NotAKnowledgeBase`] when `dir` holds none.
    pub fn read(dir: &Path) -> Result<Self> {
        let layout = Layout::new(dir);
        let meta =
            KbMeta::read(&layout)?.ok_or_else(|| Error::NotAKnowledgeBase(dir.to_path_buf()))?;
        // A folder whose knowledge base moved to a server says where it went.
        crate::kb::check_backend(dir, &meta, &StoreConfig::Embedded)?;
        let manifest = Manifest::load(&layout.manifest())?;
        Ok(Self {
            data_dir: dir.display().to_string(),
            model: meta.model,
            files: manifest.as_ref().map_or(0, |m| m.files.len()),
            chunks: manifest.as_ref().map_or(0, Manifest::chunk_count),
            settings: manifest.as_ref().map(|m| m.settings.clone()),
            pending: manifest.as_ref().map_or(0, |m| m.pending.len()),
            vectors: meta.vectors,
            disk_bytes: DiskBytes {
                total: disk_usage(dir),
                vectors: disk_usage(&layout.vectors()),
                lexical: disk_usage(&layout.lexical()),
            },
        })
    }
}
