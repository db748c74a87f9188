//! The causal language model: loading (GGUF now; safetensors folders next), its tokenizer and
//! chat template, and generation. LoRA fine-tuning builds on it (issue 5).
//!
//! Work in progress on the `wip/issue-4` branch: only the GGUF tokenizer is here so far.

mod error;
pub mod llama;
pub mod tokenizer;

pub use error::{Error, Result};
