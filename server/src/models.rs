//! Turning `--model` and `--models-dir` into a running embedder.

use std::path::{Path, PathBuf};

use anyhow::Context;
use lore_embed::{BertEmbedder, EmbedderConfig, ModelLocation, resolve_model};

use crate::cli::ModelArgs;

/// The models directory: the flag/env value, else `<user data dir>/lore/models` (the same
/// default `scripts/fetch-models` uses).
pub fn models_dir(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf).unwrap_or_else(|| {
        dirs::data_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("lore")
            .join("models")
    })
}

/// Resolves and loads the embedding model named by `args`.
pub fn load_embedder(args: &ModelArgs, models: Option<&Path>) -> anyhow::Result<BertEmbedder> {
    let location = ModelLocation {
        models_dir: models_dir(models),
        allow_hub: true,
    };
    let dir = resolve_model(&args.model, &location)?;
    let config = EmbedderConfig {
        max_batch: usize::from(args.batch_size),
        token_budget: usize::from(args.batch_size) * 256,
    };
    let embedder = BertEmbedder::load(&dir, &config)
        .with_context(|| format!("loading the embedding model {}", args.model))?;
    // Record a hub id as given rather than its cache snapshot's hash-named folder.
    Ok(if Path::new(&args.model).is_dir() {
        embedder
    } else {
        embedder.with_name(&args.model)
    })
}
