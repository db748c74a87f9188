//! Flags, environment variables and their defaults (doc comments become `--help`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "lore",
    version,
    about = "Turn folders of documents into a knowledge base a model can use"
)]
pub struct Cli {
    /// The knowledge base's folder.
    #[arg(long, global = true, env = "LORE_DATA_DIR", default_value = ".lore")]
    pub data_dir: PathBuf,
    /// Where scripts/fetch-models puts models [default: <user data dir>/lore/models].
    #[arg(long, global = true, env = "LORE_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Log progress details to stderr (RUST_LOG overrides).
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ingest folders (or files) into the knowledge base; re-runs are incremental.
    Ingest(IngestArgs),
    /// Print embedding vectors for texts.
    Embed(EmbedArgs),
    /// Show what the knowledge base holds.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Embedding model: a folder, a name in the models directory, or a hub id (online only).
    #[arg(long, env = "LORE_MODEL", default_value = lore_embed::DEFAULT_MODEL)]
    pub model: String,
    /// Most texts per forward pass.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub batch_size: u16,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Folders or files to ingest.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Only files whose path (relative to its folder) matches; repeatable.
    #[arg(long = "include", value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out files whose relative path matches; repeatable.
    #[arg(long = "exclude", value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Most tokens per chunk (the model's window minus its special tokens caps it).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(8..=8192))]
    pub chunk_tokens: u32,
    /// Tokens shared by neighbouring chunks.
    #[arg(long, default_value_t = 32)]
    pub overlap: u32,
    /// Skip files larger than this many bytes.
    #[arg(long, default_value_t = 20 * 1024 * 1024)]
    pub max_file_bytes: u64,
    /// Also ingest hidden files and folders.
    #[arg(long)]
    pub hidden: bool,
    /// If the knowledge base was built with another model, start it over instead of refusing.
    #[arg(long)]
    pub rebuild: bool,
    /// Chunks per commit: a crash loses at most this much work.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..))]
    pub commit_chunks: u32,
    /// Print one JSON object with the counts on stdout instead of a summary.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Texts to embed.
    pub texts: Vec<String>,
    /// Read texts from a file, one per line (lines that are JSON strings are decoded).
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Print {"model","dim","count","elapsed_s","embeddings"} as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Also check, chunk by chunk, that the manifest and both stores agree (takes the lock).
    #[arg(long)]
    pub verify: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}
