//! A loaded language model (weights, tokenizer, chat template, end tokens) and the worker
//! thread that owns it, as `lore_embed::EmbedWorker` owns the embedding model.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use candle_core::quantized::gguf_file;
use tokenizers::Tokenizer;

use crate::generation::generate::{GenerateRequest, Generation, Runner, generate};
use crate::lm::chat::ChatTemplate;
use crate::lm::config::ModelConfig;
use crate::lm::linear::WeightFormat;
use crate::lm::lora::Adapter;
use crate::lm::model::CausalLm;
use crate::lm::weights::{GgufSource, SafetensorsSource};
use crate::{Error, Result};

/// The small language model's folder name in the models directory: the default base for
/// `lore finetune` (quick tone tuning) and the fast model of the tests.
pub const DEFAULT_LM: &str = "SmolLM2-135M-Instruct";

/// The default answerer's folder name in the models directory: what `lore ask`, `lore chat`
/// and `lore serve` load unless told otherwise. Qwen2.5-Coder-0.5B-Instruct (Q4_K_M) states
/// the right answer far more often than SmolLM2-135M on lore's QA set (README, "Models").
pub const DEFAULT_ANSWERER: &str = "Qwen2.5-Coder-0.5B-Instruct";

/// A model ready to generate.
#[derive(Debug)]
pub struct LanguageModel {
    pub name: String,
    model: CausalLm,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    /// The model's own Jinja chat template, if its files carry one (kept for exports).
    pub jinja: Option<String>,
    end_tokens: Vec<u32>,
    /// LoRA adapters over this base, by name.
    adapters: HashMap<String, Adapter>,
    /// Where each adapter was loaded from.
    adapter_dirs: HashMap<String, PathBuf>,
    /// Each token's bytes, built on the first request that needs them.
    token_bytes: std::sync::OnceLock<Vec<Vec<u8>>>,
}

/// Finds the model `spec` names: a `.gguf` file, a folder holding one, a Hugging Face folder
/// (`config.json` + `*.safetensors`), or such a folder's name in `models_dir`.
pub fn resolve_model(spec: &str, models_dir: &Path) -> Result<PathBuf> {
    let candidates = [PathBuf::from(spec), models_dir.join(spec)];
    for c in &candidates {
        if c.is_file() || (c.is_dir() && c.join("config.json").is_file()) {
            return Ok(c.clone());
        }
        if c.is_dir() {
            let mut ggufs: Vec<PathBuf> = std::fs::read_dir(c)
                .map_err(|e| Error::io(c, e))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
                .collect();
            ggufs.sort();
            return ggufs.into_iter().next().ok_or_else(|| {
                Error::Request(format!(
                    "{} holds neither a .gguf file nor config.json + safetensors",
                    c.display()
                ))
            });
        }
    }
    Err(Error::Request(format!(
        "language model `{spec}` not found (neither a file nor a folder, nor in {}); run scripts/fetch-models",
        models_dir.display()
    )))
}

/// The model's chat template: its own Jinja template when its files carry one, else built-in
/// ChatML when its vocabulary has the ChatML markers.
fn template_for(loaded: &Loaded, origin: &Path) -> Result<ChatTemplate> {
    let has_chatml = loaded.tokenizer.token_to_id("<|im_start|>").is_some();
    match loaded.jinja.as_deref() {
        Some(j) if !j.is_empty() => {
            ChatTemplate::from_jinja(j, &loaded.bos_token, &loaded.eos_token).or_else(|e| {
                if has_chatml {
                    tracing::warn!(
                        "{}: {e}; using ChatML, which its vocabulary has",
                        origin.display()
                    );
                    Ok(ChatTemplate::chatml())
                } else {
                    Err(e.context(&origin.display().to_string()))
                }
            })
        }
        _ if has_chatml => Ok(ChatTemplate::chatml()),
        _ => Err(Error::Unsupported(format!(
            "{}: carries no chat template and its vocabulary has no ChatML markers; put a tokenizer_config.json with a `chat_template` next to it",
            origin.display()
        ))),
    }
}

fn read_tokenizer(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))
}

impl LanguageModel {
    /// Loads a model [`resolve_model`] found: a GGUF file (tokenizer and template from its
    /// metadata, or a `tokenizer.json` beside it) or a Hugging Face safetensors folder.
    pub fn load(path: &Path, format: WeightFormat) -> Result<Self> {
        let loaded = if path.is_dir() {
            load_hf(path, format)?
        } else {
            load_gguf(path, format)?
        };
        let template = template_for(&loaded, path)?;
        let Loaded {
            model,
            tokenizer,
            jinja,
            eos,
            ..
        } = loaded;
        let mut end_tokens: Vec<u32> = [template.end_of_turn(), "<|endoftext|>"]
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .collect();
        end_tokens.extend(eos);
        end_tokens.sort_unstable();
        end_tokens.dedup();
        let stem = if path.is_dir() {
            path.file_name()
        } else {
            path.file_stem()
        };
        let name = stem
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            name,
            model,
            tokenizer,
            template,
            jinja,
            end_tokens,
            adapters: HashMap::new(),
            adapter_dirs: HashMap::new(),
            token_bytes: std::sync::OnceLock::new(),
        })
    }

    /// Loads a PEFT LoRA adapter folder over this base under `name`, replacing one of that
    /// name. The base weights are shared, not copied.
    pub fn add_adapter(&mut self, name: &str, dir: &Path) -> Result<()> {
        let adapter = Adapter::load_peft(dir, &self.model.config)?;
        self.adapters.insert(name.to_string(), adapter);
        self.adapter_dirs
            .insert(name.to_string(), dir.to_path_buf());
        Ok(())
    }

    pub fn model(&self) -> &CausalLm {
        &self.model
    }

    pub fn end_tokens(&self) -> &[u32] {
        &self.end_tokens
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn context(&self) -> usize {
        self.model.config.context
    }

    pub fn generate(
        &mut self,
        request: &GenerateRequest,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let adapter =
            match &request.adapter {
                Some(name) => Some(self.adapters.get(name).ok_or_else(|| {
                    Error::Request(format!("no adapter named `{name}` is loaded"))
                })?),
                None => None,
            };
        let token_bytes = (request.json || request.logprobs.is_some()).then(|| {
            self.token_bytes
                .get_or_init(|| crate::generation::json_mode::token_bytes(&self.tokenizer))
                .as_slice()
        });
        let runner = Runner {
            model: &self.model,
            adapter,
            tokenizer: &self.tokenizer,
            end_tokens: &self.end_tokens,
            token_bytes,
        };
        generate(runner, request, on_text)
    }
}

/// What a worker streams back for one request.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done(Result<Generation>),
}

/// What the worker thread is asked to do, in arrival order: generations and adapter changes
/// queue behind each other, so an adapter never changes under a running generation.
enum Job {
    Generate(GenerateRequest, mpsc::Sender<Event>),
    Load {
        name: String,
        dir: PathBuf,
        reply: mpsc::SyncSender<Result<()>>,
    },
    Unload {
        name: String,
        reply: mpsc::SyncSender<bool>,
    },
}

/// Owns a [`LanguageModel`] on a dedicated thread; requests queue in a channel. The queue
/// itself is unbounded so that sending never blocks (an async caller must not): callers
/// bound it, as the server's per-model limit does.
#[derive(Debug)]
pub struct LmWorker {
    jobs: mpsc::Sender<Job>,
    pub name: String,
    pub template: ChatTemplate,
    pub context: usize,
    /// The adapter requests use unless they name another (`lore ask --adapter`).
    pub adapter: Option<String>,
    tokenizer: Tokenizer,
    /// The loaded adapters' names and folders, as the thread last reported them.
    adapters: Arc<Mutex<BTreeMap<String, PathBuf>>>,
}

impl LmWorker {
    pub fn spawn(mut model: LanguageModel) -> Self {
        // With one adapter loaded, it is the one to use.
        let adapter = (model.adapters.len() == 1)
            .then(|| model.adapters.keys().next().cloned())
            .flatten();
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (name, template, context, tokenizer) = (
            model.name.clone(),
            model.template.clone(),
            model.context(),
            model.tokenizer.clone(),
        );
        let adapters: Arc<Mutex<BTreeMap<String, PathBuf>>> = Arc::new(Mutex::new(
            model
                .adapter_dirs
                .iter()
                .map(|(k, d)| (k.clone(), d.clone()))
                .collect(),
        ));
        let listed = Arc::clone(&adapters);
        thread::Builder::new()
            .name("lore-lm".into())
            .spawn(move || {
                for job in inbox {
                    match job {
                        Job::Generate(request, events) => {
                            // A send that fails means the caller went away: stop generating.
                            let result = model.generate(&request, |piece| {
                                events.send(Event::Text(piece.to_string())).is_ok()
                            });
                            let _ = events.send(Event::Done(result));
                        }
                        Job::Load { name, dir, reply } => {
                            let result = model.add_adapter(&name, &dir);
                            if result.is_ok() {
                                lock(&listed).insert(name, dir);
                            }
                            let _ = reply.send(result);
                        }
                        Job::Unload { name, reply } => {
                            let removed = model.adapters.remove(&name).is_some();
                            model.adapter_dirs.remove(&name);
                            lock(&listed).remove(&name);
                            let _ = reply.send(removed);
                        }
                    }
                }
            })
            .ok();
        Self {
            jobs,
            name,
            template,
            context,
            adapter,
            tokenizer,
            adapters,
        }
    }

    /// Starts `request`; its text arrives on the returned channel, then `Event::Done`.
    /// Dropping the receiver cancels the generation.
    pub fn generate(&self, request: GenerateRequest) -> Result<mpsc::Receiver<Event>> {
        let (tx, rx) = mpsc::channel();
        self.send(Job::Generate(request, tx))?;
        Ok(rx)
    }

    /// Loads (or replaces) the PEFT adapter in `dir` as `name`. Blocks until the thread has
    /// done it, after the generations queued before it.
    ///
    /// Fails when `dir` holds no adapter for this base.
    pub fn load_adapter(&self, name: &str, dir: &Path) -> Result<()> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Job::Load {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            reply,
        })?;
        answer.recv().map_err(|_| stopped())?
    }

    /// Unloads the adapter `name`; returns whether it was loaded.
    pub fn unload_adapter(&self, name: &str) -> Result<bool> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Job::Unload {
            name: name.to_string(),
            reply,
        })?;
        answer.recv().map_err(|_| stopped())
    }

    /// The loaded adapters: name → folder.
    pub fn adapters(&self) -> BTreeMap<String, PathBuf> {
        lock(&self.adapters).clone()
    }

    fn send(&self, job: Job) -> Result<()> {
        self.jobs.send(job).map_err(|_| stopped())
    }

    /// Tokens `text` takes (for fitting prompts to the context window).
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .len())
    }
}

fn stopped() -> Error {
    Error::Request("the language model thread has stopped".into())
}

/// The adapter list stays usable after a panic elsewhere: it is a plain map.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a model's files hold, before the chat template is built from it.
struct Loaded {
    model: CausalLm,
    tokenizer: Tokenizer,
    /// The Jinja chat template, if the files carry one.
    jinja: Option<String>,
    /// The end-of-sequence token's id.
    eos: Option<u32>,
    /// BOS and EOS as text, for templates that write them.
    bos_token: String,
    eos_token: String,
}

/// A token's text, or "" for an id the vocabulary lacks.
fn token_text(tokenizer: &Tokenizer, id: Option<u32>) -> String {
    id.and_then(|i| tokenizer.id_to_token(i))
        .unwrap_or_default()
}

fn load_gguf(path: &Path, format: WeightFormat) -> Result<Loaded> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| Error::Request(format!("{}: not a GGUF file ({e})", path.display())))?;
    let config =
        ModelConfig::from_gguf(&content).map_err(|e| e.context(&path.display().to_string()))?;
    let beside = path.with_file_name("tokenizer.json");
    let tokenizer = if beside.is_file() {
        read_tokenizer(&beside)?
    } else {
        crate::lm::tokenizer::from_gguf(&content)?
    };
    let jinja = content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();
    let id = |key: &str| content.metadata.get(key).and_then(|v| v.to_u32().ok());
    let (bos, eos) = (
        id("tokenizer.ggml.bos_token_id"),
        id("tokenizer.ggml.eos_token_id"),
    );
    let mut source = GgufSource {
        content: &content,
        reader: &mut file,
    };
    let model = CausalLm::load(config, &mut source, format)?;
    Ok(Loaded {
        model,
        bos_token: token_text(&tokenizer, bos),
        eos_token: token_text(&tokenizer, eos),
        tokenizer,
        jinja,
        eos,
    })
}

fn load_hf(dir: &Path, format: WeightFormat) -> Result<Loaded> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|e| Error::io(dir.join(name), e))
    };
    let config = ModelConfig::from_hf_json(&read("config.json")?)
        .map_err(|e| e.context(&dir.display().to_string()))?;
    let tokenizer = read_tokenizer(&dir.join("tokenizer.json"))?;
    // The chat template and end-of-sequence token live in tokenizer_config.json.
    let tok_config: serde_json::Value = read("tokenizer_config.json")
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    // The template is a string, a list of named templates (the `default` one is for chat),
    // or, from recent transformers, its own file.
    let jinja = match &tok_config["chat_template"] {
        serde_json::Value::String(t) => Some(t.clone()),
        serde_json::Value::Array(named) => named
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
    };
    // A special token is written either as its text or as `{"content": text, …}`.
    let special = |key: &str| {
        let v = &tok_config[key];
        v.as_str()
            .or_else(|| v["content"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (bos_token, eos_token) = (special("bos_token"), special("eos_token"));
    let eos = tokenizer.token_to_id(&eos_token);
    let mut source = SafetensorsSource::open(dir)?;
    let model = CausalLm::load(config, &mut source, format)?;
    Ok(Loaded {
        model,
        tokenizer,
        jinja,
        eos,
        bos_token,
        eos_token,
    })
}
