//! The causal language model: loading (GGUF now; safetensors folders next), its tokenizer and
//! chat template, and generation. LoRA fine-tuning builds on it (issue 5).
//!
//! Work in progress on the `wip/issue-4` branch: the GGUF tokenizer, the llama forward pass
//! and sampling are here; generation loop, chat template, worker thread, safetensors, qwen2
//! and the CLI are not yet.

pub mod chat;
mod error;
pub mod generate;
pub mod llama;
pub mod runtime;
pub mod sampling;
pub mod tokenizer;

pub use error::{Error, Result};
