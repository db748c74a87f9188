//! `lore serve` jobs over real HTTP: ingest from an allowed folder and from uploads,
//! documents listed and deleted, and fine-tuning an adapter that is then served per
//! request, cancelled with a checkpoint and resumed.

use std::path::Path;
use std::time::Duration;

use lore_tests::repo_root;
use lore_tests::server::{Client, Server, copy_dir, template_kb};
use lore_tests::{real_embedding_model, real_language_model};
use serde_json::{Value, json};

const KEY: &str = "jobs-key";

fn serve(tmp: &Path, extra: &[&str]) -> Option<Server> {
    real_embedding_model()?;
    real_language_model()?;
    copy_dir(&template_kb().join("kb"), &tmp.join("kb")).expect("copying the kb");
    Some(Server::start(&tmp.join("kb"), Some(KEY), extra).expect("lore serve"))
}

/// A multipart/form-data body: `(name, filename, bytes)` parts.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "lore-test-boundary-5f2c";
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn top_path(client: &Client, query: &str) -> String {
    let r = client.call(
        "POST",
        "/v1/search",
        Some(&json!({"query": query, "k": 1, "mode": "lexical"})),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["hits"][0]["path"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Resumes the training run `name` from its checkpoint for one more step than `done`, and
/// checks it finishes there.
fn resume_one_more_step(server: &Server, name: &str, data: &Path, done: u64) {
    let r = server.call(
        "POST",
        "/v1/finetune",
        Some(&json!({"name": name, "data_path": data, "max_steps": done + 1, "resume": true})),
    );
    let job = server.finished_job(&r, Duration::from_secs(600));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["progress"]["step"], done + 1, "{job}");
}

fn documents(client: &Client) -> Vec<String> {
    let r = client.call("GET", "/v1/documents", None);
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["documents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["path"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn ingest_jobs_from_allowed_folders_and_uploads() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let allowed = tmp.path().join("allowed");
    std::fs::create_dir_all(&allowed).expect("mkdir");
    std::fs::write(
        allowed.join("zephyrium.md"),
        "# Zephyrium lighthouse\n\nThe Zephyrium lighthouse was built in 1891 by the engineer Mara Quell.\n",
    )
    .expect("write");
    // Links out of the allowed folder: never followed, so never read.
    let outside = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        outside.path().join("secret.md"),
        "# Secret\n\nThe vault code of the Ormsby bank is 4417.\n",
    )
    .expect("write");
    std::os::unix::fs::symlink(outside.path().join("secret.md"), allowed.join("leak.md"))
        .expect("symlink");
    std::os::unix::fs::symlink(outside.path(), allowed.join("outdir")).expect("symlink");
    // The allowed root holds the data dir too (as `--allow-root .` with `.lore` would).
    let Some(server) = serve(
        tmp.path(),
        &[
            "--allow-root",
            tmp.path().to_str().expect("utf-8"),
            "--max-file-bytes",
            "4096",
        ],
    ) else {
        return;
    };
    assert_eq!(documents(&server).len(), 5);

    // A server-side folder under the allowed root.
    let r = server.call(
        "POST",
        "/v1/ingest",
        Some(&json!({"paths": [allowed], "tags": {"team": "docs"}})),
    );
    let job = server.finished_job(&r, Duration::from_secs(300));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["new"], 1, "{job}");
    assert_eq!(job["progress"]["files_done"], 1, "{job}");
    let skipped = job["result"]["skipped_files"].to_string();
    assert!(
        skipped.contains("leak.md")
            && skipped.contains("outdir")
            && skipped.contains("a link out of"),
        "{job}"
    );
    // The report names the links, never what they lead to (issue 14, finding 9).
    assert!(!skipped.contains("secret.md"), "{job}");
    assert!(!top_path(&server, "vault code of the Ormsby bank").contains("secret"));
    assert!(top_path(&server, "Who built the Zephyrium lighthouse?").ends_with("/zephyrium.md"));
    let r = server.call(
        "POST",
        "/v1/search",
        Some(&json!({"query": "lighthouse", "filter": "tag:team=docs"})),
    );
    assert!(
        r.body["hits"].as_array().is_some_and(|h| h.len() == 1),
        "{:?}",
        r.body
    );
    assert_eq!(documents(&server).len(), 6);

    // An upload whose name tries to climb out of the upload folder.
    let (kind, body) = multipart(&[(
        "file",
        Some("../../escape.md"),
        b"# Quillbarrow\n\nQuillbarrow is a village famous for its blue cheese and its copper bells.\n",
    )]);
    let r = server.send("POST", "/v1/ingest/upload", &kind, &body);
    let job = server.finished_job(&r, Duration::from_secs(300));
    assert_eq!(job["state"], "succeeded", "{job}");
    let uploaded = tmp.path().join("kb/uploads/escape.md");
    assert!(uploaded.is_file(), "the upload is kept under the data dir");
    assert!(!tmp.path().join("escape.md").exists() && !Path::new("/escape.md").exists());
    let key = top_path(&server, "Which village is famous for blue cheese?");
    assert!(key.ends_with("/uploads/escape.md"), "{key}");

    // A new upload of the same name replaces it.
    let (kind, body) = multipart(&[(
        "file",
        Some("escape.md"),
        b"# Quillbarrow\n\nQuillbarrow is famous for its red apples.\n",
    )]);
    let r = server.send("POST", "/v1/ingest/upload", &kind, &body);
    let job = server.finished_job(&r, Duration::from_secs(300));
    assert_eq!(job["result"]["changed"], 1, "{job}");

    // Ingesting the folder that holds the data dir leaves the uploads in it alone.
    let r = server.call(
        "POST",
        "/v1/ingest",
        Some(&json!({"paths": [tmp.path()], "tags": {"team": "docs"}})),
    );
    let job = server.finished_job(&r, Duration::from_secs(300));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["removed"], 0, "{job}");
    assert_eq!(
        job["result"]["unchanged"], 1,
        "zephyrium.md, same tags: {job}"
    );
    assert!(documents(&server).contains(&key));

    // An upload the run skips (empty) is not left behind in the upload folder.
    let (kind, body) = multipart(&[("file", Some("empty.md"), b"")]);
    let r = server.send("POST", "/v1/ingest/upload", &kind, &body);
    let job = server.finished_job(&r, Duration::from_secs(300));
    assert_eq!(job["result"]["skipped"], 1, "{job}");
    assert!(!tmp.path().join("kb/uploads/empty.md").exists());

    // Bad uploads.
    let (kind, body) = multipart(&[("file", Some("big.md"), &[b'a'; 5000])]);
    let r = server.send("POST", "/v1/ingest/upload", &kind, &body);
    assert_eq!(r.status, 413, "{:?}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("big.md") && m.contains("--max-file-bytes")),
        "{:?}",
        r.body
    );
    assert!(!tmp.path().join("kb/uploads/big.md").exists());
    let (kind, body) = multipart(&[("file", Some(".."), b"x")]);
    let r = server.send("POST", "/v1/ingest/upload", &kind, &body);
    assert_eq!(r.status, 400, "{:?}", r.body);
    let (kind, body) = multipart(&[("other", None, b"x")]);
    let r = server.send("POST", "/v1/ingest/upload", &kind, &body);
    assert_eq!(r.status, 400, "{:?}", r.body);

    // Delete the upload: gone from both stores and from disk.
    let r = server.call("DELETE", &format!("/v1/documents?path={key}"), None);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        r.body["chunks_deleted"].as_u64().is_some_and(|n| n >= 1),
        "{:?}",
        r.body
    );
    assert!(!uploaded.exists());
    assert!(!documents(&server).contains(&key));
    assert!(!top_path(&server, "Quillbarrow red apples").contains("escape"));
    let jobs = server.call("GET", "/v1/jobs", None).body;
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(5), "{jobs}");
    let metrics = server.call("GET", "/metrics", None).body;
    assert!(
        metrics
            .as_str()
            .is_some_and(|m| m.contains("lore_jobs{kind=\"ingest\",state=\"succeeded\"} 5")),
        "{metrics}"
    );
}

#[test]
fn finetune_jobs_train_serve_cancel_and_resume() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = repo_root().join("tests/data/finetune");
    let Some(server) = serve(tmp.path(), &["--allow-root", data.to_str().expect("utf-8")]) else {
        return;
    };
    let train = data.join("pirate_train.jsonl");

    // Train from an allowed path: a few steps, then the adapter is served.
    let r = server.call(
        "POST",
        "/v1/finetune",
        Some(&json!({"name": "pirate", "data_path": train, "max_steps": 12, "lr": 2e-3})),
    );
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["job"]["id"].as_str().expect("id").to_string();
    let job = server.wait_job(&id, Duration::from_secs(900)).expect("job");
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["progress"]["step"], 12, "{job}");
    assert_eq!(job["progress"]["total_steps"], 12, "{job}");
    assert!(
        job["progress"]["loss"].as_f64().is_some_and(f64::is_finite),
        "{job}"
    );
    assert!(job["result"]["final_val_loss"].as_f64().is_some(), "{job}");
    assert_eq!(job["result"]["loaded"], true, "{job}");
    let adapters = server.call("GET", "/v1/adapters", None).body;
    assert_eq!(adapters["adapters"][0]["name"], "pirate", "{adapters}");
    assert_eq!(adapters["adapters"][0]["loaded"], true, "{adapters}");
    let models = server.call("GET", "/v1/models", None).body.to_string();
    assert!(models.contains("\"pirate\""), "{models}");
    let chat = |model: &str| {
        server.call(
            "POST",
            "/v1/chat/completions",
            Some(&json!({"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16})),
        )
    };
    let tuned = chat("pirate");
    assert_eq!(tuned.status, 200, "{:?}", tuned.body);
    let base = chat("default");
    assert_eq!(base.status, 200, "{:?}", base.body);
    assert_ne!(
        tuned.body["choices"][0]["message"]["content"],
        base.body["choices"][0]["message"]["content"],
        "the adapter should change the greedy answer"
    );
    let r = server.call(
        "POST",
        "/v1/ask",
        Some(&json!({"question": "Who was Achilles?", "adapter": "pirate", "max_tokens": 8})),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    // A second run under the same name is refused (it would overwrite the adapter).
    let r = server.call(
        "POST",
        "/v1/finetune",
        Some(&json!({"name": "pirate", "data_path": train})),
    );
    assert_eq!(r.status, 409, "{:?}", r.body);
    // Unload, then the name is unknown; load it again from the adapters folder.
    assert_eq!(
        server.call("DELETE", "/v1/adapters/pirate", None).status,
        200
    );
    assert_eq!(chat("pirate").status, 404);
    // An adapter whose record names other base weights is refused with 400.
    let record = tmp.path().join("kb/adapters/pirate/lore_base.json");
    let original = std::fs::read_to_string(&record).expect("the adapter records its base");
    let mut other: Value = serde_json::from_str(&original).expect("record");
    other["blake3"] = json!("0".repeat(64));
    std::fs::write(&record, other.to_string()).expect("write");
    let r = server.call("POST", "/v1/adapters", Some(&json!({"name": "pirate"})));
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(
        r.body.to_string().contains("was trained on"),
        "{:?}",
        r.body
    );
    std::fs::write(&record, original).expect("restore");
    let r = server.call("POST", "/v1/adapters", Some(&json!({"name": "pirate"})));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(chat("pirate").status, 200);

    // Upload a dataset (multipart), cancel mid-run: a checkpoint stays, and resume finishes.
    let rows = std::fs::read(&train).expect("dataset");
    let (kind, body) = multipart(&[
        ("name", None, b"long"),
        ("max_steps", None, b"200"),
        ("data", Some("pirate.jsonl"), &rows),
    ]);
    let r = server.send("POST", "/v1/finetune", &kind, &body);
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["job"]["id"].as_str().expect("id").to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let job = server.call("GET", &format!("/v1/jobs/{id}"), None).body;
        if job["progress"]["step"].as_u64().is_some_and(|s| s >= 1) {
            assert!(
                job["progress"]["eta_s"].is_number() || job["progress"]["step"] == 1,
                "{job}"
            );
            break;
        }
        assert!(
            job["state"] == "running" || job["state"] == "queued",
            "{job}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no step after 10 minutes: {job}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let r = server.call("POST", &format!("/v1/jobs/{id}/cancel"), None);
    assert_eq!(r.status, 200, "{:?}", r.body);
    let job = server.wait_job(&id, Duration::from_secs(600)).expect("job");
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(
        job["error"].as_str().is_some_and(|e| e.contains("resume")),
        "{job}"
    );
    let stopped_at = job["result"]["steps"]
        .as_u64()
        .expect("steps in the result");
    assert!((1..200).contains(&stopped_at), "{job}");
    resume_one_more_step(&server, "long", &train, stopped_at);
    assert!(!server.log().contains("panicked"));
}

#[test]
fn sigterm_checkpoints_a_training_job_and_a_restart_resumes_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = repo_root().join("tests/data/finetune");
    let allow = ["--allow-root", data.to_str().expect("utf-8")];
    let Some(mut server) = serve(tmp.path(), &allow) else {
        return;
    };
    let train = data.join("pirate_train.jsonl");
    let r = server.call(
        "POST",
        "/v1/finetune",
        Some(&json!({"name": "term", "data_path": train, "max_steps": 200})),
    );
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["job"]["id"].as_str().expect("id").to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while server.call("GET", &format!("/v1/jobs/{id}"), None).body["progress"]["step"]
        .as_u64()
        .is_none_or(|s| s == 0)
    {
        assert!(std::time::Instant::now() < deadline, "no training step");
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = server.terminate().expect("SIGTERM");
    assert!(status.success(), "{status:?}: {}", server.log());
    let log = server.log();
    assert!(log.contains("checkpointing jobs"), "{log}");
    let adapter = tmp.path().join("kb/adapters/term");
    let checkpoints: Vec<String> = std::fs::read_dir(&adapter)
        .expect("the adapter folder")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    let step: u64 = checkpoints[0]["checkpoint-".len()..].parse().expect("step");

    // A new server on the same data dir resumes the job from its checkpoint.
    drop(server);
    let server = Server::start(&tmp.path().join("kb"), Some(KEY), &allow).expect("restart");
    resume_one_more_step(&server, "term", &train, step);
}
