//! Models that speak other chat templates than ChatML: tiny GGUFs carrying the real Llama-3,
//! Gemma, Mistral and Qwen2.5 templates chat through `lore chat` and `/v1/chat/completions`, and a fine-tuning
//! run masks exactly their assistant replies.
//!
//! The models are written here. Their weights make a bigram machine: with every layer's output
//! projections zero, the residual stream is the current token's one-hot embedding, and the
//! output head is a permutation, so the next token is a fixed function of the last one. After
//! the template's generation prompt (which ends in a newline) the model says "O", "K", then
//! the template's end-of-turn token; after that, "x" forever. So "OK" comes back only when
//! lore rendered the prompt the template's way *and* stops at that template's end marker.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any error

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use lore_tests::server::Server;
use lore_tests::{fails_with, lore_bin, run_json};
use serde_json::json;

/// A template family: its Jinja text, special tokens, and which of them ends a turn.
struct Family {
    /// Also the template's file name in tests/fixtures/chat-templates.
    name: &'static str,
    bos: &'static str,
    eos: &'static str,
    end_of_turn: &'static str,
    specials: &'static [&'static str],
}

const FAMILIES: [Family; 4] = [
    Family {
        name: "llama3",
        bos: "<|begin_of_text|>",
        eos: "<|end_of_text|>",
        end_of_turn: "<|eot_id|>",
        specials: &[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
    },
    Family {
        name: "gemma",
        bos: "<bos>",
        eos: "<eos>",
        end_of_turn: "<end_of_turn>",
        specials: &["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"],
    },
    Family {
        name: "mistral",
        bos: "<s>",
        eos: "</s>",
        end_of_turn: "</s>",
        specials: &["<s>", "</s>"],
    },
    Family {
        name: "qwen2.5",
        bos: "<|endoftext|>",
        eos: "<|im_end|>",
        end_of_turn: "<|im_end|>",
        specials: &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    },
];

/// The family's real template (see tests/fixtures/chat-templates).
fn template(family: &Family) -> String {
    let path = lore_tests::repo_root()
        .join("tests/fixtures/chat-templates")
        .join(format!("{}.jinja", family.name));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Vocabulary size = hidden size, so embeddings can be one-hot; a multiple of 32 for the
/// 4-bit blocks.
const N: usize = 288;
const FFN: usize = 64;
const HEADS: usize = 4;

/// GPT-2's byte-to-character table: the byte-level BPE vocabulary's 256 base tokens.
fn byte_tokens() -> Vec<String> {
    let mut bytes: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut chars = bytes.clone();
    let mut extra = 0;
    for b in 0..256 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut table: Vec<(u32, String)> = bytes
        .into_iter()
        .zip(chars)
        .map(|(b, c)| (b, char::from_u32(c).unwrap().to_string()))
        .collect();
    table.sort();
    table.into_iter().map(|(_, c)| c).collect()
}

fn tensor(values: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// The GGUF file for `family` (see the module comment for what its weights do).
fn write_model(dir: &Path, family: &Family) -> PathBuf {
    let mut tokens = byte_tokens();
    tokens.extend(family.specials.iter().map(|s| s.to_string()));
    let first_padding = tokens.len();
    // The one merge's result (the file format wants at least one).
    tokens.push("Ġt".into());
    while tokens.len() < N {
        tokens.push(format!("<unused{}>", tokens.len()));
    }
    let id: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let next = |from: &str, to: &str| (id[from], id[to]);
    let mut bigram = vec![id["x"]; N];
    // Generation prompts end in a newline (most) or `[/INST]` (Mistral).
    for (from, to) in [
        next("Ċ", "O"),
        next("]", "O"),
        next("O", "K"),
        next("K", family.end_of_turn),
    ] {
        bigram[from] = to;
    }
    // Output row t scores token t: one 1.0 at the column of each token that leads to t.
    let mut head = vec![0f32; N * N];
    for (from, &to) in bigram.iter().enumerate() {
        head[to * N + from] = 1.0;
    }
    let identity: Vec<f32> = (0..N * N)
        .map(|i| if i / N == i % N { 1.0 } else { 0.0 })
        .collect();
    let mut named: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            QTensor::quantize(&tensor(identity, &[N, N]), GgmlDType::F32).unwrap(),
        ),
        (
            "output.weight".into(),
            QTensor::quantize(&tensor(head, &[N, N]), GgmlDType::F32).unwrap(),
        ),
        (
            "output_norm.weight".into(),
            QTensor::quantize(&tensor(vec![1.0; N], &[N]), GgmlDType::F32).unwrap(),
        ),
    ];
    let kv = N / 2;
    for (name, rows, cols) in [
        ("attn_q", N, N),
        ("attn_k", kv, N),
        ("attn_v", kv, N),
        ("attn_output", N, N),
        ("ffn_gate", FFN, N),
        ("ffn_up", FFN, N),
        ("ffn_down", N, FFN),
    ] {
        // Small values where they do not matter; zero where they would disturb the stream.
        let value = if matches!(name, "attn_output" | "ffn_down") {
            0.0
        } else {
            0.01
        };
        let t = tensor(vec![value; rows * cols], &[rows, cols]);
        named.push((
            format!("blk.0.{name}.weight"),
            QTensor::quantize(&t, GgmlDType::Q8_0).unwrap(),
        ));
    }
    for name in ["attn_norm", "ffn_norm"] {
        named.push((
            format!("blk.0.{name}.weight"),
            QTensor::quantize(&tensor(vec![1.0; N], &[N]), GgmlDType::F32).unwrap(),
        ));
    }
    let token_types: Vec<Value> = (0..N)
        .map(|i| {
            let special = (256..first_padding).contains(&i);
            Value::I32(if special { 3 } else { 1 })
        })
        .collect();
    let metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("llama.block_count".into(), Value::U32(1)),
        ("llama.embedding_length".into(), Value::U32(N as u32)),
        ("llama.feed_forward_length".into(), Value::U32(FFN as u32)),
        (
            "llama.attention.head_count".into(),
            Value::U32(HEADS as u32),
        ),
        ("llama.attention.head_count_kv".into(), Value::U32(2)),
        (
            "llama.rope.dimension_count".into(),
            Value::U32((N / HEADS) as u32),
        ),
        ("llama.rope.freq_base".into(), Value::F32(10_000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("llama.context_length".into(), Value::U32(512)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().cloned().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![Value::String("Ġ t".into())]),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(token_types),
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(id[family.bos] as u32),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(id[family.eos] as u32),
        ),
        (
            "tokenizer.chat_template".into(),
            Value::String(template(family)),
        ),
    ];
    let mut out = Cursor::new(Vec::new());
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut out, &metadata, &tensors).unwrap();
    let path = dir.join(format!("tiny-{}.gguf", family.name));
    std::fs::write(&path, out.into_inner()).unwrap();
    path
}

fn lore(data_dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(lore_bin());
    cmd.arg("--data-dir")
        .arg(data_dir)
        .env_remove("LORE_LM")
        .env_remove("LORE_LLM_URL")
        .env("RUST_LOG", "warn");
    cmd
}

#[test]
fn each_family_chats_through_the_cli_with_its_own_template() {
    let dir = tempfile::tempdir().unwrap();
    for family in &FAMILIES {
        let model = write_model(dir.path(), family);
        let v = run_json(lore(&dir.path().join("kb")).args([
            "chat",
            "Hi there",
            "--system",
            "Be brief.",
            "--model",
            model.to_str().unwrap(),
            "--json",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
        ]))
        .unwrap();
        assert_eq!(v["answer"], "OK", "{}: {v}", family.name);
        // "O", "K", then the end-of-turn token (not counted): generation stopped at the
        // template's marker, not at the token budget.
        assert_eq!(v["finish_reason"], "stop", "{}: {v}", family.name);
        assert_eq!(v["usage"]["completion_tokens"], 2, "{}: {v}", family.name);
    }
}

#[test]
fn each_family_chats_over_the_openai_api() {
    let dir = tempfile::tempdir().unwrap();
    for family in &FAMILIES {
        let model = write_model(dir.path(), family);
        let data = dir.path().join(format!("kb-{}", family.name));
        let server = Server::start(&data, None, &["--model", model.to_str().unwrap()]).unwrap();
        let chat = |messages: serde_json::Value| {
            server.call(
                "POST",
                "/v1/chat/completions",
                Some(&json!({
                    "model": format!("tiny-{}", family.name),
                    "messages": messages,
                    "max_tokens": 8,
                    "temperature": 0,
                })),
            )
        };
        let reply = chat(json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
        ]));
        assert_eq!(reply.status, 200, "{}: {}", family.name, reply.body);
        let choice = &reply.body["choices"][0];
        assert_eq!(
            choice["message"]["content"], "OK",
            "{}: {}",
            family.name, reply.body
        );
        assert_eq!(
            choice["finish_reason"], "stop",
            "{}: {}",
            family.name, reply.body
        );
        // Gemma's and Mistral's templates refuse two user turns in a row: the client hears the
        // template's own words as a 400, not a 500.
        let reply = chat(json!([
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
        ]));
        if matches!(family.name, "gemma" | "mistral") {
            assert_eq!(reply.status, 400, "{}", reply.body);
            let message = reply.body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("must alternate"), "{}", reply.body);
        } else {
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
    }
}

#[test]
fn a_fine_tuning_run_trains_exactly_the_assistant_replies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    let rows = [
        json!({"messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Colour of the sky?"},
            {"role": "assistant", "content": "Blue."},
        ]}),
        json!({"messages": [
            {"role": "user", "content": "Say yes"},
            {"role": "assistant", "content": "yes"},
            {"role": "user", "content": "Again"},
            {"role": "assistant", "content": "yes again"},
        ]}),
        json!({"prompt": [{"role": "user", "content": "Two and two?"}],
               "completion": [{"role": "assistant", "content": "Four."}]}),
    ];
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&data, text).unwrap();
    for family in &FAMILIES {
        let model = write_model(dir.path(), family);
        let out = lore(&dir.path().join("kb"))
            .args(["finetune", "--dry-run", "--valid-fraction", "0", "--data"])
            .arg(&data)
            .args(["--base", model.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            family.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut trained: Vec<Vec<String>> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                serde_json::from_value(v["trained"].clone()).unwrap()
            })
            .collect();
        trained.sort();
        let eot = family.end_of_turn;
        let mut expect = vec![
            vec![format!("Blue.{eot}")],
            vec![format!("yes{eot}"), format!("yes again{eot}")],
            vec![format!("Four.{eot}")],
        ];
        expect.sort();
        assert_eq!(trained, expect, "{}", family.name);

        // And a real step trains on them and writes a PEFT adapter.
        let output = dir.path().join(format!("adapter-{}", family.name));
        let v = run_json(
            lore(&dir.path().join("kb"))
                .args([
                    "finetune",
                    "--valid-fraction",
                    "0",
                    "--max-steps",
                    "1",
                    "--json",
                ])
                .arg("--data")
                .arg(&data)
                .args(["--base", model.to_str().unwrap()])
                .arg("--output")
                .arg(&output),
        )
        .unwrap();
        assert!(
            v["steps"].as_u64().is_some_and(|s| s == 1),
            "{}: {v}",
            family.name
        );
        assert!(output.join("adapter_model.safetensors").is_file());
    }
    // A conversation the template refuses is named, not trained wrongly.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": \"b\"}, {\"role\": \"assistant\", \"content\": \"c\"}]}\n",
    )
    .unwrap();
    let gemma = write_model(dir.path(), &FAMILIES[1]);
    fails_with(
        lore(&dir.path().join("kb"))
            .args(["finetune", "--dry-run", "--valid-fraction", "0", "--data"])
            .arg(&bad)
            .args(["--base", gemma.to_str().unwrap()]),
        "must alternate",
    );
    // ... at its line.
    fails_with(
        lore(&dir.path().join("kb"))
            .args(["finetune", "--dry-run", "--valid-fraction", "0", "--data"])
            .arg(&bad)
            .args(["--base", gemma.to_str().unwrap()]),
        "bad.jsonl:1:",
    );
}
