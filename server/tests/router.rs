//! The HTTP API in process: the router, the real handlers, a tiny model. One test per
//! hardening finding of issue 14 (each failed on the code before the fix), plus auth on
//! every documented route and the limits.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{fixture, get, post_json, upload};
use serde_json::json;

/// Finding 1: a made-up HTTP method became a metrics label, so 300 requests with 30 KB
/// methods grew `/metrics` to 9 MB and the process by 29 MB, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_do_not_grow_the_metrics() {
    let f = fixture(|_, _| {}).await;
    for i in 0..300 {
        let method = Method::from_bytes(format!("X{i}{}", "Q".repeat(3000)).as_bytes()).unwrap();
        let response = f
            .send(
                Request::builder()
                    .method(method)
                    .uri("/v1/search")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    let (status, metrics) = f.call(get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    let text = metrics.as_str().unwrap();
    assert!(!text.contains("QQQ"), "a made-up method is a label");
    assert!(text.contains("method=\"other\""), "{text}");
    assert!(text.len() < 64 * 1024, "/metrics is {} bytes", text.len());
}

/// Finding 2: 500 connections sending half a header were all still open after 41 s. Now a
/// header must arrive within the header timeout, and connections over the cap are closed
/// on arrival; `/health` still answers on a fresh connection meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_capped() {
    let f = fixture(|c, _| {
        c.connections.header_read_timeout = Duration::from_secs(1);
        c.connections.max_connections = 300;
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(lore_server::http::listen::serve(
        listener,
        f.router.clone(),
        f.state.config.connections,
        async {
            let _ = stopped.await;
        },
    ));
    let report = tokio::task::spawn_blocking(move || {
        // 250 half-open connections: a request line and part of a header, never finished.
        let mut slow: Vec<TcpStream> = (0..250)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                    .unwrap();
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        let health = http_get(addr, "/health");
        let health_ms = started.elapsed().as_secs_f64() * 1000.0;
        // Over the cap: 60 more are closed at once (a read sees the end, not a timeout).
        let over: Vec<TcpStream> = (0..60).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let closed_over = over.into_iter().filter(|s| closed_within(s, 2)).count();
        // The slow ones are closed by the header timeout.
        let closed_slow = slow.iter_mut().filter(|s| closed_within(s, 5)).count();
        (health, health_ms, closed_over, closed_slow)
    })
    .await
    .unwrap();
    let (health, health_ms, closed_over, closed_slow) = report;
    println!("/health with 250 half-open connections: {health_ms:.1} ms");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        closed_over >= 9,
        "only {closed_over} of 60 over the cap were closed"
    );
    assert_eq!(closed_slow, 250, "half-open connections still open");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// A GET over a fresh connection; the whole response.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Whether the server closed `s` within `seconds` (a read returns the end or a reset).
fn closed_within(mut s: &TcpStream, seconds: u64) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(seconds)))
        .unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // A 408 or 400 before closing is fine too.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

/// Finding 3: from `Origin: evil.example` a keyless server took an upload (which became
/// searchable) and a fine-tune job; a foreign `Host` (DNS rebinding) read the documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_server_refuses_other_sites() {
    let f = fixture(|_, _| {}).await;
    let files = [("planted.md", "planted text")];
    let (status, body) = f
        .call(upload(&files, &[("origin", "https://evil.example")]))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let finetune = Request::post("/v1/finetune")
        .header("origin", "https://evil.example")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"name": "x", "data_path": "/tmp/x.jsonl"}).to_string(),
        ))
        .unwrap();
    assert_eq!(f.call(finetune).await.0, StatusCode::FORBIDDEN);
    let rebound = Request::get("/v1/documents")
        .header("host", "evil.example:8080")
        .body(Body::empty())
        .unwrap();
    assert_eq!(f.call(rebound).await.0, StatusCode::FORBIDDEN);
    // Cross-site without Origin (a browser's no-cors request) is refused too.
    let sneaky = Request::get("/v1/documents")
        .header("sec-fetch-site", "cross-site")
        .body(Body::empty())
        .unwrap();
    assert_eq!(f.call(sneaky).await.0, StatusCode::FORBIDDEN);
    // The page's own origin, loopback origins and plain clients are served.
    for headers in [
        vec![
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080"),
        ],
        vec![
            ("origin", "http://localhost:3000"),
            ("host", "localhost:8080"),
        ],
        vec![],
    ] {
        let mut request = Request::get("/v1/documents");
        for (k, v) in &headers {
            request = request.header(*k, *v);
        }
        let (status, body) = f.call(request.body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{headers:?}: {body}");
    }
    let listed = fixture(|c, _| c.cors_origins = vec!["https://app.example".into()]).await;
    let from_app = Request::get("/v1/documents")
        .header("origin", "https://app.example")
        .body(Body::empty())
        .unwrap();
    assert_eq!(listed.call(from_app).await.0, StatusCode::OK);
    // --allow-public: any Host, but still not other sites' pages.
    let public = fixture(|c, _| c.allow_public = true).await;
    let named = Request::get("/v1/documents")
        .header("host", "lore.internal:8080")
        .header("origin", "http://lore.internal:8080")
        .body(Body::empty())
        .unwrap();
    assert_eq!(public.call(named).await.0, StatusCode::OK);
    let evil = upload(&files, &[("origin", "https://evil.example")]);
    assert_eq!(public.call(evil).await.0, StatusCode::FORBIDDEN);
}

/// Finding 4, end to end: a file of control characters is refused as binary, and text that
/// never fills a token budget is cut into chunks of bounded size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_have_a_byte_cap() {
    let f = fixture(|_, _| {}).await;
    let control = "\u{1}".repeat(200_000);
    // Words over 100 characters are one `[UNK]` token each: 15 lines of one 20 KB word
    // are 15 tokens, far under the budget, in 300 KB.
    let long_word = format!(
        "lore\n{}end\n",
        format!("{}\n", "x".repeat(20_000)).repeat(15)
    );
    let job = f
        .ingest(&[("control.txt", &control), ("word.md", &long_word)])
        .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let skipped = job["result"]["skipped_files"].to_string();
    assert!(skipped.contains("control.txt"), "{job}");
    let (status, body) = f
        .call(post_json("/v1/search", &json!({"query": "lore", "k": 20})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let hits = body["hits"].as_array().unwrap();
    assert!(!hits.is_empty(), "{body}");
    let cap = 256 * lore_ingest::MAX_BYTES_PER_TOKEN;
    for hit in hits {
        let text = hit["text"].as_str().unwrap();
        assert!(text.len() <= cap, "a chunk of {} bytes", text.len());
    }
}

/// Finding 5: one `path:{…}` of 150,000 alternatives panicked in globset and the client
/// saw a closed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_glob_filter_is_a_400() {
    let f = fixture(|_, _| {}).await;
    f.ingest(&[("a.md", "lore knowledge base")]).await;
    let alternatives: Vec<String> = (0..150_000).map(|i| format!("f{i}")).collect();
    let filter = format!("path:{{{}}}", alternatives.join(","));
    let (status, body) = f
        .call(post_json(
            "/v1/search",
            &json!({"query": "lore", "filter": filter}),
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().len() < 2000, "the error echoes the filter");
}

/// Finding 6: 2,048 texts in one `/v1/embeddings` request went to the model at once and a
/// search waited for all of them. Now a request reaches the model a slice at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_embedding_requests_are_sliced() {
    let f = fixture(|_, _| {}).await;
    let input: Vec<String> = (0..200)
        .map(|i| format!("text number {i} about lore"))
        .collect();
    let (status, body) = f
        .call(post_json("/v1/embeddings", &json!({"input": input})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 200);
    let batches = f.batches.lock().unwrap().clone();
    assert!(batches.len() >= 10, "{batches:?}");
    assert!(batches.iter().all(|&n| n <= 16), "{batches:?}");
}

/// Finding 7 (uploads): a file over the cap is refused while it streams and leaves nothing
/// behind; uploads beyond `--max-uploads` at once get 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_to_disk_with_caps() {
    let f = fixture(|c, _| {
        c.max_file_bytes = 10_000;
        c.max_uploads = 1;
    })
    .await;
    let big = "y".repeat(20_000);
    let (status, body) = f.call(upload(&[("big.md", &big)], &[])).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let uploads = f.state.config.uploads_dir();
    let left: Vec<_> = std::fs::read_dir(&uploads)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");

    // An upload whose body never ends holds the one slot.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.md\"\r\n\r\nabc",
        b = common::BOUNDARY
    )
    .into_bytes()))
        .await
        .unwrap();
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let slow = Request::post("/v1/ingest/upload")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={}", common::BOUNDARY),
        )
        .body(Body::from_stream(stream))
        .unwrap();
    let router = f.router.clone();
    let held = tokio::spawn(async move { tower::ServiceExt::oneshot(router, slow).await });
    for _ in 0..200 {
        if f.state.upload_limit.in_use(1) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = f.call(upload(&[("next.md", "text")], &[])).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    drop(tx);
    let _ = held.await;
}

/// Finding 8: `system: "--resume"` reached the training child as a flag of its own, and
/// two jobs for one adapter were both accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finetune_values_cannot_become_flags() {
    let f = fixture(|c, dir| {
        std::fs::create_dir_all(dir.join("sets")).unwrap();
        c.allowed_roots = vec![dir.join("sets").canonicalize().unwrap()];
        // Stands in for lore: records its arguments, then waits for a file to appear, or for
        // the test's folder to go (else a child that missed the file outlived the test run).
        let exe = dir.join("fake-lore");
        std::fs::write(
            &exe,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > {args}\nwhile [ ! -e {go} ] && [ -d {dir} ]; do sleep 0.05; done\nexit 1\n",
                args = dir.join("args.txt").display(),
                go = dir.join("go").display(),
                dir = dir.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        c.lore_exe = exe;
    })
    .await;
    let dir = f.dir.path().to_path_buf();
    let data = dir.join("sets/d.jsonl");
    std::fs::write(&data, "{\"prompt\": \"a\", \"completion\": \"b\"}\n").unwrap();
    let body = json!({"name": "tone", "data_path": data, "system": "--resume"});
    let (status, started) = f.call(post_json("/v1/finetune", &body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    // The first job is still running (its child waits): the same name is a conflict.
    let (status, again) = f.call(post_json("/v1/finetune", &body)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    let args_file = dir.join("args.txt");
    for _ in 0..200 {
        if args_file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    std::fs::write(dir.join("go"), "").unwrap();
    let args = std::fs::read_to_string(&args_file).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert!(args.contains(&"--system=--resume"), "{args:?}");
    assert!(!args.contains(&"--resume"), "{args:?}");
}

/// Finding 9: the smaller leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smaller_leaks_are_closed() {
    let f = fixture(|c, dir| {
        std::fs::create_dir_all(dir.join("root")).unwrap();
        c.allowed_roots = vec![dir.join("root").canonicalize().unwrap()];
        c.api_key = Some("k1".into());
    })
    .await;
    let auth = |r: axum::http::request::Builder| r.header("authorization", "Bearer k1");
    // An existing and a missing path outside the roots look the same.
    let mut answers = Vec::new();
    for path in ["/etc", "/no/such/folder/anywhere"] {
        let request = auth(Request::post("/v1/ingest"))
            .header("content-type", "application/json")
            .body(Body::from(json!({"paths": [path]}).to_string()))
            .unwrap();
        let (status, body) = f.call(request).await;
        answers.push((
            status,
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .replace(path, "P"),
        ));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, StatusCode::FORBIDDEN);
    // A missing path inside a root is still named as missing.
    let inside = f.dir.path().join("root/missing").display().to_string();
    let request = auth(Request::post("/v1/ingest"))
        .header("content-type", "application/json")
        .body(Body::from(json!({"paths": [inside]}).to_string()))
        .unwrap();
    assert_eq!(f.call(request).await.0, StatusCode::BAD_REQUEST);
    // A name that displays as something else.
    let request = auth(Request::post("/v1/ingest/upload"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={}", common::BOUNDARY),
        )
        .body(Body::from(format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"notes\u{202E}dm.exe\"\r\n\r\nx\r\n--{b}--\r\n",
            b = common::BOUNDARY
        )))
        .unwrap();
    assert_eq!(f.call(request).await.0, StatusCode::BAD_REQUEST);
    // Security headers on the page.
    let page = f.send(get("/")).await;
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers();
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    // Without the key, a wrong method or an unknown path is a 401, not a 405 or 404.
    for (method, path) in [("DELETE", "/v1/search"), ("GET", "/v1/nothing-here")] {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            f.call(request).await.0,
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
    }
}

/// Every route the OpenAPI document lists needs the key, whatever the method or body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_needs_the_key() {
    let f = fixture(|c, _| c.api_key = Some("k1".into())).await;
    let mut routes = common::documented_routes(&f, Some("k1")).await;
    for extra in ["/ready", "/metrics", "/openapi.json"] {
        routes.push(("GET".into(), extra.into()));
    }
    for (method, path) in &routes {
        if matches!(path.as_str(), "/" | "/health") {
            continue;
        }
        for authorization in [None, Some("Bearer wrong"), Some("Basic azE=")] {
            let mut request = Request::builder()
                .method(method.as_str())
                .uri(path.as_str());
            if let Some(a) = authorization {
                request = request.header("authorization", a);
            }
            let request = request
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let (status, body) = f.call(request).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {authorization:?}: {body}"
            );
        }
    }
    for public in ["/", "/health", "/assets/app.js"] {
        assert_eq!(f.call(get(public)).await.0, StatusCode::OK, "{public}");
    }
}
