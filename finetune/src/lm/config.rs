//! A causal LM's shape, read from GGUF metadata or a Hugging Face `config.json`.

use candle_core::quantized::gguf_file::Content;
use serde::Deserialize;

pub use crate::ops::RopeStyle;
use crate::{Error, Result};

/// The model families lore runs. Both are decoder-only transformers with RMSNorm, RoPE,
/// grouped-query attention and a SwiGLU MLP; qwen2 adds biases to the Q, K and V projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    fn parse(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            other => Err(Error::Unsupported(format!(
                "architecture `{other}` is not supported (llama and qwen2 are)"
            ))),
        }
    }

    pub fn qkv_bias(self) -> bool {
        self == Self::Qwen2
    }
}

/// Hyper-parameters of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub rope_base: f32,
    pub rope: RopeStyle,
    pub rms_eps: f64,
    pub context: usize,
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Reads `{arch}.*` keys of a GGUF file.
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let name = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| Error::Metadata("no `general.architecture`".into()))?;
        let arch = Arch::parse(&name)?;
        let get = |key: &str| {
            content
                .metadata
                .get(&format!("{name}.{key}"))
                .ok_or_else(|| Error::Metadata(format!("no `{name}.{key}`")))
        };
        let int = |key: &str| -> Result<usize> {
            get(key)?
                .to_u32()
                .map(|v| v as usize)
                .map_err(|e| Error::Metadata(format!("`{name}.{key}`: {e}")))
        };
        let float = |key: &str| -> Result<f32> {
            get(key)?
                .to_f32()
                .map_err(|e| Error::Metadata(format!("`{name}.{key}`: {e}")))
        };
        let vocab = content
            .metadata
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .map(Vec::len)
            .or_else(|| {
                content
                    .tensor_infos
                    .get("token_embd.weight")
                    .and_then(|t| t.shape.dims().first().copied())
            })
            .ok_or_else(|| Error::Metadata("cannot tell the vocabulary size".into()))?;
        // Scaled RoPE (Llama 3.1/3.2's per-frequency factors, linear or yarn scaling) would run
        // silently wrong with plain RoPE.
        let scaling = get("rope.scaling.type")
            .ok()
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_default();
        if !matches!(scaling.as_str(), "" | "none") {
            return Err(Error::Unsupported(format!(
                "RoPE scaling `{scaling}` is not supported (plain RoPE is)"
            )));
        }
        if content.tensor_infos.contains_key("rope_freqs.weight") {
            return Err(Error::Unsupported(
                "per-frequency RoPE factors (`rope_freqs.weight`, Llama 3.1 and later) are not supported"
                    .into(),
            ));
        }
        let config = Self {
            arch,
            layers: int("block_count")?,
            hidden: int("embedding_length")?,
            ffn: int("feed_forward_length")?,
            heads: int("attention.head_count")?,
            kv_heads: int("attention.head_count_kv")?,
            vocab,
            rope_base: float("rope.freq_base").unwrap_or(10_000.0),
            rope: match arch {
                Arch::Llama => RopeStyle::Interleaved,
                Arch::Qwen2 => RopeStyle::Halves,
            },
            rms_eps: f64::from(float("attention.layer_norm_rms_epsilon")?),
            context: int("context_length")?,
        };
        config.check()
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Hf {
            model_type: String,
            num_hidden_layers: usize,
            hidden_size: usize,
            intermediate_size: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            vocab_size: usize,
            rope_theta: Option<f32>,
            /// transformers 5 writes the RoPE settings here instead of `rope_theta`.
            #[serde(default)]
            rope_parameters: Option<serde_json::Value>,
            #[serde(default)]
            rope_scaling: Option<serde_json::Value>,
            head_dim: Option<usize>,
            rms_norm_eps: f64,
            max_position_embeddings: usize,
        }
        let hf: Hf =
            serde_json::from_str(text).map_err(|e| Error::Metadata(format!("config.json: {e}")))?;
        let rope = hf.rope_parameters.as_ref().filter(|v| v.is_object());
        // Scaled RoPE (llama3, yarn, linear…) would run silently wrong with plain RoPE.
        for settings in [rope, hf.rope_scaling.as_ref().filter(|v| v.is_object())]
            .into_iter()
            .flatten()
        {
            let kind = settings["rope_type"]
                .as_str()
                .or_else(|| settings["type"].as_str())
                .unwrap_or("default");
            if kind != "default" {
                return Err(Error::Unsupported(format!(
                    "config.json: RoPE scaling `{kind}` is not supported (plain RoPE is)"
                )));
            }
        }
        if let Some(head_dim) = hf.head_dim
            && head_dim * hf.num_attention_heads != hf.hidden_size
        {
            return Err(Error::Unsupported(format!(
                "config.json: head_dim {head_dim} × {} heads is not the hidden size {}",
                hf.num_attention_heads, hf.hidden_size
            )));
        }
        let rope_theta = hf.rope_theta.or_else(|| {
            rope.and_then(|r| r["rope_theta"].as_f64())
                .map(|t| t as f32)
        });
        let config = Self {
            arch: Arch::parse(&hf.model_type)?,
            layers: hf.num_hidden_layers,
            hidden: hf.hidden_size,
            ffn: hf.intermediate_size,
            heads: hf.num_attention_heads,
            kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            vocab: hf.vocab_size,
            rope_base: rope_theta.unwrap_or(10_000.0),
            rope: RopeStyle::Halves,
            rms_eps: hf.rms_norm_eps,
            context: hf.max_position_embeddings,
        };
        config.check()
    }

    /// Refuses shapes the forward pass cannot run, before any weight is read.
    fn check(self) -> Result<Self> {
        let bad = |what: &str| Err(Error::Metadata(what.to_string()));
        if self.layers == 0 || self.hidden == 0 || self.heads == 0 || self.kv_heads == 0 {
            return bad("layers, hidden size and head counts must be positive");
        }
        if !self.hidden.is_multiple_of(self.heads) || !self.head_dim().is_multiple_of(2) {
            return bad("the hidden size must split into heads of even size");
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad("query heads must be a multiple of key/value heads");
        }
        if self.context == 0 {
            return bad("the context length must be positive");
        }
        Ok(self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(extra: &str) -> String {
        format!(
            r#"{{"model_type": "qwen2", "num_hidden_layers": 2, "hidden_size": 64,
                "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
                "vocab_size": 100, "rms_norm_eps": 1e-6, "max_position_embeddings": 512{extra}}}"#
        )
    }

    #[test]
    fn the_rope_base_is_read_where_either_transformers_writes_it() {
        let old = ModelConfig::from_hf_json(&config(r#", "rope_theta": 1000000.0"#)).unwrap();
        assert_eq!(old.rope_base, 1e6);
        let new = ModelConfig::from_hf_json(&config(
            r#", "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}"#,
        ))
        .unwrap();
        assert_eq!(new.rope_base, 1e6);
        assert_eq!(
            ModelConfig::from_hf_json(&config("")).unwrap().rope_base,
            10_000.0
        );
    }

    #[test]
    fn scaled_rope_and_odd_head_sizes_are_refused() {
        for extra in [
            r#", "rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}"#,
            r#", "rope_scaling": {"type": "linear", "factor": 2.0}"#,
            r#", "head_dim": 32"#,
        ] {
            assert!(
                ModelConfig::from_hf_json(&config(extra)).is_err(),
                "{extra}"
            );
        }
    }
}
