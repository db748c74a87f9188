//! `lore serve` as a test fixture: a real server process on `127.0.0.1:0`, the port read
//! from its first stdout line, and a small HTTP client (ureq) that returns status and JSON
//! for any outcome, and reads Server-Sent Events as they arrive.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{lore_bin, models_dir, repo_root};

/// The articles the test knowledge base holds (of `examples/articles`).
pub const ARTICLES: [&str; 5] = [
    "abraham-lincoln.md",
    "ascii.md",
    "albedo.md",
    "alabama.md",
    "achilles.md",
];

/// A knowledge base of [`ARTICLES`] (each cut to 6 kB), built once per test binary with
/// `lore ingest`; each server copies it, since one process holds a knowledge base at a
/// time. Returns the folder holding `kb/` and `docs/` (under the target folder, one per
/// test binary, redone at each run).
pub fn template_kb() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let stem = exe.file_stem().map(|s| s.to_string_lossy().into_owned());
        let root = lore_bin()
            .with_file_name("lore-test-tmp")
            .join(stem.unwrap_or_default());
        let _ = std::fs::remove_dir_all(&root);
        let docs = root.join("docs");
        std::fs::create_dir_all(&docs).expect("creating the template folder");
        for name in ARTICLES {
            let text = std::fs::read_to_string(repo_root().join("examples/articles").join(name))
                .expect("reading a sample article");
            let mut cut = text.len().min(6000);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let cut = text[..cut].rfind('\n').map_or(cut, |i| i + 1);
            std::fs::write(docs.join(name), &text[..cut]).expect("writing an article");
        }
        let out = Command::new(lore_bin())
            .args(["--data-dir"])
            .arg(root.join("kb"))
            .arg("--models-dir")
            .arg(models_dir())
            .args(["ingest", "--json"])
            .arg(&docs)
            .env("RUST_LOG", "warn")
            .output()
            .expect("running lore ingest");
        assert!(
            out.status.success(),
            "lore ingest failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        root
    })
}

/// `lore embed --json TEXTS…` with the real model: `{"model", "dim", "embeddings", …}`.
pub fn cli_embeddings(texts: &[&str]) -> Value {
    let out = Command::new(lore_bin())
        .arg("--models-dir")
        .arg(models_dir())
        .args(["embed", "--json"])
        .args(texts)
        .output()
        .expect("running lore embed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("lore embed prints JSON")
}

/// Copies a folder tree (the template knowledge base).
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A running `lore serve`; killed when dropped. Derefs to a [`Client`] holding its key.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub log: PathBuf,
    client: Client,
}

/// Requests to a server, with or without a key.
#[derive(Debug, Clone)]
pub struct Client {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub key: Option<String>,
    agent: ureq::Agent,
}

impl std::ops::Deref for Server {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// An HTTP outcome: status and body (JSON when it parses, else the text as a JSON string).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub content_type: String,
}

impl Server {
    /// Starts `lore --data-dir DATA serve --addr 127.0.0.1:0 [--api-key KEY] EXTRA…` and
    /// waits for its listening line (models load first; up to 3 minutes).
    pub fn start(data_dir: &Path, key: Option<&str>, extra: &[&str]) -> Result<Self> {
        let log = data_dir.with_extension("server.log");
        let mut cmd = Command::new(lore_bin());
        cmd.arg("--data-dir")
            .arg(data_dir)
            .arg("--models-dir")
            .arg(models_dir())
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(extra)
            .env_remove("LORE_API_KEY")
            .env("LORE_LM", crate::SMALL_LM)
            .env("RUST_LOG", "info,qdrant_edge=error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        if let Some(k) = key {
            cmd.args(["--api-key", k]);
        }
        let mut child = cmd.spawn().context("spawning lore serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(180))
            .unwrap_or_default();
        let Some(url) = line.trim().strip_prefix("lore: listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "lore serve did not start (stdout {line:?}); its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Ok(Self {
            child,
            log,
            client: Client {
                url: url.to_string(),
                key: key.map(str::to_string),
                agent: ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(600))
                    .build(),
            },
        })
    }

    /// A client of this server sending `key` (or none).
    pub fn client(&self, key: Option<&str>) -> Client {
        Client {
            key: key.map(str::to_string),
            ..self.client.clone()
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        self.signal("TERM")?;
        Ok(self.child.wait()?)
    }

    /// Sends a signal (`TERM`, `INT`, …) to the server.
    pub fn signal(&self, name: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} failed: {status}");
        Ok(())
    }

    /// Waits for the process to exit (after a signal sent some other way).
    pub fn wait(&mut self) -> Result<ExitStatus> {
        Ok(self.child.wait()?)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Client {
    /// A request with the server's key set.
    pub fn request(&self, method: &str, path: &str) -> ureq::Request {
        let r = self.agent.request(method, &format!("{}{path}", self.url));
        match &self.key {
            Some(k) => r.set("Authorization", &format!("Bearer {k}")),
            None => r,
        }
    }

    /// Sends `body` as JSON (or nothing) and returns the outcome, whatever the status.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let request = self.request(method, path);
        reply(match body {
            Some(b) => request.send_json(b.clone()),
            None => request.call(),
        })
    }

    /// Sends a raw body with a content type.
    pub fn send(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Reply {
        reply(
            self.request(method, path)
                .set("Content-Type", content_type)
                .send_bytes(body),
        )
    }

    /// Opens an event stream (POST `body`); fails unless the answer is 200.
    pub fn stream(&self, path: &str, body: &Value) -> Result<Events> {
        match self.request("POST", path).send_json(body.clone()) {
            Ok(r) => Ok(Events {
                reader: BufReader::new(r.into_reader()),
            }),
            Err(ureq::Error::Status(code, r)) => {
                bail!("{path}: {code} {}", r.into_string().unwrap_or_default())
            }
            Err(e) => bail!("{path}: {e}"),
        }
    }

    /// The job a `202 Accepted` reply started, once it has finished (up to `limit`).
    pub fn finished_job(&self, accepted: &Reply, limit: Duration) -> Value {
        assert_eq!(accepted.status, 202, "{:?}", accepted.body);
        let id = accepted.body["job"]["id"].as_str().expect("a job id");
        self.wait_job(id, limit).expect("the job")
    }

    /// Polls `GET /v1/jobs/{id}` until the job is finished (up to `limit`).
    pub fn wait_job(&self, id: &str, limit: Duration) -> Result<Value> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let r = self.call("GET", &format!("/v1/jobs/{id}"), None);
            let state = r.body["state"].as_str().unwrap_or_default().to_string();
            if matches!(state.as_str(), "succeeded" | "failed" | "cancelled") {
                return Ok(r.body);
            }
            if std::time::Instant::now() > deadline {
                bail!("job {id} still {state} after {limit:?}: {}", r.body);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reply(result: Result<ureq::Response, ureq::Error>) -> Reply {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => {
            return Reply {
                status: 0,
                body: Value::String(format!("transport error: {e}")),
                content_type: String::new(),
            };
        }
    };
    let status = response.status();
    let content_type = response.content_type().to_string();
    let mut text = String::new();
    let _ = response
        .into_reader()
        .take(64 << 20)
        .read_to_string(&mut text);
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        body,
        content_type,
    }
}

/// Server-Sent Events, read one at a time as the server sends them.
pub struct Events {
    reader: BufReader<Box<dyn Read + Send + Sync + 'static>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

/// One event: its name (`message` when unnamed) and data.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub data: String,
}

impl Sse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

impl Iterator for Events {
    type Item = Sse;

    fn next(&mut self) -> Option<Sse> {
        let mut event = String::from("message");
        let mut data: Vec<String> = Vec::new();
        let mut seen = false;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return seen.then(|| Sse {
                    event,
                    data: data.join("\n"),
                });
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if seen {
                    return Some(Sse {
                        event,
                        data: data.join("\n"),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue; // keep-alive comment
            }
            seen = true;
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
    }
}
