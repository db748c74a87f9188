//! The causal language model: its configuration, weights (GGUF or safetensors), 4-bit
//! linear layers, the forward pass with LoRA ([`lora`]), the tokenizer rebuilt from a GGUF
//! file, and chat templates.

pub mod chat;
pub mod config;
pub mod decode;
pub mod linear;
pub mod lora;
pub mod model;
pub mod tokenizer;
pub mod weights;
