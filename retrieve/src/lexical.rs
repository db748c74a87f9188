//! The BM25 side: a tantivy index of chunk text, headings and paths.
//!
//! tantivy types stay inside this file. Like the vector store, writes become durable only at
//! [`LexicalIndex::commit`]; an interrupted batch is discarded by tantivy and redone by the
//! knowledge base's recovery.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lore_ingest::{Chunk, ChunkId};
use tantivy::collector::DocSetCollector;
use tantivy::directory::MmapDirectory;
use tantivy::query::AllQuery;
use tantivy::schema::{Field, STORED, STRING, Schema, TEXT, Value};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term, doc};

use crate::{Error, Result};

/// Memory the writer may buffer before it flushes a segment on its own.
const WRITER_BUDGET: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
struct Fields {
    chunk_id: Field,
    /// Exact path, for deletes and filters.
    path: Field,
    /// The path tokenized, so a query can match file and folder names.
    path_text: Field,
    heading: Field,
    text: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        chunk_id: b.add_text_field("chunk_id", STRING | STORED),
        path: b.add_text_field("path", STRING | STORED),
        path_text: b.add_text_field("path_text", TEXT),
        heading: b.add_text_field("heading", TEXT),
        text: b.add_text_field("text", TEXT),
    };
    (b.build(), fields)
}

fn tantivy_err(e: impl std::fmt::Display) -> Error {
    Error::Store(format!("tantivy: {e}"))
}

/// A tantivy index in one folder, with its single long-lived writer.
pub struct LexicalIndex {
    dir: PathBuf,
    fields: Fields,
    writer: Mutex<IndexWriter>,
    reader: IndexReader,
}

impl std::fmt::Debug for LexicalIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LexicalIndex")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl LexicalIndex {
    /// Opens the index in `dir`, creating it when absent.
    ///
    /// Fails when another process holds its writer lock or the folder is not a lore index.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let (schema, fields) = schema();
        let directory = MmapDirectory::open(dir).map_err(tantivy_err)?;
        let index = Index::open_or_create(directory, schema).map_err(tantivy_err)?;
        let writer = index.writer(WRITER_BUDGET).map_err(|e| match e {
            tantivy::TantivyError::LockFailure(..) => Error::Locked(dir.to_path_buf()),
            e => tantivy_err(e),
        })?;
        // Manual reloads: searches see exactly what the last commit holds, never a race.
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(tantivy_err)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            fields,
            writer: Mutex::new(writer),
            reader,
        })
    }

    fn writer(&self) -> Result<std::sync::MutexGuard<'_, IndexWriter>> {
        self.writer
            .lock()
            .map_err(|_| tantivy_err("writer lock poisoned"))
    }

    /// Adds the chunks (callers delete a path's old chunks first: tantivy has no upsert).
    pub fn add(&self, chunks: &[Chunk]) -> Result<()> {
        let f = self.fields;
        let writer = self.writer()?;
        for c in chunks {
            writer
                .add_document(doc!(
                    f.chunk_id => c.id.as_str(),
                    f.path => c.path.as_str(),
                    f.path_text => c.path.as_str(),
                    f.heading => c.heading.as_deref().unwrap_or(""),
                    f.text => c.text.as_str(),
                ))
                .map_err(tantivy_err)?;
        }
        Ok(())
    }

    pub fn delete_paths(&self, paths: &[String]) -> Result<()> {
        let writer = self.writer()?;
        for p in paths {
            writer.delete_term(Term::from_field_text(self.fields.path, p));
        }
        Ok(())
    }

    /// Makes all previous writes durable and visible to searches.
    pub fn commit(&self) -> Result<()> {
        self.writer()?.commit().map_err(tantivy_err)?;
        self.reader.reload().map_err(tantivy_err)
    }

    pub fn count(&self) -> usize {
        usize::try_from(self.reader.searcher().num_docs()).unwrap_or(usize::MAX)
    }

    /// Every chunk id in the index (for audits).
    pub fn chunk_ids(&self) -> Result<Vec<ChunkId>> {
        let searcher = self.reader.searcher();
        let addresses = searcher
            .search(&AllQuery, &DocSetCollector)
            .map_err(tantivy_err)?;
        let mut ids = Vec::with_capacity(addresses.len());
        for address in addresses {
            let doc: TantivyDocument = searcher.doc(address).map_err(tantivy_err)?;
            if let Some(id) = doc.get_first(self.fields.chunk_id).and_then(|v| v.as_str()) {
                ids.push(ChunkId(id.to_string()));
            }
        }
        Ok(ids)
    }

    pub fn disk_bytes(&self) -> u64 {
        crate::disk_usage(&self.dir)
    }
}
