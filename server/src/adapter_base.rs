//! Which base model an adapter belongs to. PEFT's `adapter_config.json` names the base
//! (`base_model_name_or_path`) but a name says nothing about the weights behind it; lore also
//! writes `lore_base.json` beside the adapter with the base file's BLAKE3 hash, so that
//! `ask`, `chat` and `serve --adapter` refuse a base the adapter was not trained on, with a
//! message naming both, instead of answering through mismatched weights.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The file beside `adapter_config.json`.
pub const FILE: &str = "lore_base.json";

/// What an adapter was trained on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRecord {
    /// The base as given to `lore finetune --base` (also PEFT's `base_model_name_or_path`).
    pub base: String,
    /// The weights' BLAKE3 hash (a GGUF file, or a folder's config.json and safetensors).
    pub blake3: String,
    pub bytes: u64,
}

/// The files whose bytes make a model: the file itself, or a Hugging Face folder's
/// `config.json` and `*.safetensors`, in name order.
fn weight_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| n == "config.json")
                || p.extension().is_some_and(|x| x == "safetensors")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Hashes the model at `path` (about a second per GB on one core).
pub fn fingerprint(base: &str, path: &Path) -> anyhow::Result<BaseRecord> {
    let mut hasher = blake3::Hasher::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for file in weight_files(path)? {
        let mut f =
            std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("reading {}", file.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
    }
    Ok(BaseRecord {
        base: base.to_string(),
        blake3: hasher.finalize().to_hex().to_string(),
        bytes,
    })
}

/// Writes the record of `base` (resolved to `path`) into the adapter folder `dir`.
pub fn record(dir: &Path, base: &str, path: &Path) -> anyhow::Result<()> {
    let record = fingerprint(base, path)?;
    let file = dir.join(FILE);
    lore_durable::write(&file, serde_json::to_string_pretty(&record)?.as_bytes())
        .with_context(|| format!("writing {}", file.display()))
}

/// The adapter's record, if it has one (adapters from PEFT or older lore have none).
pub fn read(dir: &Path) -> anyhow::Result<Option<BaseRecord>> {
    let file = dir.join(FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("reading {}", file.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// Refuses to apply the adapter in `dir` over the model at `path` (named `spec`) when the
/// adapter records another base.
pub fn check(dir: &Path, spec: &str, path: &Path) -> anyhow::Result<()> {
    let Some(recorded) = read(dir)? else {
        return Ok(());
    };
    let loaded = fingerprint(spec, path)?;
    anyhow::ensure!(
        loaded.blake3 == recorded.blake3,
        "the adapter in {} was trained on `{}` (BLAKE3 {}…), but the model loaded is `{spec}` \
         ({}, BLAKE3 {}…): leave out --model (and LORE_LM) to load the adapter's base, or \
         name that base",
        dir.display(),
        recorded.base,
        &recorded.blake3[..12],
        path.display(),
        &loaded.blake3[..12]
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adapter_accepts_its_own_base_and_refuses_another() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("base.gguf");
        let other = dir.path().join("other.gguf");
        std::fs::write(&base, b"weights of the base").expect("write");
        std::fs::write(&other, b"weights of another model").expect("write");
        let adapter = dir.path().join("adapter");
        std::fs::create_dir(&adapter).expect("mkdir");
        // No record: nothing to check (a PEFT adapter from elsewhere).
        assert!(check(&adapter, "other", &other).is_ok());
        record(&adapter, "base", &base).expect("record");
        assert!(check(&adapter, "base", &base).is_ok());
        let err = check(&adapter, "other", &other).expect_err("another base");
        let message = err.to_string();
        assert!(message.contains("trained on `base`"), "{message}");
        assert!(message.contains("`other`"), "{message}");
    }
}
