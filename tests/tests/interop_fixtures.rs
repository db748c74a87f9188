//! lore against fixtures made by the Python reference libraries with
//! `scripts/make-interop-fixtures` (run by hand; the fixtures are committed under
//! `tests/fixtures/`, with the library versions that made them):
//! - `tokenizer-reference.json`: token ids of varied strings for lore's two GGUF models, against
//!   [`tokenizer::from_gguf`] on the same files. The ids are transformers' GGUF tokenizer
//!   conversion's where it agrees with a second build (`tokenizers` over the `gguf` package's
//!   reading, pre-tokenized as llama.cpp does); for SmolLM2 it does not (transformers 5.25 has no
//!   `smollm` split, so spaces before a digit come out differently), and the second build's ids
//!   are used, transformers' kept beside them. A model that is not fetched is skipped, unless
//!   `LORE_REQUIRE_MODELS=1`.
//! - `peft-tiny/`: a tiny random llama model saved by transformers, a LoRA adapter over it saved
//!   by PEFT, and the last-position logits transformers + PEFT compute with and without it,
//!   against lore's safetensors loading, its PEFT loader and its forward pass (f32 weights).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use candle_core::quantized::gguf_file;
use lore_finetune::lm::config::ModelConfig;
use lore_finetune::lm::linear::WeightFormat;
use lore_finetune::lm::lora::{Adapter, LoraRun, Target};
use lore_finetune::lm::model::{CausalLm, KvCache, max_abs_diff, to_vec};
use lore_finetune::lm::tokenizer;
use lore_finetune::lm::weights::SafetensorsSource;
use lore_tests::models_dir;
use serde_json::Value;

/// Logits of f32 weights may differ from torch's only by summation order.
const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn ids(value: &Value) -> Result<Vec<u32>> {
    value
        .as_array()
        .context("ids are not a list")?
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .context("an id is not a u32")
        })
        .collect()
}

fn floats(value: &Value) -> Result<Vec<f32>> {
    value
        .as_array()
        .context("logits are not a list")?
        .iter()
        .map(|v| {
            v.as_f64()
                .map(|f| f as f32)
                .context("a logit is not a number")
        })
        .collect()
}

#[test]
fn gguf_tokenizers_match_reference() -> Result<()> {
    let reference = read_json(&fixtures().join("tokenizer-reference.json"))?;
    let models = reference["models"]
        .as_object()
        .context("no `models` in the reference")?;
    ensure!(!models.is_empty(), "the reference holds no model");
    let require = std::env::var("LORE_REQUIRE_MODELS").as_deref() == Ok("1");
    let mut mismatches = 0;
    for (folder, entry) in models {
        let file = entry["gguf_file"].as_str().context("no `gguf_file`")?;
        let path = models_dir().join(folder).join(file);
        if !path.is_file() {
            ensure!(
                !require,
                "{} is missing and LORE_REQUIRE_MODELS=1: run scripts/fetch-models",
                path.display()
            );
            eprintln!(
                "SKIPPED {folder}: {} is missing (run scripts/fetch-models)",
                path.display()
            );
            continue;
        }
        let mut reader = std::fs::File::open(&path)?;
        let content = gguf_file::Content::read(&mut reader)
            .with_context(|| format!("reading {}", path.display()))?;
        let tokenizer = tokenizer::from_gguf(&content)?;
        let cases = entry["cases"].as_array().context("no `cases`")?;
        for case in cases {
            let text = case["text"].as_str().context("a case without text")?;
            let expected = ids(&case["ids"])?;
            let ours = tokenizer
                .encode(text, false)
                .map_err(|e| anyhow::anyhow!("{folder}: encoding {text:?}: {e}"))?
                .get_ids()
                .to_vec();
            if ours != expected {
                mismatches += 1;
                eprintln!(
                    "MISMATCH {folder} on {text:?}\n  reference: {expected:?}\n  lore:      {ours:?}"
                );
            }
        }
        eprintln!("{folder}: {} strings checked", cases.len());
    }
    ensure!(
        mismatches == 0,
        "{mismatches} strings tokenized differently"
    );
    Ok(())
}

/// The tiny base as lore loads a Hugging Face folder, with its weights as stored (f32).
fn tiny_base(dir: &Path) -> Result<CausalLm> {
    let config = ModelConfig::from_hf_json(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let mut source = SafetensorsSource::open(dir)?;
    Ok(CausalLm::load(config, &mut source, WeightFormat::Native)?)
}

fn last_row(model: &CausalLm, tokens: &[u32], lora: Option<&LoraRun>) -> Result<Vec<f32>> {
    let logits = model.logits(tokens, lora)?;
    Ok(to_vec(&logits.get(tokens.len() - 1)?)?)
}

/// The last logits through the KV cache: half the tokens at once, then one at a time.
fn cached(model: &CausalLm, tokens: &[u32], lora: Option<&LoraRun>) -> Result<Vec<f32>> {
    let mut cache = KvCache::default();
    let half = tokens.len() / 2;
    let mut logits = model.forward_with(&tokens[..half], 0, &mut cache, lora)?;
    for (i, &t) in tokens.iter().enumerate().skip(half) {
        logits = model.forward_with(&[t], i, &mut cache, lora)?;
    }
    Ok(to_vec(&logits)?)
}

#[test]
fn peft_adapter_matches_transformers_and_peft() -> Result<()> {
    let dir = fixtures().join("peft-tiny");
    let reference = read_json(&dir.join("reference.json"))?;
    let model = tiny_base(&dir.join("base"))?;
    let adapter = Adapter::load_peft(&dir.join("adapter"), &model.config)?;
    ensure!(
        adapter.config.r == 4 && adapter.config.alpha == 8.0 && !adapter.config.rslora,
        "adapter config read as {:?}",
        adapter.config
    );
    ensure!(
        adapter.config.targets == Target::ALL,
        "adapter targets read as {:?}",
        adapter.config.targets
    );
    for layer in 0..model.config.layers {
        for t in Target::ALL {
            ensure!(
                adapter.get(layer, t).is_some(),
                "no {t:?} pair in layer {layer}"
            );
        }
    }
    let run = LoraRun::inference(&adapter);
    let cases = reference["cases"].as_array().context("no `cases`")?;
    ensure!(!cases.is_empty(), "the reference holds no case");
    let mut smallest_effect = f32::MAX;
    for case in cases {
        let tokens = ids(&case["input_ids"])?;
        let want_base = floats(&case["base_last_logits"])?;
        let want_adapted = floats(&case["adapted_last_logits"])?;
        ensure!(
            want_base.len() == model.config.vocab,
            "reference logits' length"
        );
        let checks = [
            ("base", None, &want_base),
            ("base + adapter", Some(&run), &want_adapted),
        ];
        for (what, lora, want) in checks {
            let full = last_row(&model, &tokens, lora)?;
            let step = cached(&model, &tokens, lora)?;
            let (d_full, d_step) = (max_abs_diff(&full, want), max_abs_diff(&step, want));
            eprintln!(
                "{tokens:?} {what}: max |lore - torch| {d_full:.2e}, via KV cache {d_step:.2e}"
            );
            if d_full >= TOLERANCE || d_step >= TOLERANCE {
                bail!(
                    "{what} on {tokens:?}: logits differ from transformers/PEFT by {d_full} \
                     (all positions) and {d_step} (KV cache), tolerance {TOLERANCE}"
                );
            }
        }
        let effect = max_abs_diff(&last_row(&model, &tokens, Some(&run))?, &want_base);
        smallest_effect = smallest_effect.min(effect);
    }
    eprintln!("the adapter moves the last logits by at least {smallest_effect:.3}");
    ensure!(
        smallest_effect > 100.0 * TOLERANCE,
        "the adapter's effect ({smallest_effect}) is too small for the comparison to mean much"
    );
    Ok(())
}
