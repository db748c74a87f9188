//! `POST /v1/search`, and the retrieval `POST /v1/ask` shares.

use std::str::FromStr;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use lore_embed::Embedder;
use lore_retrieve::{FilterExpr, Hit, Mode, SearchRequest};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiJson, ApiResult};
use super::state::AppState;

/// Hits a search may ask for.
const MAX_K: usize = 1000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    /// What to look for, in your own words.
    pub query: String,
    /// Hits wanted (1–1000).
    #[serde(default = "default_k")]
    pub k: usize,
    /// `hybrid` (dense + BM25 fused), `dense` or `lexical`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Restrictions, all of which must hold: `path:PATTERN`, `type:KIND[,KIND]`,
    /// `heading:WORDS`, `tag:KEY=VALUE`. One string or a list.
    #[serde(default)]
    pub filter: Option<OneOrMany>,
}

fn default_k() -> usize {
    5
}

/// A string or a list of strings.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// One passage found.
#[derive(Debug, Serialize, ToSchema)]
pub struct HitOut {
    pub chunk_id: String,
    /// The file, as stored (its canonical path).
    pub path: String,
    pub start_line: usize,
    pub end_line: usize,
    pub heading: Option<String>,
    /// For PDFs.
    pub page: Option<u32>,
    pub score: f32,
    pub text: String,
}

impl From<Hit> for HitOut {
    fn from(h: Hit) -> Self {
        Self {
            chunk_id: h.chunk_id,
            path: h.path,
            start_line: h.start_line,
            end_line: h.end_line,
            heading: h.heading,
            page: h.page,
            score: h.score,
            text: h.text,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    pub hits: Vec<HitOut>,
    pub mode: String,
    pub warnings: Vec<String>,
}

/// Parses a mode name (default hybrid).
pub fn parse_mode(mode: Option<&str>) -> ApiResult<Mode> {
    mode.map_or(Ok(Mode::Hybrid), |m| {
        Mode::from_str(m).map_err(ApiError::bad_request)
    })
}

/// Searches the knowledge base. An empty (or not yet created) one gives no hits and a
/// warning, not an error: a new server has nothing ingested yet.
/// What a search found, with what the caller should tell the user.
#[derive(Debug, Default)]
pub struct Found {
    pub hits: Vec<Hit>,
    pub warnings: Vec<String>,
    /// The dense retriever's best cosine similarity (the grounding gate reads it).
    pub best_dense: Option<f32>,
}

pub async fn retrieve(state: &AppState, request: SearchRequest) -> ApiResult<Found> {
    request.validate()?;
    if let Some(problem) = state.kb.problem() {
        return Err(ApiError::unavailable(problem));
    }
    let empty = state
        .read_kb(|kb| kb.is_none_or(|kb| kb.manifest().files.is_empty()))
        .await?;
    if empty {
        return Ok(Found {
            warnings: vec!["the knowledge base holds no documents yet: ingest some first".into()],
            ..Found::default()
        });
    }
    // Admitted before the knowledge base is touched, so a full model is a 429 at once.
    let permit = if request.mode.needs_vector() {
        Some(state.embed_limit.admit()?)
    } else {
        None
    };
    let embedder = state.models.embedder.clone();
    let counted = state.clone();
    state
        .read_kb(move |kb| {
            let Some(kb) = kb else {
                return Ok(Found::default());
            };
            // The query is embedded inside the search, while its BM25 side runs.
            let query = request.query.clone();
            let results = kb.search_embedding(&request, move || {
                let _permit = permit;
                let vector = embedder.embed(std::slice::from_ref(&query))?.pop();
                counted
                    .metrics
                    .texts_embedded
                    .fetch_add(1, Ordering::Relaxed);
                vector.ok_or_else(|| lore_embed::Error::Runtime("no vector for the query".into()))
            })?;
            Ok(Found {
                hits: results.hits,
                warnings: results.warnings,
                best_dense: results.best_dense,
            })
        })
        .await?
}

/// Finds the passages that best match a query.
#[utoipa::path(post, path = "/v1/search", request_body = SearchBody,
    responses((status = 200, body = SearchResponse), (status = 400, description = "bad query, mode, k or filter"),
              (status = 429, description = "the embedding model is full")))]
pub async fn search(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SearchBody>,
) -> ApiResult<Json<SearchResponse>> {
    if body.query.trim().is_empty() {
        return Err(ApiError::bad_request(
            "`query` is empty: say what to look for",
        ));
    }
    if body.k == 0 || body.k > MAX_K {
        return Err(ApiError::bad_request(format!(
            "`k` must be between 1 and {MAX_K}"
        )));
    }
    let mode = parse_mode(body.mode.as_deref())?;
    let filters = body
        .filter
        .map(OneOrMany::into_vec)
        .unwrap_or_default()
        .iter()
        .map(|f| FilterExpr::parse(f))
        .collect::<Result<Vec<_>, _>>()?;
    let mut request = SearchRequest::new(body.query, mode, body.k);
    request.filters = filters;
    let Found { hits, warnings, .. } = retrieve(&state, request).await?;
    Ok(Json(SearchResponse {
        hits: hits.into_iter().map(HitOut::from).collect(),
        mode: mode.name().to_string(),
        warnings,
    }))
}
