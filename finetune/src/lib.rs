//! The causal language model: loading (GGUF files and Hugging Face safetensors folders, llama
//! and qwen2 families), its tokenizer and chat template, generation on a worker thread, and a
//! client for remote OpenAI-compatible endpoints; LoRA adapters in PEFT's layout ([`lora`]),
//! their training on a frozen 4-bit base ([`train`]), and Hugging Face exports ([`export`]).

pub mod autograd;
pub mod chat;
pub mod config;
pub mod dequant;
mod error;
pub mod export;
pub mod gendata;
pub mod generate;
pub mod generator;
pub mod json_mode;
pub mod linear;
pub mod lora;
pub mod model;
pub mod remote;
pub mod rng;
pub mod runtime;
pub mod sampling;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use candle_core::quantized::GgmlDType;
pub use error::{Error, Result};
