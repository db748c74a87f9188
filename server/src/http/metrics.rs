//! Prometheus metrics at `/metrics`: requests by route and status, latency histograms,
//! requests each model holds, tokens generated, documents and jobs.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::state::AppState;

/// Latency bucket bounds in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// (method, route, status) → requests.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// route → time to the response head (a stream's body is not included).
    latency: Mutex<BTreeMap<String, Histogram>>,
    pub tokens_generated: AtomicU64,
    pub texts_embedded: AtomicU64,
}

impl Metrics {
    fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        let mut latency = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        let h = latency.entry(route.to_string()).or_default();
        for (count, bound) in h.counts.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }
}

/// A method as a label: the standard ones by name, anything else as `other`, since a
/// client may send any token as a method and each would be a new series kept forever.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Records every request under its route pattern (not the raw path: ids would explode the
/// label set).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.record(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

pub async fn render(State(state): State<AppState>) -> Response {
    let documents = state
        .read_kb(|kb| kb.map_or(0, |kb| kb.manifest().files.len()))
        .await
        .unwrap_or(0);
    let m = &state.metrics;
    let mut out = String::new();
    out.push_str("# HELP lore_http_requests_total HTTP requests by method, route and status.\n");
    out.push_str("# TYPE lore_http_requests_total counter\n");
    for ((method, route, status), n) in m
        .requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        let _ = writeln!(
            out,
            "lore_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
        );
    }
    out.push_str("# HELP lore_http_request_duration_seconds Time to the response head.\n");
    out.push_str("# TYPE lore_http_request_duration_seconds histogram\n");
    for (route, h) in m
        .latency
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        for (bound, count) in BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(
                out,
                "lore_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "lore_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\n\
             lore_http_request_duration_seconds_sum{{route=\"{route}\"}} {}\n\
             lore_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
            h.count, h.sum, h.count
        );
    }
    let config = &state.config;
    let gauges = [
        (
            "lore_model_requests",
            "Requests a model holds (running or queued).",
            format!(
                "lore_model_requests{{model=\"embedding\"}} {}\nlore_model_requests{{model=\"language\"}} {}",
                state.embed_limit.in_use(config.embed_concurrency),
                state.lm_limit.in_use(config.lm_concurrency)
            ),
        ),
        (
            "lore_model_request_limit",
            "Requests a model may hold before 429.",
            format!(
                "lore_model_request_limit{{model=\"embedding\"}} {}\nlore_model_request_limit{{model=\"language\"}} {}",
                config.embed_concurrency, config.lm_concurrency
            ),
        ),
        (
            "lore_documents",
            "Files in the knowledge base.",
            format!("lore_documents {documents}"),
        ),
        (
            "lore_jobs",
            "Jobs by kind and state.",
            state
                .jobs
                .counts()
                .into_iter()
                .map(|((kind, st), n)| format!("lore_jobs{{kind=\"{kind}\",state=\"{st}\"}} {n}"))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        (
            "lore_uptime_seconds",
            "Seconds since the server started.",
            format!(
                "lore_uptime_seconds {:.3}",
                state.started.elapsed().as_secs_f64()
            ),
        ),
    ];
    for (name, help, body) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        if !body.is_empty() {
            let _ = writeln!(out, "{body}");
        }
    }
    for (name, help, value) in [
        (
            "lore_generated_tokens_total",
            "Tokens the language model generated.",
            m.tokens_generated.load(Ordering::Relaxed),
        ),
        (
            "lore_embedded_texts_total",
            "Texts embedded for requests.",
            m.texts_embedded.load(Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
