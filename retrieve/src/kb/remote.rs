//! A knowledge base that lives wholly on a Qdrant server: opened for writing under the lease,
//! or as a replica's read-only view that follows the writers' commits.

use std::sync::Arc;

use lore_ingest::Manifest;

use super::journal::{Guard, Journal};
use super::{KnowledgeBase, OpenOptions, QdrantConfig};
use crate::layout::{FORMAT_VERSION, KbMeta, Layout, VectorBackend};
use crate::qdrant::{
    Bm25Params, CATALOG_FORMAT, Catalog, Connection, LEASE_TTL, Lease, Owner, QdrantServerStore,
    RemoteMeta,
};
use crate::{Error, Result};

fn backend(q: &QdrantConfig) -> VectorBackend {
    VectorBackend::Qdrant {
        url: q.url.clone(),
        collection: q.collection.clone(),
    }
}

/// The server and collection, as the "folder" messages name.
fn location(q: &QdrantConfig) -> std::path::PathBuf {
    backend(q).to_string().into()
}

fn kb_meta(q: &QdrantConfig, meta: &RemoteMeta) -> KbMeta {
    KbMeta {
        format_version: FORMAT_VERSION,
        id: Some(meta.id.clone()),
        model: meta.model.clone(),
        vectors: backend(q),
    }
}

/// Connects to `q`'s server and reads the catalog of a finished knowledge base there.
///
/// Fails with [`Error::NotAKnowledgeBase`] when none was made there (or its first reset did
/// not finish), and [`Error::OldFormat`] when another lore wrote it.
pub(crate) fn open_catalog(q: &QdrantConfig) -> Result<(Arc<Connection>, Catalog, RemoteMeta)> {
    let conn = Connection::new(&q.url, q.api_key.as_deref())?;
    let missing = || Error::NotAKnowledgeBase(location(q));
    let catalog = Catalog::existing(conn.clone(), &q.collection)?.ok_or_else(missing)?;
    let meta = catalog
        .read_meta()?
        .filter(|m| m.ready)
        .ok_or_else(missing)?;
    if meta.format_version != CATALOG_FORMAT {
        return Err(Error::OldFormat {
            dir: location(q),
            found: meta.format_version,
            expected: CATALOG_FORMAT,
        });
    }
    Ok((conn, catalog, meta))
}

impl KnowledgeBase {
    /// Opens (creating if needed) the knowledge base in `q`'s collection for writing: takes the
    /// writer lease, checks the model, recovers an interrupted run.
    pub(super) fn open_remote(q: &QdrantConfig, options: &OpenOptions) -> Result<Self> {
        Self::open_remote_as(q, options, false)
    }

    /// [`KnowledgeBase::open_remote`], always starting afresh (a migration's destination).
    pub(super) fn open_remote_fresh(q: &QdrantConfig, options: &OpenOptions) -> Result<Self> {
        Self::open_remote_as(q, options, true)
    }

    fn open_remote_as(q: &QdrantConfig, options: &OpenOptions, fresh: bool) -> Result<Self> {
        let conn = Connection::new(&q.url, q.api_key.as_deref())?;
        let catalog = Catalog::open(conn.clone(), &q.collection, q.shape)?;
        let lease = Lease::acquire(catalog.clone(), LEASE_TTL)?;
        let found = catalog.read_meta()?;
        let meta = match found {
            Some(meta) if fresh => Self::reset_remote(q, &catalog, options, Some(meta.id))?,
            Some(meta) if meta.ready && meta.format_version != CATALOG_FORMAT => {
                if !options.rebuild {
                    return Err(Error::OldFormat {
                        dir: location(q),
                        found: meta.format_version,
                        expected: CATALOG_FORMAT,
                    });
                }
                Self::reset_remote(q, &catalog, options, Some(meta.id))?
            }
            Some(meta) if meta.ready => match meta.model.incompatibility(&options.model) {
                None => meta,
                Some(reason) if !options.rebuild => {
                    return Err(Error::ModelMismatch {
                        dir: location(q),
                        built: meta.model.name,
                        requested: options.model.name.clone(),
                        reason,
                    });
                }
                Some(_) => Self::reset_remote(q, &catalog, options, Some(meta.id))?,
            },
            // A reset that did not finish: start it again, as the same knowledge base.
            Some(meta) => Self::reset_remote(q, &catalog, options, Some(meta.id))?,
            None => Self::reset_remote(q, &catalog, options, None)?,
        };
        let owner = Owner {
            id: meta.id.clone(),
            take_over: q.take_over,
        };
        let store =
            QdrantServerStore::open_as(conn, &q.collection, meta.model.dim, Some(&owner), q.shape)?;
        let manifest = catalog.load_manifest(meta.settings.clone())?;
        let guard = Guard::Lease(Box::new(lease));
        let mut kb = Self::assemble_remote(q, store, catalog, meta, manifest, guard);
        kb.recover()?;
        Ok(kb)
    }

    /// Empties the collection and the catalog and records a new knowledge base (keeping `id`
    /// when it replaces one). Crash-safe: the catalog says `ready: false` until the end, and
    /// an open that finds it so resets again.
    fn reset_remote(
        q: &QdrantConfig,
        catalog: &Catalog,
        options: &OpenOptions,
        id: Option<String>,
    ) -> Result<RemoteMeta> {
        let mut meta = RemoteMeta {
            format_version: CATALOG_FORMAT,
            id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            model: options.model.clone(),
            settings: options.settings.clone(),
            bm25: Bm25Params::for_chunks(options.settings.chunker.max_tokens),
            generation: 0,
            ready: false,
        };
        // The collection is checked to be this knowledge base's (or free) before anything
        // is written, so a refusal changes nothing.
        let owner = Owner {
            id: meta.id.clone(),
            take_over: q.take_over,
        };
        let store = QdrantServerStore::open_as(
            catalog.conn().clone(),
            &q.collection,
            options.model.dim,
            Some(&owner),
            q.shape,
        )?;
        catalog.write_meta(&meta)?;
        crate::store::VectorStore::clear(&store)?;
        catalog.clear_files()?;
        meta.ready = true;
        catalog.write_meta(&meta)?;
        Ok(meta)
    }

    /// Opens the knowledge base in `q`'s collection for searching, taking nothing: any number
    /// of replicas may. Fails with [`Error::NotAKnowledgeBase`] when none was made there, and
    /// [`Error::Empty`] when it holds no file yet.
    pub(super) fn open_replica(q: &QdrantConfig) -> Result<Self> {
        let (conn, catalog, meta) = open_catalog(q)?;
        // No owner mark is written or checked: the catalog is what names the knowledge base,
        // and a replica writes nothing.
        let store = QdrantServerStore::open_as(
            conn,
            &q.collection,
            meta.model.dim,
            None,
            Default::default(),
        )?;
        let manifest = catalog.load_manifest(meta.settings.clone())?;
        if manifest.files.is_empty() {
            return Err(Error::Empty(location(q)));
        }
        Ok(Self::assemble_remote(
            q,
            store,
            catalog,
            meta,
            manifest,
            Guard::Reader,
        ))
    }

    /// The knowledge base over its opened parts (shared by writers and replicas).
    fn assemble_remote(
        q: &QdrantConfig,
        store: QdrantServerStore,
        catalog: Catalog,
        meta: RemoteMeta,
        manifest: Manifest,
        guard: Guard,
    ) -> Self {
        Self {
            layout: Layout::new(""),
            meta: kb_meta(q, &meta),
            manifest,
            lexical: Box::new(store.lexical(meta.bm25)),
            vectors: Box::new(store),
            journal: Journal::Catalog {
                catalog,
                meta: Box::new(meta),
            },
            guard,
            recovered: 0,
        }
    }

    /// Whether a writer elsewhere has committed since this replica read the manifest (one
    /// small read; always false for a local knowledge base or a writer).
    pub fn is_stale(&self) -> Result<bool> {
        match (&self.journal, &self.guard) {
            (Journal::Catalog { catalog, meta }, Guard::Reader) => {
                Ok(catalog.generation()? != Some(meta.generation))
            }
            _ => Ok(false),
        }
    }

    /// Rereads the manifest when a writer elsewhere has committed since (see
    /// [`KnowledgeBase::is_stale`]). Returns whether it did.
    pub fn refresh(&mut self) -> Result<bool> {
        if !self.is_stale()? {
            return Ok(false);
        }
        let location = self.location();
        let Journal::Catalog { catalog, meta } = &mut self.journal else {
            return Ok(false);
        };
        let Some(fresh) = catalog.read_meta()?.filter(|m| m.ready) else {
            return Err(Error::NotAKnowledgeBase(location));
        };
        if fresh.id != meta.id || fresh.model != meta.model {
            // Rebuilt with another model: the query embedder no longer fits.
            return Err(Error::Store(format!(
                "{} was rebuilt with the embedding model {} since this replica opened it; \
                 restart the replica",
                location.display(),
                fresh.model.name
            )));
        }
        let manifest: Manifest = catalog.load_manifest(fresh.settings.clone())?;
        **meta = fresh;
        self.manifest = manifest;
        Ok(true)
    }

    /// Whether the knowledge base lives on a Qdrant server.
    pub fn is_remote(&self) -> bool {
        matches!(self.journal, Journal::Catalog { .. })
    }
}
