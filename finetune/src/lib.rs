//! The causal language model and its fine-tuning.
//!
//! Layers, each depending only on those above it in this list (`tests/module_layers.rs`
//! checks it):
//! - [`ops`]: numeric kernels (training ops, block dequantization, seeded random streams);
//! - [`lm`]: the model: configuration, weights, 4-bit linear layers, the forward pass with
//!   LoRA, tokenizer, chat templates;
//! - [`adapter`]: adapters as files: PEFT's layout and merged Hugging Face exports;
//! - [`generation`]: the token loop, sampling, JSON mode, the model's worker thread, and
//!   remote OpenAI-compatible endpoints;
//! - [`train`]: supervised fine-tuning of LoRA adapters on a frozen 4-bit base, its data and
//!   checkpoints, and training-set generation.
//!
//! What other crates use is re-exported here; the modules stay public for tests and for
//! lower-level work (a forward pass, a tokenizer rebuilt from a GGUF file).

mod error;
mod fs;

pub mod adapter;
pub mod generation;
pub mod lm;
pub mod ops;
pub mod train;

pub use candle_core::quantized::GgmlDType;
pub use error::{Error, Result};

pub use adapter::export::{ChatFiles, write_hf};
pub use adapter::peft::peft_base;
pub use generation::generate::{AnswerEnd, FinishReason, Generation, Logprob, MAX_TOP_LOGPROBS};
pub use generation::generator::{ChatRequest, Generator};
pub use generation::remote::{RemoteChat, RemoteConfig};
pub use generation::runtime::{
    DEFAULT_ANSWERER, DEFAULT_LM, Event, LanguageModel, LmWorker, resolve_model,
};
pub use generation::sampling::SamplingConfig;
pub use lm::chat::{ChatTemplate, Message, Role};
pub use lm::linear::WeightFormat;
pub use lm::lora::{Adapter, LoraRun, Target};
pub use train::data::{DataOptions, Encoder, Prepared, Validation, prepare};
pub use train::optim::Decay;
pub use train::{
    Event as TrainEvent, Progress, Run, Stopped, TrainConfig, check_output, digest, gendata,
};
