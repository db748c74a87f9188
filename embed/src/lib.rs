//! Text → vectors.
//!
//! This crate owns the [`Embedder`] trait every consumer codes against, the [`ModelInfo`] a
//! knowledge base records about the model that built it, and (behind the default `candle`
//! feature) a candle implementation for BERT-family sentence-transformers models
//! ([`BertEmbedder`]), the worker thread that owns a model ([`EmbedWorker`]) and model
//! resolution ([`resolve_model`]). It knows nothing of documents or stores.
//!
//! Without the `candle` feature only the trait and the types build, so `lore-retrieve` can
//! name them without compiling candle.
//!
//! ```no_run
//! # #[cfg(feature = "candle")] fn main() -> lore_embed::Result<()> {
//! use lore_embed::{BertEmbedder, EmbedWorker, Embedder, EmbedderConfig, resolve_model, ModelLocation};
//! let location = ModelLocation { models_dir: "models".into(), allow_hub: false };
//! let dir = resolve_model("all-MiniLM-L6-v2", &location)?;
//! let worker = EmbedWorker::spawn(BertEmbedder::load(&dir, &EmbedderConfig::default())?);
//! let vectors = worker.embed(&["What is lore?".to_string()])?;
//! assert_eq!(vectors[0].len(), worker.info().dim);
//! # Ok(()) }
//! # #[cfg(not(feature = "candle"))] fn main() {}
//! ```

mod error;
mod info;

#[cfg(feature = "candle")]
mod batch;
#[cfg(feature = "candle")]
mod bert;
#[cfg(feature = "candle")]
mod encoder;
#[cfg(feature = "candle")]
mod kernels;
#[cfg(feature = "candle")]
mod resolve;
#[cfg(all(feature = "candle", target_arch = "x86_64"))]
mod small;
/// Elsewhere the encoder keeps gemm for every call.
#[cfg(all(feature = "candle", not(target_arch = "x86_64")))]
#[path = "small_elsewhere.rs"]
mod small;
/// Test support: tiny random-weight models written in the real on-disk layout.
#[cfg(all(feature = "candle", any(test, feature = "testing")))]
pub mod testing;
#[cfg(feature = "candle")]
mod worker;

pub use error::{Error, Result};
pub use info::{ModelInfo, Pooling};

#[cfg(feature = "candle")]
pub use bert::{BertEmbedder, EmbedderConfig};
#[cfg(feature = "candle")]
pub use resolve::{DEFAULT_MODEL, ModelLocation, resolve_model};
#[cfg(feature = "candle")]
pub use worker::EmbedWorker;

/// An embedding: one L2-normalised vector per text (when the model normalises).
pub type Embedding = Vec<f32>;

/// Anything that turns texts into vectors of a fixed dimension.
///
/// Implementations must return exactly one vector per input, in input order, each of
/// `info().dim` values. They are shared across threads.
pub trait Embedder: Send + Sync {
    fn info(&self) -> &ModelInfo;

    /// Embeds `texts`. Texts longer than the model's window are truncated to it.
    ///
    /// Fails on a model or runtime failure; empty input yields an empty output.
    fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>>;
}
