//! Arbitrary requests at every route: bodies built from the API's own field names with any
//! JSON values, or raw bytes; any method; keys right, wrong or missing; odd headers. The
//! server must answer each with a status below 500 and never panic.
//!
//! `LORE_PROPTEST_CASES` sets the number of cases (default 10,000, about 2 s).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value};

/// Field names the API's bodies use, so that generated bodies get past "unknown field" and
/// into the handlers.
const FIELDS: &[&str] = &[
    "query",
    "k",
    "mode",
    "filter",
    "fusion",
    "dense_weight",
    "question",
    "messages",
    "role",
    "content",
    "stream",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "model",
    "input",
    "encoding_format",
    "dimensions",
    "paths",
    "tags",
    "include",
    "exclude",
    "name",
    "data_path",
    "epochs",
    "lr",
    "lora_r",
    "system",
    "resume",
    "load",
    "path",
    "adapter",
    "few_shot",
    "cot",
    "min_similarity",
    "stream_options",
    "include_usage",
    "files",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (0u64..5000).prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
        "(path|type|tag|heading):[a-z*{},/.=]{0,30}".prop_map(Value::String),
        prop::sample::select(vec![
            "user",
            "assistant",
            "system",
            "hybrid",
            "dense",
            "lexical",
            "rrf",
            "base64",
            "float",
            "default"
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..6).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

fn body() -> impl Strategy<Value = (Option<&'static str>, Vec<u8>)> {
    prop_oneof![
        4 => prop::collection::vec((prop::sample::select(FIELDS), json_value()), 0..6).prop_map(|kv| {
            let object: Map<String, Value> = kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            (Some("application/json"), Value::Object(object).to_string().into_bytes())
        }),
        1 => json_value().prop_map(|v| (Some("application/json"), v.to_string().into_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| (Some("application/json"), b)),
        1 => prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| (Some("multipart/form-data; boundary=x"), b)),
        1 => ".{0,100}".prop_map(|s| (None, s.into_bytes())),
    ]
}

#[test]
fn no_request_gets_a_5xx_or_a_panic() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let f = runtime.block_on(async {
        let f = common::fixture(|c, _| c.api_key = Some("k1".into())).await;
        let auth = [("authorization", "Bearer k1")];
        let request = common::upload(
            &[("lore.md", "# Lore\n\nlore knowledge base document")],
            &auth,
        );
        let (status, body) = f.call(request).await;
        assert_eq!(status, axum::http::StatusCode::ACCEPTED, "{body}");
        f
    });
    // Let the ingest finish, so that searches and answers reach the knowledge base.
    runtime.block_on(async {
        for _ in 0..400 {
            if f.state.jobs.all().iter().all(|j| j.state().finished()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    let documented = runtime.block_on(common::documented_routes(&f, Some("k1")));
    let mut paths: Vec<String> = documented.iter().map(|(_, p)| p.clone()).collect();
    paths.extend(
        [
            "/",
            "/health",
            "/ready",
            "/metrics",
            "/openapi.json",
            "/assets/x",
            "/nope",
        ]
        .map(String::from),
    );
    paths.sort();
    paths.dedup();
    let methods = vec![
        "GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD", "BREW",
    ];
    // Mostly a documented method on its route (to reach the handlers), sometimes anything.
    let route = prop_oneof![
        4 => prop::sample::select(documented),
        1 => (prop::sample::select(methods), prop::sample::select(paths))
            .prop_map(|(m, p)| (m.to_string(), p)),
    ];
    let f = Arc::new(f);
    let cases = std::env::var("LORE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        route,
        prop::sample::select(vec![
            Some("Bearer k1"),
            Some("Bearer k1"),
            Some("Bearer k1"),
            None,
            Some("Bearer nope"),
            Some("bearer"),
        ]),
        body(),
        prop::option::weighted(0.1, "[ -~]{0,60}"),
        prop::option::of("[a-z]{1,12}"),
    );
    let counts = std::cell::RefCell::new(std::collections::BTreeMap::<u16, usize>::new());
    let result = runner.run(
        &strategy,
        |((method, path), auth, (content_type, bytes), origin, query)| {
            let uri = match query {
                Some(q) => format!("{path}?{q}={q}"),
                None => path,
            };
            let mut request = Request::builder().method(method.as_str()).uri(uri.as_str());
            if let Some(a) = auth {
                request = request.header("authorization", a);
            }
            if let Some(t) = content_type {
                request = request.header("content-type", t);
            }
            if let Some(o) = origin
                .as_deref()
                .filter(|o| axum::http::HeaderValue::from_str(o).is_ok())
            {
                request = request.header("origin", o);
            }
            let request = request.body(Body::from(bytes)).unwrap();
            let status = runtime.block_on(f.send(request)).status();
            *counts.borrow_mut().entry(status.as_u16()).or_default() += 1;
            if status.is_server_error() {
                return Err(TestCaseError::fail(format!("{method} {uri}: {status}")));
            }
            Ok(())
        },
    );
    println!("statuses over {cases} cases: {:?}", counts.borrow());
    result.unwrap();
}
