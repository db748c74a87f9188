//! `POST /v1/ask`: retrieve, build the in-context prompt, answer with citations; streamed
//! as Server-Sent Events when asked.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lore_finetune::generate::Generation;
use lore_finetune::generator::ChatRequest;
use lore_finetune::sampling::SamplingConfig;
use lore_retrieve::SearchRequest;
use lore_retrieve::prompt::{Citation, FewShot, Prompt, PromptOptions, build};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_stream::StreamExt;
use utoipa::ToSchema;

use super::error::{ApiError, ApiJson, ApiResult};
use super::search::{parse_mode, retrieve};
use super::state::AppState;
use super::stream::{Relay, collect, relay};
use crate::answer;

/// Tokens an answer may have.
pub const MAX_TOKENS: usize = 4096;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AskBody {
    pub question: String,
    /// Passages to put in the prompt (1–50).
    #[serde(default = "default_k")]
    pub k: usize,
    /// `hybrid`, `dense` or `lexical` retrieval.
    #[serde(default)]
    pub mode: Option<String>,
    /// Worked examples shown before the question.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub few_shot: Vec<FewShot>,
    /// Ask the model to reason step by step first.
    #[serde(default)]
    pub cot: bool,
    /// Replaces the default system message.
    #[serde(default)]
    pub system: Option<String>,
    /// A loaded adapter's name; absent, empty or `default`: the base model.
    #[serde(default)]
    pub adapter: Option<String>,
    /// 0 = greedy.
    #[serde(default)]
    pub temperature: f32,
    /// Makes sampling (temperature > 0) repeatable; absent, each request draws its own.
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Send Server-Sent Events: `sources`, `token`…, then `done` (or `error`).
    #[serde(default)]
    pub stream: bool,
}

fn default_k() -> usize {
    3
}

fn default_max_tokens() -> usize {
    256
}

/// A passage given to the model, with its text (for showing it).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Source {
    pub n: usize,
    pub path: String,
    pub start_line: usize,
    pub end_line: usize,
    pub chunk_id: String,
    /// The answer cites nothing by number, and this is the passage it draws on.
    pub inferred: bool,
    pub heading: Option<String>,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl From<&Generation> for Usage {
    fn from(g: &Generation) -> Self {
        Self {
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion_tokens,
            total_tokens: g.prompt_tokens + g.completion_tokens,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AskResponse {
    pub answer: String,
    /// The passages the answer used.
    pub citations: Vec<Source>,
    /// Every passage the prompt held.
    pub sources: Vec<Source>,
    pub usage: Usage,
    pub model: String,
    /// `stop` or `length`.
    pub finish_reason: String,
    pub warnings: Vec<String>,
}

/// The texts and headings of the passages a prompt holds, by chunk id.
struct Passages(HashMap<String, (Option<String>, String)>);

impl Passages {
    fn source(&self, c: &Citation) -> Source {
        let (heading, text) = self.0.get(&c.chunk_id).cloned().unwrap_or_default();
        Source {
            n: c.n,
            path: c.path.clone(),
            start_line: c.start_line,
            end_line: c.end_line,
            chunk_id: c.chunk_id.clone(),
            inferred: c.inferred,
            heading,
            text,
        }
    }
    fn sources(&self, cs: &[Citation]) -> Vec<Source> {
        cs.iter().map(|c| self.source(c)).collect()
    }
}

/// Answers a question from the knowledge base, citing the passages used.
#[utoipa::path(post, path = "/v1/ask", request_body = AskBody,
    responses((status = 200, body = AskResponse, description = "JSON, or with `stream` an event stream"),
              (status = 400, description = "bad question or settings"),
              (status = 404, description = "no adapter of that name is loaded"),
              (status = 429, description = "a model is full")))]
pub async fn ask(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<AskBody>,
) -> ApiResult<Response> {
    if body.question.trim().is_empty() {
        return Err(ApiError::bad_request("`question` is empty"));
    }
    if !(1..=50).contains(&body.k) {
        return Err(ApiError::bad_request("`k` must be between 1 and 50"));
    }
    if !(1..=MAX_TOKENS).contains(&body.max_tokens) {
        return Err(ApiError::bad_request(format!(
            "`max_tokens` must be between 1 and {MAX_TOKENS}"
        )));
    }
    let adapter = check_adapter(&state, body.adapter.as_deref())?;
    let sampling = sampling(&state, body.temperature, 1.0, body.seed)?;
    let mode = parse_mode(body.mode.as_deref())?;
    // Admission first: a full model should not cost a retrieval.
    let permit = state.lm_limit.admit()?;
    let (hits, warnings) = retrieve(
        &state,
        SearchRequest::new(body.question.clone(), mode, body.k),
    )
    .await?;
    let passages = Passages(
        hits.iter()
            .map(|h| (h.chunk_id.clone(), (h.heading.clone(), h.text.clone())))
            .collect(),
    );
    let generator = &state.models.generator;
    let options = PromptOptions {
        system: body.system,
        few_shot: body.few_shot,
        chain_of_thought: body.cot,
    };
    let budget = generator.context().saturating_sub(body.max_tokens);
    let count = |text: &str| generator.count_tokens(text);
    let prompt = build(&body.question, &hits, &options, budget, &count);
    let events = generator.chat(ChatRequest {
        messages: answer::messages(&prompt),
        max_tokens: body.max_tokens,
        sampling,
        stop: answer::stops(&[]),
        adapter,
    })?;
    let model = generator.name().to_string();
    if body.stream {
        let sources = passages.sources(&prompt.sources);
        let first = SseEvent::default()
            .event("sources")
            .data(json!({"sources": sources, "warnings": warnings}).to_string());
        let stream = relay(
            &state,
            events,
            permit,
            AskRelay {
                text: String::new(),
                prompt,
                passages,
                model,
            },
        );
        let stream = tokio_stream::once(Ok(first)).chain(stream);
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let g = collect(&state, events, permit).await?;
    let citations = passages.sources(&prompt.citations(&g.text));
    Ok(Json(AskResponse {
        citations,
        sources: passages.sources(&prompt.sources),
        usage: Usage::from(&g),
        model,
        finish_reason: finish_reason(&g),
        warnings,
        answer: g.text,
    })
    .into_response())
}

pub fn finish_reason(g: &Generation) -> String {
    match g.finish_reason {
        lore_finetune::generate::FinishReason::Length => "length",
        _ => "stop",
    }
    .to_string()
}

/// The adapter a request names, checked: `None` for the base model.
fn check_adapter(state: &AppState, name: Option<&str>) -> ApiResult<Option<String>> {
    match name.map(str::trim) {
        None | Some("") | Some("default") => Ok(None),
        Some(name) => super::adapters::loaded(state, name).map(Some),
    }
}

/// Sampling settings from a request, checked. Without a seed each request draws a fresh
/// one, so that sampled answers vary from call to call as clients expect (OpenAI's too).
pub fn sampling(
    state: &AppState,
    temperature: f32,
    top_p: f32,
    seed: Option<u64>,
) -> ApiResult<SamplingConfig> {
    let sampling = SamplingConfig {
        temperature,
        top_k: 0,
        top_p,
        repetition_penalty: state.config.repeat_penalty,
        repetition_window: 64,
        seed: seed.unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0),
    };
    sampling.validate().map_err(ApiError::bad_request)?;
    Ok(sampling)
}

struct AskRelay {
    text: String,
    prompt: Prompt,
    passages: Passages,
    model: String,
}

impl Relay for AskRelay {
    type Out = Result<SseEvent, Infallible>;

    fn text(&mut self, piece: &str) -> Option<Self::Out> {
        self.text.push_str(piece);
        Some(Ok(SseEvent::default()
            .event("token")
            .data(json!({"text": piece}).to_string())))
    }

    fn done(self, result: Result<Generation, ApiError>) -> Vec<Self::Out> {
        let event = match result {
            Ok(g) => SseEvent::default().event("done").data(
                json!({
                    "citations": self.passages.sources(&self.prompt.citations(&self.text)),
                    "usage": Usage::from(&g),
                    "finish_reason": finish_reason(&g),
                    "model": self.model,
                })
                .to_string(),
            ),
            Err(e) => SseEvent::default()
                .event("error")
                .data(e.body().to_string()),
        };
        vec![Ok(event)]
    }
}
