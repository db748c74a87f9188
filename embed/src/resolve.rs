//! Finding a model's folder: an explicit path, the models directory, or the Hugging Face hub.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The embedding model lore uses unless told otherwise (`scripts/fetch-models` installs it).
pub const DEFAULT_MODEL: &str = "all-MiniLM-L6-v2";

/// Where [`resolve_model`] looks.
#[derive(Debug, Clone)]
pub struct ModelLocation {
    /// The folder `scripts/fetch-models` fills: one sub-folder per model.
    pub models_dir: PathBuf,
    /// Whether a hub id may be downloaded (for users who are online).
    pub allow_hub: bool,
}

/// Files a sentence-transformers BERT folder needs; the optional ones may be absent.
const REQUIRED: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];
const OPTIONAL: [&str; 3] = [
    "modules.json",
    "1_Pooling/config.json",
    "sentence_bert_config.json",
];

/// Resolves `spec` to a model folder, in this order: an existing folder path; a folder of that
/// name in the models directory; a hub id (`org/name`) downloaded through `hf-hub`.
///
/// Fails with [`Error::ModelNotFound`] (naming the fetch script) when none applies, and with
/// [`Error::Hub`] when a hub download fails (for example offline).
pub fn resolve_model(spec: &str, location: &ModelLocation) -> Result<PathBuf> {
    let as_path = Path::new(spec);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    let in_models = location.models_dir.join(spec);
    if !spec.is_empty() && in_models.is_dir() {
        return Ok(in_models);
    }
    let looks_like_hub_id = spec.split('/').count() == 2 && !spec.starts_with(['.', '/']);
    if location.allow_hub && looks_like_hub_id {
        return download(spec);
    }
    Err(Error::ModelNotFound {
        model: spec.to_string(),
        searched: format!("{spec} as a path, {}", in_models.display()),
    })
}

fn download(id: &str) -> Result<PathBuf> {
    let hub = |reason: String| Error::Hub {
        model: id.to_string(),
        reason,
    };
    let api = hf_hub::api::sync::Api::new().map_err(|e| hub(e.to_string()))?;
    let repo = api.model(id.to_string());
    let mut dir = None;
    for file in REQUIRED {
        let path = repo.get(file).map_err(|e| hub(format!("{file}: {e}")))?;
        dir = path.parent().map(Path::to_path_buf);
    }
    for file in OPTIONAL {
        // Absent in plain transformers repos; the loader has defaults for them.
        let _ = repo.get(file);
    }
    dir.ok_or_else(|| hub("no snapshot folder".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_paths_then_models_dir_and_names_the_fetch_script() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("m1")).expect("mkdir");
        let loc = ModelLocation {
            models_dir: dir.path().to_path_buf(),
            allow_hub: false,
        };
        assert_eq!(
            resolve_model("m1", &loc).expect("found"),
            dir.path().join("m1")
        );
        let explicit = dir.path().join("m1");
        assert_eq!(
            resolve_model(explicit.to_str().expect("utf8"), &loc).expect("found"),
            explicit
        );
        let err = resolve_model("org/absent", &loc).expect_err("missing");
        assert!(err.to_string().contains("scripts/fetch-models"), "{err}");
    }
}
