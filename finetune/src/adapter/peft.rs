//! Adapters on disk in PEFT's layout (`adapter_config.json` + `adapter_model.safetensors`),
//! so adapters lore trains load in PEFT and adapters PEFT trains load in lore.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::fs::{io_error, write_atomically};
use crate::lm::config::ModelConfig;
use crate::lm::lora::{Adapter, LoraConfig, LoraPair, Target, peft_name};
use crate::ops::RopeStyle;
use crate::{Error, Result};

impl Adapter {
    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir`, with `B` rows
    /// in Hugging Face's order for `model`.
    pub fn save_peft(&self, dir: &Path, model: &ModelConfig) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let mut tensors = HashMap::new();
        for ((layer, t), p) in self.sorted() {
            let name = peft_name(layer, t);
            tensors.insert(format!("{name}.lora_A.weight"), p.a.detach().contiguous()?);
            let b = reorder_rows(&p.b.detach(), t, model, Direction::ToHf)?;
            tensors.insert(format!("{name}.lora_B.weight"), b);
        }
        let weights = dir.join("adapter_model.safetensors");
        write_atomically(&weights, |tmp| {
            Ok(candle_core::safetensors::save(&tensors, tmp)?)
        })?;
        let config = PeftConfig::from_lora(&self.config, &self.base);
        let json = serde_json::to_string_pretty(&config)
            .map_err(|e| Error::Request(format!("adapter config: {e}")))?;
        write_atomically(&dir.join("adapter_config.json"), |tmp| {
            std::fs::write(tmp, json.as_bytes()).map_err(|e| io_error(tmp, e))
        })
    }

    /// Reads a PEFT LoRA adapter folder for `model`, checking every matrix's shape.
    pub fn load_peft(dir: &Path, model: &ModelConfig) -> Result<Self> {
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| {
            Error::Request(format!(
                "{}: {e} (an adapter folder holds adapter_config.json and adapter_model.safetensors)",
                config_path.display()
            ))
        })?;
        let peft: PeftConfig = serde_json::from_str(&text)
            .map_err(|e| Error::Request(format!("{}: {e}", config_path.display())))?;
        let config = peft.to_lora(&config_path)?;
        let weights = dir.join("adapter_model.safetensors");
        if !weights.is_file() {
            return Err(Error::Request(format!(
                "{}: missing (only safetensors adapters are read)",
                weights.display()
            )));
        }
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
            .map_err(|e| Error::Request(format!("{}: {e}", weights.display())))?;
        let bad = |m: String| Error::Request(format!("{}: {m}", weights.display()));
        let mut pairs = HashMap::new();
        for (name, _) in tensors.iter() {
            if !(name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight")) {
                return Err(bad(format!(
                    "unexpected tensor `{name}` (only LoRA A/B matrices are supported)"
                )));
            }
        }
        for layer in 0..model.layers {
            for &t in &config.targets {
                let name = peft_name(layer, t);
                let (a, b) = match (
                    tensors.get(&format!("{name}.lora_A.weight")),
                    tensors.get(&format!("{name}.lora_B.weight")),
                ) {
                    (Some(a), Some(b)) => (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?),
                    (None, None) if peft.layers_to_transform.is_some() => continue,
                    _ => return Err(bad(format!("`{name}` lacks its lora_A or lora_B matrix"))),
                };
                let (fan_in, out) = t.shape(model);
                if a.dims() != [config.r, fan_in] || b.dims() != [out, config.r] {
                    return Err(bad(format!(
                        "`{name}` has A {:?} and B {:?}; this model needs A [{}, {fan_in}] and B [{out}, {}]",
                        a.dims(),
                        b.dims(),
                        config.r,
                        config.r
                    )));
                }
                let b = reorder_rows(&b, t, model, Direction::FromHf)?;
                pairs.insert((layer, t), LoraPair { a, b });
            }
        }
        let expected = tensors.len() / 2;
        if pairs.len() != expected || tensors.len() % 2 != 0 {
            return Err(bad(format!(
                "holds {} tensors, of which {} pairs match this model's {} layers",
                tensors.len(),
                pairs.len(),
                model.layers
            )));
        }
        Ok(Self {
            config,
            base: peft.base_model_name_or_path.unwrap_or_default(),
            pairs,
        })
    }
}

/// The base model an adapter folder says it was trained on (PEFT's
/// `base_model_name_or_path`), if it says.
pub fn peft_base(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("adapter_config.json")).ok()?;
    let peft: PeftConfig = serde_json::from_str(&text).ok()?;
    peft.base_model_name_or_path.filter(|b| !b.is_empty())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    ToHf,
    FromHf,
}

/// llama.cpp stores llama-arch Q and K rows permuted for interleaved RoPE
/// (`(heads, 2, d/2) → (heads, d/2, 2)`); PEFT files use Hugging Face's order. `B`'s rows are
/// output features, so they move the same way.
pub(crate) fn reorder_rows(
    b: &Tensor,
    t: Target,
    model: &ModelConfig,
    dir: Direction,
) -> Result<Tensor> {
    let heads = match t {
        Target::Q => model.heads,
        Target::K => model.kv_heads,
        _ => return Ok(b.contiguous()?),
    };
    if model.rope != RopeStyle::Interleaved {
        return Ok(b.contiguous()?);
    }
    let (out, cols) = b.dims2()?;
    let half = model.head_dim() / 2;
    let split = match dir {
        Direction::FromHf => (heads, 2, half, cols),
        Direction::ToHf => (heads, half, 2, cols),
    };
    Ok(b.reshape(split)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, cols))?)
}

/// `adapter_config.json` as PEFT writes it (the fields lore reads and writes).
#[derive(Debug, Serialize, Deserialize)]
struct PeftConfig {
    peft_type: String,
    #[serde(default)]
    task_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f64,
    target_modules: serde_json::Value,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    #[serde(default = "none")]
    bias: String,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    inference_mode: bool,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    rank_pattern: HashMap<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: HashMap<String, serde_json::Value>,
}

fn none() -> String {
    "none".into()
}

impl PeftConfig {
    fn from_lora(c: &LoraConfig, base: &str) -> Self {
        Self {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            r: c.r,
            lora_alpha: c.alpha,
            lora_dropout: c.dropout,
            target_modules: serde_json::json!(
                c.targets.iter().map(|t| t.name()).collect::<Vec<_>>()
            ),
            base_model_name_or_path: Some(base.to_string()),
            bias: none(),
            fan_in_fan_out: false,
            use_rslora: c.rslora,
            use_dora: false,
            inference_mode: true,
            modules_to_save: None,
            layers_to_transform: None,
            rank_pattern: HashMap::new(),
            alpha_pattern: HashMap::new(),
        }
    }

    fn to_lora(&self, path: &Path) -> Result<LoraConfig> {
        let bad = |m: &str| Error::Request(format!("{}: {m}", path.display()));
        if self.peft_type != "LORA" {
            return Err(bad(&format!(
                "peft_type is `{}`; only LORA adapters are supported",
                self.peft_type
            )));
        }
        if self.use_dora {
            return Err(bad("DoRA adapters are not supported"));
        }
        if self.bias != "none" {
            return Err(bad("adapters that train biases are not supported"));
        }
        if self.fan_in_fan_out {
            return Err(bad(
                "fan_in_fan_out adapters (GPT-2 style) are not supported",
            ));
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(bad(
                "modules_to_save (fully trained layers) are not supported",
            ));
        }
        if !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty() {
            return Err(bad("per-module rank or alpha patterns are not supported"));
        }
        let names: Vec<String> = match &self.target_modules {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("target_modules must be strings"))
                })
                .collect::<Result<_>>()?,
            _ => return Err(bad("target_modules must be a list of module names")),
        };
        let config = LoraConfig {
            r: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: Target::parse_list(&names).map_err(|e| bad(&plain(e)))?,
            rslora: self.use_rslora,
        };
        config.check().map_err(|e| bad(&plain(e)))?;
        Ok(config)
    }
}

/// An error's message without its kind, to be wrapped with a place.
fn plain(e: Error) -> String {
    match e {
        Error::Request(m) => m,
        other => other.to_string(),
    }
}
