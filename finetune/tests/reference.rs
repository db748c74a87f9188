//! lore's causal LM against independent implementations in candle-transformers, on tiny
//! random-weight models written here:
//! - a llama GGUF (Q4_1 blocks, Q/K in llama.cpp's permuted layout) against `quantized_llama`;
//! - a qwen2 GGUF (with Q/K/V biases, not permuted) against `quantized_qwen2`;
//! - a qwen2 Hugging Face safetensors folder (f32) against the float `qwen2` model.
//!
//! With the file's own blocks on the block kernels (as the references run them) the logits
//! agree within 1e-4 and greedy continuations match token for token. lore's defaults split
//! Q4_1 into Q4_0 + offsets and expand blocks to f32 for prompts of 8 tokens or more; the
//! weights are the same but activations are quantized differently (or not at all), so there
//! the stated tolerance is 2% of the logits' spread.

#![allow(clippy::unwrap_used)] // a test fails loudly on any error

use std::collections::HashMap;
use std::io::Cursor;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{DType, Device, Tensor};
use lore_finetune::generation::sampling::argmax;
use lore_finetune::lm::config::{Arch, ModelConfig};
use lore_finetune::lm::linear::WeightFormat;
use lore_finetune::lm::model::{CausalLm, max_abs_diff, to_vec};
use lore_finetune::lm::weights::{SafetensorsSource, hf_name};

mod common;
use common::*;

/// Prefill logits from `step` (token ids, start position → last logits), then 12 greedy
/// steps.
fn run(mut step: impl FnMut(&[u32], usize) -> Vec<f32>) -> (Vec<f32>, Vec<u32>) {
    let logits = step(&PROMPT, 0);
    let mut tokens = vec![argmax(&logits)];
    for i in 0..12 {
        let next = argmax(&step(&[tokens[i]], PROMPT.len() + i));
        tokens.push(next);
    }
    (logits, tokens)
}

fn batch(tokens: &[u32]) -> Tensor {
    Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

fn check_against(reference: (Vec<f32>, Vec<u32>), bytes: &[u8]) {
    let mut ours = ours_from_gguf(bytes, WeightFormat::Native);
    ours.gemm_rows = usize::MAX;
    let mine = run(|t, s| to_vec(&ours.forward(t, s).unwrap()).unwrap());
    let diff = max_abs_diff(&reference.0, &mine.0);
    assert!(diff < 1e-4, "prefill logits differ by {diff}");
    assert_eq!(reference.1, mine.1, "greedy continuations differ");

    // The defaults (Q4_1 split into Q4_0 + offsets, f32 prefill; and the split on the block
    // kernels for decode): within 2% of the logits' spread, as activations are quantized
    // differently.
    let spread = mine.0.iter().copied().fold(f32::MIN, f32::max)
        - mine.0.iter().copied().fold(f32::MAX, f32::min);
    for gemm_rows in [lore_finetune::lm::linear::GEMM_ROWS, usize::MAX] {
        let mut fast = ours_from_gguf(bytes, WeightFormat::Auto);
        fast.gemm_rows = gemm_rows;
        let logits = to_vec(&fast.forward(&PROMPT, 0).unwrap()).unwrap();
        let diff = max_abs_diff(&logits, &mine.0);
        assert!(
            diff < 0.02 * spread,
            "gemm from {gemm_rows} rows moved logits by {diff} (spread {spread})"
        );
    }
}

#[test]
fn llama_gguf_matches_quantized_llama() {
    use candle_transformers::models::quantized_llama::ModelWeights;
    let bytes = tiny_gguf(Arch::Llama);
    let mut cursor = Cursor::new(&bytes);
    let content = gguf_file::Content::read(&mut cursor).unwrap();
    let mut theirs = ModelWeights::from_gguf(content, &mut cursor, &Device::Cpu).unwrap();
    let reference = run(|t, s| to_vec(&theirs.forward(&batch(t), s).unwrap()).unwrap());
    check_against(reference, &bytes);
}

#[test]
fn qwen2_gguf_matches_quantized_qwen2() {
    use candle_transformers::models::quantized_qwen2::ModelWeights;
    let bytes = tiny_gguf(Arch::Qwen2);
    let mut cursor = Cursor::new(&bytes);
    let content = gguf_file::Content::read(&mut cursor).unwrap();
    let mut theirs = ModelWeights::from_gguf(content, &mut cursor, &Device::Cpu).unwrap();
    let reference = run(|t, s| to_vec(&theirs.forward(&batch(t), s).unwrap()).unwrap());
    check_against(reference, &bytes);
}

fn qwen2_config_json() -> String {
    serde_json::json!({
        "model_type": "qwen2", "vocab_size": VOCAB, "hidden_size": HIDDEN,
        "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "max_position_embeddings": CONTEXT,
        "sliding_window": CONTEXT, "max_window_layers": LAYERS, "tie_word_embeddings": true,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "use_sliding_window": false,
        "hidden_act": "silu"
    })
    .to_string()
}

#[test]
fn qwen2_safetensors_folder_matches_the_float_qwen2() {
    use candle_transformers::models::qwen2::{Config, ModelForCausalLM};
    let dir = tempfile::tempdir().unwrap();
    let tensors: HashMap<String, Tensor> = tiny_weights(Arch::Qwen2)
        .into_iter()
        .map(|(n, t)| (hf_name(&n).unwrap(), t))
        .collect();
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let config_json = qwen2_config_json();

    let cfg: Config = serde_json::from_str(&config_json).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let mut theirs = ModelForCausalLM::new(&cfg, vb).unwrap();
    let reference = run(|t, s| to_vec(&theirs.forward(&batch(t), s).unwrap()).unwrap());

    let config = ModelConfig::from_hf_json(&config_json).unwrap();
    let mut source = SafetensorsSource::open(dir.path()).unwrap();
    let mut ours = CausalLm::load(config.clone(), &mut source, WeightFormat::Native).unwrap();
    let mine = run(|t, s| to_vec(&ours.forward(t, s).unwrap()).unwrap());
    let diff = max_abs_diff(&reference.0, &mine.0);
    assert!(diff < 1e-4, "prefill logits differ by {diff}");
    assert_eq!(reference.1, mine.1, "greedy continuations differ");

    // Held in 4-bit blocks the same model stays close to the float one.
    let mut source = SafetensorsSource::open(dir.path()).unwrap();
    let mut q4 =
        CausalLm::load(config, &mut source, WeightFormat::Blocks(GgmlDType::Q4_0)).unwrap();
    assert!(q4.weight_bytes() < ours.weight_bytes() / 5);
    let logits = to_vec(&q4.forward(&PROMPT, 0).unwrap()).unwrap();
    assert_eq!(
        argmax(&logits),
        argmax(&reference.0),
        "Q4_0 changed the top token"
    );
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let mut ours = ours_from_gguf(&tiny_gguf(Arch::Llama), WeightFormat::Auto);
    let err = ours.forward(&[1; CONTEXT + 1], 0).unwrap_err().to_string();
    assert!(err.contains("context window of 128"), "{err}");
    let err = ours.forward(&[VOCAB as u32], 0).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
    assert!(ours.forward(&[], 0).is_err());

    // Another architecture's GGUF is refused by name.
    let mut other = Cursor::new(Vec::new());
    let arch = Value::String("mamba".into());
    gguf_file::write(&mut other, &[("general.architecture", &arch)], &[]).unwrap();
    let bytes = other.into_inner();
    let mut cursor = Cursor::new(&bytes);
    let content = gguf_file::Content::read(&mut cursor).unwrap();
    let err = CausalLm::from_gguf(&content, &mut cursor, WeightFormat::Native)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`mamba` is not supported"), "{err}");
}

/// The decode step (one token against the cache, in plain loops) gives the logits the full
/// pass gives at the same position, for both families, and for a split Q4_1 weight (offsets)
/// as for plain blocks, over 100 positions (the cache grows past its first 64); a token at the
/// wrong position is an error.
#[test]
fn decode_step_matches_the_full_pass() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        for format in [WeightFormat::Auto, WeightFormat::Native] {
            let mut model = ours_from_gguf(&tiny_gguf(arch), format);
            model.gemm_rows = usize::MAX;
            // Past 64 positions, so the cache's buffers grow (they start at 64) mid-sequence.
            let tokens: Vec<u32> = PROMPT.iter().cycle().take(100).copied().collect();
            let full = model.logits(&tokens, None).unwrap();
            let mut cache = lore_finetune::lm::model::KvCache::default();
            model
                .forward_with(&tokens[..3], 0, &mut cache, None)
                .unwrap();
            let mut off = 0;
            for (i, &t) in tokens.iter().enumerate().skip(3) {
                let step = to_vec(&model.forward_with(&[t], i, &mut cache, None).unwrap()).unwrap();
                let whole = to_vec(&full.get(i).unwrap()).unwrap();
                let diff = max_abs_diff(&step, &whole);
                // Activations are quantized to 8 bits per block on the block kernels: a value
                // a float rounding away from a rounding tie lands one step off, which moves a
                // logit by a step's worth (about 1% of the spread). So: every position within
                // 2% of the spread, and all but a few within 1e-4.
                let spread = whole.iter().copied().fold(f32::MIN, f32::max)
                    - whole.iter().copied().fold(f32::MAX, f32::min);
                assert!(
                    diff < 0.02 * spread,
                    "{arch:?} {format:?} position {i}: {diff} (spread {spread})"
                );
                if diff >= 1e-4 {
                    off += 1;
                }
            }
            assert!(
                off <= 2,
                "{arch:?} {format:?}: {off} positions differ by 1e-4 or more"
            );
            assert_eq!(cache.len(), tokens.len());
            let err = model
                .forward_with(&[1], tokens.len() + 5, &mut cache, None)
                .unwrap_err()
                .to_string();
            assert!(err.contains("KV cache holds"), "{err}");
        }
    }
}
