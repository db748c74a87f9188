//! Stores and search over a knowledge base.
//!
//! This crate owns where chunks live once embedded: the vector store contract
//! ([`VectorStore`]) with Qdrant's in-process engine as the embedded default, the tantivy BM25
//! index ([`LexicalIndex`]), and the [`KnowledgeBase`] that keeps both in agreement with the
//! ingest manifest across crashes. It does not read files or run models: chunks and vectors
//! arrive ready-made (from `lore-ingest` and an `lore_embed::Embedder`).
//!
//! ```no_run
//! # fn demo(model: lore_embed::ModelInfo, settings: lore_ingest::ManifestSettings,
//! #         update: lore_retrieve::FileUpdate) -> lore_retrieve::Result<()> {
//! use lore_retrieve::{Batch, KnowledgeBase, OpenOptions};
//! let options = OpenOptions { model, settings, rebuild: false, store: Default::default() };
//! let mut kb = KnowledgeBase::open(".lore".as_ref(), &options)?;
//! let stats = kb.apply(Batch { updates: vec![update], removals: vec![] })?;
//! assert!(kb.audit()?.consistent());
//! # let _ = stats; Ok(()) }
//! ```

mod edge;
mod error;
pub mod eval;
pub mod grounding;
mod kb;
mod layout;
mod lexical;
mod payload;
pub mod prompt;
mod qdrant;
pub mod search;
mod status;
mod store;

pub use edge::EdgeStore;
pub use error::{Error, Result};
pub use kb::{
    Audit, Batch, BatchStats, FileUpdate, KnowledgeBase, Migrated, OpenOptions, QdrantConfig,
    StoreConfig,
};
pub use layout::{KbMeta, Layout, VectorBackend, disk_usage};
pub use lexical::{LexicalIndex, LexicalStore};
pub use qdrant::{
    Bm25Params, CATALOG_FORMAT, Catalog, CollectionShape, Connection, LEASE_TTL, Lease, OWNER_KEY,
    Owner, QdrantServerStore, RemoteMeta, ServerLexical, catalog_name,
};
pub use search::{FilterExpr, Fusion, Hit, Mode, SearchRequest, SearchResults};
pub use status::{DiskBytes, Status};
pub use store::{ScoredId, StoreFilter, StoredChunk, VectorStore};
