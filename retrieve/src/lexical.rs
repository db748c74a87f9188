//! The BM25 side: a tantivy index of chunk text, headings and paths.
//!
//! tantivy types stay inside this file. Like the vector store, writes become durable only at
//! [`LexicalIndex::commit`]; an interrupted batch is discarded by tantivy and redone by the
//! knowledge base's recovery.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lore_ingest::{Chunk, ChunkId};
use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{AllQuery, BooleanQuery, BoostQuery, Occur, Query, TermQuery, TermSetQuery};
use tantivy::schema::{
    Field, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions, Value,
};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term, doc};

use crate::payload::tag_terms;
use crate::store::{ScoredId, StoreFilter};
use crate::{Error, Result};

/// English analyzer for ranking: words, lowercased, stop words dropped, stemmed, so a
/// question's "founded" meets the text's "founding".
const RANKING_TOKENIZER: &str = "lore_en";
/// Plain lowercase words, for heading filters (the same rule Qdrant's word index applies).
const WORDS_TOKENIZER: &str = "lore_words";
/// Field weights in the BM25 query: body text counts fully; a match in the heading path or
/// file path is evidence too, but repeated for every chunk of a section, so it counts less.
pub(crate) const HEADING_BOOST: f32 = 0.5;
pub(crate) const PATH_BOOST: f32 = 0.3;

/// Memory the writer may buffer before it flushes a segment on its own.
const WRITER_BUDGET: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
struct Fields {
    chunk_id: Field,
    /// Exact path, for deletes and filters.
    path: Field,
    /// The file's name without extension, tokenized, so "lincoln" finds `abraham-lincoln.md`.
    /// (Folder names are left out: every file under `/home/me/work/` would match "work".)
    path_text: Field,
    heading: Field,
    /// The heading as plain words, for heading filters.
    heading_words: Field,
    text: Field,
    /// [`lore_ingest::DocKind::name`], for type filters.
    kind: Field,
    /// `key=value` terms, for tag filters.
    tags: Field,
}

fn ranked_text(tokenizer: &str) -> TextOptions {
    TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(tokenizer)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    )
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let words = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(WORDS_TOKENIZER)
            .set_index_option(IndexRecordOption::Basic),
    );
    let fields = Fields {
        chunk_id: b.add_text_field("chunk_id", STRING | STORED),
        path: b.add_text_field("path", STRING | STORED),
        path_text: b.add_text_field("path_text", ranked_text(RANKING_TOKENIZER)),
        heading: b.add_text_field("heading", ranked_text(RANKING_TOKENIZER)),
        heading_words: b.add_text_field("heading_words", words),
        text: b.add_text_field("text", ranked_text(RANKING_TOKENIZER)),
        kind: b.add_text_field("kind", STRING),
        tags: b.add_text_field("tags", STRING),
    };
    (b.build(), fields)
}

fn ranking_analyzer() -> TextAnalyzer {
    let builder = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser);
    match StopWordFilter::new(Language::English) {
        Some(stop) => builder
            .filter(stop)
            .filter(Stemmer::new(Language::English))
            .build(),
        None => builder.filter(Stemmer::new(Language::English)).build(),
    }
}

fn words_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .build()
}

pub(crate) fn file_stem(path: &str) -> &str {
    let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
    name.rsplit_once('.').map_or(name, |(stem, _)| stem)
}

/// The distinct ranking terms of a query (what BM25 will look up).
pub(crate) fn query_terms(text: &str) -> BTreeSet<String> {
    ranking_terms(text).into_iter().collect()
}

/// The ranking terms of `text` in order, repeats included.
pub(crate) fn ranking_terms(text: &str) -> Vec<String> {
    tokens(text).into_iter().map(|(t, _)| t).collect()
}

/// The ranking terms of `text` (analyzed as the index analyzes chunk text), with their
/// byte ranges in `text`.
pub fn tokens(text: &str) -> Vec<(String, Range<usize>)> {
    let mut analyzer = ranking_analyzer();
    let mut stream = analyzer.token_stream(text);
    let mut tokens = Vec::new();
    while let Some(t) = stream.next() {
        tokens.push((t.text.clone(), t.offset_from..t.offset_to));
    }
    tokens
}

/// Whether `query` has any term BM25 can match (not only stop words or punctuation).
pub fn has_terms(query: &str) -> bool {
    !tokens(query).is_empty()
}

/// Where BM25 lives: the tantivy index beside the embedded engine, or sparse vectors in a
/// Qdrant server's collection. Writes become durable at [`LexicalStore::commit`].
pub trait LexicalStore: Send + Sync {
    /// Adds the chunks' terms (their old chunks were deleted first). With a server, the
    /// chunks' points must already be written by the vector store.
    fn add(&self, chunks: &[Chunk]) -> Result<()>;
    fn delete_paths(&self, paths: &[String]) -> Result<()>;
    fn commit(&self) -> Result<()>;
    /// Every chunk id that has lexical terms (for audits).
    fn chunk_ids(&self) -> Result<Vec<ChunkId>>;
    /// Bytes on this machine's disk.
    fn disk_bytes(&self) -> u64;
    /// The `limit` best BM25 matches for `query` that pass `filter`, best first; none when the
    /// query has no searchable term.
    fn search(&self, query: &str, limit: usize, filter: &StoreFilter) -> Result<Vec<ScoredId>>;
}

/// Lowercase words of `text` as heading filters compare them.
pub(crate) fn plain_words(text: &str) -> Vec<String> {
    let mut analyzer = words_analyzer();
    let mut stream = analyzer.token_stream(text);
    let mut words = Vec::new();
    while let Some(token) = stream.next() {
        words.push(token.text.clone());
    }
    words
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
        let index = Index::open_or_create(directory, schema).map_err(|e| match e {
            tantivy::TantivyError::SchemaError(reason) => Error::Corrupt {
                path: dir.to_path_buf(),
                reason: format!(
                    "the BM25 index has another schema ({reason}); run `lore ingest --rebuild`"
                ),
            },
            e => tantivy_err(e),
        })?;
        // Analyzers are not stored in the index: register them on every open.
        index
            .tokenizers()
            .register(RANKING_TOKENIZER, ranking_analyzer());
        index
            .tokenizers()
            .register(WORDS_TOKENIZER, words_analyzer());
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

    pub fn count(&self) -> usize {
        usize::try_from(self.reader.searcher().num_docs()).unwrap_or(usize::MAX)
    }

    /// The BM25 query for `query`: every distinct term, in body text, heading and path.
    /// `None` when no term survives analysis (only stop words or punctuation).
    fn ranking_query(&self, query: &str) -> Option<Box<dyn Query>> {
        let f = self.fields;
        let terms = query_terms(query);
        if terms.is_empty() {
            return None;
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::with_capacity(terms.len() * 3);
        for term in &terms {
            for (field, boost) in [
                (f.text, 1.0),
                (f.heading, HEADING_BOOST),
                (f.path_text, PATH_BOOST),
            ] {
                let q = TermQuery::new(
                    Term::from_field_text(field, term),
                    IndexRecordOption::WithFreqs,
                );
                let q: Box<dyn Query> = if boost == 1.0 {
                    Box::new(q)
                } else {
                    Box::new(BoostQuery::new(Box::new(q), boost))
                };
                clauses.push((Occur::Should, q));
            }
        }
        Some(Box::new(BooleanQuery::new(clauses)))
    }

    fn filter_clauses(&self, filter: &StoreFilter) -> Vec<(Occur, Box<dyn Query>)> {
        let f = self.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let set = |field: Field, values: &[String]| -> Box<dyn Query> {
            Box::new(TermSetQuery::new(
                values.iter().map(|v| Term::from_field_text(field, v)),
            ))
        };
        if let Some(paths) = &filter.paths {
            clauses.push((Occur::Must, set(f.path, paths)));
        }
        if !filter.kinds.is_empty() {
            clauses.push((Occur::Must, set(f.kind, &filter.kinds)));
        }
        for (field, values) in [
            (f.tags, &filter.tags),
            (f.heading_words, &filter.heading_words),
        ] {
            for value in values {
                let term = Term::from_field_text(field, value);
                clauses.push((
                    Occur::Must,
                    Box::new(TermQuery::new(term, IndexRecordOption::Basic)),
                ));
            }
        }
        clauses
    }
}

impl LexicalStore for LexicalIndex {
    /// Adds the chunks (callers delete a path's old chunks first: tantivy has no upsert).
    fn add(&self, chunks: &[Chunk]) -> Result<()> {
        let f = self.fields;
        let writer = self.writer()?;
        for c in chunks {
            let heading = c.heading.as_deref().unwrap_or("");
            let mut document = doc!(
                f.chunk_id => c.id.as_str(),
                f.path => c.path.as_str(),
                f.path_text => file_stem(&c.path),
                f.heading => heading,
                f.heading_words => heading,
                f.text => c.text.as_str(),
                f.kind => c.kind.name(),
            );
            for tag in tag_terms(&c.tags) {
                document.add_text(f.tags, tag);
            }
            writer.add_document(document).map_err(tantivy_err)?;
        }
        Ok(())
    }

    fn delete_paths(&self, paths: &[String]) -> Result<()> {
        let writer = self.writer()?;
        for p in paths {
            writer.delete_term(Term::from_field_text(self.fields.path, p));
        }
        Ok(())
    }

    /// Makes all previous writes durable and visible to searches.
    fn commit(&self) -> Result<()> {
        self.writer()?.commit().map_err(tantivy_err)?;
        self.reader.reload().map_err(tantivy_err)
    }

    /// Every chunk id in the index (for audits).
    fn chunk_ids(&self) -> Result<Vec<ChunkId>> {
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

    fn disk_bytes(&self) -> u64 {
        crate::disk_usage(&self.dir)
    }

    /// The `limit` best BM25 matches for `query` that pass `filter`, best first.
    ///
    /// Returns no hits when the query has no searchable term (see [`has_terms`]).
    fn search(&self, query: &str, limit: usize, filter: &StoreFilter) -> Result<Vec<ScoredId>> {
        let Some(ranking) = self.ranking_query(query) else {
            return Ok(Vec::new());
        };
        if limit == 0 || filter.paths.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        let mut clauses = self.filter_clauses(filter);
        let query: Box<dyn Query> = if clauses.is_empty() {
            ranking
        } else {
            clauses.push((Occur::Must, ranking));
            Box::new(BooleanQuery::new(clauses))
        };
        let searcher = self.reader.searcher();
        let top = searcher
            .search(&query, &TopDocs::with_limit(limit).order_by_score())
            .map_err(tantivy_err)?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher.doc(address).map_err(tantivy_err)?;
            let field = |f: Field| {
                doc.get_first(f)
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            };
            let (Some(id), Some(path)) = (field(self.fields.chunk_id), field(self.fields.path))
            else {
                return Err(tantivy_err("a document without chunk id or path"));
            };
            hits.push(ScoredId {
                id: ChunkId(id),
                path,
                score,
            });
        }
        Ok(hits)
    }
}
