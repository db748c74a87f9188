//! The query path: dense search in the vector store, BM25 in tantivy, fusion, filters,
//! collapse of repeats and optional MMR, then hits with everything a citation needs.
//!
//! Query embedding happens outside this crate (it does not run models): callers pass the
//! query's vector for dense and hybrid modes.

mod diversify;
mod filter;
mod fusion;
mod snippet;

use std::collections::HashSet;
use std::time::Instant;

use serde::Serialize;

use crate::kb::KnowledgeBase;
use crate::store::ScoredId;
use crate::{Error, Result};
use diversify::Candidate;

pub use filter::{FilterExpr, PathPattern, validate_tag};
pub use fusion::{
    DEFAULT_CODE_DENSE_WEIGHT, DEFAULT_DENSE_WEIGHT, DEFAULT_RRF_K, DEFAULT_SCALED_DENSE_WEIGHT,
    Fused, Fusion, first_per_file, fuse, looks_like_code,
};
pub use snippet::{Snippet, snippet};

/// Which retrievers a search uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Hybrid,
    Dense,
    Lexical,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Hybrid, Mode::Dense, Mode::Lexical];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Hybrid => "hybrid",
            Mode::Dense => "dense",
            Mode::Lexical => "lexical",
        }
    }

    /// Whether the query must be embedded.
    pub fn needs_vector(self) -> bool {
        self != Mode::Lexical
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown mode `{s}` (hybrid, dense or lexical)"))
    }
}

/// Everything a search is asked, except the query vector.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: String,
    pub mode: Mode,
    /// Hits wanted.
    pub k: usize,
    pub filters: Vec<FilterExpr>,
    pub fusion: Fusion,
    /// Candidates each retriever contributes before fusion (at least `k`).
    pub candidates: usize,
    /// Drop chunks that overlap or repeat a better hit (see [`diversify::collapse`]).
    pub collapse: bool,
    /// MMR trade-off λ in [0, 1]; `None` = no MMR.
    pub mmr: Option<f32>,
    /// One hit per file (document-level ranking, as retrieval benchmarks count).
    pub per_file: bool,
}

/// The default number of candidates per retriever.
pub const DEFAULT_CANDIDATES: usize = 100;

impl SearchRequest {
    /// Checks everything that can be checked without a knowledge base, so a bad request
    /// fails before anything is opened.
    pub fn validate(&self) -> Result<()> {
        let query = self.query.trim();
        if query.is_empty() {
            return Err(Error::BadQuery("the query is empty".into()));
        }
        if self.k == 0 {
            return Err(Error::BadQuery("k must be at least 1".into()));
        }
        if let Some(l) = self.mmr
            && !(0.0..=1.0).contains(&l)
        {
            return Err(Error::BadQuery(format!(
                "MMR λ must be within 0 and 1, not {l}"
            )));
        }
        let weights = match self.fusion {
            Fusion::Weighted { dense_weight } | Fusion::Dbsf { dense_weight } => {
                vec![dense_weight]
            }
            Fusion::Scaled {
                dense_weight,
                code_dense_weight,
            } => vec![dense_weight, code_dense_weight],
            Fusion::Rrf { .. } => Vec::new(),
        };
        if let Some(w) = weights.iter().find(|w| !(0.0..=1.0).contains(*w)) {
            return Err(Error::BadQuery(format!(
                "the dense weight must be within 0 and 1, not {w}"
            )));
        }
        match self.fusion {
            Fusion::Rrf { k } if !(k.is_finite() && k >= 0.0) => {
                return Err(Error::BadQuery(format!("the RRF k must be ≥ 0, not {k}")));
            }
            _ => {}
        }
        if self.mode == Mode::Lexical && crate::lexical::query_terms(query).is_empty() {
            return Err(Error::BadQuery(
                "the query has no words BM25 can search for (only stop words or punctuation)"
                    .into(),
            ));
        }
        Ok(())
    }

    pub fn new(query: impl Into<String>, mode: Mode, k: usize) -> Self {
        Self {
            query: query.into(),
            mode,
            k,
            filters: Vec::new(),
            fusion: Fusion::default(),
            candidates: DEFAULT_CANDIDATES,
            collapse: true,
            mmr: None,
            per_file: false,
        }
    }
}

/// One search result; the JSON field set is the one `lore search --json` documents.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub chunk_id: String,
    pub path: String,
    pub start_line: usize,
    pub end_line: usize,
    pub heading: Option<String>,
    pub page: Option<u32>,
    pub score: f32,
    pub text: String,
    /// Where the chunk stood in each retriever's list (1-based), for explanations.
    #[serde(skip)]
    pub dense_rank: Option<usize>,
    #[serde(skip)]
    pub lexical_rank: Option<usize>,
}

/// Milliseconds spent per stage.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SearchTimings {
    pub dense_ms: f64,
    pub lexical_ms: f64,
    /// Fusion, payload fetch, collapse and MMR.
    pub assemble_ms: f64,
}

/// Hits plus what the caller should tell the user.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SearchResults {
    pub hits: Vec<Hit>,
    pub warnings: Vec<String>,
    pub timings: SearchTimings,
    /// The dense retriever's best cosine similarity for the query, before fusion: unlike the
    /// fused scores (normalised per query, so the top one is always near 1) it says how close
    /// the knowledge base comes to the question at all. `None` without a dense search.
    pub best_dense: Option<f32>,
}

/// Where a search's query vector comes from.
enum QueryVector<'a> {
    /// Embedded already, or none (lexical search).
    Given(Option<&'a [f32]>),
    /// To be embedded during the search.
    Embed(Box<dyn FnOnce() -> std::result::Result<Vec<f32>, lore_embed::Error> + Send + 'a>),
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

impl KnowledgeBase {
    /// Runs `request`; `vector` is the query's embedding, required unless the mode is lexical
    /// (and MMR is off: MMR compares stored vectors only, so it works in every mode).
    ///
    /// Fails with [`Error::BadQuery`] on an empty query or a missing vector, and
    /// [`Error::Empty`] when the knowledge base holds nothing.
    pub fn search(&self, request: &SearchRequest, vector: Option<&[f32]>) -> Result<SearchResults> {
        self.search_from(request, QueryVector::Given(vector))
    }

    /// As [`KnowledgeBase::search`], with the query's embedding made by `embed` (called only
    /// when the mode needs a vector). In hybrid mode the BM25 side runs on another thread while
    /// this one embeds: a query's embedding takes longer than the whole search behind it, the
    /// lexical side needs no vector, and the machine has a second core. An embedding failure
    /// is [`Error::Embed`].
    pub fn search_embedding(
        &self,
        request: &SearchRequest,
        embed: impl FnOnce() -> std::result::Result<Vec<f32>, lore_embed::Error> + Send,
    ) -> Result<SearchResults> {
        self.search_from(request, QueryVector::Embed(Box::new(embed)))
    }

    fn search_from(
        &self,
        request: &SearchRequest,
        source: QueryVector<'_>,
    ) -> Result<SearchResults> {
        request.validate()?;
        let query = request.query.trim();
        if self.manifest.files.is_empty() {
            return Err(Error::Empty(self.layout.dir.clone()));
        }
        let source = match (request.mode.needs_vector(), source) {
            (true, QueryVector::Given(None)) => {
                return Err(Error::BadQuery(format!(
                    "{} search needs the query's embedding",
                    request.mode.name()
                )));
            }
            (true, source) => source,
            // Lexical search never embeds.
            (false, _) => QueryVector::Given(None),
        };
        let mut results = SearchResults::default();
        let filter = filter::resolve(&request.filters, self.manifest.files.keys());
        if filter.paths.as_ref().is_some_and(Vec::is_empty) {
            results
                .warnings
                .push("no file in the knowledge base matches the path filter".into());
            return Ok(results);
        }
        let diversify = request.collapse || request.mmr.is_some();
        // Ask each retriever for more than k when hits may be dropped later.
        let depth = request
            .candidates
            .max(request.k * if diversify || request.per_file { 4 } else { 1 });

        let lexical_wanted = request.mode != Mode::Dense;
        let run_lexical = lexical_wanted && crate::lexical::has_terms(query);
        if lexical_wanted && !run_lexical {
            results.warnings.push(
                "the query has only stop words or punctuation: ranked by meaning alone".into(),
            );
        }
        let dense_side = |vector: Option<&[f32]>| -> Result<(Vec<ScoredId>, f64)> {
            let Some(v) = vector else {
                return Ok((Vec::new(), 0.0));
            };
            let t = Instant::now();
            Ok((self.vectors.search(v, depth, &filter)?, ms(t)))
        };
        let lexical_side = || -> Result<(Vec<ScoredId>, f64)> {
            if !run_lexical {
                return Ok((Vec::new(), 0.0));
            }
            let t = Instant::now();
            Ok((self.lexical.search(query, depth, &filter)?, ms(t)))
        };
        // Hybrid runs the two retrievers side by side: they share nothing, and the machine
        // has a core for each. With an embedding still to make, the lexical side runs during
        // it.
        let side_by_side = |dense: &(dyn Fn() -> Result<(Vec<ScoredId>, f64)> + Sync)| {
            std::thread::scope(|scope| {
                let lexical = scope.spawn(lexical_side);
                let dense = dense();
                let lexical = lexical.join().unwrap_or_else(|_| {
                    Err(Error::Store("the lexical search thread panicked".into()))
                });
                (dense, lexical)
            })
        };
        let (dense, lexical) = match source {
            QueryVector::Given(vector) if vector.is_some() && run_lexical => {
                side_by_side(&|| dense_side(vector))
            }
            QueryVector::Given(vector) => (dense_side(vector), lexical_side()),
            QueryVector::Embed(embed) => {
                let embed = std::sync::Mutex::new(Some(embed));
                // Called once; the Mutex only lets a FnOnce sit behind a shared closure.
                let embedded = || -> Result<(Vec<ScoredId>, f64)> {
                    let embed = embed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take()
                        .ok_or_else(|| Error::Store("the query was embedded twice".into()))?;
                    let vector = embed()?;
                    dense_side(Some(&vector))
                };
                if run_lexical {
                    side_by_side(&embedded)
                } else {
                    (embedded(), lexical_side())
                }
            }
        };
        let ((mut dense, dense_ms), (mut lexical, lexical_ms)) = (dense?, lexical?);
        results.timings.dense_ms = dense_ms;
        results.best_dense = dense.first().map(|d| d.score);
        results.timings.lexical_ms = lexical_ms;

        let t = Instant::now();
        if request.per_file {
            dense = first_per_file(dense);
            lexical = first_per_file(lexical);
        }
        // Fusion sees the same number of candidates from each side whatever the depth
        // fetched, so min-max normalisation spans comparable lists.
        dense.truncate(request.candidates.max(request.k));
        lexical.truncate(request.candidates.max(request.k));
        let fused = match request.mode {
            Mode::Hybrid => fuse(
                &dense,
                &lexical,
                request.fusion,
                request.per_file,
                &request.query,
            ),
            Mode::Dense => fusion::single(&dense, true),
            Mode::Lexical => fusion::single(&lexical, false),
        };
        let pool = if diversify { request.k * 4 } else { request.k };
        let fused: Vec<Fused> = fused.into_iter().take(pool).collect();
        let ids: Vec<_> = fused.iter().map(|f| f.id.clone()).collect();
        let stored = self.vectors.get(&ids, request.mmr.is_some())?;
        let mut by_id: std::collections::HashMap<_, _> = stored
            .into_iter()
            .map(|s| (s.chunk.id.clone(), s))
            .collect();
        let mut candidates = Vec::with_capacity(fused.len());
        let mut ranks = std::collections::HashMap::new();
        for f in fused {
            // A chunk in tantivy but not in the vector store would be an inconsistency the
            // audit reports; a search just skips it.
            if let Some(stored) = by_id.remove(&f.id) {
                ranks.insert(f.id.clone(), (f.dense_rank, f.lexical_rank));
                candidates.push(Candidate {
                    score: f.score,
                    stored,
                });
            }
        }
        if request.collapse {
            // MMR picks among all the collapsed candidates; without it only the top k matter.
            let limit = if request.mmr.is_some() {
                usize::MAX
            } else {
                request.k
            };
            candidates = diversify::collapse(candidates, limit);
        }
        candidates = match request.mmr {
            Some(lambda) => diversify::mmr(candidates, lambda, request.k),
            None => candidates.into_iter().take(request.k).collect(),
        };
        results.hits = candidates
            .into_iter()
            .map(|c| {
                let chunk = c.stored.chunk;
                let (dense_rank, lexical_rank) = ranks.get(&chunk.id).copied().unwrap_or_default();
                Hit {
                    chunk_id: chunk.id.0,
                    path: chunk.path,
                    start_line: chunk.start_line,
                    end_line: chunk.end_line,
                    heading: chunk.heading,
                    page: chunk.page,
                    score: c.score,
                    text: chunk.text,
                    dense_rank,
                    lexical_rank,
                }
            })
            .collect();
        results.timings.assemble_ms = ms(t);
        Ok(results)
    }

    /// The query's ranking terms, to mark in snippets of `text`.
    pub fn highlight(&self, query: &str, text: &str, max_bytes: usize) -> Snippet {
        let terms: HashSet<String> = crate::lexical::ranking_terms(query).into_iter().collect();
        snippet(text, &crate::lexical::tokens(text), &terms, max_bytes)
    }
}
