//! Moving a knowledge base's vectors between the embedded engine and a Qdrant server (either
//! way) without re-embedding: every point is read back with its vector and payload and
//! written to the other store; the BM25 index and the manifest stay where they are.
//!
//! Crash-safe by order: `kb.json` names the new store only after every point is there and
//! counted, so a crash before leaves the base on its old store, and a rerun empties the new
//! one and copies again.

use std::path::Path;

use super::{KnowledgeBase, StoreConfig};
use crate::layout::{KbMeta, VectorBackend, remove_dir};
use crate::{Error, Result};

/// Points read and written at a time.
const BATCH: usize = 256;

/// What a migration moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub points: usize,
    pub from: VectorBackend,
    pub to: VectorBackend,
}

impl KnowledgeBase {
    /// Moves the knowledge base in `dir`, whose vectors are where `from` says, to `to`.
    ///
    /// A server collection `to` names must be free or this knowledge base's (or taken over
    /// on request); it is emptied first. Moving to the embedded engine writes `qdrant/` in
    /// `dir`; moving away from it removes that folder once `kb.json` names the server. A
    /// server collection moved away from is left as it is (it is the server's to delete).
    pub fn migrate(dir: &Path, from: &StoreConfig, to: &StoreConfig) -> Result<Migrated> {
        let kb = Self::open_existing(dir, from)?;
        let (source, target) = (from.backend(), to.backend());
        if source == target {
            return Err(Error::Store(format!(
                "the knowledge base already keeps its vectors in {source}"
            )));
        }
        if matches!(to, StoreConfig::Embedded) {
            // Debris of an earlier, interrupted move back.
            remove_dir(&kb.layout.vectors())?;
        }
        let dest = to.open(&kb.layout, kb.meta.model.dim, kb.meta.id.as_deref())?;
        dest.clear()?;
        let ids = kb.vectors.chunk_ids()?;
        for batch in ids.chunks(BATCH) {
            let stored = kb.vectors.get(batch, true)?;
            let (chunks, vectors): (Vec<_>, Vec<_>) = stored
                .into_iter()
                .map(|s| {
                    let vector = s.vector.ok_or_else(|| {
                        Error::Store(format!("point {} came back without its vector", s.chunk.id))
                    })?;
                    Ok((s.chunk, vector))
                })
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .unzip();
            if chunks.len() != batch.len() {
                return Err(Error::Store(format!(
                    "{} of {} points could not be read back from {source}",
                    batch.len() - chunks.len(),
                    batch.len()
                )));
            }
            dest.upsert(&chunks, &vectors)?;
        }
        dest.commit()?;
        let copied = dest.count()?;
        if copied != ids.len() {
            return Err(Error::Store(format!(
                "{target} holds {copied} points after the copy, not {}: the knowledge base \
                 stays in {source}; run the migration again",
                ids.len()
            )));
        }
        let meta = KbMeta {
            vectors: target.clone(),
            ..kb.meta.clone()
        };
        meta.write(&kb.layout)?;
        let vectors_dir = kb.layout.vectors();
        drop(dest);
        drop(kb);
        if matches!(from, StoreConfig::Embedded) {
            remove_dir(&vectors_dir)?;
        }
        Ok(Migrated {
            points: ids.len(),
            from: source,
            to: target,
        })
    }
}
