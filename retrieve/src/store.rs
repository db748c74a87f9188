//! The vector store contract: what the knowledge base needs from wherever vectors live.
//!
//! Two implementations fulfil it: the in-process Qdrant engine (the embedded default, in
//! `edge.rs`) and, for users who outgrow one machine, a Qdrant server or cluster (in
//! `server.rs`). The contract is written against lore's own types so neither engine's types
//! leak past its module; `payload.rs` is the one mapping of a chunk to stored fields both use.

use lore_embed::Embedding;
use lore_ingest::{Chunk, ChunkId};

use crate::Result;

/// Restricts a search to chunks matching every given condition.
///
/// Path globs and prefixes are resolved against the manifest before they get here, so stores
/// only ever see exact paths (which both engines index as keywords).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreFilter {
    /// Only chunks of these files; `None` = any file. `Some(empty)` matches nothing.
    pub paths: Option<Vec<String>>,
    /// Only chunks of these kinds ([`lore_ingest::DocKind::name`]); empty = any kind.
    pub kinds: Vec<String>,
    /// `key=value` tags that must all be present.
    pub tags: Vec<String>,
    /// Lowercase words that must all appear in the chunk's heading path.
    pub heading_words: Vec<String>,
}

impl StoreFilter {
    pub fn is_empty(&self) -> bool {
        self.paths.is_none()
            && self.kinds.is_empty()
            && self.tags.is_empty()
            && self.heading_words.is_empty()
    }
}

/// A search result before the chunk's payload is fetched.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredId {
    pub id: ChunkId,
    /// The chunk's source path (searches group and filter by file before fetching payloads).
    pub path: String,
    /// Higher is better (cosine similarity for the dense stores).
    pub score: f32,
}

/// A chunk as a store returns it, with its vector when asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredChunk {
    pub chunk: Chunk,
    pub vector: Option<Embedding>,
}

/// Fails unless `vector` has the store's dimension (shared by both adapters).
pub(crate) fn check_dim(vector: &[f32], dim: usize) -> Result<()> {
    if vector.len() == dim {
        return Ok(());
    }
    Err(crate::Error::Store(format!(
        "vector of dimension {} for a store of dimension {dim}",
        vector.len()
    )))
}

/// Fails unless there is one vector per chunk, each of the store's dimension: checked whole
/// before any write, so bad input writes nothing.
pub(crate) fn check_upsert(chunks: &[Chunk], vectors: &[Embedding], dim: usize) -> Result<()> {
    if chunks.len() != vectors.len() {
        return Err(crate::Error::Store(format!(
            "{} chunks but {} vectors",
            chunks.len(),
            vectors.len()
        )));
    }
    vectors.iter().try_for_each(|v| check_dim(v, dim))
}

/// Where vectors and chunk payloads live.
///
/// Writes become durable only at [`VectorStore::commit`]; until then a crash may lose them
/// (the knowledge base's manifest journal covers that window). Implementations serialise
/// their own writes; reads may run concurrently with writes.
pub trait VectorStore: Send + Sync {
    /// Inserts or replaces the chunks (same id = replace) with their vectors.
    ///
    /// Fails when `chunks` and `vectors` differ in length or a vector has the wrong dimension.
    fn upsert(&self, chunks: &[Chunk], vectors: &[Embedding]) -> Result<()>;

    /// Deletes every chunk (when a knowledge base is rebuilt).
    fn clear(&self) -> Result<()>;

    /// Deletes every chunk of the given source paths.
    fn delete_paths(&self, paths: &[String]) -> Result<()>;

    /// Makes all previous writes durable.
    fn commit(&self) -> Result<()>;

    /// How many chunks the store holds.
    fn count(&self) -> Result<usize>;

    /// Every chunk id the store holds (for audits; linear in the store's size).
    fn chunk_ids(&self) -> Result<Vec<ChunkId>>;

    /// Bytes the store uses on disk, if it is on this machine.
    fn disk_bytes(&self) -> Option<u64>;

    /// The `limit` chunks nearest to `vector` (cosine) that pass `filter`, best first.
    ///
    /// Fails when the vector has the wrong dimension.
    fn search(&self, vector: &[f32], limit: usize, filter: &StoreFilter) -> Result<Vec<ScoredId>>;

    /// The chunks with these ids, in the order given; unknown ids are left out.
    fn get(&self, ids: &[ChunkId], with_vectors: bool) -> Result<Vec<StoredChunk>>;

    /// Builds the approximate-nearest-neighbour index over what was written since the last
    /// call, where the engine does not do it in the background. Returns whether it did work.
    fn optimize(&self) -> Result<bool>;

    /// A short description for status output, e.g. `qdrant-edge (in process)`.
    fn describe(&self) -> String;
}
