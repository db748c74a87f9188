//! `lore serve`: loads the models, opens the knowledge base, and serves the HTTP API and
//! page until SIGTERM or Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use lore_embed::{EmbedWorker, Embedder};
use lore_retrieve::{KnowledgeBase, Status};
use lore_server::http::listen::ConnectionLimits;
use lore_server::http::{AppState, Models, ServerConfig};

use crate::cli::{Cli, ModelArgs, ServeArgs, ServeFile};
use crate::commands::chat::start_generator;
use crate::models::{load_embedder, load_for_kb, models_dir, store_config};

const DEFAULT_ADDR: &str = "127.0.0.1:8080";

pub fn run(cli: &Cli, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(path) => ServeFile::read(path)?,
        None => ServeFile::default(),
    };
    let addr: SocketAddr = match args.addr.or(file.addr) {
        Some(a) => a,
        None => DEFAULT_ADDR.parse().context("the default address")?,
    };
    let api_key = args
        .api_key
        .clone()
        .or(file.api_key)
        .filter(|k| !k.is_empty());
    let allow_public = args.allow_public || file.allow_public.unwrap_or(false);
    // Loopback only, unless a key guards it or the user says so in as many words.
    if !addr.ip().is_loopback() && api_key.is_none() && !allow_public {
        anyhow::bail!(
            "refusing to listen on {addr} without an API key: anyone who can reach it could read \
             and change the knowledge base. Set --api-key (or LORE_API_KEY), or pass --allow-public"
        );
    }
    let roots = if args.allow_roots.is_empty() {
        file.allow_roots.unwrap_or_default()
    } else {
        args.allow_roots.clone()
    };
    let allowed_roots = roots
        .iter()
        .map(|r| {
            r.canonicalize()
                .with_context(|| format!("--allow-root {}", r.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let store = store_config(&cli.store)?;
    let models_dir = models_dir(cli.models_dir.as_deref());

    // An existing knowledge base names its embedding model; a new one gets --embed-model.
    let existing = Status::read_at(&cli.data_dir, &store).ok();
    let embedder = match &existing {
        Some(status) => load_for_kb(&status.model, None, cli.models_dir.as_deref())?,
        None => load_embedder(
            &ModelArgs {
                model: args
                    .embed_model
                    .clone()
                    .or(file.embed_model)
                    .unwrap_or_else(|| lore_embed::DEFAULT_MODEL.to_string()),
                batch_size: 32,
            },
            cli.models_dir.as_deref(),
        )?,
    };
    let tokenizer = embedder.tokenizer().clone();
    let kb = match KnowledgeBase::open_existing(&cli.data_dir, &store) {
        Ok(kb) => Some(kb),
        Err(lore_retrieve::Error::NotAKnowledgeBase(_) | lore_retrieve::Error::Empty(_)) => None,
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "opening the knowledge base {} (stop other lore processes using it)",
                cli.data_dir.display()
            )));
        }
    };

    let mut generation = args.generation.clone();
    // The served base is the adapter's own when --model is not given.
    generation.model = Some(generation.model_spec(&models_dir));
    let adapter = generation.adapter.take();
    let (generator, _) = start_generator(cli, &generation)?;
    let generator = match generator {
        lore_finetune::Generator::Local(worker) => {
            if let Some(dir) = &adapter {
                let spec = generation.model.clone().unwrap_or_default();
                let path = lore_finetune::resolve_model(&spec, &models_dir)?;
                lore_server::adapter_base::check(dir, &spec, &path)?;
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "adapter".into());
                worker.load_adapter(&name, dir)?;
                eprintln!("adapter `{name}` loaded from {}", dir.display());
            }
            lore_finetune::Generator::Local(worker)
        }
        remote => {
            anyhow::ensure!(
                adapter.is_none(),
                "--adapter applies to the local model; a remote endpoint serves its own"
            );
            remote
        }
    };

    let defaults = ServerConfig::new(
        cli.data_dir.clone(),
        std::env::current_exe().context("finding the lore executable")?,
        models_dir,
        generation.model.clone().unwrap_or_default(),
    );
    let seconds = |s: Option<u64>, default: Duration| s.map_or(default, Duration::from_secs);
    let config = ServerConfig {
        api_key,
        allowed_roots,
        cors_origins: if args.cors_origins.is_empty() {
            file.cors_origins.unwrap_or_default()
        } else {
            args.cors_origins.clone()
        },
        allow_public,
        auto_truncate: args.auto_truncate || file.auto_truncate.unwrap_or(defaults.auto_truncate),
        served_model_names: if args.served_model_names.is_empty() {
            file.served_model_names.clone().unwrap_or_default()
        } else {
            args.served_model_names.clone()
        },
        accept_any_model: args.accept_any_model
            || file.accept_any_model.unwrap_or(defaults.accept_any_model),
        connections: ConnectionLimits {
            header_read_timeout: seconds(
                args.header_timeout_s.or(file.header_timeout_s),
                defaults.connections.header_read_timeout,
            ),
            max_connections: pick(
                args.max_connections,
                file.max_connections,
                defaults.connections.max_connections,
            ),
        },
        max_jobs: pick(args.max_jobs, file.max_jobs, defaults.max_jobs),
        max_uploads: pick(args.max_uploads, file.max_uploads, defaults.max_uploads),
        max_body_bytes: pick(
            args.max_body_bytes,
            file.max_body_bytes,
            defaults.max_body_bytes,
        ),
        max_upload_bytes: pick(
            args.max_upload_bytes,
            file.max_upload_bytes,
            defaults.max_upload_bytes,
        ),
        request_timeout: seconds(
            args.request_timeout_s.or(file.request_timeout_s),
            defaults.request_timeout,
        ),
        embed_concurrency: pick(
            args.embed_concurrency,
            file.embed_concurrency,
            defaults.embed_concurrency,
        ),
        lm_concurrency: pick(
            args.lm_concurrency,
            file.lm_concurrency,
            defaults.lm_concurrency,
        ),
        store,
        chunk_tokens: pick(args.chunk_tokens, file.chunk_tokens, defaults.chunk_tokens),
        overlap_tokens: pick(args.overlap, file.overlap, defaults.overlap_tokens),
        max_file_bytes: pick(
            args.max_file_bytes,
            file.max_file_bytes,
            defaults.max_file_bytes,
        ),
        repeat_penalty: args.generation.repeat_penalty,
        grounding: args.grounding.settings()?,
        shutdown_grace: seconds(
            args.shutdown_grace_s.or(file.shutdown_grace_s),
            defaults.shutdown_grace,
        ),
        ..defaults
    };
    for origin in &config.cors_origins {
        anyhow::ensure!(
            is_origin(origin),
            "--cors-origin `{origin}` is not an origin: give scheme and host (and port), such as \
             https://example.com or http://localhost:3000, without a path or a trailing /; or `*`"
        );
    }
    anyhow::ensure!(
        !config.request_timeout.is_zero(),
        "--request-timeout-s must be at least 1"
    );
    anyhow::ensure!(
        !config.connections.header_read_timeout.is_zero(),
        "--header-timeout-s must be at least 1"
    );
    for (flag, value) in [
        ("--embed-concurrency", config.embed_concurrency),
        ("--lm-concurrency", config.lm_concurrency),
        ("--max-body-bytes", config.max_body_bytes),
        ("--max-connections", config.connections.max_connections),
        ("--max-jobs", config.max_jobs),
        ("--max-uploads", config.max_uploads),
    ] {
        anyhow::ensure!(value > 0, "{flag} must be at least 1");
    }
    let models = Models {
        embedder: EmbedWorker::spawn(embedder),
        tokenizer,
        generator,
    };
    let state = AppState::new(config, models, kb);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lore-http")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let local = listener.local_addr()?;
        // One line on stdout, flushed: scripts and tests read the chosen port from it.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "lore: listening on http://{local}")?;
        stdout.flush()?;
        drop(stdout);
        tracing::info!(%local, embedding_model = %state.models.embedder.info().name,
            language_model = %state.models.generator.name(), "serving");
        let mut signals = Signals::new()?;
        let shutdown = async move {
            signals.next().await;
            // A second signal means now: no more waiting for requests or jobs.
            tokio::spawn(async move {
                signals.next().await;
                eprintln!("lore: second signal: exiting without waiting");
                std::process::exit(130);
            });
        };
        lore_server::http::run(state, listener, shutdown).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM, listened to from start-up on: each signal is seen once, so the
/// second one can be told from the first.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal. `recv` also ends (with `None`) when the runtime shuts down: that is
    /// not a signal, so it waits forever instead (the runtime is going away anyway).
    async fn next(&mut self) {
        tokio::select! {
            Some(()) = self.interrupt.recv() => {}
            Some(()) = self.terminate.recv() => {}
            else => std::future::pending().await,
        }
    }
}

/// The command line's value, else the `--config` file's, else the default.
fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

/// A browser `Origin` value (`scheme://host[:port]`), or `*` for any.
fn is_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some(host) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    !host.is_empty()
        && !host.contains(['/', '?', '#', ' '])
        && axum::http::HeaderValue::from_str(origin).is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn origins_are_scheme_and_host() {
        for ok in ["*", "https://example.com", "http://localhost:3000"] {
            assert!(super::is_origin(ok), "{ok}");
        }
        for bad in [
            "example.com",
            "http://",
            "https://example.com/",
            "http://a b",
            "ftp://x",
        ] {
            assert!(!super::is_origin(bad), "{bad}");
        }
    }
}
