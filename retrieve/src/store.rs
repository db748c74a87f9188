//! The vector store contract: what the knowledge base needs from wherever vectors live.
//!
//! Two implementations fulfil it: the in-process Qdrant engine (the embedded default, in
//! `edge.rs`) and, for users who outgrow one machine, a Qdrant server or cluster. The contract
//! is written against lore's own types so neither engine's types leak past its module.

use lore_embed::Embedding;
use lore_ingest::{Chunk, ChunkId};

use crate::Result;

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
}
