//! One interface over the two ways lore generates: the local model on its worker thread, or a
//! remote OpenAI-compatible endpoint. Callers send chat messages and receive streamed text.

use std::sync::mpsc;
use std::thread;

use crate::generation::generate::{AnswerEnd, GenerateRequest};
use crate::generation::remote::RemoteChat;
use crate::generation::runtime::{Event, LmWorker};
use crate::generation::sampling::SamplingConfig;
use crate::lm::chat::Message;
use crate::{Error, Result};

/// A chat turn to answer.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    pub stop: Vec<String>,
    /// The loaded adapter to answer with; `None` uses the generator's default (the one
    /// adapter `--adapter` loaded, else the base model).
    pub adapter: Option<String>,
    /// Where a direct answer ends. The local model applies all of it; a remote endpoint
    /// gets the blank line as a plain stop string and no sentence limit.
    pub end: AnswerEnd,
    /// Constrain the reply to one JSON object (local model only).
    pub json: bool,
    /// Per-token log-probabilities with this many alternatives (local model only).
    pub logprobs: Option<usize>,
}

/// Where answers come from.
#[derive(Debug)]
pub enum Generator {
    // Boxed: the worker carries a whole tokenizer, the remote variant a few strings.
    Local(Box<LmWorker>),
    Remote {
        client: RemoteChat,
        /// The remote model's context window in tokens, as the user configured it.
        context: usize,
    },
}

impl Generator {
    pub fn name(&self) -> &str {
        match self {
            Self::Local(w) => &w.name,
            Self::Remote { client, .. } => &client.config.model,
        }
    }

    pub fn context(&self) -> usize {
        match self {
            Self::Local(w) => w.context,
            Self::Remote { context, .. } => *context,
        }
    }

    /// Tokens `text` takes. A remote model's tokenizer is unknown: one token per 3 bytes
    /// over-counts English (about 4 per token), so prompts fitted with it fit.
    pub fn count_tokens(&self, text: &str) -> usize {
        match self {
            Self::Local(w) => w.count_tokens(text).unwrap_or(text.len()),
            Self::Remote { .. } => text.len().div_ceil(3),
        }
    }

    /// The prompt as the model will see it (for `--show-prompt`).
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        match self {
            Self::Local(w) => w.template.render(messages, true),
            Self::Remote { .. } => Ok(messages
                .iter()
                .map(|m| format!("[{}]\n{}\n", m.role.name(), m.content))
                .collect()),
        }
    }

    /// Starts answering; text arrives on the returned channel, then `Event::Done`. Dropping
    /// the receiver stops the generation.
    pub fn chat(&self, request: ChatRequest) -> Result<mpsc::Receiver<Event>> {
        if request.max_tokens == 0 {
            return Err(Error::Request("max tokens must be at least 1".into()));
        }
        request.sampling.validate().map_err(Error::Request)?;
        match self {
            Self::Local(worker) => worker.generate(GenerateRequest {
                prompt: worker.template.render(&request.messages, true)?,
                max_tokens: request.max_tokens,
                sampling: request.sampling,
                stop: request.stop,
                adapter: request.adapter.or_else(|| worker.adapter.clone()),
                end: request.end,
                json: request.json,
                logprobs: request.logprobs,
            }),
            Self::Remote { .. } if request.adapter.is_some() => Err(Error::Request(
                "adapters apply to the local model; a remote endpoint serves its own".into(),
            )),
            Self::Remote { .. } if request.json || request.logprobs.is_some() => {
                Err(Error::Request(
                    "JSON mode and log-probabilities are the local model's; this server answers through a remote endpoint".into(),
                ))
            }
            Self::Remote { client, .. } => {
                let mut request = request;
                if request.end.blank_line {
                    request.stop.push("\n\n".into());
                }
                let (tx, rx) = mpsc::channel();
                let client = client.clone();
                thread::Builder::new()
                    .name("lore-remote-llm".into())
                    .spawn(move || {
                        let result = client.chat(
                            &request.messages,
                            request.max_tokens,
                            &request.sampling,
                            &request.stop,
                            |piece| tx.send(Event::Text(piece.to_string())).is_ok(),
                        );
                        let _ = tx.send(Event::Done(result));
                    })
                    .map_err(|e| Error::Remote(format!("cannot start a thread: {e}")))?;
                Ok(rx)
            }
        }
    }
}
