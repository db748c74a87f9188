//! Writes a model (optionally with a LoRA adapter merged in) as a Hugging Face folder:
//! `config.json`, `model.safetensors` (f32), `tokenizer.json`, `tokenizer_config.json` and
//! `generation_config.json`, loadable by `transformers` and by lore itself.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use serde_json::json;
use tokenizers::Tokenizer;

use crate::adapter::peft::{Direction, reorder_rows};
use crate::fs::write_atomically;
use crate::lm::config::Arch;
use crate::lm::lora::{Adapter, Target};
use crate::lm::model::CausalLm;
use crate::ops::dequant::dequantize;
use crate::{Error, Result};

/// The ChatML template in Jinja, for a model whose file carried none.
const CHATML_JINJA: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The weights by Hugging Face name, as f32 in Hugging Face's row order, with `adapter`'s
/// updates added when given.
pub fn hf_tensors(model: &CausalLm, adapter: Option<&Adapter>) -> Result<HashMap<String, Tensor>> {
    let c = &model.config;
    let mut out = HashMap::new();
    out.insert(
        "model.embed_tokens.weight".to_string(),
        dequantize(&model.embeddings)?,
    );
    out.insert("model.norm.weight".to_string(), model.norm.clone());
    if !model.tied {
        out.insert("lm_head.weight".to_string(), model.lm_head.weight_f32()?);
    }
    for (i, b) in model.blocks.iter().enumerate() {
        let prefix = format!("model.layers.{i}");
        out.insert(
            format!("{prefix}.input_layernorm.weight"),
            b.attn_norm.clone(),
        );
        out.insert(
            format!("{prefix}.post_attention_layernorm.weight"),
            b.ffn_norm.clone(),
        );
        let mut parts: Vec<(Target, Tensor, Option<Tensor>)> = Vec::new();
        for (t, (w, bias)) in [Target::Q, Target::K, Target::V]
            .into_iter()
            .zip(b.qkv.parts_f32()?)
        {
            parts.push((t, w, bias));
        }
        parts.push((Target::O, b.o.weight_f32()?, None));
        for (t, (w, _)) in [Target::Gate, Target::Up]
            .into_iter()
            .zip(b.gate_up.parts_f32()?)
        {
            parts.push((t, w, None));
        }
        parts.push((Target::Down, b.down.weight_f32()?, None));
        for (t, w, bias) in parts {
            let w = match adapter.map(|a| a.delta_weight(i, t)).transpose()?.flatten() {
                Some(delta) => (w + delta)?,
                None => w,
            };
            let name = format!(
                "{prefix}.{}.{}",
                if matches!(t, Target::Gate | Target::Up | Target::Down) {
                    "mlp"
                } else {
                    "self_attn"
                },
                t.name()
            );
            out.insert(
                format!("{name}.weight"),
                reorder_rows(&w, t, c, Direction::ToHf)?,
            );
            if let Some(bias) = bias {
                let column = bias.unsqueeze(1)?;
                let bias = reorder_rows(&column, t, c, Direction::ToHf)?.squeeze(1)?;
                out.insert(format!("{name}.bias"), bias);
            }
        }
    }
    Ok(out)
}

/// `config.json` for the model.
fn hf_config(model: &CausalLm, eos: Option<u32>, bos: Option<u32>) -> serde_json::Value {
    let c = &model.config;
    let (model_type, architecture) = match c.arch {
        Arch::Llama => ("llama", "LlamaForCausalLM"),
        Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
    };
    json!({
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": c.hidden,
        "intermediate_size": c.ffn,
        "num_attention_heads": c.heads,
        "num_key_value_heads": c.kv_heads,
        "num_hidden_layers": c.layers,
        "vocab_size": c.vocab,
        "max_position_embeddings": c.context,
        "rms_norm_eps": c.rms_eps,
        "rope_theta": c.rope_base,
        "hidden_act": "silu",
        "tie_word_embeddings": model.tied,
        "attention_bias": c.arch.qkv_bias(),
        "use_sliding_window": false,
        "torch_dtype": "float32",
        "eos_token_id": eos,
        "bos_token_id": bos,
    })
}

/// How the exported model talks: its chat template and special tokens, as the loaded model
/// has them.
#[derive(Debug, Clone, Copy)]
pub struct ChatFiles<'a> {
    /// The model's Jinja chat template (ChatML's is written when absent).
    pub jinja: Option<&'a str>,
    /// The beginning-of-sequence token's text ("" when the model names none).
    pub bos_token: &'a str,
    /// What ends an assistant turn: the export's EOS and padding token.
    pub end_of_turn: &'a str,
}

/// Writes the Hugging Face folder.
pub fn write_hf(
    model: &CausalLm,
    adapter: Option<&Adapter>,
    tokenizer: &Tokenizer,
    chat: ChatFiles<'_>,
    dir: &Path,
) -> Result<()> {
    let ChatFiles {
        jinja,
        bos_token,
        end_of_turn,
    } = chat;
    let io = |p: &Path, e: std::io::Error| Error::io(p, e);
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let tensors = hf_tensors(model, adapter)?;
    write_atomically(&dir.join("model.safetensors"), |tmp| {
        Ok(candle_core::safetensors::save(&tensors, tmp)?)
    })?;
    let eos = tokenizer.token_to_id(end_of_turn);
    // A ChatML model without a template of its own (so no BOS named) keeps `<|im_start|>`,
    // as SmolLM2's own files do.
    let bos_token = match bos_token {
        "" if tokenizer.token_to_id("<|im_start|>").is_some() => "<|im_start|>",
        other => other,
    };
    let bos = tokenizer.token_to_id(bos_token);
    let write_json = |name: &str, value: serde_json::Value| -> Result<()> {
        let path = dir.join(name);
        let text =
            serde_json::to_string_pretty(&value).map_err(|e| Error::Request(e.to_string()))?;
        write_atomically(&path, |tmp| {
            std::fs::write(tmp, text.as_bytes()).map_err(|e| io(tmp, e))
        })
    };
    write_json("config.json", hf_config(model, eos, bos))?;
    write_json(
        "generation_config.json",
        json!({"eos_token_id": eos, "bos_token_id": bos}),
    )?;
    write_json(
        "tokenizer_config.json",
        json!({
            "chat_template": jinja.filter(|j| !j.is_empty()).unwrap_or(CHATML_JINJA),
            "eos_token": end_of_turn,
            "pad_token": end_of_turn,
            "bos_token": (!bos_token.is_empty()).then_some(bos_token),
            "clean_up_tokenization_spaces": false,
            "model_max_length": model.config.context,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }),
    )?;
    let path = dir.join("tokenizer.json");
    write_atomically(&path, |tmp| {
        tokenizer
            .save(tmp, false)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tmp.display())))
    })
}
