//! BM25 as a Qdrant sparse vector, scored the way lore's tantivy index scores it.
//!
//! Why client-side terms rather than the server's `qdrant/bm25` document inference: that model
//! tokenizes with its own rules (and needs the server's inference feature), so the same query
//! would match different terms in the two backends. Here lore's own analyzer (words,
//! lowercase, English stop words, Snowball stemming: `lexical.rs`) produces the terms, and:
//! - every (field, term) pair is one sparse dimension, `fnv1a(field byte, term)` as a `u32`, so
//!   body text, heading path and file name keep separate statistics as tantivy's fields do;
//! - a document's value for a dimension is BM25's term-frequency part,
//!   `tf·(k1+1) / (tf + k1·(1 − b + b·len/avg_len))`, with the field's length in terms;
//! - the collection's sparse vector has Qdrant's IDF modifier, so the server multiplies each
//!   dimension by `ln(1 + (N − n + 0.5)/(n + 0.5))` at query time from its live counts, the
//!   formula tantivy uses;
//! - a query is its distinct terms, each in the three fields with the fields' boosts as
//!   weights, so the dot product is the same sum of per-field BM25 scores as tantivy's query.
//!
//! Where the scores differ from tantivy's, and why (measured in the closing note of issue 16):
//! the average field lengths are fixed when the knowledge base is created (tantivy uses the
//! live averages), tantivy quantizes field lengths to one byte, and on a sharded collection
//! IDF appears to be computed per shard (the lexical figures of `scripts/qdrant-cluster` move
//! between runs as points land on other shards).

use std::collections::BTreeMap;

use lore_ingest::Chunk;
use serde::{Deserialize, Serialize};

use crate::lexical::{HEADING_BOOST, PATH_BOOST, file_stem, ranking_terms};

/// One sparse vector: dimensions ascending and distinct, as Qdrant requires.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SparseTerms {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

/// The parameters a document's values were computed with; fixed for a knowledge base's life
/// (recorded in its catalog), since changing them would need every point rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bm25Params {
    pub k1: f32,
    pub b: f32,
    /// Average length in terms of body text, heading path and file name.
    pub avg_len: [f32; 3],
}

impl Bm25Params {
    /// tantivy's k1 and b; average lengths for chunks of at most `max_tokens` model tokens.
    ///
    /// About half of a chunk's model tokens survive as terms (stop words and punctuation go,
    /// word pieces merge back into words): 256-token chunks of the Rust books average 120
    /// terms in tantivy's field norms. Headings average a few words, file names one or two.
    pub fn for_chunks(max_tokens: usize) -> Self {
        Self {
            k1: 1.2,
            b: 0.75,
            avg_len: [(max_tokens as f32 * 0.47).max(8.0), 5.0, 1.5],
        }
    }
}

/// The three ranked fields: (field byte in the term id, boost in queries).
const FIELDS: [(u8, f32); 3] = [(b't', 1.0), (b'h', HEADING_BOOST), (b'p', PATH_BOOST)];

/// The dimension a document carries when none of its fields has a term: a sparse vector with no
/// value at all would leave the point out of lexical audits. No query has it.
const EMPTY_DIMENSION: u32 = 0;

/// The sparse dimension of `term` in `field`: 32-bit FNV-1a, stable across versions and
/// machines (a change would orphan every stored point). Collisions among a corpus's few
/// hundred thousand distinct terms are rare and only merge two terms' statistics.
fn dimension(field: u8, term: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in std::iter::once(field).chain(term.bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    // 0 is the empty document's dimension.
    hash.max(1)
}

fn into_sparse(map: BTreeMap<u32, f32>) -> SparseTerms {
    let (indices, values) = map.into_iter().unzip();
    SparseTerms { indices, values }
}

/// The chunk's sparse BM25 vector (see the module docs).
pub(crate) fn document(chunk: &Chunk, params: &Bm25Params) -> SparseTerms {
    let heading = chunk.heading.as_deref().unwrap_or("");
    let texts = [chunk.text.as_str(), heading, file_stem(&chunk.path)];
    let mut values: BTreeMap<u32, f32> = BTreeMap::new();
    for ((field, _), (text, avg_len)) in FIELDS.iter().zip(texts.iter().zip(params.avg_len)) {
        let terms = ranking_terms(text);
        let len = terms.len() as f32;
        let mut counts: BTreeMap<&str, f32> = BTreeMap::new();
        for term in &terms {
            *counts.entry(term.as_str()).or_default() += 1.0;
        }
        let norm = params.k1 * (1.0 - params.b + params.b * len / avg_len.max(1.0));
        for (term, tf) in counts {
            let value = tf * (params.k1 + 1.0) / (tf + norm);
            *values.entry(dimension(*field, term)).or_default() += value;
        }
    }
    if values.is_empty() {
        values.insert(EMPTY_DIMENSION, f32::MIN_POSITIVE);
    }
    into_sparse(values)
}

/// The query's sparse vector, or `None` when no term survives analysis.
pub(crate) fn query(text: &str) -> Option<SparseTerms> {
    let mut terms = ranking_terms(text);
    terms.sort_unstable();
    terms.dedup();
    if terms.is_empty() {
        return None;
    }
    let mut weights: BTreeMap<u32, f32> = BTreeMap::new();
    for term in &terms {
        for (field, boost) in FIELDS {
            *weights.entry(dimension(field, term)).or_default() += boost;
        }
    }
    Some(into_sparse(weights))
}

#[cfg(test)]
mod tests {
    use lore_ingest::{ChunkId, DocKind};

    use super::*;

    fn chunk(text: &str, heading: Option<&str>, path: &str) -> Chunk {
        Chunk {
            id: ChunkId::derive(path, &(0..1), text),
            path: path.into(),
            kind: DocKind::Markdown,
            text: text.into(),
            byte_start: 0,
            byte_end: text.len(),
            start_line: 1,
            end_line: 1,
            heading: heading.map(str::to_string),
            page: None,
            tags: BTreeMap::new(),
        }
    }

    fn value(v: &SparseTerms, dim: u32) -> Option<f32> {
        v.indices
            .iter()
            .position(|&i| i == dim)
            .map(|p| v.values[p])
    }

    #[test]
    fn a_document_holds_bm25_term_weights_per_field() {
        let params = Bm25Params {
            k1: 1.2,
            b: 0.75,
            avg_len: [4.0, 2.0, 1.0],
        };
        // Terms: "cargo", "build", "cargo", "crate" (4 terms: the average length).
        let c = chunk(
            "Cargo builds the cargo crates",
            Some("Build"),
            "/docs/cargo.md",
        );
        let v = document(&c, &params);
        assert!(v.indices.windows(2).all(|w| w[0] < w[1]), "{v:?}");
        // tf 2 at average length: 2·2.2 / (2 + 1.2) = 1.375.
        let cargo = value(&v, dimension(b't', "cargo")).expect("cargo in text");
        assert!((cargo - 1.375).abs() < 1e-6, "{cargo}");
        // tf 1 at average length: 2.2 / 2.2 = 1.
        let build = value(&v, dimension(b't', "build")).expect("build in text");
        assert!((build - 1.0).abs() < 1e-6, "{build}");
        // "build" in the heading (1 term, half the average): 2.2 / (1 + 1.2·0.625).
        let heading = value(&v, dimension(b'h', "build")).expect("build in heading");
        assert!((heading - 2.2 / 1.75).abs() < 1e-6, "{heading}");
        assert!(value(&v, dimension(b'p', "cargo")).is_some(), "file name");
        // Stop words are not terms.
        assert_eq!(value(&v, dimension(b't', "the")), None);
    }

    #[test]
    fn a_query_weighs_each_distinct_term_by_field_boost() {
        let v = query("Is it the Cargo build? cargo!").expect("terms");
        // Two distinct terms ("is", "it", "the" are stop words), three fields each.
        assert_eq!(v.indices.len(), 6, "{v:?}");
        assert_eq!(value(&v, dimension(b't', "cargo")), Some(1.0));
        assert_eq!(value(&v, dimension(b'h', "build")), Some(HEADING_BOOST));
        assert_eq!(value(&v, dimension(b'p', "build")), Some(PATH_BOOST));
        assert_eq!(query("the of and"), None);
    }

    #[test]
    fn a_document_without_terms_keeps_one_dimension_no_query_has() {
        let v = document(
            &chunk("...", None, "/x/...md"),
            &Bm25Params::for_chunks(256),
        );
        assert_eq!(v.indices, vec![EMPTY_DIMENSION]);
        assert!(dimension(b't', "") != EMPTY_DIMENSION);
    }

    #[test]
    fn dimensions_are_stable() {
        // A change here orphans every stored point: bump the catalog's format instead.
        assert_eq!(dimension(b't', "cargo"), 0xcf8c_b989);
    }
}
