//! An in-process server for router tests: the real router and handlers over a tiny
//! random-weight BERT (no downloads) and, for answers, a loopback stub of an OpenAI-style
//! endpoint that streams a fixed reply. Requests go through `tower::ServiceExt::oneshot`.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use lore_embed::{BertEmbedder, EmbedWorker, Embedder, EmbedderConfig, Embedding, ModelInfo};
use lore_finetune::generation::generator::Generator;
use lore_finetune::generation::remote::{RemoteChat, RemoteConfig};
use lore_server::http::{AppState, Models, ServerConfig};
use serde_json::Value;
use tower::ServiceExt;

/// The reply the stub endpoint streams for every chat request.
pub const STUB_REPLY: &str = "Lore keeps documents [1].";

/// The tiny embedder, recording the size of every batch the model is given.
pub struct Recording {
    inner: BertEmbedder,
    pub batches: Arc<Mutex<Vec<usize>>>,
}

impl Embedder for Recording {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }
    fn embed(&self, texts: &[String]) -> lore_embed::Result<Vec<Embedding>> {
        self.batches.lock().unwrap().push(texts.len());
        self.inner.embed(texts)
    }
}

pub struct Fixture {
    pub state: AppState,
    pub router: Router,
    pub batches: Arc<Mutex<Vec<usize>>>,
    pub dir: tempfile::TempDir,
}

pub fn config(dir: &Path) -> ServerConfig {
    ServerConfig::new(
        dir.join("data"),
        PathBuf::from("/bin/false"),
        dir.join("models"),
        "base".into(),
    )
}

/// A server over a fresh data folder; `tweak` adjusts the defaults first.
pub async fn fixture(tweak: impl FnOnce(&mut ServerConfig, &Path)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-bert");
    lore_embed::testing::write_tiny_bert(&model, 128).unwrap();
    let inner = BertEmbedder::load(&model, &EmbedderConfig::default()).unwrap();
    let tokenizer = inner.tokenizer().clone();
    let batches = Arc::new(Mutex::new(Vec::new()));
    let embedder = EmbedWorker::spawn(Recording {
        inner,
        batches: Arc::clone(&batches),
    });
    let client = RemoteChat::new(RemoteConfig {
        url: stub_endpoint().await,
        model: "stub".into(),
        api_key: None,
        read_timeout: Duration::from_secs(10),
    })
    .unwrap();
    let generator = Generator::Remote {
        client,
        context: 4096,
    };
    let mut config = config(dir.path());
    tweak(&mut config, dir.path());
    let state = AppState::new(
        config,
        Models {
            embedder,
            tokenizer,
            generator,
        },
        None,
    );
    Fixture {
        router: lore_server::http::app(state.clone()),
        state,
        batches,
        dir,
    }
}

/// Starts the stub chat endpoint on a loopback port; its URL.
async fn stub_endpoint() -> String {
    use axum::routing::post;
    let reply = serde_json::json!({"choices": [{"index": 0, "delta": {"content": STUB_REPLY}}]});
    let body = format!("data: {reply}\n\ndata: [DONE]\n\n");
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let body = body.clone();
            async move { ([("content-type", "text/event-stream")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

impl Fixture {
    pub async fn send(&self, request: Request<Body>) -> Response<Body> {
        self.router.clone().oneshot(request).await.unwrap()
    }

    /// Status and body (JSON when it parses, else the text as a JSON string).
    pub async fn call(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.send(request).await;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    /// Uploads `files` (name, text) and waits for the ingest job to end; its final view.
    pub async fn ingest(&self, files: &[(&str, &str)]) -> Value {
        let (status, body) = self.call(upload(files, &[])).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let id = body["job"]["id"].as_str().unwrap().to_string();
        for _ in 0..600 {
            let (_, job) = self.call(get(&format!("/v1/jobs/{id}"))).await;
            if !matches!(job["state"].as_str(), Some("queued" | "running")) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the ingest job did not end");
    }
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

pub fn post_json(uri: &str, body: &Value) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

pub const BOUNDARY: &str = "lore-test-boundary";

/// A multipart upload of `files` (name, text), with `headers` added.
pub fn upload(files: &[(&str, &str)], headers: &[(&str, &str)]) -> Request<Body> {
    let mut body = String::new();
    for (name, text) in files {
        body.push_str(&format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
             Content-Type: text/markdown\r\n\r\n{text}\r\n"
        ));
    }
    body.push_str(&format!("--{BOUNDARY}--\r\n"));
    let mut request = Request::post("/v1/ingest/upload").header(
        "content-type",
        format!("multipart/form-data; boundary={BOUNDARY}"),
    );
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.body(Body::from(body)).unwrap()
}

/// Every (method, path) the OpenAPI document lists, path parameters filled in.
pub async fn documented_routes(fixture: &Fixture, key: Option<&str>) -> Vec<(String, String)> {
    let mut request = Request::get("/openapi.json");
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let (status, doc) = fixture.call(request.body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    let mut routes = Vec::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        let path = path.replace("{id}", "job-x").replace("{name}", "adapter-x");
        for method in methods.as_object().unwrap().keys() {
            routes.push((method.to_uppercase(), path.clone()));
        }
    }
    assert!(routes.len() >= 15, "{routes:?}");
    routes
}
