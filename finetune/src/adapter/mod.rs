//! Adapters as files: PEFT's layout ([`peft`]) and Hugging Face exports with an adapter
//! merged in ([`export`]). The adapter's weights and math are [`crate::lm::lora`]'s.

pub mod export;
pub mod peft;
