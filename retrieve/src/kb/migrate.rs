//! Moving a knowledge base between a data folder (the embedded engine and tantivy) and a Qdrant
//! server (either way) without re-embedding: every file's chunks are read back with their
//! vectors and applied to a fresh knowledge base at the destination through the ordinary
//! commit protocol, with the file's manifest entry as it was. The destination builds its own
//! BM25 side (tantivy documents, or sparse vectors) from the chunks' text.
//!
//! Crash-safe by order: the source is only read until the destination holds every file and
//! every chunk; only then does a data folder that was moved away from get emptied (keeping a
//! `kb.json` that names the server). A crash before leaves the source as it was, and a rerun
//! starts the destination afresh and copies again.

use std::path::Path;

use super::{Batch, FileUpdate, KnowledgeBase, OpenOptions, StoreConfig};
use crate::layout::{KbMeta, Layout, VectorBackend, lock, remove_dir, remove_file};
use crate::{Error, Result};

/// Files read and written at a time.
const FILES_PER_BATCH: usize = 32;

/// What a migration moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub files: usize,
    pub points: usize,
    pub from: VectorBackend,
    pub to: VectorBackend,
}

impl KnowledgeBase {
    /// Moves the knowledge base whose home `from` names (the data folder `dir`, or a server
    /// collection) to `to`.
    ///
    /// A server collection `to` names must be free or this knowledge base's (or taken over
    /// on request); it is emptied first. Moving to the data folder replaces whatever it
    /// held. A server collection moved away from is left as it is (it is the server's to
    /// delete).
    pub fn migrate(dir: &Path, from: &StoreConfig, to: &StoreConfig) -> Result<Migrated> {
        let (source_at, target_at) = (from.backend(), to.backend());
        if source_at == target_at {
            return Err(Error::Store(format!(
                "the knowledge base already lives in {source_at}"
            )));
        }
        let source = Self::open_existing(dir, from)?;
        let options = OpenOptions {
            model: source.meta.model.clone(),
            settings: source.manifest.settings.clone(),
            rebuild: true,
            store: to.clone(),
        };
        let mut dest = match to {
            StoreConfig::Qdrant(q) => Self::open_remote_fresh(q, &options)?,
            StoreConfig::Embedded => {
                // The source is on a server: whatever the folder held is replaced.
                let layout = Layout::new(dir);
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                let guard = lock(&layout)?;
                let meta = Self::reset(&layout, &source.meta.model)?;
                let manifest = lore_ingest::Manifest::new(options.settings.clone());
                Self::assemble(layout, meta, manifest, guard)?
            }
        };
        let files: Vec<(&String, &lore_ingest::FileEntry)> = source.manifest.files.iter().collect();
        let mut points = 0;
        for group in files.chunks(FILES_PER_BATCH) {
            let mut updates = Vec::with_capacity(group.len());
            for (path, entry) in group {
                let stored = source.vectors.get(&entry.chunk_ids, true)?;
                if stored.len() != entry.chunk_ids.len() {
                    return Err(Error::Store(format!(
                        "{} of the {} chunks of {path} could not be read back from {source_at}; \
                         `lore status --verify` checks the knowledge base",
                        entry.chunk_ids.len() - stored.len(),
                        entry.chunk_ids.len()
                    )));
                }
                let (chunks, vectors): (Vec<_>, Vec<_>) = stored
                    .into_iter()
                    .map(|s| {
                        let vector = s.vector.ok_or_else(|| {
                            Error::Store(format!(
                                "chunk {} came back without its vector",
                                s.chunk.id
                            ))
                        })?;
                        Ok((s.chunk, vector))
                    })
                    .collect::<Result<Vec<_>>>()?
                    .into_iter()
                    .unzip();
                points += chunks.len();
                updates.push(FileUpdate {
                    path: (*path).clone(),
                    entry: (*entry).clone(),
                    chunks,
                    vectors,
                });
            }
            dest.apply(Batch {
                updates,
                removals: vec![],
            })?;
        }
        let audit = dest.audit()?;
        if !audit.consistent() || audit.manifest_chunks != points {
            return Err(Error::Store(format!(
                "{target_at} does not hold the {points} chunks after the copy ({audit:?}); the \
                 knowledge base stays in {source_at}: run the migration again"
            )));
        }
        dest.close()?;
        let files = source.manifest.files.len();
        if matches!(from, StoreConfig::Embedded) {
            // The data folder now only says where the knowledge base went.
            let layout = source.layout.clone();
            let meta = KbMeta {
                vectors: target_at.clone(),
                ..source.meta.clone()
            };
            drop(source);
            meta.write(&layout)?;
            remove_dir(&layout.vectors())?;
            remove_dir(&layout.lexical())?;
            remove_file(&layout.manifest())?;
        }
        Ok(Migrated {
            files,
            points,
            from: source_at,
            to: target_at,
        })
    }
}
