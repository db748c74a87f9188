//! Real clients against `lore serve`: the official `openai` Python package (chat plain and
//! streamed, embeddings equal to the CLI's, errors), `huggingface_hub`'s TEI client on the
//! TEI routes, and the web page in headless Chromium
//! (ask, tokens arriving one by one, citations opening their passage, search, key prompt).
//!
//! `scripts/setup-clients` installs both; without them these tests skip with a message,
//! unless `LORE_REQUIRE_CLIENTS=1` (as `scripts/test` sets), where a missing client fails.

use std::path::PathBuf;
use std::process::Command;

use lore_tests::server::{Server, cli_embeddings, copy_dir, template_kb};
use lore_tests::{lore_bin, models_dir, real_embedding_model, real_language_model, repo_root};

const KEY: &str = "clients-key";

/// `path` when it exists; else skip (or fail under `LORE_REQUIRE_CLIENTS=1`).
fn client(path: PathBuf, what: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    lore_tests::skip_unless_required(
        "LORE_REQUIRE_CLIENTS",
        &format!("{what} at {}", path.display()),
        "scripts/setup-clients",
    )
}

fn serve(tmp: &std::path::Path, extra: &[&str]) -> Option<Server> {
    real_embedding_model()?;
    real_language_model()?;
    copy_dir(&template_kb().join("kb"), &tmp.join("kb")).expect("copying the kb");
    Some(Server::start(&tmp.join("kb"), Some(KEY), extra).expect("lore serve"))
}

/// Writes `{"texts", "embeddings"}` with the CLI's vectors for `texts` (what a client's
/// vectors must equal) and returns its path.
fn expected_embeddings(dir: &std::path::Path, texts: &[&str]) -> PathBuf {
    let mut expected = cli_embeddings(texts);
    expected["texts"] = serde_json::json!(texts);
    let path = dir.join("expected.json");
    std::fs::write(&path, expected.to_string()).expect("write");
    path
}

/// Runs a client program and fails with its whole output unless it exits 0.
fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
}

/// Runs a Python client check (`scripts/NAME`) against a served copy of the template
/// knowledge base; `args` gets the server's URL and returns the script's arguments, to which
/// `--expect-embeddings` (the CLI's vectors for `texts`) is added.
fn python_check(
    script: &str,
    texts: &[&str],
    serve_args: &[&str],
    args: impl FnOnce(&str) -> Vec<String>,
) {
    let Some(python) = client(
        repo_root().join("target/clients-venv/bin/python"),
        "the clients venv",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let Some(server) = serve(tmp.path(), serve_args) else {
        return;
    };
    let expected = expected_embeddings(tmp.path(), texts);
    run(
        Command::new(python)
            .arg(repo_root().join("scripts").join(script))
            .args(args(&server.url))
            .arg("--expect-embeddings")
            .arg(&expected),
        script,
    );
    assert!(!server.log().contains("panicked"));
}

#[test]
fn the_openai_python_client_works_unchanged() {
    let texts = [
        "Work on ASCII began in 1961.",
        "Lincoln was born in Kentucky.",
        "Albedo measures reflection.",
    ];
    // With --accept-any-model, so the script checks that OpenAI's own model names work.
    python_check("openai_check.py", &texts, &["--accept-any-model"], |url| {
        vec![
            "--base-url".into(),
            format!("{url}/v1"),
            "--api-key".into(),
            KEY.into(),
            "--accept-any-model".into(),
        ]
    });
}

#[test]
fn the_tei_client_embeds_through_the_tei_routes() {
    let texts = [
        "Work on ASCII began in 1961.",
        "Lincoln was born in Kentucky.",
    ];
    python_check("tei_check.py", &texts, &[], |url| {
        vec!["--url".into(), url.into(), "--api-key".into(), KEY.into()]
    });
}

#[test]
fn the_page_streams_an_answer_and_opens_citations_in_chromium() {
    let browser = repo_root().join("tests/browser");
    let Some(_) = client(
        browser.join("node_modules/playwright-core"),
        "playwright-core",
    ) else {
        return;
    };
    let chromium = std::env::var_os("CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let Some(chromium) = client(chromium, "chromium") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let Some(server) = serve(tmp.path(), &[]) else {
        return;
    };
    let shot = tmp.path().join("page.png");
    run(
        Command::new("node")
            .arg(browser.join("page-test.mjs"))
            .args(["--url", &server.url, "--key", KEY])
            .args(["--question", "In which state was Abraham Lincoln born?"])
            .args(["--expect-path", "abraham-lincoln.md", "--timeout", "600"])
            .arg("--screenshot")
            .arg(&shot)
            .env("CHROMIUM", chromium),
        "tests/browser/page-test.mjs",
    );
    assert!(!server.log().contains("panicked"));
}

/// lore's own OpenAI client (`--llm-url`) against `lore serve`: the same greedy answer as the
/// local model gives, since the server renders the same chat template.
#[test]
fn lore_chat_through_the_server_equals_the_local_answer() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let Some(server) = serve(tmp.path(), &[]) else {
        return;
    };
    let chat = |remote: bool| {
        let mut cmd = Command::new(lore_bin());
        cmd.env("LORE_LM", lore_tests::SMALL_LM)
            .arg("--models-dir")
            .arg(models_dir())
            .args([
                "chat",
                "Name one colour of the rainbow.",
                "--json",
                "--max-tokens",
                "16",
            ])
            .env("LORE_LLM_API_KEY", KEY)
            .env("LORE_DATA_DIR", tmp.path().join("unused"));
        if remote {
            cmd.args([
                "--llm-url",
                &format!("{}/v1", server.url),
                "--llm-model",
                "default",
            ]);
        }
        let out = cmd.output().expect("lore chat");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")
    };
    let local = chat(false);
    let remote = chat(true);
    assert!(
        !local["answer"].as_str().unwrap_or_default().is_empty(),
        "{local}"
    );
    assert_eq!(
        remote["answer"], local["answer"],
        "remote {remote}\nlocal {local}"
    );
    assert_eq!(remote["usage"], local["usage"]);
}
