//! `POST /v1/ask`: retrieve, build the in-context prompt, answer with citations; streamed
//! as Server-Sent Events when asked.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lore_finetune::ChatRequest;
use lore_finetune::Generation;
use lore_finetune::Message;
use lore_finetune::SamplingConfig;
use lore_retrieve::SearchRequest;
use lore_retrieve::prompt::{Citation, FewShot, Prompt, PromptOptions, build};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_stream::StreamExt;
use utoipa::ToSchema;

use super::error::{ApiError, ApiJson, ApiResult};
use super::search::{Found, parse_mode, retrieve};
use super::state::AppState;
use super::stream::{Relay, collect, relay};
use crate::answer::{self, Verdict};
use lore_retrieve::grounding::ABSTENTION;

/// Tokens an answer may have.
pub const MAX_TOKENS: usize = 4096;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AskBody {
    /// The question; or give `messages` instead.
    #[serde(default)]
    pub question: String,
    /// A conversation in OpenAI's shape (`[{"role", "content"}]`) whose last message is the
    /// user's question: the question is rewritten to stand alone before retrieval, and the
    /// response shows the rewrite as `rewritten_question`.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Message>,
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
    /// Stop after this many sentences; 0: no limit (default 2; none with `cot`).
    #[serde(default)]
    pub max_sentences: Option<usize>,
    /// Send Server-Sent Events: `sources`, `token`…, then `done` (or `error`).
    #[serde(default)]
    pub stream: bool,
}

fn default_k() -> usize {
    3
}

/// A sentence or two (README, "Answer quality"); a reasoned answer asks for more.
fn default_max_tokens() -> usize {
    128
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
    /// The standalone question searched for, when the request gave a conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewritten_question: Option<String>,
    /// The passages the answer used.
    pub citations: Vec<Source>,
    /// Every passage the prompt held.
    pub sources: Vec<Source>,
    pub usage: Usage,
    pub model: String,
    /// `stop` or `length`.
    pub finish_reason: String,
    /// The answer says the knowledge base does not hold the answer.
    pub abstained: bool,
    /// The answer states something, and every sentence of it is found in its passages.
    pub grounded: bool,
    /// How the answer stands on its passages: support score, unsupported sentences, the
    /// retrieval confidence, and who declined.
    pub verdict: Verdict,
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
    ApiJson(mut body): ApiJson<AskBody>,
) -> ApiResult<Response> {
    let conversation = match (body.question.trim().is_empty(), body.messages.is_empty()) {
        (true, true) => return Err(ApiError::bad_request("`question` is empty")),
        (false, false) => {
            return Err(ApiError::bad_request(
                "give `question` or `messages`, not both",
            ));
        }
        (false, true) => None,
        (true, false) => {
            let (history, question) =
                answer::split_conversation(&body.messages).map_err(ApiError::bad_request)?;
            Some((history.to_vec(), question.to_string()))
        }
    };
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
    let mut rewritten_question = None;
    if let Some((history, question)) = conversation {
        body.question = if history.is_empty() {
            question
        } else {
            let standalone = rewrite(&state, &history, &question).await?;
            rewritten_question = Some(standalone.clone());
            standalone
        };
    }
    // Admission first: a full model should not cost a retrieval.
    let permit = state.lm_limit.admit()?;
    let Found {
        hits,
        warnings,
        best_dense,
    } = retrieve(
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
    let model = generator.name().to_string();
    let grounding = state.config.grounding;
    if grounding.declines_before_generating(!hits.is_empty(), best_dense) {
        // Nothing close enough to answer from: the model is not asked (it would answer from
        // memory), and the closest passages are still shown.
        drop(permit);
        let verdict = Verdict::declined(best_dense);
        let sources = passages.sources(&prompt.sources);
        if body.stream {
            let events = [
                SseEvent::default()
                    .event("sources")
                    .data(
                        json!({"sources": sources, "warnings": warnings, "rewritten_question": rewritten_question})
                            .to_string(),
                    ),
                SseEvent::default()
                    .event("token")
                    .data(json!({"text": ABSTENTION}).to_string()),
                SseEvent::default().event("done").data(
                    json!({
                        "citations": [],
                        "usage": Usage { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 },
                        "finish_reason": "stop",
                        "model": model,
                        "abstained": true,
                        "grounded": false,
                        "verdict": verdict,
                    })
                    .to_string(),
                ),
            ];
            let stream = tokio_stream::iter(events.map(Ok::<_, Infallible>));
            return Ok(Sse::new(stream).into_response());
        }
        return Ok(Json(AskResponse {
            answer: ABSTENTION.to_string(),
            rewritten_question,
            citations: Vec::new(),
            sources,
            usage: Usage {
                prompt_tokens: 0,
                completion_tokens: 0,
                total_tokens: 0,
            },
            model,
            finish_reason: "stop".into(),
            abstained: true,
            grounded: false,
            verdict,
            warnings,
        })
        .into_response());
    }
    let events = generator.chat(ChatRequest {
        messages: answer::messages(&prompt),
        max_tokens: body.max_tokens,
        sampling,
        stop: answer::stops(&[]),
        adapter,
        end: answer::answer_end(body.max_sentences, body.cot),
        ..Default::default()
    })?;
    if body.stream {
        let sources = passages.sources(&prompt.sources);
        let first = SseEvent::default()
            .event("sources")
            .data(
                json!({"sources": sources, "warnings": warnings, "rewritten_question": rewritten_question})
                    .to_string(),
            );
        let stream = relay(
            &state,
            events,
            permit,
            AskRelay {
                text: String::new(),
                prompt,
                passages,
                model,
                grounding,
                best_dense,
            },
        );
        let stream = tokio_stream::once(Ok(first)).chain(stream);
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let g = collect(&state, events, permit).await?;
    let text = g.text.trim().to_string();
    let verdict = Verdict::judge(&prompt, &text, best_dense, &grounding);
    let citations = if verdict.abstained {
        Vec::new()
    } else {
        passages.sources(&prompt.citations(&text))
    };
    Ok(Json(AskResponse {
        citations,
        sources: passages.sources(&prompt.sources),
        usage: Usage::from(&g),
        model,
        finish_reason: finish_reason(&g),
        abstained: verdict.abstained,
        grounded: verdict.grounded,
        verdict,
        warnings,
        answer: g.text,
        rewritten_question,
    })
    .into_response())
}

/// The conversation's last question rewritten to stand alone, by the served model (greedy,
/// one line).
async fn rewrite(state: &AppState, history: &[Message], question: &str) -> ApiResult<String> {
    let permit = state.lm_limit.admit()?;
    let generator = &state.models.generator;
    let events = generator.chat(answer::rewrite_chat(
        history,
        question,
        sampling(state, 0.0, 1.0, Some(0))?,
    ))?;
    let g = collect(state, events, permit).await?;
    Ok(answer::standalone_question(&g.text, question))
}

pub fn finish_reason(g: &Generation) -> String {
    match g.finish_reason {
        lore_finetune::FinishReason::Length => "length",
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
    grounding: answer::Grounding,
    best_dense: Option<f32>,
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
            Ok(g) => {
                let text = self.text.trim();
                let verdict = Verdict::judge(&self.prompt, text, self.best_dense, &self.grounding);
                let citations = if verdict.abstained {
                    Vec::new()
                } else {
                    self.passages.sources(&self.prompt.citations(text))
                };
                SseEvent::default().event("done").data(
                    json!({
                        "citations": citations,
                        "usage": Usage::from(&g),
                        "finish_reason": finish_reason(&g),
                        "model": self.model,
                        "abstained": verdict.abstained,
                        "grounded": verdict.grounded,
                        "verdict": verdict,
                    })
                    .to_string(),
                )
            }
            Err(e) => SseEvent::default()
                .event("error")
                .data(e.body().to_string()),
        };
        vec![Ok(event)]
    }
}
