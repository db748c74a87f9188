//! A loaded language model (weights, tokenizer, chat template, end tokens) and the worker
//! thread that owns it, as `lore_embed::EmbedWorker` owns the embedding model.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use candle_core::quantized::gguf_file;
use tokenizers::Tokenizer;

use crate::chat::ChatTemplate;
use crate::generate::{GenerateRequest, Generation, generate};
use crate::llama::{Llama, WeightFormat};
use crate::{Error, Result};

/// The default language model's folder name in the models directory.
pub const DEFAULT_LM: &str = "SmolLM2-135M-Instruct";

/// A model ready to generate.
#[derive(Debug)]
pub struct LanguageModel {
    pub name: String,
    model: Llama,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    end_tokens: Vec<u32>,
}

/// Finds the GGUF file `spec` names: a `.gguf` path, a folder holding one, or a folder name
/// in `models_dir`.
pub fn resolve_gguf(spec: &str, models_dir: &Path) -> Result<PathBuf> {
    let direct = PathBuf::from(spec);
    let candidates = [direct.clone(), models_dir.join(spec)];
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
        if c.is_dir() {
            let mut ggufs: Vec<PathBuf> = std::fs::read_dir(c)
                .map_err(|e| Error::Request(format!("{}: {e}", c.display())))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
                .collect();
            ggufs.sort();
            return ggufs
                .into_iter()
                .next()
                .ok_or_else(|| Error::Request(format!("{} holds no .gguf file", c.display())));
        }
    }
    Err(Error::Request(format!(
        "language model `{spec}` not found (neither a file nor a folder, nor in {}); run scripts/fetch-models",
        models_dir.display()
    )))
}

impl LanguageModel {
    /// Loads a llama-arch GGUF with its embedded tokenizer and chat template.
    pub fn load(path: &Path, format: WeightFormat) -> Result<Self> {
        let mut file = std::fs::File::open(path)
            .map_err(|e| Error::Request(format!("{}: {e}", path.display())))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| Error::Request(format!("{}: not a GGUF file ({e})", path.display())))?;
        let tokenizer = crate::tokenizer::from_gguf(&content)?;
        let jinja = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        // SmolLM2's GGUF carries its ChatML template; a file without one is assumed ChatML
        // only if its vocabulary has the ChatML markers.
        let template = ChatTemplate::recognise(&jinja)
            .or_else(|| {
                (jinja.is_empty() && tokenizer.token_to_id("<|im_start|>").is_some())
                    .then_some(ChatTemplate::ChatMl)
            })
            .ok_or_else(|| {
                Error::Request(format!(
                    "{}: its chat template is not ChatML, the one lore renders",
                    path.display()
                ))
            })?;
        let model = Llama::from_gguf(&content, &mut file, format)?;
        let end_tokens = [template.end_of_turn(), "<|endoftext|>"]
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .collect();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            name,
            model,
            tokenizer,
            template,
            end_tokens,
        })
    }

    pub fn template(&self) -> ChatTemplate {
        self.template
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
        generate(
            &mut self.model,
            &self.tokenizer,
            &self.end_tokens,
            request,
            on_text,
        )
    }
}

/// What a worker streams back for one request.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done(Result<Generation>),
}

type Job = (GenerateRequest, mpsc::Sender<Event>);

/// Owns a [`LanguageModel`] on a dedicated thread; requests queue in a bounded channel.
#[derive(Debug)]
pub struct LmWorker {
    jobs: mpsc::SyncSender<Job>,
    pub name: String,
    pub template: ChatTemplate,
    pub context: usize,
    tokenizer: Tokenizer,
}

impl LmWorker {
    pub fn spawn(mut model: LanguageModel) -> Self {
        let (jobs, inbox) = mpsc::sync_channel::<Job>(16);
        let (name, template, context, tokenizer) = (
            model.name.clone(),
            model.template,
            model.context(),
            model.tokenizer.clone(),
        );
        thread::Builder::new()
            .name("lore-lm".into())
            .spawn(move || {
                for (request, events) in inbox {
                    // A send that fails means the caller went away: stop generating.
                    let result = model.generate(&request, |piece| {
                        events.send(Event::Text(piece.to_string())).is_ok()
                    });
                    let _ = events.send(Event::Done(result));
                }
            })
            .ok();
        Self {
            jobs,
            name,
            template,
            context,
            tokenizer,
        }
    }

    /// Starts `request`; its text arrives on the returned channel, then `Event::Done`.
    /// Dropping the receiver cancels the generation.
    pub fn generate(&self, request: GenerateRequest) -> Result<mpsc::Receiver<Event>> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send((request, tx))
            .map_err(|_| Error::Request("the language model thread has stopped".into()))?;
        Ok(rx)
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
