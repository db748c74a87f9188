//! What every handler shares: the configuration, the models on their worker threads, the
//! knowledge base, the jobs and the metrics.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use lore_embed::EmbedWorker;
use lore_finetune::Generator;
use lore_finetune::LmWorker;
use lore_retrieve::{KnowledgeBase, StoreConfig};
use tokenizers::Tokenizer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use super::jobs::Jobs;
use super::metrics::Metrics;
use crate::pipeline::KbAccess;

/// How the server behaves; built by `lore serve` from flags, environment and config file.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The knowledge base's folder; uploads, adapters and fine-tune jobs live under it too.
    pub data_dir: PathBuf,
    /// Every endpoint but `/health` and the page's assets needs `Authorization: Bearer` this.
    pub api_key: Option<String>,
    /// Server-side folders ingest and fine-tune requests may read (canonical paths).
    pub allowed_roots: Vec<PathBuf>,
    /// Origins allowed by CORS (`*` for any); empty: no CORS headers. Browsers' requests
    /// from other origins than these, loopback and the server's own are refused.
    pub cors_origins: Vec<String>,
    /// `--allow-public`: a keyless server answers requests addressed to any host name (else
    /// loopback names only, against DNS rebinding).
    pub allow_public: bool,
    /// Header-read timeout and connection cap.
    pub connections: super::listen::ConnectionLimits,
    /// Jobs queued or running at once; beyond it, 429.
    pub max_jobs: usize,
    /// Uploads (ingest and fine-tune datasets) received at once; beyond it, 429.
    pub max_uploads: usize,
    /// The largest JSON body accepted.
    pub max_body_bytes: usize,
    /// The largest multipart upload accepted.
    pub max_upload_bytes: usize,
    /// How long a request may take to start answering (streams then run to their end).
    pub request_timeout: Duration,
    /// Requests the embedding model may hold at once (running or queued) before 429.
    pub embed_concurrency: usize,
    /// Embedding requests that do not say cut over-long texts to the model's window instead
    /// of being refused (`/v1/embeddings` and TEI's `/embed`).
    pub auto_truncate: bool,
    /// More names `model` may give for the language model (`--served-model-name`).
    pub served_model_names: Vec<String>,
    /// A `model` lore does not know means the default language model instead of a 404.
    pub accept_any_model: bool,
    /// Generations the language model may hold at once (running or queued) before 429.
    pub lm_concurrency: usize,
    pub store: StoreConfig,
    /// Ingest settings for jobs (the CLI's defaults unless configured).
    pub chunk_tokens: usize,
    pub overlap_tokens: usize,
    pub max_file_bytes: u64,
    pub commit_chunks: usize,
    /// Sampling defaults a request does not set.
    pub repeat_penalty: f32,
    /// When `/v1/ask` declines and flags unsupported sentences.
    pub grounding: crate::answer::Grounding,
    /// Fine-tune jobs run `<lore_exe> finetune …` as a child process.
    pub lore_exe: PathBuf,
    pub models_dir: PathBuf,
    /// The language model fine-tune jobs train on (a spec `lore finetune --base` takes).
    pub base_model: String,
    /// How long shutdown waits for jobs to checkpoint.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    /// The defaults `lore serve` starts from (each a flag and a `--config` key): what a
    /// careful operator would pick for one machine serving a few people.
    pub fn new(
        data_dir: PathBuf,
        lore_exe: PathBuf,
        models_dir: PathBuf,
        base_model: String,
    ) -> Self {
        Self {
            data_dir,
            api_key: None,
            allowed_roots: Vec::new(),
            cors_origins: Vec::new(),
            allow_public: false,
            connections: super::listen::ConnectionLimits::default(),
            max_jobs: 16,
            max_uploads: 4,
            max_body_bytes: 2 << 20,
            max_upload_bytes: 64 << 20,
            request_timeout: Duration::from_secs(300),
            embed_concurrency: 64,
            auto_truncate: false,
            served_model_names: Vec::new(),
            accept_any_model: false,
            lm_concurrency: 4,
            store: StoreConfig::default(),
            chunk_tokens: 256,
            overlap_tokens: 32,
            max_file_bytes: 20 * 1024 * 1024,
            commit_chunks: 2048,
            repeat_penalty: 1.1,
            grounding: crate::answer::Grounding::default(),
            lore_exe,
            models_dir,
            base_model,
            shutdown_grace: Duration::from_secs(60),
        }
    }

    pub fn uploads_dir(&self) -> PathBuf {
        self.data_dir.join("uploads")
    }
    pub fn adapters_dir(&self) -> PathBuf {
        self.data_dir.join("adapters")
    }
    pub fn finetune_dir(&self) -> PathBuf {
        self.data_dir.join("finetune")
    }

    /// Canonicalises `path` and checks it lies under an allowed root (symlinks and `..`
    /// resolved first, so neither can escape). Fails with 403 outside them, 400 when it
    /// does not exist.
    pub fn allowed_path(&self, path: &str) -> Result<PathBuf, ApiError> {
        if path.trim().is_empty() {
            return Err(ApiError::bad_request("the path is empty"));
        }
        if self.allowed_roots.is_empty() {
            return Err(ApiError::forbidden(
                "this server reads no server-side paths: start it with --allow-root DIR, or upload the files",
            ));
        }
        let outside = || {
            ApiError::forbidden(format!(
                "{path} is outside the folders this server may read (--allow-root)"
            ))
        };
        let canonical = match Path::new(path).canonicalize() {
            Ok(canonical) => canonical,
            // Whether a path outside the roots exists is not the client's business: the
            // same 403 as an existing one. Inside a root, say what is wrong.
            Err(e) if self.lexically_inside(Path::new(path)) => {
                return Err(ApiError::bad_request(format!("{path}: {e}")));
            }
            Err(_) => return Err(outside()),
        };
        if self
            .allowed_roots
            .iter()
            .any(|root| canonical.starts_with(root))
        {
            Ok(canonical)
        } else {
            Err(outside())
        }
    }

    /// Whether `path`, absolute and with `.` and `..` resolved by name alone, lies under an
    /// allowed root (a missing path cannot be resolved on disk).
    fn lexically_inside(&self, path: &Path) -> bool {
        use std::path::Component;
        if !path.is_absolute() {
            return false;
        }
        let mut normal = PathBuf::new();
        for part in path.components() {
            match part {
                Component::ParentDir => {
                    normal.pop();
                }
                Component::CurDir => {}
                other => normal.push(other),
            }
        }
        self.allowed_roots
            .iter()
            .any(|root| normal.starts_with(root))
    }
}

/// The knowledge base, shared by searches (read) and ingest jobs and deletions (write).
/// `None` until the first ingest creates it, or after reopening it failed (`problem` then
/// says why, so that searches report it instead of "no documents").
#[derive(Debug, Default)]
pub struct KbSlot {
    kb: RwLock<Option<KnowledgeBase>>,
    problem: Mutex<Option<String>>,
    /// When a replica without a knowledge base last looked for one on the server.
    last_probe: Mutex<Option<Instant>>,
}

impl KbSlot {
    pub fn new(kb: Option<KnowledgeBase>) -> Self {
        Self {
            kb: RwLock::new(kb),
            problem: Mutex::default(),
            last_probe: Mutex::default(),
        }
    }

    /// Whether a second has passed since the last look for a knowledge base made elsewhere.
    fn probe_due(&self) -> bool {
        let mut last = self
            .last_probe
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            *last = Some(Instant::now());
        }
        due
    }
    pub fn read(&self) -> RwLockReadGuard<'_, Option<KnowledgeBase>> {
        self.kb.read().unwrap_or_else(PoisonError::into_inner)
    }
    pub fn write(&self) -> RwLockWriteGuard<'_, Option<KnowledgeBase>> {
        self.kb.write().unwrap_or_else(PoisonError::into_inner)
    }
    /// Why the knowledge base is not open, when it should be.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    pub fn set_problem(&self, problem: Option<String>) {
        *self.problem.lock().unwrap_or_else(PoisonError::into_inner) = problem;
    }
}

/// An ingest job's view: the job has opened the knowledge base before it runs, and only
/// ingest jobs (one at a time) replace it.
impl KbAccess for KbSlot {
    fn read<R>(&self, f: impl FnOnce(&KnowledgeBase) -> R) -> R {
        f(KbSlot::read(self)
            .as_ref()
            .expect("an ingest job opens the knowledge base before it runs"))
    }
    fn write<R>(&self, f: impl FnOnce(&mut KnowledgeBase) -> R) -> R {
        f(KbSlot::write(self)
            .as_mut()
            .expect("an ingest job opens the knowledge base before it runs"))
    }
}

/// A model's admission control: a request holds a permit from arrival to its last byte.
#[derive(Debug, Clone)]
pub struct Limit {
    what: &'static str,
    permits: Arc<Semaphore>,
}

impl Limit {
    pub fn new(what: &'static str, permits: usize) -> Self {
        Self {
            what,
            permits: Arc::new(Semaphore::new(permits.max(1))),
        }
    }

    /// A permit, or 429 when the model already holds as many requests as it may.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| ApiError::overloaded(self.what))
    }

    pub fn in_use(&self, capacity: usize) -> usize {
        capacity.saturating_sub(self.permits.available_permits())
    }
}

/// The models the server answers with.
#[derive(Debug)]
pub struct Models {
    pub embedder: EmbedWorker,
    /// The embedding model's tokenizer, for chunking uploads and paths.
    pub tokenizer: Tokenizer,
    pub generator: Generator,
}

impl Models {
    /// The local model's worker; `None` when answers come from a remote endpoint.
    pub fn local(&self) -> Option<&LmWorker> {
        match &self.generator {
            Generator::Local(w) => Some(w),
            Generator::Remote { .. } => None,
        }
    }
}

/// Shared by every handler; cloning clones the handle.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub config: ServerConfig,
    pub models: Models,
    pub kb: KbSlot,
    pub embed_limit: Limit,
    pub lm_limit: Limit,
    pub upload_limit: Limit,
    pub jobs: Jobs,
    pub metrics: Metrics,
    pub started: Instant,
    draining: AtomicBool,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(config: ServerConfig, models: Models, kb: Option<KnowledgeBase>) -> Self {
        // Uploads a killed server was receiving: nothing refers to them.
        super::upload::remove_leftovers(&config.uploads_dir());
        super::upload::remove_leftovers(&config.finetune_dir());
        Self(Arc::new(Inner {
            embed_limit: Limit::new("embedding model", config.embed_concurrency),
            lm_limit: Limit::new("language model", config.lm_concurrency),
            upload_limit: Limit::new("upload intake", config.max_uploads),
            jobs: Jobs::default(),
            metrics: Metrics::default(),
            started: Instant::now(),
            draining: AtomicBool::new(false),
            kb: KbSlot::new(kb),
            models,
            config,
        }))
    }

    /// Runs `f` on the knowledge base (`None` before the first ingest) on the blocking pool:
    /// an ingest commit holds the write lock for as long as its flush takes, and an async
    /// thread must not wait on it.
    pub async fn read_kb<R: Send + 'static>(
        &self,
        f: impl FnOnce(Option<&KnowledgeBase>) -> R + Send + 'static,
    ) -> Result<R, ApiError> {
        let state = self.clone();
        Ok(tokio::task::spawn_blocking(move || {
            state.follow_writers();
            f(state.kb.read().as_ref())
        })
        .await?)
    }

    /// On a Qdrant server, other replicas may have ingested since this one last looked: when
    /// the catalog's generation moved, the manifest is reread (one small read per request
    /// otherwise), and a knowledge base made elsewhere since is opened (probed at most once a
    /// second). Nothing to do for a data folder, whose only writer is this process.
    fn follow_writers(&self) {
        if !matches!(self.config.store, StoreConfig::Qdrant(_)) {
            return;
        }
        let stale = match self.kb.read().as_ref() {
            Some(kb) => kb.is_stale(),
            None => Ok(self.kb.probe_due()),
        };
        match stale {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => {
                tracing::warn!("checking the knowledge base for other replicas' writes: {e}");
                return;
            }
        }
        let mut slot = self.kb.write();
        match slot.as_mut() {
            Some(kb) => {
                if let Err(e) = kb.refresh() {
                    tracing::warn!("rereading the knowledge base's manifest: {e}");
                }
            }
            None => {
                if let Ok(kb) =
                    KnowledgeBase::open_existing(&self.config.data_dir, &self.config.store)
                {
                    tracing::info!("the knowledge base was created by another replica: opened");
                    self.kb.set_problem(None);
                    *slot = Some(kb);
                }
            }
        }
    }

    /// Shutdown has begun: `/ready` says no and new jobs are refused.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}
