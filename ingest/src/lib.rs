//! Documents → text → chunks.
//!
//! This crate owns everything between a folder on disk and the chunks that get embedded:
//! walking folders ([`walk`]), extracting text from Markdown, plain text, HTML, PDF and
//! source code ([`extract`]), splitting text into token-sized chunks with `text-splitter`
//! ([`chunk`]), the deterministic [`ChunkId`]s, and the [`Manifest`] that records what was
//! ingested so re-ingesting is incremental. It knows nothing of embeddings or stores.
//!
//! Main types: [`Document`], [`Chunk`], [`Chunker`], [`Manifest`], [`WalkOptions`].
//!
//! ```no_run
//! use lore_ingest::{walk, Chunker, ChunkerConfig, WalkOptions};
//! # fn main() -> lore_ingest::Result<()> {
//! let tokenizer = tokenizers::Tokenizer::from_file("tokenizer.json").expect("tokenizer");
//! let chunker = Chunker::new(tokenizer, ChunkerConfig::default())?;
//! let found = walk(&["docs".into()], &WalkOptions::default())?;
//! for file in &found.files {
//!     let doc = lore_ingest::load_document(file)?.document;
//!     let chunks = chunker.chunk(&doc)?;
//!     println!("{}: {} chunks", doc.path, chunks.len());
//! }
//! # Ok(()) }
//! ```

mod chunk;
mod document;
mod error;
pub mod extract;
mod headings;
mod load;
mod manifest;
mod walk;

pub use chunk::{Chunker, ChunkerConfig, MAX_BYTES_PER_TOKEN};
pub use document::{Chunk, ChunkId, CodeLang, DocKind, Document, hash_uuid};
pub use error::{Error, Result};
pub use extract::{ExtractError, Extracted, extract, kind_for_path, looks_binary};
pub use load::{Loaded, RawFile, load_document, read_file, to_document};
pub use manifest::{FileEntry, Manifest, ManifestSettings};
pub use walk::{FoundFile, SkippedFile, WalkOptions, WalkResult, walk};
