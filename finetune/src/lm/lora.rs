//! LoRA adapters: low-rank updates `W + (α/r)·B·A` on a frozen base, stored in Hugging Face
//! PEFT's layout so adapters move freely between lore and PEFT.
//!
//! An [`Adapter`] is separate from the model it adapts: the base is loaded once and any number
//! of adapters ride on it, chosen per forward pass.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::lm::config::ModelConfig;
use crate::lm::linear::{Projections, QLinear};
use crate::ops::autograd::DropoutSeed;
use crate::ops::rng::SplitMix64;
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
    pub(crate) pairs: HashMap<(usize, Target), LoraPair>,
}

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

    pub(crate) fn sorted(&self) -> Vec<((usize, Target), &LoraPair)> {
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
}

const PEFT_PREFIX: &str = "base_model.model.model.layers";

/// PEFT's module path for one projection.
pub fn peft_name(layer: usize, t: Target) -> String {
    format!("{PEFT_PREFIX}.{layer}.{}.{}", t.parent(), t.name())
}

/// Runs projections with an adapter's updates. At inference the update is added to the
/// frozen layer's output; in training each projection (or fused group) is one
/// [`crate::ops::autograd::lora_linear`] op with seeded dropout on its input.
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
