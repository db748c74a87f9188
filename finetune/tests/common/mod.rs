//! Tiny random-weight models written here, for tests that need a model without a download.

#![allow(clippy::unwrap_used, dead_code)] // a test fails loudly on any error

use std::io::Cursor;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use lore_finetune::lm::config::Arch;
use lore_finetune::lm::linear::WeightFormat;
use lore_finetune::lm::model::CausalLm;

pub const VOCAB: usize = 64;
pub const HIDDEN: usize = 64;
pub const FFN: usize = 128;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const LAYERS: usize = 2;
pub const CONTEXT: usize = 128;
pub const PROMPT: [u32; 10] = [1, 5, 9, 17, 33, 2, 40, 12, 7, 63];

/// Random tensors by GGUF name, from a fixed-seed generator.
pub fn tiny_weights(arch: Arch) -> Vec<(String, Tensor)> {
    let mut seed = 1u64;
    let mut randn = |shape: &[usize], scale: f32| {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    };
    let head_dim = HIDDEN / HEADS;
    let mut out = vec![(
        "token_embd.weight".to_string(),
        randn(&[VOCAB, HIDDEN], 1.0),
    )];
    for i in 0..LAYERS {
        for (name, rows, cols) in [
            ("attn_q", HIDDEN, HIDDEN),
            ("attn_k", KV_HEADS * head_dim, HIDDEN),
            ("attn_v", KV_HEADS * head_dim, HIDDEN),
            ("attn_output", HIDDEN, HIDDEN),
            ("ffn_gate", FFN, HIDDEN),
            ("ffn_up", FFN, HIDDEN),
            ("ffn_down", HIDDEN, FFN),
        ] {
            out.push((format!("blk.{i}.{name}.weight"), randn(&[rows, cols], 0.3)));
            if arch == Arch::Qwen2 && matches!(name, "attn_q" | "attn_k" | "attn_v") {
                out.push((format!("blk.{i}.{name}.bias"), randn(&[rows], 0.5)));
            }
        }
        for name in ["attn_norm", "ffn_norm"] {
            let w = (randn(&[HIDDEN], 0.1) + 1.0).unwrap();
            out.push((format!("blk.{i}.{name}.weight"), w));
        }
    }
    let w = (randn(&[HIDDEN], 0.1) + 1.0).unwrap();
    out.push(("output_norm.weight".into(), w));
    out
}

pub fn tiny_gguf(arch: Arch) -> Vec<u8> {
    let name = match arch {
        Arch::Llama => "llama",
        Arch::Qwen2 => "qwen2",
    };
    let tensors: Vec<(String, QTensor)> = tiny_weights(arch)
        .into_iter()
        .map(|(n, t)| {
            let dtype = if t.rank() == 1 {
                GgmlDType::F32
            } else if n == "token_embd.weight" {
                GgmlDType::Q8_0
            } else {
                GgmlDType::Q4_1
            };
            (n, QTensor::quantize(&t, dtype).unwrap())
        })
        .collect();
    let key = |k: &str| format!("{name}.{k}");
    let metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(name.into())),
        (key("block_count"), Value::U32(LAYERS as u32)),
        (key("embedding_length"), Value::U32(HIDDEN as u32)),
        (key("feed_forward_length"), Value::U32(FFN as u32)),
        (key("attention.head_count"), Value::U32(HEADS as u32)),
        (key("attention.head_count_kv"), Value::U32(KV_HEADS as u32)),
        (
            key("rope.dimension_count"),
            Value::U32((HIDDEN / HEADS) as u32),
        ),
        (key("rope.freq_base"), Value::F32(10_000.0)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (key("context_length"), Value::U32(CONTEXT as u32)),
    ];
    let mut out = Cursor::new(Vec::new());
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut out, &metadata, &tensors).unwrap();
    out.into_inner()
}

pub fn ours_from_gguf(bytes: &[u8], format: WeightFormat) -> CausalLm {
    let mut cursor = Cursor::new(bytes);
    let content = gguf_file::Content::read(&mut cursor).unwrap();
    CausalLm::from_gguf(&content, &mut cursor, format).unwrap()
}
