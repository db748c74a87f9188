//! lore's llama against candle-transformers' `quantized_llama` (an independent
//! implementation) on a tiny random-weight GGUF written here: logits within 1e-4 and equal
//! greedy continuations, for the file's own Q4_1 blocks.

#![allow(clippy::unwrap_used)] // a test fails loudly on any error

use std::io::Cursor;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use lore_finetune::llama::{Llama, WeightFormat, to_vec};

const VOCAB: usize = 64;
const HIDDEN: usize = 64;
const FFN: usize = 128;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const LAYERS: usize = 2;

fn tiny_gguf() -> Vec<u8> {
    let dev = Device::Cpu;
    let mut seed = 1u64;
    let mut randn = |shape: (usize, usize), scale: f32| {
        let n = shape.0 * shape.1;
        let values: Vec<f32> = (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect();
        Tensor::from_vec(values, shape, &dev).unwrap()
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    tensors.push((
        "token_embd.weight".into(),
        QTensor::quantize(&randn((VOCAB, HIDDEN), 1.0), GgmlDType::Q8_0).unwrap(),
    ));
    let head_dim = HIDDEN / HEADS;
    for i in 0..LAYERS {
        for (name, shape) in [
            ("attn_q", (HIDDEN, HIDDEN)),
            ("attn_k", (KV_HEADS * head_dim, HIDDEN)),
            ("attn_v", (KV_HEADS * head_dim, HIDDEN)),
            ("attn_output", (HIDDEN, HIDDEN)),
            ("ffn_gate", (FFN, HIDDEN)),
            ("ffn_up", (FFN, HIDDEN)),
            ("ffn_down", (HIDDEN, FFN)),
        ] {
            let w = randn(shape, 0.3);
            tensors.push((
                format!("blk.{i}.{name}.weight"),
                QTensor::quantize(&w, GgmlDType::Q4_1).unwrap(),
            ));
        }
        for name in ["attn_norm", "ffn_norm"] {
            let w = (randn((1, HIDDEN), 0.1) + 1.0).unwrap().squeeze(0).unwrap();
            tensors.push((
                format!("blk.{i}.{name}.weight"),
                QTensor::quantize(&w, GgmlDType::F32).unwrap(),
            ));
        }
    }
    let w = (randn((1, HIDDEN), 0.1) + 1.0).unwrap().squeeze(0).unwrap();
    tensors.push((
        "output_norm.weight".into(),
        QTensor::quantize(&w, GgmlDType::F32).unwrap(),
    ));
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(LAYERS as u32)),
        ("llama.embedding_length", Value::U32(HIDDEN as u32)),
        ("llama.feed_forward_length", Value::U32(FFN as u32)),
        ("llama.attention.head_count", Value::U32(HEADS as u32)),
        ("llama.attention.head_count_kv", Value::U32(KV_HEADS as u32)),
        ("llama.rope.dimension_count", Value::U32(head_dim as u32)),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.context_length", Value::U32(128)),
    ];
    let mut out = Cursor::new(Vec::new());
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut out, &metadata, &tensors).unwrap();
    out.into_inner()
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap() as u32
}

#[test]
fn logits_and_greedy_tokens_match_candle_transformers() {
    let bytes = tiny_gguf();
    let prompt: Vec<u32> = vec![1, 5, 9, 17, 33, 2, 40, 12];
    let mut cursor = Cursor::new(&bytes);
    let content = gguf_file::Content::read(&mut cursor).unwrap();
    let mut theirs = ModelWeights::from_gguf(content, &mut cursor, &Device::Cpu).unwrap();
    let mut cursor = Cursor::new(&bytes);
    let content = gguf_file::Content::read(&mut cursor).unwrap();
    let mut ours = Llama::from_gguf(&content, &mut cursor, WeightFormat::Native).unwrap();

    let input = Tensor::new(prompt.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let a = to_vec(&theirs.forward(&input, 0).unwrap()).unwrap();
    let b = to_vec(&ours.forward(&prompt, 0).unwrap()).unwrap();
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "prefill logits differ by {diff}");

    let (mut ta, mut tb) = (vec![argmax(&a)], vec![argmax(&b)]);
    for i in 0..12 {
        let input = Tensor::new(&[ta[i]], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        ta.push(argmax(
            &to_vec(&theirs.forward(&input, prompt.len() + i).unwrap()).unwrap(),
        ));
        let logits = to_vec(&ours.forward(&[tb[i]], prompt.len() + i).unwrap()).unwrap();
        tb.push(argmax(&logits));
    }
    assert_eq!(ta, tb, "greedy continuations differ");
}

#[test]
fn a_prompt_beyond_the_context_is_an_error() {
    let bytes = tiny_gguf();
    let mut cursor = Cursor::new(&bytes);
    let content = gguf_file::Content::read(&mut cursor).unwrap();
    let mut ours = Llama::from_gguf(&content, &mut cursor, WeightFormat::Native).unwrap();
    let err = ours.forward(&vec![1; 129], 0).unwrap_err().to_string();
    assert!(err.contains("context of 128"), "{err}");
}
