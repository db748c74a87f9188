//! Where a knowledge base records its manifest, and what keeps a second writer out: a file and
//! a process lock in the data folder, or the catalog and the lease on a Qdrant server.

use std::fs::File;
use std::path::PathBuf;

use lore_ingest::Manifest;

use crate::Result;
use crate::qdrant::{Catalog, Lease, RemoteMeta};

/// The manifest's persistence, one step of the commit protocol (`kb.rs`) per method.
pub(super) enum Journal {
    /// `manifest.json`, rewritten whole and atomically at every step.
    File(PathBuf),
    /// One point per file in the catalog collection, and the settings in its meta point.
    Catalog {
        catalog: Catalog,
        meta: Box<RemoteMeta>,
    },
}

impl Journal {
    /// Step 1: `paths` are pending (already added to `manifest.pending`).
    pub(super) fn begin(&mut self, manifest: &Manifest, paths: &[String]) -> Result<()> {
        match self {
            Journal::File(path) => manifest.save(path).map_err(Into::into),
            Journal::Catalog { catalog, .. } => catalog.mark_pending(manifest, paths),
        }
    }

    /// Step 4: `paths` hold what `manifest` says now (an entry, or removed), not pending.
    pub(super) fn finish(&mut self, manifest: &Manifest, paths: &[String]) -> Result<()> {
        match self {
            Journal::File(path) => manifest.save(path).map_err(Into::into),
            Journal::Catalog { catalog, meta } => {
                catalog.commit(manifest, paths)?;
                bump(catalog, meta)
            }
        }
    }

    /// Recovery: `paths` were purged from the stores and are gone from `manifest`.
    pub(super) fn forget(&mut self, manifest: &Manifest, paths: &[String]) -> Result<()> {
        match self {
            Journal::File(path) => manifest.save(path).map_err(Into::into),
            Journal::Catalog { catalog, meta } => {
                catalog.forget(paths)?;
                bump(catalog, meta)
            }
        }
    }

    /// The chunking settings changed (after a complete run).
    pub(super) fn settings(&mut self, manifest: &Manifest) -> Result<()> {
        match self {
            Journal::File(path) => manifest.save(path).map_err(Into::into),
            Journal::Catalog { catalog, meta } => {
                meta.settings = manifest.settings.clone();
                catalog.write_meta(meta)
            }
        }
    }
}

/// Records a commit in the catalog's generation, which replicas watch.
fn bump(catalog: &Catalog, meta: &mut RemoteMeta) -> Result<()> {
    meta.generation += 1;
    catalog.write_meta(meta)
}

/// What makes this process the only writer.
pub(super) enum Guard {
    /// The data folder's process lock, released by the OS even on `kill -9` (held, never read).
    Lock(#[allow(dead_code)] File),
    /// The server-side writer lease, renewed in the background, expiring on a crash.
    Lease(Box<Lease>),
    /// A replica that only searches: it takes nothing and never writes.
    Reader,
}

impl Guard {
    /// Fails unless this process may write now.
    pub(super) fn check_writer(&self) -> Result<()> {
        match self {
            Guard::Lock(_) => Ok(()),
            Guard::Lease(lease) => lease.check(),
            Guard::Reader => Err(crate::Error::Store(
                "this knowledge base was opened for searching only".into(),
            )),
        }
    }
}
