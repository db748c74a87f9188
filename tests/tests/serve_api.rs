//! `lore serve` over real HTTP on loopback, with the real models and stores: the key,
//! search, embeddings equal to the CLI's, chat completions plain and streamed, ask with
//! citations, the page, bad input, a client leaving mid-stream, overload, shutdown.

use std::io::Write;
use std::time::{Duration, Instant};

use lore_tests::server::{Server, cli_embeddings, copy_dir, template_kb};
use lore_tests::{lore_bin, real_embedding_model, real_language_model};
use serde_json::{Value, json};

const KEY: &str = "test-key-7f3a";

/// A server over a copy of the template knowledge base; `None` when the models are not
/// fetched (the test is skipped).
fn serve(extra: &[&str]) -> Option<(tempfile::TempDir, Server)> {
    real_embedding_model()?;
    real_language_model()?;
    let tmp = tempfile::tempdir().expect("temp dir");
    copy_dir(&template_kb().join("kb"), &tmp.path().join("kb")).expect("copying the kb");
    let server = Server::start(&tmp.path().join("kb"), Some(KEY), extra).expect("lore serve");
    Some((tmp, server))
}

fn error_type(body: &Value) -> &str {
    body["error"]["type"].as_str().unwrap_or_default()
}

fn error_message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

#[test]
fn the_key_guards_everything_but_health_and_the_page() {
    let Some((_tmp, server)) = serve(&["--cors-origin", "https://intranet.example"]) else {
        return;
    };
    let anonymous = server.client(None);
    for (method, path) in [
        ("POST", "/v1/search"),
        ("POST", "/v1/ask"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"),
        ("GET", "/v1/documents"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/adapters"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/ready"),
    ] {
        let r = anonymous.call(method, path, Some(&json!({})).filter(|_| method == "POST"));
        assert_eq!(r.status, 401, "{method} {path} without a key: {:?}", r.body);
        assert_eq!(error_type(&r.body), "authentication_error", "{:?}", r.body);
    }
    let wrong = server.client(Some("wrong"));
    let r = wrong.call("GET", "/v1/models", None);
    assert_eq!(r.status, 401);
    assert!(error_message(&r.body).contains("not valid"), "{:?}", r.body);

    // Open without a key: liveness and the page with its assets.
    assert_eq!(anonymous.call("GET", "/health", None).status, 200);
    let page = anonymous.call("GET", "/", None);
    assert_eq!(page.status, 200);
    assert!(
        page.content_type.starts_with("text/html"),
        "{}",
        page.content_type
    );
    let html = page.body.as_str().unwrap_or_default();
    assert!(
        html.contains("/assets/app.js") && html.contains("id=\"question\""),
        "{html}"
    );
    for asset in ["/assets/app.js", "/assets/style.css"] {
        let r = anonymous.call("GET", asset, None);
        assert_eq!(r.status, 200, "{asset}");
        assert!(r.body.as_str().is_some_and(|t| t.len() > 100), "{asset}");
    }
    // Not an asset (the client resolves `..`): without the key, a 401 like any other path
    // that is not public, so that a caller without the key cannot probe what exists.
    assert_eq!(
        anonymous.call("GET", "/assets/../Cargo.toml", None).status,
        401
    );

    // CORS: a preflight from the configured origin is answered (before the key is checked,
    // as browsers send no credentials on preflights); another origin gets no grant.
    let preflight = |origin: &str| {
        anonymous
            .request("OPTIONS", "/v1/search")
            .set("Origin", origin)
            .set("Access-Control-Request-Method", "POST")
            .set(
                "Access-Control-Request-Headers",
                "authorization,content-type",
            )
            .call()
            .ok()
            .and_then(|r| r.header("access-control-allow-origin").map(str::to_string))
    };
    assert_eq!(
        preflight("https://intranet.example").as_deref(),
        Some("https://intranet.example")
    );
    assert_eq!(preflight("https://elsewhere.example"), None);
    // Headers an SDK adds of its own (OpenAI's JavaScript client sends these) are granted.
    let granted = anonymous
        .request("OPTIONS", "/v1/chat/completions")
        .set("Origin", "https://intranet.example")
        .set("Access-Control-Request-Method", "POST")
        .set(
            "Access-Control-Request-Headers",
            "authorization,content-type,x-stainless-os",
        )
        .call()
        .ok()
        .and_then(|r| {
            r.header("access-control-allow-headers")
                .map(str::to_lowercase)
        });
    assert!(
        granted
            .as_deref()
            .is_some_and(|h| h.contains("x-stainless-os")),
        "{granted:?}"
    );

    // The scheme of `Authorization` is case-insensitive.
    let lower = anonymous
        .request("GET", "/v1/models")
        .set("Authorization", &format!("bearer {KEY}"))
        .call();
    assert!(lower.is_ok_and(|r| r.status() == 200));

    // With the key.
    let r = server.call("GET", "/ready", None);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["documents"], 5);
    let doc = server.call("GET", "/openapi.json", None).body;
    for path in [
        "/v1/search",
        "/v1/ask",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/jobs/{id}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "OpenAPI lacks {path}");
    }
    let metrics = server.call("GET", "/metrics", None);
    let text = metrics.body.as_str().unwrap_or_default();
    assert!(
        text.contains(
            "lore_http_requests_total{method=\"GET\",route=\"/v1/models\",status=\"401\"}"
        ),
        "{text}"
    );
    assert!(text.contains("lore_documents 5"), "{text}");
}

#[test]
fn search_embeddings_chat_and_ask() {
    let Some((_tmp, server)) = serve(&[]) else {
        return;
    };
    // Search finds the right file, in every mode.
    for mode in ["hybrid", "dense", "lexical"] {
        let r = server.call(
            "POST",
            "/v1/search",
            Some(&json!({"query": "When did work on the ASCII standard begin?", "k": 3, "mode": mode})),
        );
        assert_eq!(r.status, 200, "{:?}", r.body);
        let first = r.body["hits"][0]["path"].as_str().unwrap_or_default();
        assert!(
            first.ends_with("/ascii.md"),
            "{mode}: first hit {first}: {}",
            r.body
        );
        assert_eq!(r.body["mode"], mode);
        assert!(
            r.body["hits"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("ASCII"))
        );
    }
    let r = server.call(
        "POST",
        "/v1/search",
        Some(&json!({"query": "ASCII standard", "filter": ["path:**/albedo.md"]})),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let hits = r.body["hits"].as_array().cloned().unwrap_or_default();
    assert!(
        !hits.is_empty()
            && hits
                .iter()
                .all(|h| h["path"].as_str().is_some_and(|p| p.ends_with("albedo.md"))),
        "{}",
        r.body
    );

    // Embeddings equal the CLI's vectors.
    let texts = [
        "The first edition of ASCII was published in 1963.",
        "Albedo is diffuse reflection.",
    ];
    let cli = cli_embeddings(&texts);
    let r = server.call(
        "POST",
        "/v1/embeddings",
        Some(&json!({"model": "default", "input": texts})),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["object"], "list");
    assert_eq!(r.body["model"], "all-MiniLM-L6-v2");
    assert!(
        r.body["usage"]["prompt_tokens"]
            .as_u64()
            .is_some_and(|n| n > 10)
    );
    for i in 0..2 {
        let http: Vec<f64> =
            serde_json::from_value(r.body["data"][i]["embedding"].clone()).expect("floats");
        let reference: Vec<f64> =
            serde_json::from_value(cli["embeddings"][i].clone()).expect("floats");
        assert_eq!(http.len(), 384);
        assert_eq!(r.body["data"][i]["index"], i);
        let diff = http
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            diff <= 1e-6,
            "text {i}: max |Δ| {diff} between HTTP and CLI vectors"
        );
    }
    let b64 = server.call(
        "POST",
        "/v1/embeddings",
        Some(&json!({"input": texts[0], "encoding_format": "base64"})),
    );
    assert_eq!(b64.status, 200, "{:?}", b64.body);
    // OpenAI's base64 form: the little-endian f32 bytes of the same vector.
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.body["data"][0]["embedding"].as_str().expect("a string"))
        .expect("valid base64");
    assert_eq!(bytes.len(), 384 * 4);
    let decoded: Vec<f64> = bytes
        .chunks_exact(4)
        .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect();
    let reference: Vec<f64> = serde_json::from_value(cli["embeddings"][0].clone()).expect("floats");
    let diff = decoded
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff <= 1e-6, "base64 vector: max |Δ| {diff} from the CLI's");

    // Models.
    let models = server.call("GET", "/v1/models", None).body;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(
        ids.contains(&"default") && ids.contains(&"all-MiniLM-L6-v2"),
        "{ids:?}"
    );

    // Chat completions, plain and streamed: greedy, so both say the same.
    let request = json!({
        "model": "default",
        "messages": [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name a primary colour."}],
        "max_tokens": 12,
        "temperature": 0,
    });
    let plain = server.call("POST", "/v1/chat/completions", Some(&request));
    assert_eq!(plain.status, 200, "{:?}", plain.body);
    assert_eq!(plain.body["object"], "chat.completion");
    let answer = plain.body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!answer.trim().is_empty(), "{}", plain.body);
    assert_eq!(plain.body["choices"][0]["message"]["role"], "assistant");
    assert!(
        plain.body["usage"]["completion_tokens"]
            .as_u64()
            .is_some_and(|n| (1..=12).contains(&n))
    );
    // Sampling: a seed repeats an answer; without one each request draws its own.
    let sampled = |seed: Option<u64>| {
        let mut r = json!({
            "messages": [{"role": "user", "content": "Write a short poem about autumn leaves."}],
            "max_tokens": 24, "temperature": 1.2,
        });
        if let Some(seed) = seed {
            r["seed"] = json!(seed);
        }
        let reply = server.call("POST", "/v1/chat/completions", Some(&r));
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        reply.body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(sampled(Some(11)), sampled(Some(11)));
    let (a, b) = (sampled(None), sampled(None));
    assert_ne!(
        a, b,
        "two unseeded samples at temperature 1.2 came out the same"
    );

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events: Vec<_> = server
        .stream("/v1/chat/completions", &streamed)
        .expect("stream")
        .collect();
    assert_eq!(
        events.last().map(|e| e.data.as_str()),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| e.json())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"),
        "{chunks:?}"
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let pieces: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(
        pieces.len() >= 2,
        "tokens should arrive one by one: {pieces:?}"
    );
    assert_eq!(pieces.concat(), answer);
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"].is_string())
    );
    assert!(
        chunks
            .last()
            .is_some_and(|c| c["usage"]["completion_tokens"].as_u64().is_some()),
        "{chunks:?}"
    );

    // Ask, plain: cites the right article.
    let r = server.call(
        "POST",
        "/v1/ask",
        Some(&json!({"question": "In which state was Abraham Lincoln born?", "max_tokens": 48})),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        r.body["answer"]
            .as_str()
            .is_some_and(|a| a.contains("Kentucky")),
        "{}",
        r.body
    );
    let cited: Vec<&str> = r.body["citations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["path"].as_str())
        .collect();
    assert!(
        cited.iter().any(|p| p.ends_with("abraham-lincoln.md")),
        "{}",
        r.body
    );
    assert!(
        r.body["citations"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    assert_eq!(r.body["abstained"], false, "{}", r.body);
    assert!(
        r.body["verdict"]["support"].as_f64().is_some(),
        "{}",
        r.body
    );
    assert!(
        r.body["verdict"]["best_dense"].as_f64().is_some(),
        "{}",
        r.body
    );

    // A follow-up: the conversation's last question is rewritten to stand alone first.
    let r = server.call(
        "POST",
        "/v1/ask",
        Some(&json!({"messages": [
            {"role": "user", "content": "In which state was Abraham Lincoln born?"},
            {"role": "assistant", "content": "Lincoln was born in Kentucky [1]."},
            {"role": "user", "content": "Who killed him?"},
        ], "max_tokens": 48})),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    // (SmolLM2 serves here and may echo the question; the answers test checks what the
    // default answerer makes of a follow-up.)
    let rewritten = r.body["rewritten_question"].as_str().unwrap_or_default();
    assert!(!rewritten.trim().is_empty(), "{}", r.body);
    assert!(r.body["answer"].as_str().is_some(), "{}", r.body);

    // Ask, streamed: sources, tokens one by one, then done with citations.
    let events: Vec<_> = server
        .stream("/v1/ask", &json!({"question": "In which state was Abraham Lincoln born?", "max_tokens": 48, "stream": true}))
        .expect("ask stream")
        .collect();
    assert_eq!(events[0].event, "sources", "{events:?}");
    let tokens = events.iter().filter(|e| e.event == "token").count();
    assert!(tokens >= 2, "{events:?}");
    let done = events.last().expect("events");
    assert_eq!(done.event, "done", "{events:?}");
    let text: String = events
        .iter()
        .filter(|e| e.event == "token")
        .filter_map(|e| e.json()["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        text,
        r.body["answer"].as_str().unwrap_or_default(),
        "streamed and plain answers differ"
    );
    assert!(
        done.json()["citations"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "{}",
        done.data
    );
}

#[test]
fn bad_input_gets_the_right_status_and_a_clear_message() {
    let Some((_tmp, server)) = serve(&["--max-body-bytes", "4096", "--allow-root", "/tmp"]) else {
        return;
    };
    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "POST",
            "/v1/search",
            json!({"query": 42}),
            422,
            "invalid type",
        ),
        (
            "POST",
            "/v1/search",
            json!({"k": 3}),
            422,
            "missing field `query`",
        ),
        (
            "POST",
            "/v1/search",
            json!({"query": "x", "mode": "fuzzy"}),
            400,
            "unknown mode",
        ),
        (
            "POST",
            "/v1/search",
            json!({"query": "x", "k": 0}),
            400,
            "`k`",
        ),
        ("POST", "/v1/search", json!({"query": "  "}), 400, "empty"),
        (
            "POST",
            "/v1/search",
            json!({"query": "x", "filter": ["color:red"]}),
            400,
            "color",
        ),
        (
            "POST",
            "/v1/search",
            json!({"query": "x", "bogus": 1}),
            422,
            "unknown field",
        ),
        (
            "POST",
            "/v1/ask",
            json!({"question": "x", "adapter": "nope"}),
            404,
            "no adapter named `nope`",
        ),
        (
            "POST",
            "/v1/ask",
            json!({"question": "x", "max_tokens": 0}),
            400,
            "max_tokens",
        ),
        (
            "POST",
            "/v1/ask",
            json!({"question": "x", "messages": [{"role": "user", "content": "y"}]}),
            400,
            "not both",
        ),
        (
            "POST",
            "/v1/ask",
            json!({"messages": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "z"}]}),
            400,
            "must be the user's question",
        ),
        (
            "POST",
            "/v1/ask",
            json!({"messages": [{"role": "wizard", "content": "y"}]}),
            422,
            "unknown variant",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}),
            404,
            "does not exist",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json!({"messages": []}),
            400,
            "empty",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            400,
            "role `tool`",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": -1}),
            400,
            "temperature",
        ),
        ("POST", "/v1/embeddings", json!({"input": []}), 400, "empty"),
        (
            "POST",
            "/v1/embeddings",
            json!({"input": [1, 2]}),
            400,
            "not a string",
        ),
        (
            "POST",
            "/v1/embeddings",
            json!({"input": "x", "model": "text-embedding-3-small"}),
            404,
            "does not exist",
        ),
        (
            "POST",
            "/v1/embeddings",
            json!({"input": "x", "dimensions": 12}),
            400,
            "dimensions",
        ),
        (
            "POST",
            "/v1/ingest",
            json!({"paths": ["/etc"]}),
            403,
            "outside",
        ),
        (
            "POST",
            "/v1/ingest",
            json!({"paths": ["/tmp/../etc"]}),
            403,
            "outside",
        ),
        ("POST", "/v1/ingest", json!({"paths": []}), 400, "empty"),
        (
            "POST",
            "/v1/ingest",
            json!({"paths": ["/tmp"], "include": ["notes/[a"]}),
            400,
            "notes/[a",
        ),
        (
            "POST",
            "/v1/adapters",
            json!({"name": "../x"}),
            400,
            "adapter name",
        ),
        (
            "POST",
            "/v1/adapters",
            json!({"name": "x", "path": "/etc"}),
            403,
            "outside",
        ),
        (
            "POST",
            "/v1/finetune",
            json!({"name": "x", "data_path": "/etc/passwd"}),
            403,
            "outside",
        ),
        (
            "POST",
            "/v1/finetune",
            json!({"name": "x"}),
            400,
            "no dataset",
        ),
        ("GET", "/v1/jobs/ingest-0000", Value::Null, 404, "no job"),
        ("POST", "/v1/jobs/nope/cancel", Value::Null, 404, "no job"),
        ("DELETE", "/v1/adapters/nope", Value::Null, 404, "is loaded"),
        (
            "DELETE",
            "/v1/documents?path=/nope.md",
            Value::Null,
            404,
            "no document",
        ),
        (
            "GET",
            "/v1/nothing-here",
            Value::Null,
            404,
            "no such endpoint",
        ),
        ("DELETE", "/v1/search", Value::Null, 405, "not allowed"),
    ];
    for (method, path, body, status, says) in cases {
        let r = server.call(method, path, (!body.is_null()).then_some(&body));
        assert_eq!(r.status, status, "{method} {path} {body}: {:?}", r.body);
        assert!(
            error_message(&r.body).contains(says),
            "{method} {path} {body}: expected {says:?} in {:?}",
            r.body
        );
        assert!(!error_type(&r.body).is_empty(), "{:?}", r.body);
    }
    // Malformed JSON, a wrong content type, and a body over the limit.
    let r = server.send("POST", "/v1/search", "application/json", b"{\"query\": ");
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(
        error_message(&r.body).contains("malformed JSON"),
        "{:?}",
        r.body
    );
    let r = server.send("POST", "/v1/search", "text/plain", b"{\"query\": \"x\"}");
    assert_eq!(r.status, 415, "{:?}", r.body);
    let big = format!("{{\"query\": \"{}\"}}", "a".repeat(10_000));
    let r = server.send("POST", "/v1/search", "application/json", big.as_bytes());
    assert_eq!(r.status, 413, "{:?}", r.body);
    assert!(error_message(&r.body).contains("too large"), "{:?}", r.body);
    // The server took all that and still answers.
    assert_eq!(server.call("GET", "/health", None).status, 200);
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// Waits (up to a minute) until the language model holds `n` requests.
fn wait_for_language_requests(server: &Server, n: usize) {
    let want = format!("lore_model_requests{{model=\"language\"}} {n}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = server.call("GET", "/metrics", None);
        let text = metrics.body.as_str().unwrap_or_default().to_string();
        if text.lines().any(|line| line == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the language model does not hold {n} requests: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_client_leaving_mid_stream_stops_the_generation() {
    let Some((_tmp, server)) = serve(&[]) else {
        return;
    };
    let long = json!({
        "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
        "max_tokens": 4096, "stream": true, "temperature": 0.8, "seed": 7,
    });
    let mut events = server
        .stream("/v1/chat/completions", &long)
        .expect("stream");
    let first = events.next().expect("a first chunk");
    assert!(
        first.json()["choices"][0]["delta"]["content"].is_string(),
        "{first:?}"
    );
    drop(events); // hang up after one token of up to 4096
    // The model's slot frees once the worker notices (at its next token); 4096 tokens
    // would take minutes on this CPU.
    wait_for_language_requests(&server, 0);
    assert!(
        server.log().contains("client went away"),
        "{}",
        server.log()
    );

    // The same for a plain (non-streamed) request: the client sends it and hangs up while
    // the answer is being generated.
    let body = json!({
        "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
        "max_tokens": 4096,
    })
    .to_string();
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut socket = std::net::TcpStream::connect(&addr).expect("connect");
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    wait_for_language_requests(&server, 1);
    drop(socket);
    wait_for_language_requests(&server, 0);
    assert_eq!(
        server.log().matches("client went away").count(),
        2,
        "{}",
        server.log()
    );
    // And the model answers the next request.
    let r = server.call(
        "POST",
        "/v1/chat/completions",
        Some(&json!({"messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 4})),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[test]
fn a_request_past_its_timeout_gets_503_and_its_generation_stops() {
    let Some((_tmp, server)) = serve(&["--request-timeout-s", "1"]) else {
        return;
    };
    // Greedy counting to a thousand runs far past one second.
    let long = json!({
        "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
        "max_tokens": 4096,
    });
    let r = server.call("POST", "/v1/chat/completions", Some(&long));
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(error_type(&r.body), "unavailable_error", "{:?}", r.body);
    assert!(
        error_message(&r.body).contains("--request-timeout-s"),
        "{:?}",
        r.body
    );
    wait_for_language_requests(&server, 0);
    assert!(
        server.log().contains("client went away"),
        "{}",
        server.log()
    );
}

#[test]
fn a_full_model_answers_429_and_recovers() {
    let Some((_tmp, server)) = serve(&["--lm-concurrency", "1"]) else {
        return;
    };
    let long = json!({
        "messages": [{"role": "user", "content": "Count slowly to one hundred."}],
        "max_tokens": 256, "stream": true,
    });
    let mut events = server
        .stream("/v1/chat/completions", &long)
        .expect("stream");
    events.next().expect("the first chunk: the slot is taken");
    let r = server.call(
        "POST",
        "/v1/chat/completions",
        Some(&json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})),
    );
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert_eq!(error_type(&r.body), "rate_limit_error");
    let r = server.call(
        "POST",
        "/v1/ask",
        Some(&json!({"question": "Who was Achilles?"})),
    );
    assert_eq!(r.status, 429, "{:?}", r.body);
    // Search does not use the language model: unaffected.
    let r = server.call("POST", "/v1/search", Some(&json!({"query": "Achilles"})));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let rest: Vec<_> = events.collect();
    assert_eq!(rest.last().map(|e| e.data.as_str()), Some("[DONE]"));
    let r = server.call(
        "POST",
        "/v1/chat/completions",
        Some(&json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})),
    );
    assert_eq!(r.status, 200, "after the stream ended: {:?}", r.body);
}

#[test]
fn sigterm_lets_a_running_answer_finish() {
    let Some((_tmp, mut server)) = serve(&[]) else {
        return;
    };
    let request = json!({
        "messages": [{"role": "user", "content": "List three fruits."}],
        "max_tokens": 24, "stream": true,
    });
    let mut events = server
        .stream("/v1/chat/completions", &request)
        .expect("stream");
    let first = events.next().expect("first chunk");
    server.signal("TERM").expect("SIGTERM");
    let mut rest: Vec<_> = events.collect();
    rest.insert(0, first);
    assert_eq!(
        rest.last().map(|e| e.data.as_str()),
        Some("[DONE]"),
        "the stream was cut: {rest:?}"
    );
    let status = server.wait().expect("wait");
    assert!(status.success(), "exit {status:?}: {}", server.log());
    assert!(server.log().contains("shutting down"), "{}", server.log());
}

#[test]
fn a_second_signal_exits_at_once() {
    let Some((_tmp, mut server)) = serve(&[]) else {
        return;
    };
    // An answer that would take minutes: the first SIGTERM would wait for it.
    let request = json!({
        "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
        "max_tokens": 4096, "stream": true,
    });
    let mut events = server
        .stream("/v1/chat/completions", &request)
        .expect("stream");
    events.next().expect("first chunk");
    server.signal("TERM").expect("SIGTERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        events.next().is_some(),
        "the first signal let the stream go on"
    );
    server.signal("TERM").expect("a second SIGTERM");
    let status = server.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "{}", server.log());
    assert!(server.log().contains("second signal"), "{}", server.log());
}

#[test]
fn refuses_a_public_address_without_a_key() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(lore_bin())
        .arg("--data-dir")
        .arg(tmp.path())
        .args(["serve", "--addr", "0.0.0.0:0"])
        .env_remove("LORE_API_KEY")
        .output()
        .expect("lore serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without an API key"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A misspelt key in the settings file, and an origin with a path: refused before
    // anything loads, naming what is wrong.
    let config = tmp.path().join("serve.toml");
    std::fs::write(&config, "addr = \"127.0.0.1:0\"\nallow_root = [\"/tmp\"]\n").expect("write");
    let refused = |args: &[&str]| {
        let out = std::process::Command::new(lore_bin())
            .arg("--data-dir")
            .arg(tmp.path())
            .arg("serve")
            .args(args)
            .output()
            .expect("lore serve");
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = refused(&["--config", config.to_str().expect("utf-8")]);
    assert!(
        stderr.contains("serve.toml") && stderr.contains("allow_root"),
        "{stderr}"
    );
    let stderr = refused(&[
        "--addr",
        "127.0.0.1:0",
        "--cors-origin",
        "https://app.example/",
    ]);
    assert!(
        stderr.contains("--cors-origin `https://app.example/` is not an origin"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
