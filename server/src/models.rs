//! Turning `--model` and `--models-dir` into a running embedder.

use std::path::{Path, PathBuf};

use anyhow::Context;
use lore_embed::{BertEmbedder, EmbedderConfig, ModelLocation, resolve_model};

use crate::cli::{ModelArgs, StoreArgs};
use lore_retrieve::{QdrantConfig, StoreConfig};

/// Where vectors live, from `--qdrant-url` (the API key comes from the environment only, so
/// it never shows in a process list or shell history).
pub fn store_config(args: &StoreArgs) -> anyhow::Result<StoreConfig> {
    let Some(url) = &args.qdrant_url else {
        return Ok(StoreConfig::Embedded);
    };
    anyhow::ensure!(
        url.starts_with("http://") || url.starts_with("https://"),
        "--qdrant-url {url}: expected an http:// or https:// URL (Qdrant's gRPC port, usually 6334)"
    );
    anyhow::ensure!(
        !args.qdrant_collection.trim().is_empty(),
        "--qdrant-collection must not be empty"
    );
    anyhow::ensure!(
        args.qdrant_shards != Some(0)
            && args.qdrant_replication != Some(0)
            && args.qdrant_write_consistency != Some(0),
        "--qdrant-shards, --qdrant-replication and --qdrant-write-consistency must be at least 1"
    );
    if let (Some(w), Some(r)) = (args.qdrant_write_consistency, args.qdrant_replication) {
        anyhow::ensure!(
            w <= r,
            "--qdrant-write-consistency {w} cannot exceed --qdrant-replication {r}: a write \
             would wait for replicas that do not exist"
        );
    }
    Ok(StoreConfig::Qdrant(QdrantConfig {
        url: url.clone(),
        api_key: std::env::var("LORE_QDRANT_API_KEY")
            .ok()
            .filter(|k| !k.is_empty()),
        collection: args.qdrant_collection.clone(),
        take_over: args.qdrant_take_over,
        shape: lore_retrieve::CollectionShape {
            shards: args.qdrant_shards,
            replication: args.qdrant_replication,
            write_consistency: args.qdrant_write_consistency,
            on_disk: args.qdrant_on_disk.then_some(true),
        },
    }))
}

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
    load_named(&args.model, usize::from(args.batch_size), models)
}

/// Loads the model that built a knowledge base (or `requested`, which must be the same one).
pub fn load_for_kb(
    built: &lore_embed::ModelInfo,
    requested: Option<&str>,
    models: Option<&Path>,
) -> anyhow::Result<BertEmbedder> {
    let embedder = load_named(requested.unwrap_or(&built.name), 32, models)?;
    if let Some(reason) = built.incompatibility(lore_embed::Embedder::info(&embedder)) {
        anyhow::bail!(
            "the knowledge base was built with the embedding model {} but {} was requested ({reason}); \
             search with the same model (leave out --model), or re-ingest with --rebuild",
            built.name,
            requested.unwrap_or(&built.name)
        );
    }
    Ok(embedder)
}

fn load_named(
    model: &str,
    batch_size: usize,
    models: Option<&Path>,
) -> anyhow::Result<BertEmbedder> {
    let location = ModelLocation {
        models_dir: models_dir(models),
        allow_hub: true,
    };
    let dir = resolve_model(model, &location)?;
    let config = EmbedderConfig {
        max_batch: batch_size,
        token_budget: batch_size * 256,
        ..EmbedderConfig::default()
    };
    let embedder = BertEmbedder::load(&dir, &config)
        .with_context(|| format!("loading the embedding model {model}"))?;
    // Record a hub id as given rather than its cache snapshot's hash-named folder.
    Ok(if Path::new(model).is_dir() {
        embedder
    } else {
        embedder.with_name(model)
    })
}
