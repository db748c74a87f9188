//! The HTTP API and web page: [`app`] builds the router (testable without a socket),
//! [`run`] serves it until a shutdown signal, then lets in-flight requests finish and jobs
//! checkpoint.
//!
//! Threads: handlers are async and never compute; embedding runs on the embedding model's
//! worker thread, generation on the language model's, tantivy and Qdrant calls on tokio's
//! blocking pool, ingest jobs on threads of their own and fine-tuning in a child process.
//! Each model admits a bounded number of requests ([`state::Limit`]): beyond it, 429.

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::json;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

mod adapters;
mod ask;
mod assets;
mod auth;
mod documents;
mod embeddings;
pub mod error;
mod finetune;
mod guard;
mod ingest;
mod jobs;
pub mod listen;
mod metrics;
mod openai;
mod openapi;
mod search;
pub mod state;
mod stream;
mod tei;
mod upload;

pub use error::{ApiError, ApiResult};
pub use state::{AppState, Models, ServerConfig};

/// The whole application: every route, with authentication, limits, CORS, metrics and
/// request logs.
pub fn app(state: AppState) -> Router {
    let config = &state.config;
    let upload_limit = DefaultBodyLimit::max(config.max_upload_bytes);
    let protected = Router::new()
        .route("/v1/search", post(search::search))
        .route("/v1/ask", post(ask::ask))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .route("/embed", post(tei::embed))
        .route("/info", get(tei::info))
        .route("/tokenize", post(tei::tokenize))
        .route(
            "/v1/documents",
            get(documents::list).delete(documents::delete),
        )
        .route("/v1/ingest", post(ingest::from_paths))
        .route(
            "/v1/ingest/upload",
            post(ingest::upload).layer(upload_limit),
        )
        .route("/v1/finetune", post(finetune::start).layer(upload_limit))
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/adapters", get(adapters::list).post(adapters::load))
        .route("/v1/adapters/{name}", delete(adapters::unload))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics::render))
        .route("/openapi.json", get(openapi::document));
    let public = Router::new()
        .route("/health", get(health))
        .route("/", get(assets::index))
        .route("/favicon.ico", get(assets::favicon))
        .route("/assets/{file}", get(assets::file));
    protected
        .merge(public)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        // Around the router, not on its routes: a caller without the key learns nothing,
        // not even which methods or paths exist (405 and 404 come after this).
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::check_origin,
        ))
        // Outside the origin check, so that preflights for listed origins are answered.
        .layer(cors(&config.cors_origins))
        .layer(middleware::from_fn(guard::security_headers))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .with_state(state)
}

/// Serves `app(state)` on `listener` until `shutdown` resolves; then stops accepting,
/// lets in-flight requests (streams included) finish, asks running jobs to checkpoint and
/// waits for them (up to the configured grace).
pub async fn run(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = app(state.clone());
    let draining = state.clone();
    let grace = state.config.shutdown_grace;
    // Fired with the deadline when the signal comes: requests and jobs share one grace.
    let (deadline_tx, mut deadline_rx) = tokio::sync::oneshot::channel();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests, checkpointing jobs");
        let _ = deadline_tx.send(tokio::time::Instant::now() + grace);
        draining.start_draining();
        draining.jobs.stop_all();
    };
    let serve = listen::serve(listener, router, state.config.connections, signal);
    tokio::pin!(serve);
    let mut deadline = None;
    tokio::select! {
        served = &mut serve => served?,
        Ok(at) = &mut deadline_rx => {
            deadline = Some(at);
            // In-flight requests get until the deadline; streams still running then are cut.
            if tokio::time::timeout_at(at, &mut serve).await.is_err() {
                tracing::warn!(
                    "requests still running after {} s: closing their connections",
                    grace.as_secs()
                );
            }
        }
    }
    let deadline = deadline.or_else(|| deadline_rx.try_recv().ok());
    let left = deadline.map_or(grace, |at: tokio::time::Instant| {
        at.saturating_duration_since(tokio::time::Instant::now())
    });
    if !state.jobs.wait_idle(left).await {
        tracing::warn!(
            "jobs still running after {} s; leaving them to the next start",
            grace.as_secs()
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// A response head within `--request-timeout-s`, or a 503 in the usual error shape. A
/// stream has its head at once, so this bounds waiting, not streaming; the handler's future
/// is dropped, which stops its generation (see `stream::collect`).
async fn time_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.config.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::unavailable(format!(
            "no answer within {} s (the server's --request-timeout-s): ask for fewer tokens, \
             or stream the answer",
            limit.as_secs()
        ))
        .into_response(),
    }
}

/// The request's log span: method and path, never the query, which may carry a secret a
/// client put there (`?key=…`).
fn request_span(request: &Request) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %metrics::method_label(request.method()),
        path = %request.uri().path(),
    )
}

/// `lore serve` refuses malformed origins at start-up (`is_origin`), so none is dropped here.
fn cors(origins: &[String]) -> CorsLayer {
    if origins.is_empty() {
        return CorsLayer::new();
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        // Whatever the browser asks to send: SDKs add headers of their own (OpenAI's sends
        // `x-stainless-*`), and the origin check is what guards the API here.
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(Duration::from_secs(600))
}

/// Liveness: the process answers. No key needed.
async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(json!({"status": "ok"}))
}

/// Readiness: models loaded (they are before the socket opens) and not shutting down.
async fn ready(State(state): State<AppState>) -> ApiResult<axum::Json<serde_json::Value>> {
    if state.draining() {
        return Err(ApiError::unavailable("shutting down"));
    }
    let documents = state
        .read_kb(|kb| kb.map(|kb| kb.manifest().files.len()))
        .await?;
    Ok(axum::Json(json!({
        "status": "ready",
        "documents": documents.unwrap_or(0),
        "language_model": state.models.generator.name(),
        "embedding_model": lore_embed::Embedder::info(&state.models.embedder).name,
    })))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
