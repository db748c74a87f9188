//! TEI's routes (`/embed`, `/info`, `/tokenize`) and the length rule they share with
//! `/v1/embeddings`, in process over the tiny BERT (a 128-token window).

#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{fixture, get, post_json};
use serde_json::{Value, json};

fn vector(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// A text well past 128 tokens.
fn long_text() -> String {
    (0..300).map(|i| format!("word{i} ")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_gives_the_same_vectors_as_the_openai_route() {
    let f = fixture(|_, _| {}).await;
    let (status, body) = f
        .call(post_json(
            "/embed",
            &json!({"inputs": "lore keeps documents"}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let vectors = body.as_array().unwrap();
    assert_eq!(vectors.len(), 1);
    let (_, openai) = f
        .call(post_json(
            "/v1/embeddings",
            &json!({"input": "lore keeps documents"}),
        ))
        .await;
    let expected = vector(&openai["data"][0]["embedding"]);
    let got = vector(&vectors[0]);
    assert_eq!(got.len(), expected.len());
    assert!(got.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6));

    let (status, body) = f
        .call(post_json(
            "/embed",
            &json!({"inputs": ["one", "two", "three"]}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_inputs_are_refused_unless_truncation_is_asked_for() {
    let f = fixture(|_, _| {}).await;
    let long = long_text();
    let (status, body) = f
        .call(post_json("/embed", &json!({"inputs": ["short", long]})))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error_type"], "Validation", "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("inputs[1]") && message.contains("128"),
        "{message}"
    );
    let (status, body) = f
        .call(post_json(
            "/embed",
            &json!({"inputs": long, "truncate": true}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // OpenAI's route follows the same rule, with OpenAI's error shape.
    let (status, body) = f
        .call(post_json("/v1/embeddings", &json!({"input": long})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("input[0]")
    );
    let (status, _) = f
        .call(post_json(
            "/v1/embeddings",
            &json!({"input": long, "truncate": true}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);

    // `--auto-truncate` makes cutting the default.
    let f = fixture(|c, _| c.auto_truncate = true).await;
    let (status, body) = f.call(post_json("/embed", &json!({"inputs": long}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, info) = f.call(get("/info")).await;
    assert_eq!(info["auto_truncate"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_lore_cannot_do_is_refused_in_teis_shape() {
    let f = fixture(|_, _| {}).await;
    for (request, says) in [
        (json!({"inputs": "x", "normalize": false}), "normalize"),
        (
            json!({"inputs": "x", "truncation_direction": "Left"}),
            "right only",
        ),
        (json!({"inputs": "x", "prompt_name": "query"}), "prompts"),
        (json!({"inputs": []}), "empty"),
        (json!({"inputs": ["ok", 3]}), "inputs[1]"),
    ] {
        let (status, body) = f.call(post_json("/embed", &request)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{request}: {body}");
        assert_eq!(body["error_type"], "Validation");
        assert!(
            body["error"].as_str().unwrap().contains(says),
            "{request}: {body}"
        );
    }
    let bad = Request::post("/embed")
        .header("content-type", "application/json")
        .body(Body::from("{\"inputs\": "))
        .unwrap();
    let (status, body) = f.call(bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error_type"], "Validation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_and_tokenize_describe_the_model() {
    let f = fixture(|_, _| {}).await;
    let (status, info) = f.call(get("/info")).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["max_input_length"], 128);
    assert_eq!(info["model_type"]["embedding"]["pooling"], "mean");
    assert_eq!(info["max_client_batch_size"], 2048);
    assert!(info["model_id"].as_str().is_some_and(|m| !m.is_empty()));

    let text = "hello world";
    let (status, body) = f
        .call(post_json("/tokenize", &json!({"inputs": [text, "x"]})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let lists = body.as_array().unwrap();
    assert_eq!(lists.len(), 2);
    let tokens = lists[0].as_array().unwrap();
    // [CLS] … [SEP] around the text's own tokens, whose offsets point into it.
    assert_eq!(tokens.first().unwrap()["special"], true);
    assert_eq!(tokens.last().unwrap()["special"], true);
    assert!(tokens.first().unwrap()["start"].is_null());
    let own: Vec<&Value> = tokens.iter().filter(|t| t["special"] == false).collect();
    assert!(!own.is_empty());
    for t in own {
        let (start, stop) = (
            t["start"].as_u64().unwrap() as usize,
            t["stop"].as_u64().unwrap() as usize,
        );
        assert_eq!(t["text"].as_str().unwrap(), &text[start..stop], "{t}");
    }
    let (_, plain) = f
        .call(post_json(
            "/tokenize",
            &json!({"inputs": text, "add_special_tokens": false}),
        ))
        .await;
    let plain = plain[0].as_array().unwrap();
    assert_eq!(plain.len(), tokens.len() - 2);
    assert!(plain.iter().all(|t| t["special"] == false));
}
