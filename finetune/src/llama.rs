//! A llama-family causal LM (SmolLM2 and kin) over GGUF weights held in 4/8-bit blocks, with a
//! KV cache. Linear layers are [`QLinear`] so LoRA adapters can be attached to them (issue 5).
//!
//! llama.cpp stores Q and K rows permuted for llama-arch GGUFs; rather than undo it, attention
//! uses the interleaved RoPE variant, which is what the permutation encodes.

pub use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::RmsNorm;

use crate::{Error, Result};

/// Hyper-parameters read from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub rope_base: f32,
    pub rms_eps: f64,
    pub context: usize,
}

impl LlamaConfig {
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "llama" {
            return Err(Error::Metadata(format!(
                "architecture `{arch}` is not supported here (llama is)"
            )));
        }
        let get = |key: &str| {
            content
                .metadata
                .get(&format!("llama.{key}"))
                .ok_or_else(|| Error::Metadata(format!("no `llama.{key}`")))
        };
        let int = |key: &str| -> Result<usize> {
            get(key)?
                .to_u32()
                .map(|v| v as usize)
                .map_err(|e| Error::Metadata(format!("`llama.{key}`: {e}")))
        };
        let float = |key: &str| -> Result<f32> {
            get(key)?
                .to_f32()
                .map_err(|e| Error::Metadata(format!("`llama.{key}`: {e}")))
        };
        Ok(Self {
            layers: int("block_count")?,
            hidden: int("embedding_length")?,
            ffn: int("feed_forward_length")?,
            heads: int("attention.head_count")?,
            kv_heads: int("attention.head_count_kv")?,
            rope_base: float("rope.freq_base").unwrap_or(10_000.0),
            rms_eps: f64::from(float("attention.layer_norm_rms_epsilon")?),
            context: int("context_length")?,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// How base weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// As stored in the file.
    Native,
    /// Re-quantized to this block type at load.
    Requantize(GgmlDType),
}

/// A frozen linear layer over block-quantized weights.
#[derive(Debug)]
pub struct QLinear {
    weight: QMatMul,
}

impl QLinear {
    fn load(tensor: QTensor, format: WeightFormat, device: &Device) -> Result<Self> {
        let tensor = match format {
            WeightFormat::Requantize(dtype) if tensor.dtype() != dtype => {
                QTensor::quantize(&tensor.dequantize(device)?, dtype)?
            }
            _ => tensor,
        };
        Ok(Self {
            weight: QMatMul::from_qtensor(tensor)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.weight.forward(x)?)
    }
}

#[derive(Debug)]
struct Block {
    attn_norm: RmsNorm,
    q: QLinear,
    k: QLinear,
    v: QLinear,
    o: QLinear,
    ffn_norm: RmsNorm,
    gate: QLinear,
    up: QLinear,
    down: QLinear,
    cache: Option<(Tensor, Tensor)>,
}

/// The model with its KV cache (one sequence at a time).
#[derive(Debug)]
pub struct Llama {
    pub config: LlamaConfig,
    embeddings: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: QLinear,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

impl Llama {
    /// Loads a llama-arch GGUF, holding linear weights in `format`.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        content: &Content,
        reader: &mut R,
        format: WeightFormat,
    ) -> Result<Self> {
        let device = Device::Cpu;
        let config = LlamaConfig::from_gguf(content)?;
        let mut tensor =
            |name: &str| -> Result<QTensor> { Ok(content.tensor(reader, name, &device)?) };
        let norm = |t: QTensor, eps: f64| -> Result<RmsNorm> {
            Ok(RmsNorm::new(t.dequantize(&device)?, eps))
        };
        let token_embd = tensor("token_embd.weight")?;
        let embeddings = token_embd.dequantize(&device)?;
        let lm_head = match tensor("output.weight") {
            Ok(t) => QLinear::load(t, WeightFormat::Native, &device)?,
            // Tied: the head is the embedding matrix.
            Err(_) => QLinear::load(token_embd, WeightFormat::Native, &device)?,
        };
        let mut blocks = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let mut linear = |name: &str| -> Result<QLinear> {
                QLinear::load(tensor(&format!("blk.{i}.{name}.weight"))?, format, &device)
            };
            let (q, k, v, o) = (
                linear("attn_q")?,
                linear("attn_k")?,
                linear("attn_v")?,
                linear("attn_output")?,
            );
            let (gate, up, down) = (linear("ffn_gate")?, linear("ffn_up")?, linear("ffn_down")?);
            blocks.push(Block {
                attn_norm: norm(
                    tensor(&format!("blk.{i}.attn_norm.weight"))?,
                    config.rms_eps,
                )?,
                q,
                k,
                v,
                o,
                ffn_norm: norm(tensor(&format!("blk.{i}.ffn_norm.weight"))?, config.rms_eps)?,
                gate,
                up,
                down,
                cache: None,
            });
        }
        let norm = norm(tensor("output_norm.weight")?, config.rms_eps)?;
        let half = config.head_dim() / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                1.0 / config
                    .rope_base
                    .powf(2.0 * i as f32 / config.head_dim() as f32)
            })
            .collect();
        let inv_freq = Tensor::new(inv_freq, &device)?.reshape((1, half))?;
        let positions = Tensor::arange(0u32, config.context as u32, &device)?
            .to_dtype(DType::F32)?
            .reshape((config.context, 1))?;
        let angles = positions.matmul(&inv_freq)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
            config,
            embeddings,
            blocks,
            norm,
            lm_head,
            device,
        })
    }

    /// Forgets the KV cache (a new sequence).
    pub fn reset(&mut self) {
        for b in &mut self.blocks {
            b.cache = None;
        }
    }

    /// Runs `tokens` at positions `start..`, extending the cache; returns the logits of the
    /// last token.
    pub fn forward(&mut self, tokens: &[u32], start: usize) -> Result<Tensor> {
        let n = tokens.len();
        if start + n > self.config.context {
            return Err(Error::Metadata(format!(
                "{} tokens exceed the model's context of {}",
                start + n,
                self.config.context
            )));
        }
        let c = &self.config;
        let (heads, kv_heads, head_dim) = (c.heads, c.kv_heads, c.head_dim());
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embeddings.index_select(&ids, 0)?; // (n, hidden)
        let cos = self.cos.narrow(0, start, n)?;
        let sin = self.sin.narrow(0, start, n)?;
        let mask = if n > 1 {
            // Causal mask over (n, start + n): query i may see keys ≤ start + i.
            let total = start + n;
            let m: Vec<f32> = (0..n)
                .flat_map(|i| {
                    (0..total).map(move |j| {
                        if j > start + i {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            Some(Tensor::from_vec(m, (n, total), &self.device)?)
        } else {
            None
        };
        for b in &mut self.blocks {
            let h = b.attn_norm.forward(&x)?;
            let q =
                b.q.forward(&h)?
                    .reshape((n, heads, head_dim))?
                    .transpose(0, 1)?
                    .contiguous()?;
            let k =
                b.k.forward(&h)?
                    .reshape((n, kv_heads, head_dim))?
                    .transpose(0, 1)?
                    .contiguous()?;
            let v =
                b.v.forward(&h)?
                    .reshape((n, kv_heads, head_dim))?
                    .transpose(0, 1)?
                    .contiguous()?;
            let q = candle_nn::rotary_emb::rope_i(&q.unsqueeze(0)?, &cos, &sin)?.squeeze(0)?;
            let k = candle_nn::rotary_emb::rope_i(&k.unsqueeze(0)?, &cos, &sin)?.squeeze(0)?;
            let (k, v) = match &b.cache {
                Some((kc, vc)) if start > 0 => {
                    (Tensor::cat(&[kc, &k], 1)?, Tensor::cat(&[vc, &v], 1)?)
                }
                _ => (k, v),
            };
            b.cache = Some((k.clone(), v.clone()));
            // Grouped-query attention: each kv head serves heads / kv_heads query heads.
            let group = heads / kv_heads;
            let q = q.reshape((kv_heads, group * n, head_dim))?;
            let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?; // (kv, group*n, total)
            let scores = match &mask {
                Some(m) => {
                    let total = m.dim(1)?;
                    scores
                        .reshape((kv_heads, group, n, total))?
                        .broadcast_add(m)?
                        .reshape((kv_heads, group * n, total))?
                }
                None => scores,
            };
            let att = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?; // (kv, group*n, hd)
            let att = att
                .reshape((heads, n, head_dim))?
                .transpose(0, 1)?
                .reshape((n, heads * head_dim))?;
            x = (x + b.o.forward(&att)?)?;
            let h = b.ffn_norm.forward(&x)?;
            let gated = (candle_nn::ops::silu(&b.gate.forward(&h)?)? * b.up.forward(&h)?)?;
            x = (x + b.down.forward(&gated)?)?;
        }
        let last = self.norm.forward(&x.narrow(0, n - 1, 1)?)?;
        Ok(self.lm_head.forward(&last)?.squeeze(0)?)
    }
}

/// Logits as a vector (for sampling and tests).
pub fn to_vec(logits: &Tensor) -> Result<Vec<f32>> {
    Ok(logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}
