//! Generating text: the token loop ([`generate`]), sampling, JSON mode, the loaded model on
//! its worker thread ([`runtime`]), and where answers come from ([`generator`]: that model or
//! a remote OpenAI-compatible endpoint, [`remote`]).

pub mod generate;
pub mod generator;
pub mod json_mode;
pub mod remote;
pub mod runtime;
pub mod sampling;
