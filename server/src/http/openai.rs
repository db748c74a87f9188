//! The OpenAI-compatible endpoints `/v1/chat/completions` (plain and streamed) and
//! `/v1/models`, in the shapes OpenAI's clients expect (`/v1/embeddings` is in
//! `embeddings.rs`).
//!
//! `model` names what answers: `default` (always the base language model, or the
//! embedding model on `/v1/embeddings`), the model's own name, or a loaded adapter's.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lore_embed::Embedder;
use lore_finetune::ChatRequest;
use lore_finetune::{Generation, MAX_TOP_LOGPROBS};
use lore_finetune::{Message, Role};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::ask::{MAX_TOKENS, Usage, finish_reason, sampling};
use super::error::{ApiError, ApiJson, ApiResult};
use super::search::OneOrMany;
use super::state::AppState;
use super::stream::{Relay, collect, relay};

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatMessageIn {
    /// `system` (or `developer`), `user` or `assistant`.
    pub role: String,
    /// Text, or a list of `{"type": "text", "text": …}` parts.
    #[schema(value_type = Object)]
    pub content: Option<Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// An OpenAI chat completion request. `response_format: {"type": "json_object"}` constrains
/// the reply to one JSON object and `logprobs`/`top_logprobs` return log-probabilities (local
/// model only). Fields that would change the answer in ways lore does not implement (tools,
/// JSON schemas, penalties, logit bias, `n` > 1) are refused with a 400 naming the field;
/// fields that change nothing here (`user`, `store`, `metadata`, …) are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatCompletionBody {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessageIn>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub stop: Option<OneOrMany>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub n: Option<usize>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub tools: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub functions: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub function_call: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub logit_bias: Option<Value>,
}

impl ChatCompletionBody {
    /// Refuses what lore would otherwise silently not do.
    fn refuse_unsupported(&self) -> ApiResult<()> {
        let set = |v: &Option<Value>| {
            v.as_ref().is_some_and(|v| match v {
                Value::Null => false,
                Value::Array(a) => !a.is_empty(),
                Value::Object(o) => !o.is_empty(),
                _ => true,
            })
        };
        for (param, value) in [
            ("tools", &self.tools),
            ("tool_choice", &self.tool_choice),
            ("functions", &self.functions),
            ("function_call", &self.function_call),
        ] {
            let none = matches!(value, Some(Value::String(s)) if s == "none");
            if set(value) && !none {
                return Err(ApiError::unsupported(
                    param,
                    format!("`{param}`: lore's models do not call tools or functions"),
                ));
            }
        }
        self.json_mode()?;
        self.logprobs()?;
        for (param, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::unsupported(
                    param,
                    format!("`{param}` is not supported (lore applies its own repeat penalty)"),
                ));
            }
        }
        if set(&self.logit_bias) {
            return Err(ApiError::unsupported(
                "logit_bias",
                "`logit_bias` is not supported",
            ));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::unsupported("n", "only `n: 1` is supported"));
        }
        Ok(())
    }
}

impl ChatCompletionBody {
    /// Whether `response_format` asks for a JSON object (`text` and no format: plain text).
    fn json_mode(&self) -> ApiResult<bool> {
        let Some(format) = self.response_format.as_ref().filter(|f| !f.is_null()) else {
            return Ok(false);
        };
        match format.get("type").and_then(Value::as_str) {
            Some("text") => Ok(false),
            Some("json_object") => Ok(true),
            kind => Err(ApiError::unsupported(
                "response_format",
                format!(
                    "response_format `{}`: lore supports `text` and `json_object` (no JSON schemas)",
                    kind.unwrap_or("?")
                ),
            )),
        }
    }

    /// How many alternatives per token `logprobs`/`top_logprobs` ask for; `None`: no
    /// log-probabilities.
    fn logprobs(&self) -> ApiResult<Option<usize>> {
        let top = self.top_logprobs.unwrap_or(0) as usize;
        if top > MAX_TOP_LOGPROBS {
            return Err(ApiError::bad_request(format!(
                "`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}"
            ))
            .param("top_logprobs"));
        }
        match self.logprobs {
            Some(true) => Ok(Some(top)),
            _ if top > 0 => Err(
                ApiError::bad_request("`top_logprobs` needs `logprobs: true`")
                    .param("top_logprobs"),
            ),
            _ => Ok(None),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The adapter `model` names (`None`: the base model). Unknown names are 404, as OpenAI
/// answers them.
fn language_model(state: &AppState, model: Option<&str>) -> ApiResult<Option<String>> {
    let generator = &state.models.generator;
    let served = &state.config.served_model_names;
    match model.map(str::trim) {
        None | Some("") | Some("default") => Ok(None),
        Some(m) if m == generator.name() || served.iter().any(|s| s == m) => Ok(None),
        Some(m) => {
            if let Some(w) = state.models.local()
                && w.adapters().contains_key(m)
            {
                return Ok(Some(m.to_string()));
            }
            if m == state.models.embedder.info().name {
                return Err(ApiError::bad_request(format!(
                    "`{m}` is an embedding model; use /v1/embeddings"
                )));
            }
            if state.config.accept_any_model {
                return Ok(None);
            }
            Err(ApiError::not_found(format!(
                "the model `{m}` does not exist: use `default`, `{}` or a loaded adapter (GET /v1/models)",
                generator.name()
            ))
            .param("model")
            .code("model_not_found"))
        }
    }
}

fn message_text(i: usize, content: Option<Value>) -> ApiResult<String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(Value::Array(parts)) => parts
            .into_iter()
            .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                (Some("text"), Some(Value::String(t))) => Ok(t.clone()),
                _ => Err(ApiError::bad_request(format!(
                    "messages[{i}].content: only text parts ({{\"type\": \"text\", \"text\": …}}) are supported"
                ))),
            })
            .collect(),
        Some(_) => Err(ApiError::bad_request(format!(
            "messages[{i}].content must be a string or a list of text parts"
        ))),
    }
}

fn messages(input: Vec<ChatMessageIn>) -> ApiResult<Vec<Message>> {
    if input.is_empty() {
        return Err(ApiError::bad_request("`messages` is empty"));
    }
    let messages = input
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "messages[{i}].role `{other}` is not supported (system, developer, user, assistant)"
                    )));
                }
            };
            Ok(Message::new(role, message_text(i, m.content)?))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    if messages.last().is_some_and(|m| m.role == Role::Assistant) {
        return Err(ApiError::bad_request(
            "the last message is the assistant's: end with a user message",
        ));
    }
    Ok(messages)
}

/// Creates a chat completion (OpenAI's shape); `stream: true` sends `chat.completion.chunk`
/// events and ends with `data: [DONE]`.
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatCompletionBody,
    responses((status = 200, description = "a chat.completion, or an event stream of chat.completion.chunk"),
              (status = 400, description = "bad messages or settings"), (status = 404, description = "unknown model"),
              (status = 429, description = "the language model is full")))]
pub async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ChatCompletionBody>,
) -> ApiResult<Response> {
    body.refuse_unsupported()?;
    let json = body.json_mode()?;
    let logprobs = body.logprobs()?;
    let adapter = language_model(&state, body.model.as_deref())?;
    let max_tokens = body
        .max_completion_tokens
        .or(body.max_tokens)
        .unwrap_or(256);
    if !(1..=MAX_TOKENS).contains(&max_tokens) {
        return Err(ApiError::bad_request(format!(
            "`max_tokens` must be between 1 and {MAX_TOKENS}"
        )));
    }
    let sampling = sampling(
        &state,
        body.temperature.unwrap_or(0.0),
        body.top_p.unwrap_or(1.0),
        body.seed,
    )?;
    let stop = body.stop.map(OneOrMany::into_vec).unwrap_or_default();
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::bad_request("`stop` holds an empty string"));
    }
    let messages = messages(body.messages)?;
    let permit = state.lm_limit.admit()?;
    let events = state.models.generator.chat(ChatRequest {
        messages,
        max_tokens,
        sampling,
        stop,
        adapter,
        end: Default::default(),
        json,
        logprobs,
    })?;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let model = body.model.unwrap_or_else(|| "default".into());
    let created = now();
    if body.stream {
        let chunks = ChunkRelay {
            id,
            model,
            created,
            started: false,
            include_usage: body.stream_options.is_some_and(|o| o.include_usage),
        };
        let stream = relay(&state, events, permit, chunks);
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let g = collect(&state, events, permit).await?;
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": g.text},
            "finish_reason": finish_reason(&g),
            "logprobs": logprobs_object(&g),
        }],
        "usage": Usage::from(&g),
    }))
    .into_response())
}

/// OpenAI's `logprobs` object for a generation that has them; null otherwise.
fn logprobs_object(g: &Generation) -> Value {
    g.logprobs.as_ref().map_or(
        Value::Null,
        |list| json!({"content": list, "refusal": null}),
    )
}

struct ChunkRelay {
    id: String,
    model: String,
    created: u64,
    started: bool,
    include_usage: bool,
}

impl ChunkRelay {
    fn chunk(
        &self,
        delta: Value,
        finish: Option<String>,
        logprobs: Value,
    ) -> Result<SseEvent, Infallible> {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
        });
        // As OpenAI does: with `include_usage`, every chunk but the last has `usage: null`.
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        Ok(SseEvent::default().data(chunk.to_string()))
    }
}

impl Relay for ChunkRelay {
    type Out = Result<SseEvent, Infallible>;

    fn text(&mut self, piece: &str) -> Option<Self::Out> {
        // OpenAI's first chunk carries the role.
        let delta = if self.started {
            json!({"content": piece})
        } else {
            self.started = true;
            json!({"role": "assistant", "content": piece})
        };
        Some(self.chunk(delta, None, Value::Null))
    }

    fn done(self, result: Result<Generation, ApiError>) -> Vec<Self::Out> {
        let mut out = Vec::new();
        match result {
            Ok(g) => {
                // An empty answer still says whose it is before it finishes.
                let delta = if self.started {
                    json!({})
                } else {
                    json!({"role": "assistant", "content": ""})
                };
                // Text streams as it becomes valid UTF-8, not token by token, so the
                // log-probabilities come whole with the finishing chunk (clients append
                // each chunk's list, so they end up with all of them).
                out.push(self.chunk(delta, Some(finish_reason(&g)), logprobs_object(&g)));
                if self.include_usage {
                    out.push(Ok(SseEvent::default().data(
                        json!({
                            "id": self.id, "object": "chat.completion.chunk",
                            "created": self.created, "model": self.model,
                            "choices": [], "usage": Usage::from(&g),
                        })
                        .to_string(),
                    )));
                }
            }
            // OpenAI's clients raise an error for a chunk that carries `error`.
            Err(e) => out.push(Ok(SseEvent::default().data(e.body().to_string()))),
        }
        out.push(Ok(SseEvent::default().data("[DONE]")));
        out
    }
}

/// Every name `model` may take, as OpenAI's model objects plus lore's `kind` and the
/// context length in tokens.
fn model_entries(state: &AppState) -> Vec<Value> {
    // When the models were loaded: the server's start.
    let created = now().saturating_sub(state.started.elapsed().as_secs());
    let generator = &state.models.generator;
    let embedder = state.models.embedder.info();
    let entry = |id: &str, kind: &str, context: usize| {
        json!({"id": id, "object": "model", "created": created, "owned_by": "lore",
               "kind": kind, "context_length": context})
    };
    let mut data = vec![
        entry("default", "language", generator.context()),
        entry(generator.name(), "language", generator.context()),
    ];
    data.extend(
        state
            .config
            .served_model_names
            .iter()
            .map(|name| entry(name, "language", generator.context())),
    );
    data.push(entry(&embedder.name, "embedding", embedder.max_seq_len));
    if let Some(w) = state.models.local() {
        data.extend(
            w.adapters()
                .keys()
                .map(|name| entry(name, "adapter", generator.context())),
        );
    }
    data
}

/// Lists what `model` may name: `default`, the language model and its `--served-model-name`
/// aliases, the embedding model and each loaded adapter.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, description = "OpenAI's model list")))]
pub async fn models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": model_entries(&state)}))
}

/// One model of the list, by name.
#[utoipa::path(get, path = "/v1/models/{id}", params(("id" = String, Path, description = "a model name")),
    responses((status = 200, description = "OpenAI's model object"), (status = 404, description = "no such model")))]
pub async fn model(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<Json<Value>> {
    model_entries(&state)
        .into_iter()
        .find(|m| m["id"] == id.as_str())
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!("the model `{id}` does not exist (GET /v1/models)"))
                .param("model")
                .code("model_not_found")
        })
}
