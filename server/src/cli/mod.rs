//! Flags, environment variables and their defaults (doc comments become `--help`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod finetune;
mod serve;
pub use finetune::*;
pub use serve::*;

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
    #[command(flatten)]
    pub store: StoreArgs,
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
    /// Search the knowledge base: dense, BM25 or both fused.
    Search(SearchArgs),
    /// Measure quality on a benchmark.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Talk to the language model directly (no retrieval).
    Chat(ChatArgs),
    /// Answer a question from the knowledge base, citing the passages used.
    Ask(AskArgs),
    /// Fine-tune the language model with LoRA on a frozen 4-bit base; also merge, export,
    /// score text, and generate datasets.
    Finetune(Box<FinetuneArgs>),
    /// Serve the HTTP API (search, ask, OpenAI-compatible chat and embeddings, ingest and
    /// fine-tune jobs) and the web page.
    Serve(Box<ServeArgs>),
    /// Move the knowledge base's vectors to a Qdrant server, or back to the embedded engine,
    /// without re-embedding.
    Migrate(MigrateArgs),
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct MigrateArgs {
    /// Move the vectors from the embedded engine to the Qdrant server at this gRPC URL
    /// (collection: --qdrant-collection; the shape flags apply to a new one).
    #[arg(long, value_name = "URL")]
    pub to_qdrant: Option<String>,
    /// Move the vectors from the Qdrant server that --qdrant-url names back into the data
    /// folder's embedded engine.
    #[arg(long)]
    pub to_embedded: bool,
}

#[derive(Debug, Args)]
pub struct AskArgs {
    /// The question.
    pub question: String,
    /// Passages to put in the prompt. 3 by default: with the 135M default model, 3 passages
    /// gave more right citations and answers than 5 (README).
    #[arg(short, long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub k: u16,
    /// hybrid, dense or lexical retrieval.
    #[arg(long, default_value = "hybrid")]
    pub mode: lore_retrieve::Mode,
    /// Few-shot examples: a JSONL file of {"question", "answer"} objects.
    #[arg(long, value_name = "FILE")]
    pub few_shot: Option<PathBuf>,
    /// Ask the model to reason step by step before answering.
    #[arg(long)]
    pub cot: bool,
    /// Replace the default system message.
    #[arg(long)]
    pub system: Option<String>,
    /// Print the prompt sent to the model (on stderr).
    #[arg(long)]
    pub show_prompt: bool,
    /// Stop the answer after this many sentences; 0: no limit [default: 2; none with --cot].
    #[arg(long, value_name = "N")]
    pub max_sentences: Option<usize>,
    /// The conversation so far, as a JSON array of {"role", "content"} messages (OpenAI's
    /// shape): the question is rewritten to stand alone before retrieval.
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// Print {"answer", "abstained", "grounded", "verdict", "citations", "usage",
    /// "timings"} as JSON instead of streaming.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub grounding: GroundingArgs,
    #[command(flatten)]
    pub generation: GenerationArgs,
}

/// The language model and how it generates (shared by `chat` and, next, `ask`).
#[derive(Debug, Args, Clone)]
pub struct GenerationArgs {
    /// Language model: a .gguf file, a folder holding one, or a folder name in the models
    /// directory [default: with --adapter, the base the adapter was trained on; else
    /// Qwen2.5-Coder-0.5B-Instruct, the answerer scripts/fetch-models installs].
    /// SmolLM2-135M-Instruct is the small, fast one.
    #[arg(long = "model", env = "LORE_LM")]
    pub model: Option<String>,
    /// A LoRA adapter folder (PEFT layout) to apply.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// How base weights are held: auto (4-bit; a Q4_1 file split exactly into Q4_0 +
    /// offsets for the faster kernel, floats quantized to Q4_0), native (exactly the file's
    /// blocks), q4_0 or q8_0 (converted at load). See README.
    #[arg(long, value_enum, default_value_t = WeightsArg::Auto)]
    pub weights: WeightsArg,
    /// Use this OpenAI-compatible endpoint instead of the local model (llama.cpp server,
    /// vLLM, Ollama, a hosted API), e.g. http://127.0.0.1:8080/v1. The key, if any, is read
    /// from LORE_LLM_API_KEY.
    #[arg(long, env = "LORE_LLM_URL", value_name = "URL")]
    pub llm_url: Option<String>,
    /// The remote model's name (the request's `model` field).
    #[arg(long, env = "LORE_LLM_MODEL", requires = "llm_url")]
    pub llm_model: Option<String>,
    /// The remote model's context window in tokens (prompts are fitted to it).
    #[arg(long, env = "LORE_LLM_CONTEXT", default_value_t = 8192)]
    pub llm_context: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 = off. Local model only.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// 1 = off. Local model only (the OpenAI API has no such field).
    #[arg(long, default_value_t = 1.1)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most tokens to generate [default: 128 for ask (384 with --cot), 256 for chat].
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Stop before this text; repeatable.
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
}

impl GenerationArgs {
    /// The language model to load: `--model`, else the adapter's own base when it names one
    /// that is here, else the default answerer.
    pub fn model_spec(&self, models_dir: &std::path::Path) -> String {
        if let Some(m) = &self.model {
            return m.clone();
        }
        self.adapter
            .as_deref()
            .and_then(lore_finetune::peft_base)
            .filter(|base| lore_finetune::resolve_model(base, models_dir).is_ok())
            .unwrap_or_else(|| lore_finetune::DEFAULT_ANSWERER.to_string())
    }

    /// `--max-tokens`, or the command's own default.
    pub fn max_tokens_or(&self, default: usize) -> usize {
        self.max_tokens.unwrap_or(default)
    }
}

/// When an answer declines and when its sentences are flagged (README, "Answer quality").
#[derive(Debug, Args, Clone)]
pub struct GroundingArgs {
    /// Decline without asking the model when the best passage's cosine similarity to the
    /// question is below this (dense and hybrid modes); 0 turns the gate off.
    #[arg(long, value_name = "COSINE", default_value_t = lore_retrieve::grounding::DEFAULT_MIN_DENSE)]
    pub min_similarity: f32,
    /// Flag answer sentences with less than this share of their words in the passages.
    #[arg(long, value_name = "SHARE", default_value_t = lore_retrieve::grounding::DEFAULT_MIN_SENTENCE_SUPPORT)]
    pub min_support: f32,
}

impl GroundingArgs {
    pub fn settings(&self) -> anyhow::Result<lore_server::answer::Grounding> {
        anyhow::ensure!(
            (-1.0..=1.0).contains(&self.min_similarity),
            "--min-similarity must be a cosine similarity between -1 and 1"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.min_support),
            "--min-support must be between 0 and 1"
        );
        Ok(lore_server::answer::Grounding {
            min_dense: self.min_similarity,
            min_sentence_support: self.min_support,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightsArg {
    Auto,
    Native,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q8_0")]
    Q8_0,
}

impl WeightsArg {
    /// How the model holds its weights for this choice.
    pub fn format(self) -> lore_finetune::WeightFormat {
        use lore_finetune::GgmlDType;
        use lore_finetune::WeightFormat;
        match self {
            WeightsArg::Auto => WeightFormat::Auto,
            WeightsArg::Native => WeightFormat::Native,
            WeightsArg::Q4_0 => WeightFormat::Blocks(GgmlDType::Q4_0),
            WeightsArg::Q8_0 => WeightFormat::Blocks(GgmlDType::Q8_0),
        }
    }
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// What to say.
    pub prompt: String,
    /// A system message.
    #[arg(long)]
    pub system: Option<String>,
    /// Print {"answer", "usage", "timings"} as JSON instead of streaming.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub generation: GenerationArgs,
}

/// Where vectors live: the embedded engine by default, or a Qdrant server or cluster.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Keep vectors in the Qdrant server at this gRPC URL (e.g. http://qdrant:6334) instead
    /// of the embedded engine; its API key is read from LORE_QDRANT_API_KEY.
    #[arg(long, global = true, env = "LORE_QDRANT_URL")]
    pub qdrant_url: Option<String>,
    /// The collection on that server.
    #[arg(
        long,
        global = true,
        env = "LORE_QDRANT_COLLECTION",
        default_value = "lore"
    )]
    pub qdrant_collection: String,
    /// Let a new knowledge base take over a collection another one (or another program)
    /// filled: its points are replaced. Without it, such a collection is left alone and the
    /// command stops with an error.
    #[arg(long, global = true)]
    pub qdrant_take_over: bool,
    /// Shards of a collection lore creates (an existing one must have as many)
    /// [default: the server's].
    #[arg(long, global = true, env = "LORE_QDRANT_SHARDS")]
    pub qdrant_shards: Option<u32>,
    /// Replicas of each shard of a collection lore creates (an existing one must have as
    /// many) [default: the server's].
    #[arg(long, global = true, env = "LORE_QDRANT_REPLICATION")]
    pub qdrant_replication: Option<u32>,
    /// Replicas that must acknowledge each write of a collection lore creates (an existing
    /// one must have the same) [default: the server's, 1].
    #[arg(long, global = true, env = "LORE_QDRANT_WRITE_CONSISTENCY")]
    pub qdrant_write_consistency: Option<u32>,
    /// Keep a collection lore creates on disk (memory-mapped vectors and payloads) instead
    /// of in memory (an existing one must be the same).
    #[arg(long, global = true, env = "LORE_QDRANT_ON_DISK")]
    pub qdrant_on_disk: bool,
}

/// How hits are found and ranked (shared by `search` and `eval`).
#[derive(Debug, Args, Clone)]
pub struct RankArgs {
    /// How hybrid mode combines dense and BM25 rankings: scaled (cosine as it is plus BM25
    /// over its best score, leaning on BM25 when the query names code), weighted (min-max
    /// normalised scores), dbsf (distribution-based) or rrf (reciprocal rank fusion).
    #[arg(long, value_enum, default_value_t = FusionArg::Scaled)]
    pub fusion: FusionArg,
    /// The RRF constant k (score = Σ 1/(k + rank)).
    #[arg(long, default_value_t = lore_retrieve::search::DEFAULT_RRF_K)]
    pub rrf_k: f32,
    /// The dense share w in w·dense + (1−w)·bm25 [default: 0.85 for scaled fusion, 0.75
    /// for weighted and dbsf].
    #[arg(long)]
    pub dense_weight: Option<f32>,
    /// With --fusion scaled: the dense share for a query that names code (`--flag`,
    /// `Cargo.toml`, `a::b`, a code span), where BM25's exact matches are worth more.
    #[arg(long, default_value_t = lore_retrieve::search::DEFAULT_CODE_DENSE_WEIGHT)]
    pub code_dense_weight: f32,
    /// Candidates each retriever contributes before fusion.
    #[arg(long, default_value_t = lore_retrieve::search::DEFAULT_CANDIDATES)]
    pub candidates: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FusionArg {
    /// Cosine as it is plus BM25 over its best score; leans on BM25 for code (the default).
    Scaled,
    Rrf,
    Weighted,
    Dbsf,
}

const DEFAULT_DENSE_WEIGHT: f32 = lore_retrieve::search::DEFAULT_DENSE_WEIGHT;

impl RankArgs {
    pub fn fusion(&self) -> lore_retrieve::Fusion {
        match self.fusion {
            FusionArg::Scaled => lore_retrieve::Fusion::Scaled {
                dense_weight: self
                    .dense_weight
                    .unwrap_or(lore_retrieve::search::DEFAULT_SCALED_DENSE_WEIGHT),
                code_dense_weight: self.code_dense_weight,
            },
            FusionArg::Rrf => lore_retrieve::Fusion::Rrf { k: self.rrf_k },
            FusionArg::Weighted => lore_retrieve::Fusion::Weighted {
                dense_weight: self.dense_weight.unwrap_or(DEFAULT_DENSE_WEIGHT),
            },
            FusionArg::Dbsf => lore_retrieve::Fusion::Dbsf {
                dense_weight: self.dense_weight.unwrap_or(DEFAULT_DENSE_WEIGHT),
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// What to look for, in your own words.
    pub query: String,
    /// hybrid (dense + BM25, fused), dense or lexical (BM25).
    #[arg(long, default_value = "hybrid")]
    pub mode: lore_retrieve::Mode,
    /// Hits to show.
    #[arg(short, long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub k: u16,
    /// Restrict hits: path:PATTERN (file, folder or glob), type:KIND[,KIND], heading:WORDS,
    /// tag:KEY=VALUE (or KEY=VALUE); repeatable, all must hold.
    #[arg(long = "filter", value_name = "EXPR")]
    pub filters: Vec<String>,
    /// Diversify with maximal marginal relevance; λ in [0,1] trades relevance (1) for variety.
    #[arg(long, value_name = "LAMBDA")]
    pub mmr: Option<f32>,
    /// Keep chunks that overlap or repeat a better hit.
    #[arg(long)]
    pub no_collapse: bool,
    /// Embedding model; must be the one that built the knowledge base [default: that one].
    #[arg(long, env = "LORE_MODEL")]
    pub model: Option<String>,
    /// Print {"hits":[…]} as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub rank: RankArgs,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Retrieval quality on a BEIR-format benchmark, per search mode.
    Retrieval(EvalRetrievalArgs),
    /// Answer quality on your own questions over the knowledge base (--data-dir), per way of
    /// adapting the model: zero-shot, rag, rag+few-shot, rag+cot, rag+adapter:DIR.
    Answers(EvalAnswersArgs),
}

#[derive(Debug, Args)]
pub struct EvalAnswersArgs {
    /// JSONL, one question a line: {"question", "answer_keywords": [..] or "answer",
    /// "gold_files": [..]}; a question without gold files is one the documents cannot
    /// answer, and the right answer declines.
    #[arg(long, value_name = "FILE")]
    pub questions: PathBuf,
    /// Stop each direct answer after this many sentences, as `lore ask` does; 0: no limit
    /// [default: 2].
    #[arg(long, value_name = "N")]
    pub max_sentences: Option<usize>,
    /// Comma-separated: zero-shot, rag, rag+few-shot, rag+cot, rag+adapter:DIR.
    #[arg(long, value_delimiter = ',', default_value = "rag")]
    pub variants: Vec<String>,
    /// Passages per prompt.
    #[arg(short, long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub k: u16,
    /// hybrid, dense or lexical retrieval.
    #[arg(long, default_value = "hybrid")]
    pub mode: lore_retrieve::Mode,
    /// Only the first N questions.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Examples for rag+few-shot (JSONL of {"question", "answer"}); default: two other
    /// questions of the set with their reference answers.
    #[arg(long, value_name = "FILE")]
    pub few_shot: Option<PathBuf>,
    /// Write every scored answer here as JSONL.
    #[arg(long, value_name = "FILE")]
    pub answers_out: Option<PathBuf>,
    /// Only retrieval, no answers: for hybrid, dense and lexical search, the share of
    /// answerable questions with a gold file in the top k, and the mean reciprocal rank of
    /// the first gold file.
    #[arg(long)]
    pub retrieval_only: bool,
    #[command(flatten)]
    pub rank: RankArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub grounding: GroundingArgs,
    #[command(flatten)]
    pub generation: GenerationArgs,
}

#[derive(Debug, Args)]
pub struct EvalRetrievalArgs {
    /// corpus.jsonl: {"_id", "title", "text"} per line.
    #[arg(long)]
    pub corpus: PathBuf,
    /// queries.jsonl: {"_id", "text"} per line.
    #[arg(long)]
    pub queries: PathBuf,
    /// qrels TSV: query-id, corpus-id, score (header optional).
    #[arg(long)]
    pub qrels: PathBuf,
    /// Modes to evaluate, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "hybrid,dense,lexical")]
    pub modes: Vec<lore_retrieve::Mode>,
    /// Write each mode's TREC run file (MODE.trec) here.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Build the throw-away knowledge base here and keep it (default: a temporary folder).
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub rank: RankArgs,
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
    /// Attach a tag to every chunk of these files, for `--filter KEY=VALUE`; repeatable.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Print one JSON object with the counts on stdout instead of a summary.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected KEY=VALUE"))?;
    let (k, v) = (k.trim(), v.trim());
    lore_retrieve::search::validate_tag(k, v)?;
    Ok((k.to_string(), v.to_string()))
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
