//! LoRA adapters: low-rank updates `W + (α/r)·B·A` on a frozen base, stored in Hugging Face
//! PEFT's layout so adapters move freely between lore and PEFT.
//!
//! An [`Adapter`] is separate from the model it adapts: the base is loaded once and any number
//! of adapters ride on it, chosen per forward pass.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::autograd::DropoutSeed;
use crate::config::{ModelConfig, RopeStyle};
use crate::linear::{Projections, QLinear};
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// A projection LoRA can adapt, by its Hugging Face module name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Target {
    #[serde(rename = "q_proj")]
    Q,
    #[serde(rename = "k_proj")]
    K,
    #[serde(rename = "v_proj")]
    V,
    #[serde(rename = "o_proj")]
    O,
    #[serde(rename = "gate_proj")]
    Gate,
    #[serde(rename = "up_proj")]
    Up,
    #[serde(rename = "down_proj")]
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The submodule holding it in Hugging Face's llama/qwen2 layout.
    fn parent(self) -> &'static str {
        match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            Target::Gate | Target::Up | Target::Down => "mlp",
        }
    }

    /// Parses a module name, or several: `all-linear` (PEFT's shorthand) names all seven.
    pub fn parse_list(names: &[String]) -> Result<Vec<Target>> {
        let mut out = Vec::new();
        for raw in names.iter().flat_map(|n| n.split(',')) {
            let name = raw.trim();
            if name.is_empty() {
                continue;
            }
            if name == "all-linear" || name == "all" {
                out.extend(Target::ALL);
                continue;
            }
            let found = Target::ALL
                .iter()
                .find(|t| t.name() == name)
                .ok_or_else(|| {
                    Error::Request(format!(
                        "the model has no module `{name}` to adapt; it has {} (or all-linear)",
                        Target::ALL.map(Target::name).join(", ")
                    ))
                })?;
            out.push(*found);
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err(Error::Request("no target modules given".into()));
        }
        Ok(out)
    }

    /// (in, out) features of this projection.
    pub fn shape(self, c: &ModelConfig) -> (usize, usize) {
        let hd = c.head_dim();
        match self {
            Target::Q => (c.hidden, c.heads * hd),
            Target::K | Target::V => (c.hidden, c.kv_heads * hd),
            Target::O => (c.heads * hd, c.hidden),
            Target::Gate | Target::Up => (c.hidden, c.ffn),
            Target::Down => (c.ffn, c.hidden),
        }
    }
}

/// LoRA hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<Target>,
    /// rsLoRA scaling (`α/√r`), as PEFT's `use_rslora`.
    pub rslora: bool,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    pub fn check(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::Request("LoRA rank must be at least 1".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::Request(
                "LoRA alpha must be a positive number".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Request(
                "LoRA dropout must be in [0, 1) (a probability)".into(),
            ));
        }
        if self.targets.is_empty() {
            return Err(Error::Request("no target modules given".into()));
        }
        Ok(())
    }
}

/// One adapted projection: `A` (r, in) and `B` (out, r), rows of `B` in the model's own order.
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
}

/// A set of LoRA matrices for one base model.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub config: LoraConfig,
    /// What the adapter was trained on (PEFT's `base_model_name_or_path`).
    pub base: String,
    pairs: HashMap<(usize, Target), LoraPair>,
}

const PEFT_PREFIX: &str = "base_model.model.model.layers";

impl Adapter {
    /// A fresh adapter as PEFT initialises one: `A` Kaiming-uniform (bound `1/√in`), `B` zero,
    /// so training starts from the base model exactly.
    pub fn init(model: &ModelConfig, config: LoraConfig, base: String, seed: u64) -> Result<Self> {
        config.check()?;
        let mut rng = SplitMix64::new(seed);
        let mut pairs = HashMap::new();
        for layer in 0..model.layers {
            for &t in &config.targets {
                let (fan_in, out) = t.shape(model);
                let bound = 1.0 / (fan_in as f64).sqrt();
                let a: Vec<f32> = (0..config.r * fan_in)
                    .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                    .collect();
                let a = Tensor::from_vec(a, (config.r, fan_in), &Device::Cpu)?;
                let b = Tensor::zeros((out, config.r), DType::F32, &Device::Cpu)?;
                pairs.insert((layer, t), LoraPair { a, b });
            }
        }
        Ok(Self {
            config,
            base,
            pairs,
        })
    }

    pub fn get(&self, layer: usize, target: Target) -> Option<&LoraPair> {
        self.pairs.get(&(layer, target))
    }

    /// The adapter's matrices as trainable variables (in a fixed order), with an adapter whose
    /// tensors are those variables.
    pub fn to_vars(&self) -> Result<(Self, Vec<(String, Var)>)> {
        let mut vars = Vec::new();
        let mut pairs = HashMap::new();
        for (key, pair) in self.sorted() {
            let a = Var::from_tensor(&pair.a)?;
            let b = Var::from_tensor(&pair.b)?;
            let name = peft_name(key.0, key.1);
            pairs.insert(
                key,
                LoraPair {
                    a: a.as_tensor().clone(),
                    b: b.as_tensor().clone(),
                },
            );
            vars.push((format!("{name}.lora_A.weight"), a));
            vars.push((format!("{name}.lora_B.weight"), b));
        }
        let adapter = Self {
            config: self.config.clone(),
            base: self.base.clone(),
            pairs,
        };
        Ok((adapter, vars))
    }

    /// A copy detached from any training graph (for generation).
    pub fn detached(&self) -> Self {
        let pairs = self
            .pairs
            .iter()
            .map(|(k, p)| {
                (
                    *k,
                    LoraPair {
                        a: p.a.detach(),
                        b: p.b.detach(),
                    },
                )
            })
            .collect();
        Self {
            config: self.config.clone(),
            base: self.base.clone(),
            pairs,
        }
    }

    /// A deep copy, unaffected by later training updates.
    pub fn snapshot(&self) -> Result<Self> {
        let mut pairs = HashMap::new();
        for (k, p) in &self.pairs {
            let pair = LoraPair {
                a: p.a.detach().copy()?,
                b: p.b.detach().copy()?,
            };
            pairs.insert(*k, pair);
        }
        Ok(Self {
            config: self.config.clone(),
            base: self.base.clone(),
            pairs,
        })
    }

    fn sorted(&self) -> Vec<((usize, Target), &LoraPair)> {
        let mut all: Vec<_> = self.pairs.iter().map(|(k, p)| (*k, p)).collect();
        all.sort_by_key(|(k, _)| *k);
        all
    }

    /// `B·A·scale` for one projection, in the model's row order (for merging).
    pub fn delta_weight(&self, layer: usize, target: Target) -> Result<Option<Tensor>> {
        let Some(p) = self.get(layer, target) else {
            return Ok(None);
        };
        Ok(Some((p.b.matmul(&p.a)? * self.config.scale())?))
    }

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

/// PEFT's module path for one projection.
pub fn peft_name(layer: usize, t: Target) -> String {
    format!("{PEFT_PREFIX}.{layer}.{}.{}", t.parent(), t.name())
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

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Request(format!("{}: {e}", path.display()))
}

/// Writes `path` by writing a temporary file beside it, flushing it to disk and renaming it
/// into place, then flushing the folder, so a crash or power loss leaves either the old file
/// or the whole new one (a rename alone may reach the disk before the data it names).
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    write(&tmp)?;
    sync_path(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
    sync_parent(path)
}

/// Flushes a file's (or, on Unix, a folder's) contents to disk.
pub(crate) fn sync_path(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(path, e))
}

/// Flushes the folder holding `path`, so a rename or a new entry in it is on disk. Only Unix
/// can open a folder to flush it; elsewhere this does nothing.
pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if cfg!(unix) => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            sync_path(dir)
        }
        _ => Ok(()),
    }
}

/// Runs projections with an adapter's updates. At inference the update is added to the
/// frozen layer's output; in training each projection (or fused group) is one
/// [`lora_linear`] op with seeded dropout on its input.
#[derive(Debug)]
pub struct LoraRun<'a> {
    pub adapter: &'a Adapter,
    /// Seeded dropout while training; `None` at inference.
    training: Option<Training>,
}

#[derive(Debug, Clone, Copy)]
struct Training {
    rate: f64,
    seed: u64,
}

impl<'a> LoraRun<'a> {
    pub fn inference(adapter: &'a Adapter) -> Self {
        Self {
            adapter,
            training: None,
        }
    }

    /// Training mode, with dropout at the adapter's rate; masks are drawn from `seed`, the
    /// layer and the projection, so a step is reproducible from its seed alone (and the
    /// backward pass regenerates them).
    pub fn training(adapter: &'a Adapter, seed: u64) -> Self {
        Self {
            adapter,
            training: Some(Training {
                rate: adapter.config.dropout,
                seed,
            }),
        }
    }

    fn dropout(&self, layer: usize, first: Target) -> Option<DropoutSeed> {
        let t = self.training?;
        (t.rate > 0.0).then(|| DropoutSeed {
            rate: t.rate,
            seed: SplitMix64::derive(t.seed, (layer * 16 + first as usize) as u64).next_u64(),
        })
    }

    /// One projection's output with its update.
    pub fn linear(
        &self,
        layer: usize,
        target: Target,
        lin: &QLinear,
        x: &Tensor,
        rows: usize,
    ) -> Result<Tensor> {
        let Some(pair) = self.adapter.get(layer, target) else {
            return lin.forward(x, rows);
        };
        if self.training.is_some() {
            let scale = self.adapter.config.scale();
            return lin.forward_lora(x, &pair.a, &pair.b, scale, self.dropout(layer, target));
        }
        let mut out = [lin.forward(x, rows)?];
        self.add_updates(layer, &[target], x, &mut out)?;
        let [y] = out;
        Ok(y)
    }

    /// The outputs of projections reading the same input (Q/K/V, gate/up), in `targets`
    /// order, with their updates.
    pub fn projections(
        &self,
        layer: usize,
        targets: &[Target],
        proj: &Projections,
        x: &Tensor,
        rows: usize,
    ) -> Result<Vec<Tensor>> {
        if self.training.is_none() {
            let mut out = proj.forward(x, rows)?;
            self.add_updates(layer, targets, x, &mut out)?;
            return Ok(out);
        }
        match proj {
            Projections::Separate(parts) => parts
                .iter()
                .zip(targets)
                .map(|(p, &t)| self.linear(layer, t, p, x, rows))
                .collect(),
            Projections::Fused { sizes, .. } => Projections::split(
                &self.projections_joined(layer, targets, proj, x, rows)?,
                sizes,
            ),
        }
    }

    /// As [`LoraRun::projections`], the outputs joined along the last dimension (a fused
    /// layer's output as it comes).
    pub fn projections_joined(
        &self,
        layer: usize,
        targets: &[Target],
        proj: &Projections,
        x: &Tensor,
        rows: usize,
    ) -> Result<Tensor> {
        if let (Some(_), Projections::Fused { layer: lin, sizes }) = (self.training, proj) {
            return Ok(match self.stacked(layer, targets, sizes)? {
                Some((a, b)) => lin.forward_lora(
                    x,
                    &a,
                    &b,
                    self.adapter.config.scale(),
                    self.dropout(layer, targets[0]),
                )?,
                None => lin.forward(x, rows)?,
            });
        }
        let parts = self.projections(layer, targets, proj, x, rows)?;
        Ok(Tensor::cat(&parts, parts[0].rank() - 1)?)
    }

    /// The A matrices of `targets` stacked (R, in) and their B matrices as one block-diagonal
    /// (Σ out, R): `x·[A]ᵀ·[B]ᵀ` is then every part's update side by side.
    fn stacked(
        &self,
        layer: usize,
        targets: &[Target],
        sizes: &[usize],
    ) -> Result<Option<(Tensor, Tensor)>> {
        let pairs: Vec<Option<&LoraPair>> = targets
            .iter()
            .map(|&t| self.adapter.get(layer, t))
            .collect();
        let ranks: Vec<usize> = pairs
            .iter()
            .map(|p| p.map_or(0, |p| p.a.dim(0).unwrap_or(0)))
            .collect();
        let total: usize = ranks.iter().sum();
        if total == 0 {
            return Ok(None);
        }
        let a = Tensor::cat(&pairs.iter().flatten().map(|p| &p.a).collect::<Vec<_>>(), 0)?;
        let mut blocks = Vec::with_capacity(pairs.len());
        let mut before = 0;
        for ((pair, &rank), &out) in pairs.iter().zip(&ranks).zip(sizes) {
            let zeros = |cols: usize| Tensor::zeros((out, cols), DType::F32, &Device::Cpu);
            let row = match pair {
                Some(p) => {
                    let mut parts = Vec::new();
                    if before > 0 {
                        parts.push(zeros(before)?);
                    }
                    parts.push(p.b.clone());
                    if total - before - rank > 0 {
                        parts.push(zeros(total - before - rank)?);
                    }
                    Tensor::cat(&parts, 1)?
                }
                None => zeros(total)?,
            };
            blocks.push(row);
            before += rank;
        }
        Ok(Some((a, Tensor::cat(&blocks, 0)?)))
    }

    /// `outputs[i] += scale · x·Aᵢᵀ·Bᵢᵀ` for each adapted target (inference).
    fn add_updates(
        &self,
        layer: usize,
        targets: &[Target],
        x: &Tensor,
        outputs: &mut [Tensor],
    ) -> Result<()> {
        let scale = self.adapter.config.scale();
        for (i, &t) in targets.iter().enumerate() {
            if let Some(p) = self.adapter.get(layer, t) {
                // Scaled at rank r, where the tensor is smallest.
                let low = (x.broadcast_matmul(&p.a.t()?)? * scale)?;
                outputs[i] = (&outputs[i] + low.broadcast_matmul(&p.b.t()?)?)?;
            }
        }
        Ok(())
    }
}

/// Inverted dropout: each element kept with probability `1 − rate` and scaled by `1/(1 − rate)`.
pub(crate) fn dropout_mask(shape: &[usize], rate: f64, seed: u64) -> Result<Tensor> {
    use rayon::prelude::*;
    let n: usize = shape.iter().product();
    let keep = (1.0 / (1.0 - rate)) as f32;
    let threshold = (rate * (1u64 << 53) as f64) as u64;
    const CHUNK: usize = 1 << 14;
    let mut mask = vec![0f32; n];
    // Chunks draw from their own streams so the mask does not depend on the thread count.
    mask.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        let mut rng = SplitMix64::new(seed ^ (c as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        for v in out {
            *v = if rng.next_u64() >> 11 >= threshold {
                keep
            } else {
                0.0
            };
        }
    });
    Ok(Tensor::from_vec(mask, shape, &Device::Cpu)?)
}
