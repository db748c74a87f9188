//! Where a model's tensors come from: a GGUF file, or a Hugging Face safetensors folder whose
//! names are mapped onto GGUF's. Everything downstream sees GGUF names.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// Tensors by GGUF name.
pub trait Source {
    /// The tensor, or `None` when the model has none by that name.
    fn get(&mut self, name: &str) -> Result<Option<QTensor>>;

    fn require(&mut self, name: &str) -> Result<QTensor> {
        self.get(name)?
            .ok_or_else(|| Error::Metadata(format!("the weights have no tensor `{name}`")))
    }
}

/// The tensors of an open GGUF file.
#[derive(Debug)]
pub struct GgufSource<'a, R> {
    pub content: &'a Content,
    pub reader: &'a mut R,
}

impl<R: Read + Seek> Source for GgufSource<'_, R> {
    fn get(&mut self, name: &str) -> Result<Option<QTensor>> {
        if !self.content.tensor_infos.contains_key(name) {
            return Ok(None);
        }
        Ok(Some(self.content.tensor(
            self.reader,
            name,
            &Device::Cpu,
        )?))
    }
}

/// The Hugging Face name of a GGUF tensor name (llama and qwen2 layouts).
pub fn hf_name(gguf: &str) -> Option<String> {
    let (stem, suffix) = gguf.rsplit_once('.')?;
    let whole = |s: &str| Some(format!("{s}.{suffix}"));
    match stem {
        "token_embd" => return whole("model.embed_tokens"),
        "output_norm" => return whole("model.norm"),
        "output" => return whole("lm_head"),
        _ => {}
    }
    let rest = stem.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let part = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{part}.{suffix}"))
}

/// The `*.safetensors` files of a Hugging Face model folder, loaded into memory as f32.
#[derive(Debug)]
pub struct SafetensorsSource {
    tensors: HashMap<String, Tensor>,
}

impl SafetensorsSource {
    pub fn open(dir: &Path) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Request(format!(
                "{} holds no .safetensors file",
                dir.display()
            )));
        }
        let mut tensors = HashMap::new();
        for f in &files {
            let loaded = candle_core::safetensors::load(f, &Device::Cpu).map_err(|e| {
                Error::Request(format!(
                    "{}: not a readable safetensors file ({e})",
                    f.display()
                ))
            })?;
            tensors.extend(loaded);
        }
        Ok(Self { tensors })
    }
}

impl Source for SafetensorsSource {
    fn get(&mut self, name: &str) -> Result<Option<QTensor>> {
        let Some(hf) = hf_name(name) else {
            return Ok(None);
        };
        // Taken, not cloned: each tensor is read once, and the float copy goes as soon as
        // it has been converted to blocks.
        let Some(t) = self.tensors.remove(&hf) else {
            return Ok(None);
        };
        Ok(Some(QTensor::quantize(
            &t.to_dtype(DType::F32)?,
            GgmlDType::F32,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::hf_name;

    #[test]
    fn maps_gguf_names_to_hugging_face() {
        assert_eq!(
            hf_name("blk.3.attn_q.bias").as_deref(),
            Some("model.layers.3.self_attn.q_proj.bias")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(hf_name("blk.0.unknown.weight"), None);
    }
}
