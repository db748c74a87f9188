//! The record of what a knowledge base holds: file → content hash → chunk ids.
//!
//! The manifest is the journal of lore's two-store commit. Before an ingest batch touches the
//! stores, the batch's files are written to `pending`; after both stores have committed, their
//! entries are updated and `pending` is cleared. A crash in between leaves the files in
//! `pending`, and the next run purges them from both stores before redoing them, so a rerun
//! converges to the state of a clean run. Every save is atomic (write, fsync, rename).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{ChunkId, ChunkerConfig, DocKind, Error, Result};

const FORMAT_VERSION: u32 = 1;

/// Settings that change what chunks a file yields: when they change, every file is redone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSettings {
    pub chunker: ChunkerConfig,
    /// Bumped when extraction changes in a way that alters chunk text.
    pub extractor_version: u32,
}

/// What the knowledge base holds for one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// blake3 of the file's bytes when it was ingested.
    pub hash: String,
    pub size: u64,
    pub kind: DocKind,
    pub chunk_ids: Vec<ChunkId>,
    /// Tags given at ingest (`--tag key=value`); a change re-stores the file's chunks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    version: u32,
    pub settings: ManifestSettings,
    /// Keyed by the file's stored path.
    pub files: BTreeMap<String, FileEntry>,
    /// Files whose chunks may be half-written in the stores (see the module docs).
    pub pending: BTreeSet<String>,
}

impl Manifest {
    pub fn new(settings: ManifestSettings) -> Self {
        Self {
            version: FORMAT_VERSION,
            settings,
            files: BTreeMap::new(),
            pending: BTreeSet::new(),
        }
    }

    /// Reads the manifest at `path`; `Ok(None)` when there is none yet.
    ///
    /// Fails when the file cannot be read or is not a manifest of this version.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Manifest {
            path: path.into(),
            reason: e.to_string(),
        })?;
        if manifest.version != FORMAT_VERSION {
            return Err(Error::Manifest {
                path: path.into(),
                reason: format!(
                    "format version {} is not {FORMAT_VERSION}",
                    manifest.version
                ),
            });
        }
        Ok(Some(manifest))
    }

    /// Writes the manifest atomically: a reader (or a crash) sees the old or the new file,
    /// never a torn one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self).map_err(|e| Error::Manifest {
            path: path.into(),
            reason: e.to_string(),
        })?;
        lore_durable::write(path, &bytes).map_err(|e| Error::io(path, e))
    }

    pub fn chunk_count(&self) -> usize {
        self.files.values().map(|f| f.chunk_ids.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("manifest.json");
        assert!(Manifest::load(&path).expect("load").is_none());
        let mut m = Manifest::new(ManifestSettings {
            chunker: ChunkerConfig::default(),
            extractor_version: 1,
        });
        m.files.insert(
            "/a.md".into(),
            FileEntry {
                hash: "h".into(),
                size: 1,
                kind: DocKind::Markdown,
                chunk_ids: vec![ChunkId("x".into())],
                tags: Default::default(),
            },
        );
        m.pending.insert("/b.md".into());
        m.save(&path).expect("save");
        assert_eq!(Manifest::load(&path).expect("load"), Some(m));
        std::fs::write(&path, b"{not json").expect("w");
        assert!(matches!(Manifest::load(&path), Err(Error::Manifest { .. })));
    }
}
