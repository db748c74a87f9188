//! `lore serve` flags. Each may also come from `--config FILE` (TOML, the same names with
//! `_` for `-`); a flag given on the command line wins over the file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

use super::GenerationArgs;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]; port 0 picks a free one.
    #[arg(long, env = "LORE_ADDR")]
    pub addr: Option<SocketAddr>,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health and the page.
    #[arg(long, env = "LORE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Listen on a non-loopback address without an API key (anyone who reaches it can use
    /// and change the knowledge base).
    #[arg(long)]
    pub allow_public: bool,
    /// Embedding requests (`/v1/embeddings`, `/embed`) that do not send `truncate` cut texts
    /// longer than the model's window instead of getting an error.
    #[arg(long)]
    pub auto_truncate: bool,
    /// Another name clients may give as `model` for the language model (e.g. the name their
    /// configuration defaults to); repeatable.
    #[arg(long = "served-model-name", value_name = "NAME")]
    pub served_model_names: Vec<String>,
    /// A `model` lore does not know answers with the default language model (chat) or the
    /// knowledge base's embedding model (embeddings) instead of 404.
    #[arg(long)]
    pub accept_any_model: bool,
    /// A server-side folder ingest and fine-tune requests may read; repeatable. Without
    /// one, only uploads are accepted.
    #[arg(long = "allow-root", value_name = "DIR")]
    pub allow_roots: Vec<PathBuf>,
    /// An origin browsers may call the API from (CORS), or `*`; repeatable.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// Largest JSON body in bytes [default: 2 MiB].
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// Largest upload in bytes [default: 64 MiB].
    #[arg(long)]
    pub max_upload_bytes: Option<usize>,
    /// Seconds a request may take to start its response [default: 300].
    #[arg(long)]
    pub request_timeout_s: Option<u64>,
    /// Embedding requests held at once (running or queued) before 429 [default: 64].
    #[arg(long)]
    pub embed_concurrency: Option<usize>,
    /// Generations held at once (running or queued) before 429 [default: 4].
    #[arg(long)]
    pub lm_concurrency: Option<usize>,
    /// Seconds shutdown waits for jobs to checkpoint [default: 60].
    #[arg(long)]
    pub shutdown_grace_s: Option<u64>,
    /// Seconds a client may take to send a request's header; a kept-alive connection idle
    /// this long is closed [default: 10].
    #[arg(long)]
    pub header_timeout_s: Option<u64>,
    /// Connections open at once; further ones are closed on arrival [default: 512].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Ingest and fine-tune jobs queued or running at once before 429 [default: 16].
    #[arg(long)]
    pub max_jobs: Option<usize>,
    /// Uploads received at once (each streams to disk) before 429 [default: 4].
    #[arg(long)]
    pub max_uploads: Option<usize>,
    /// Embedding model for a new knowledge base (an existing one keeps its own)
    /// [default: all-MiniLM-L6-v2].
    #[arg(long)]
    pub embed_model: Option<String>,
    /// Tokens per chunk for ingest jobs [default: 256].
    #[arg(long)]
    pub chunk_tokens: Option<usize>,
    /// Tokens neighbouring chunks share [default: 32].
    #[arg(long)]
    pub overlap: Option<usize>,
    /// Ingest jobs skip files larger than this, and uploads of them get 413
    /// [default: 20 MiB].
    #[arg(long)]
    pub max_file_bytes: Option<u64>,
    /// Settings file (TOML) with any of these options.
    #[arg(long, value_name = "FILE", env = "LORE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub generation: GenerationArgs,
    #[command(flatten)]
    pub grounding: super::GroundingArgs,
}

/// The settings file: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    pub addr: Option<SocketAddr>,
    pub api_key: Option<String>,
    pub allow_public: Option<bool>,
    pub auto_truncate: Option<bool>,
    pub served_model_names: Option<Vec<String>>,
    pub accept_any_model: Option<bool>,
    pub allow_roots: Option<Vec<PathBuf>>,
    pub cors_origins: Option<Vec<String>>,
    pub max_body_bytes: Option<usize>,
    pub max_upload_bytes: Option<usize>,
    pub request_timeout_s: Option<u64>,
    pub embed_concurrency: Option<usize>,
    pub lm_concurrency: Option<usize>,
    pub shutdown_grace_s: Option<u64>,
    pub header_timeout_s: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_jobs: Option<usize>,
    pub max_uploads: Option<usize>,
    pub embed_model: Option<String>,
    pub chunk_tokens: Option<usize>,
    pub overlap: Option<usize>,
    pub max_file_bytes: Option<u64>,
}

impl ServeFile {
    /// Reads `path`; fails naming the file and the bad key or value.
    pub fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))
    }
}
