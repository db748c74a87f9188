//! Hugging Face Text Embeddings Inference's own routes over the knowledge base's embedding
//! model: `POST /embed`, `GET /info` and `POST /tokenize` in TEI's shapes, which LangChain's
//! and LlamaIndex's TEI classes and `huggingface_hub` call. Errors carry TEI's body,
//! `{"error", "error_type"}`, and its statuses (413 for input that fails validation, 422 for
//! a body that does not parse, 429 when the model is full).
//!
//! What lore cannot do as asked is refused, not ignored: `normalize: false` (the model's
//! configuration normalises), left truncation and prompts.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lore_embed::{Embedder, Pooling};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::embeddings::{FAIR_SLICE, MAX_INPUTS, check_lengths, embed_texts, texts};
use super::error::ApiError;
use super::state::AppState;

/// A failure in TEI's shape.
#[derive(Debug)]
pub struct TeiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl TeiError {
    /// Input TEI would not embed: 413 and `Validation`, as TEI answers.
    fn validation(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "Validation",
            message: message.into(),
        }
    }

    fn unparsable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            kind: "Validation",
            message: message.into(),
        }
    }
}

impl From<ApiError> for TeiError {
    fn from(e: ApiError) -> Self {
        let kind = match e.status {
            StatusCode::TOO_MANY_REQUESTS => "Overloaded",
            StatusCode::SERVICE_UNAVAILABLE => "Unhealthy",
            s if s.is_server_error() => "Backend",
            _ => "Validation",
        };
        let status = if kind == "Validation" {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            e.status
        };
        Self {
            status,
            kind,
            message: e.message,
        }
    }
}

impl IntoResponse for TeiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "error_type": self.kind});
        (self.status, Json(body)).into_response()
    }
}

type TeiResult<T> = Result<T, TeiError>;

fn parse<T: DeserializeOwned>(body: &Bytes) -> TeiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| TeiError::unparsable(format!("the request body is not valid: {e}")))
}

fn yes() -> bool {
    true
}

/// `POST /embed`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EmbedBody {
    /// A text or a list of texts.
    #[schema(value_type = Object)]
    pub inputs: Value,
    /// Must be true: the model's configuration normalises its vectors.
    #[serde(default = "yes")]
    pub normalize: bool,
    /// Cut inputs longer than the model's window instead of refusing them.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// `Right` only.
    #[serde(default)]
    pub truncation_direction: Option<String>,
    /// Not supported: the model has no configured prompts.
    #[serde(default)]
    pub prompt_name: Option<String>,
}

/// The embeddings of `inputs`, a list of vectors in input order (TEI's `/embed`).
#[utoipa::path(post, path = "/embed", request_body = EmbedBody,
    responses((status = 200, description = "one vector per input"),
              (status = 413, description = "input too long or otherwise invalid"),
              (status = 422, description = "a body that does not parse"),
              (status = 429, description = "the embedding model is full")))]
pub async fn embed(State(state): State<AppState>, body: Bytes) -> TeiResult<Json<Value>> {
    let body: EmbedBody = parse(&body)?;
    if !body.normalize {
        return Err(TeiError::validation(
            "`normalize: false` is not supported: this model's configuration normalises its \
             vectors",
        ));
    }
    if let Some(d) = body
        .truncation_direction
        .as_deref()
        .filter(|d| !d.eq_ignore_ascii_case("right"))
    {
        return Err(TeiError::validation(format!(
            "truncation_direction `{d}`: lore truncates on the right only"
        )));
    }
    if let Some(p) = body.prompt_name {
        return Err(TeiError::validation(format!(
            "prompt_name `{p}`: this model has no configured prompts"
        )));
    }
    let texts = texts(body.inputs, "inputs")?;
    let truncate = body.truncate.unwrap_or(state.config.auto_truncate);
    check_lengths(&state, &texts, "inputs", truncate).await?;
    let (vectors, _) = embed_texts(&state, texts).await?;
    Ok(Json(json!(vectors)))
}

/// `GET /info`: the model and the server's limits, in TEI's shape.
#[utoipa::path(get, path = "/info", responses((status = 200, description = "TEI's info object")))]
pub async fn info(State(state): State<AppState>) -> Json<Value> {
    let model = state.models.embedder.info();
    let pooling = match model.pooling {
        Pooling::Mean => "mean",
        Pooling::Cls => "cls",
    };
    Json(json!({
        "model_id": model.name,
        "model_sha": null,
        "model_dtype": "float32",
        "model_type": {"embedding": {"pooling": pooling}},
        "max_concurrent_requests": state.config.embed_concurrency,
        "max_input_length": model.max_seq_len,
        "max_batch_tokens": FAIR_SLICE * model.max_seq_len,
        "max_batch_requests": null,
        "max_client_batch_size": MAX_INPUTS,
        "auto_truncate": state.config.auto_truncate,
        "tokenization_workers": 1,
        "version": env!("CARGO_PKG_VERSION"),
        "sha": null,
        "docker_label": null,
    }))
}

/// `POST /tokenize`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenizeBody {
    /// A text or a list of texts.
    #[schema(value_type = Object)]
    pub inputs: Value,
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
    /// Not supported: the model has no configured prompts.
    #[serde(default)]
    pub prompt_name: Option<String>,
}

/// The model's tokens for each input: `{id, text, special, start, stop}` with byte offsets
/// into the input (`null` for special tokens), as TEI's `/tokenize`. A text longer than the
/// model's window gives the tokens the model reads, up to the window.
#[utoipa::path(post, path = "/tokenize", request_body = TokenizeBody,
    responses((status = 200, description = "one token list per input"),
              (status = 413, description = "invalid input")))]
pub async fn tokenize(State(state): State<AppState>, body: Bytes) -> TeiResult<Json<Value>> {
    let body: TokenizeBody = parse(&body)?;
    if let Some(p) = body.prompt_name {
        return Err(TeiError::validation(format!(
            "prompt_name `{p}`: this model has no configured prompts"
        )));
    }
    let texts = texts(body.inputs, "inputs")?;
    let special = body.add_special_tokens;
    let tokens = tokio::task::spawn_blocking(move || {
        texts
            .iter()
            .map(|text| {
                let encoding = state
                    .models
                    .tokenizer
                    .encode(text.as_str(), special)
                    .map_err(|e| ApiError::internal(format!("tokenizing: {e}")))?;
                let tokens: Vec<Value> = encoding
                    .get_ids()
                    .iter()
                    .zip(encoding.get_tokens())
                    .zip(encoding.get_offsets())
                    .zip(encoding.get_special_tokens_mask())
                    .map(|(((id, token), (start, stop)), mask)| {
                        let piece = (*mask == 0).then(|| text.get(*start..*stop)).flatten();
                        match piece {
                            Some(piece) => json!({"id": id, "text": piece, "special": false,
                                                  "start": start, "stop": stop}),
                            None => json!({"id": id, "text": token, "special": *mask != 0,
                                           "start": null, "stop": null}),
                        }
                    })
                    .collect();
                Ok(Value::Array(tokens))
            })
            .collect::<Result<Vec<Value>, ApiError>>()
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(Value::Array(tokens)))
}
