//! `POST /v1/embeddings` in OpenAI's shape: the same vectors `lore embed` prints, as floats
//! or base64.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use base64::Engine;
use lore_embed::Embedder;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::error::{ApiError, ApiJson, ApiResult};
use super::state::AppState;

/// Texts one embeddings request may carry.
pub(super) const MAX_INPUTS: usize = 2048;
/// Texts sent to the model at a time for one request; other requests' texts get in between.
pub(super) const FAIR_SLICE: usize = 16;

#[derive(Debug, Deserialize, ToSchema)]
pub struct EmbeddingsBody {
    /// A text or a list of texts.
    #[schema(value_type = Object)]
    pub input: Value,
    #[serde(default)]
    pub model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Must equal the model's dimension if given (lore does not shorten vectors).
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// Cut a text longer than the model's window instead of refusing it (TEI's `truncate`;
    /// default: the server's `--auto-truncate`, off).
    #[serde(default)]
    pub truncate: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingOut {
    pub object: &'static str,
    pub index: usize,
    #[schema(value_type = Object)]
    pub embedding: Value,
}

/// The texts of a request's `field` (`input` for OpenAI, `inputs` for TEI): a string or a
/// list of strings, none empty, at most [`MAX_INPUTS`].
pub(super) fn texts(input: Value, field: &str) -> ApiResult<Vec<String>> {
    let texts = match input {
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::bad_request(format!(
                    "{field}[{i}] is not a string (token-id input is not supported)"
                ))),
            })
            .collect::<ApiResult<_>>()?,
        _ => {
            return Err(ApiError::bad_request(format!(
                "`{field}` must be a string or a list of strings"
            )));
        }
    };
    if texts.is_empty() {
        return Err(ApiError::bad_request(format!("`{field}` is empty")));
    }
    if texts.len() > MAX_INPUTS {
        return Err(ApiError::bad_request(format!(
            "`{field}` holds {} texts; at most {MAX_INPUTS} per request",
            texts.len()
        )));
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(ApiError::bad_request(format!("{field}[{i}] is empty")));
    }
    Ok(texts)
}

/// Refuses a text longer than the model's window (what TEI and OpenAI do) unless the caller
/// or the server (`--auto-truncate`) allows cutting it: a silently cut text gets a vector
/// for its start only.
pub(super) async fn check_lengths(
    state: &AppState,
    texts: &[String],
    field: &str,
    truncate: bool,
) -> ApiResult<()> {
    if truncate {
        return Ok(());
    }
    let max = state.models.embedder.info().max_seq_len;
    let (shared, texts) = (state.clone(), texts.to_vec());
    // The tokenizer truncates at the model's window and keeps the rest as overflow.
    let first_too_long = tokio::task::spawn_blocking(move || {
        texts.iter().position(|t| {
            shared
                .models
                .tokenizer
                .encode(t.as_str(), true)
                .is_ok_and(|e| !e.get_overflowing().is_empty())
        })
    })
    .await
    .map_err(ApiError::internal)?;
    match first_too_long {
        Some(i) => Err(ApiError::bad_request(format!(
            "{field}[{i}] is longer than the model's window of {max} tokens: shorten it, or \
             send `truncate: true` (the server's --auto-truncate makes that the default)"
        ))),
        None => Ok(()),
    }
}

/// Embeds `texts` in order, [`FAIR_SLICE`] at a time, and counts their tokens.
pub(super) async fn embed_texts(
    state: &AppState,
    texts: Vec<String>,
) -> ApiResult<(Vec<Vec<f32>>, usize)> {
    let _permit = state.embed_limit.admit()?;
    // One model serves every request: a large request goes to it a slice at a time, so a
    // search's query waits for one slice, not for 2,048 texts (it waited 109 s). When the
    // client goes away, this future is dropped and the slices not yet sent never run.
    let mut vectors = Vec::with_capacity(texts.len());
    let mut tokens = 0;
    for slice in texts.chunks(FAIR_SLICE) {
        // The state handle, not the tokenizer: cloning a tokenizer copies its vocabulary.
        let shared = state.clone();
        let slice = slice.to_vec();
        let (v, t) = tokio::task::spawn_blocking(move || {
            let models = &shared.models;
            let t: usize = slice
                .iter()
                .map(|t| {
                    models
                        .tokenizer
                        .encode(t.as_str(), true)
                        .map_or(0, |e| e.len())
                })
                .sum();
            models.embedder.embed(&slice).map(|v| (v, t))
        })
        .await??;
        vectors.extend(v);
        tokens += t;
    }
    state
        .metrics
        .texts_embedded
        .fetch_add(vectors.len() as u64, Ordering::Relaxed);
    Ok((vectors, tokens))
}

/// Embeds texts with the knowledge base's embedding model: the same vectors `lore embed`
/// prints.
#[utoipa::path(post, path = "/v1/embeddings", request_body = EmbeddingsBody,
    responses((status = 200, description = "OpenAI's embedding list"), (status = 400, description = "bad input"),
              (status = 404, description = "unknown model"), (status = 429, description = "the embedding model is full")))]
pub async fn embeddings(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<EmbeddingsBody>,
) -> ApiResult<Json<Value>> {
    let info = state.models.embedder.info().clone();
    match body.model.as_deref().map(str::trim) {
        None | Some("") | Some("default") => {}
        Some(m) if m == info.name => {}
        // `--accept-any-model`: clients' defaults (`text-embedding-3-small`) get lore's.
        Some(_) if state.config.accept_any_model => {}
        Some(m) => {
            return Err(ApiError::not_found(format!(
                "the embedding model `{m}` does not exist here: use `default` or `{}`",
                info.name
            )));
        }
    }
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "encoding_format `{other}`: use float or base64"
            )));
        }
    };
    if let Some(d) = body.dimensions
        && d != info.dim
    {
        return Err(ApiError::bad_request(format!(
            "`dimensions` {d}: {} gives {}-dimensional vectors only",
            info.name, info.dim
        )));
    }
    let texts = texts(body.input, "input")?;
    let truncate = body.truncate.unwrap_or(state.config.auto_truncate);
    check_lengths(&state, &texts, "input", truncate).await?;
    let (vectors, tokens) = embed_texts(&state, texts).await?;
    let data: Vec<EmbeddingOut> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| EmbeddingOut {
            object: "embedding",
            index,
            embedding: if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            },
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": info.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}
