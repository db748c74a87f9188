//! OpenAI compatibility, honestly: what lore does not do is refused with OpenAI's error shape
//! (`message`, `type`, `param`, `code`) instead of ignored; model names, aliases and
//! `/v1/models/{id}`. In process, answers from the stub endpoint.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use common::{STUB_REPLY, fixture, get, post_json};
use serde_json::{Value, json};

fn chat(extra: Value) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": "hello"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_lore_does_not_do_is_refused_naming_the_field() {
    let f = fixture(|_, _| {}).await;
    for (extra, param) in [
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (json!({"functions": [{"name": "f"}]}), "functions"),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "response_format",
        ),
        (json!({"presence_penalty": 0.5}), "presence_penalty"),
        (json!({"frequency_penalty": -1.0}), "frequency_penalty"),
        (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
        (json!({"n": 2}), "n"),
    ] {
        let (status, body) = f
            .call(post_json("/v1/chat/completions", &chat(extra.clone())))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra}: {body}");
        let error = &body["error"];
        assert_eq!(error["param"], param, "{body}");
        assert_eq!(error["code"], "unsupported_parameter", "{body}");
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        assert!(error["message"].as_str().unwrap().contains(param), "{body}");
    }
    // Asking for alternatives without log-probabilities, or too many, names the field.
    for extra in [
        json!({"top_logprobs": 3}),
        json!({"logprobs": true, "top_logprobs": 21}),
    ] {
        let (status, body) = f
            .call(post_json("/v1/chat/completions", &chat(extra.clone())))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra}: {body}");
        assert_eq!(body["error"]["param"], "top_logprobs", "{body}");
    }
    // JSON mode and log-probabilities are the local model's: a server answering through a
    // remote endpoint (this one) says so instead of ignoring them.
    for extra in [
        json!({"response_format": {"type": "json_object"}}),
        json!({"logprobs": true}),
    ] {
        let (status, body) = f
            .call(post_json("/v1/chat/completions", &chat(extra.clone())))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("remote endpoint"), "{body}");
    }
    // Their neutral values change nothing and pass.
    for extra in [
        json!({"tools": [], "tool_choice": "none", "logprobs": false, "top_logprobs": 0}),
        json!({"response_format": {"type": "text"}, "presence_penalty": 0, "frequency_penalty": 0.0}),
        json!({"logit_bias": {}, "n": 1, "user": "someone", "store": false}),
    ] {
        let (status, body) = f
            .call(post_json("/v1/chat/completions", &chat(extra.clone())))
            .await;
        assert_eq!(status, StatusCode::OK, "{extra}: {body}");
        assert_eq!(body["choices"][0]["message"]["content"], STUB_REPLY);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_names_aliases_and_the_model_route() {
    let f = fixture(|_, _| {}).await;
    let (status, body) = f
        .call(post_json(
            "/v1/chat/completions",
            &chat(json!({"model": "gpt-4o-mini"})),
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["param"], "model");
    assert_eq!(body["error"]["code"], "model_not_found");

    let (status, body) = f.call(get("/v1/models/default")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "model");
    assert_eq!(body["context_length"], 4096);
    let (status, body) = f.call(get("/v1/models/gpt-4o-mini")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");

    // An alias answers and is listed; --accept-any-model takes any name.
    let f = fixture(|c, _| c.served_model_names = vec!["gpt-4o-mini".into()]).await;
    let (status, body) = f
        .call(post_json(
            "/v1/chat/completions",
            &chat(json!({"model": "gpt-4o-mini"})),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["model"], "gpt-4o-mini");
    let (_, list) = f.call(get("/v1/models")).await;
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "gpt-4o-mini")
    );
    let (status, _) = f.call(get("/v1/models/gpt-4o-mini")).await;
    assert_eq!(status, StatusCode::OK);

    let f = fixture(|c, _| c.accept_any_model = true).await;
    let (status, body) = f
        .call(post_json(
            "/v1/chat/completions",
            &chat(json!({"model": "claude-whatever"})),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Every error carries OpenAI's four fields.
    let (status, body) = f
        .call(post_json("/v1/chat/completions", &json!({"messages": []})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = body["error"].as_object().unwrap();
    for key in ["message", "type", "param", "code"] {
        assert!(error.contains_key(key), "{body}");
    }
}
