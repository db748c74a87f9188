//! The causal LM forward pass with a KV cache, for the llama and qwen2 families, over weights
//! held as GGML blocks. Weights come from a GGUF file or a Hugging Face safetensors folder
//! ([`crate::weights`]).

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::RmsNorm;

use crate::config::{ModelConfig, RopeStyle};
use crate::dequant::dequantize;
use crate::linear::{GEMM_ROWS, Projections, QLinear, WeightFormat};
use crate::weights::{GgufSource, Source};
use crate::{Error, Result};
use candle_core::quantized::gguf_file::Content;

#[derive(Debug)]
struct Block {
    attn_norm: RmsNorm,
    /// Q, K and V.
    qkv: Projections,
    o: QLinear,
    ffn_norm: RmsNorm,
    /// Gate and up.
    gate_up: Projections,
    down: QLinear,
    cache: Option<(Tensor, Tensor)>,
}

/// The model with its KV cache (one sequence at a time).
#[derive(Debug)]
pub struct CausalLm {
    pub config: ModelConfig,
    embeddings: Arc<QTensor>,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: QLinear,
    cos: Tensor,
    sin: Tensor,
    /// Row count from which matmuls expand weights to f32 ([`GEMM_ROWS`]); `usize::MAX`
    /// keeps every matmul on the block kernels, as candle-transformers' models do.
    pub gemm_rows: usize,
}

impl CausalLm {
    /// Builds the model from `source`, holding linear weights in `format`. A GGUF's embedding
    /// table (and a tied output head) keeps the file's blocks.
    pub fn load(
        config: ModelConfig,
        source: &mut dyn Source,
        format: WeightFormat,
    ) -> Result<Self> {
        let device = Device::Cpu;
        let vector = |t: QTensor| -> Result<Tensor> { dequantize(&t) };
        let mut embeddings = source.require("token_embd.weight")?;
        let float_target = match format {
            WeightFormat::Native => None,
            WeightFormat::Auto => Some(GgmlDType::Q4_0),
            WeightFormat::Blocks(dtype) => Some(dtype),
        };
        if let Some(dtype) = float_target {
            // A float table (safetensors) shrinks to blocks too; GGUF blocks stay as published.
            if embeddings.dtype().block_size() == 1 && embeddings.shape().dims2()?.1 % 32 == 0 {
                embeddings = QTensor::quantize(&dequantize(&embeddings)?, dtype)?;
            }
        }
        let embeddings = Arc::new(embeddings);
        let lm_head = match source.get("output.weight")? {
            Some(t) => QLinear::new(t, format, None)?,
            // Tied: the head is the embedding matrix, shared unless its blocks are converted
            // for a faster kernel (the head runs for every generated token).
            None => QLinear::from_arc(embeddings.clone(), format, None)?,
        };
        let mut blocks = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let mut linear = |name: &str, bias: bool| -> Result<QLinear> {
                let w = source.require(&format!("blk.{i}.{name}.weight"))?;
                let b = if bias {
                    Some(vector(source.require(&format!("blk.{i}.{name}.bias"))?)?)
                } else {
                    None
                };
                QLinear::new(w, format, b)
            };
            let qkv_bias = config.arch.qkv_bias();
            let (q, k, v) = (
                linear("attn_q", qkv_bias)?,
                linear("attn_k", qkv_bias)?,
                linear("attn_v", qkv_bias)?,
            );
            let o = linear("attn_output", false)?;
            let (gate, up, down) = (
                linear("ffn_gate", false)?,
                linear("ffn_up", false)?,
                linear("ffn_down", false)?,
            );
            let mut norm = |name: &str| -> Result<RmsNorm> {
                Ok(RmsNorm::new(
                    vector(source.require(&format!("blk.{i}.{name}.weight"))?)?,
                    config.rms_eps,
                ))
            };
            blocks.push(Block {
                attn_norm: norm("attn_norm")?,
                ffn_norm: norm("ffn_norm")?,
                qkv: Projections::new(vec![q, k, v])?,
                o,
                gate_up: Projections::new(vec![gate, up])?,
                down,
                cache: None,
            });
        }
        let norm = RmsNorm::new(
            vector(source.require("output_norm.weight")?)?,
            config.rms_eps,
        );
        let (cos, sin) = rope_tables(&config, &device)?;
        Ok(Self {
            config,
            embeddings,
            blocks,
            norm,
            lm_head,
            cos,
            sin,
            gemm_rows: GEMM_ROWS,
        })
    }

    /// Loads a llama- or qwen2-arch GGUF.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        content: &Content,
        reader: &mut R,
        format: WeightFormat,
    ) -> Result<Self> {
        let config = ModelConfig::from_gguf(content)?;
        Self::load(config, &mut GgufSource { content, reader }, format)
    }

    /// Bytes the weights take in memory.
    pub fn weight_bytes(&self) -> usize {
        let linear: usize = self
            .blocks
            .iter()
            .map(|b| {
                b.qkv.weight_bytes()
                    + b.o.weight_bytes()
                    + b.gate_up.weight_bytes()
                    + b.down.weight_bytes()
            })
            .sum();
        let head = if self.lm_head.shares(&self.embeddings) {
            0
        } else {
            self.lm_head.weight_bytes()
        };
        linear + self.embeddings.storage_size_in_bytes() + head
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
        if n == 0 {
            return Err(Error::Request("no tokens to run".into()));
        }
        if start + n > self.config.context {
            return Err(Error::Request(format!(
                "{} tokens exceed the model's context window of {}",
                start + n,
                self.config.context
            )));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= self.config.vocab) {
            return Err(Error::Request(format!(
                "token id {bad} is outside the vocabulary"
            )));
        }
        let c = &self.config;
        let (heads, kv_heads, head_dim) = (c.heads, c.kv_heads, c.head_dim());
        let device = Device::Cpu;
        let ids = Tensor::new(tokens, &device)?;
        let mut x = self.embeddings.embedding(&ids)?.to_dtype(DType::F32)?; // (n, hidden)
        let cos = self.cos.narrow(0, start, n)?;
        let sin = self.sin.narrow(0, start, n)?;
        let mask = (n > 1)
            .then(|| causal_mask(n, start, &device))
            .transpose()?;
        let rows = self.gemm_rows;
        let rope = |t: Tensor| -> Result<Tensor> {
            let t = t.unsqueeze(0)?;
            let r = match c.rope {
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&t, &cos, &sin)?,
                RopeStyle::Halves => candle_nn::rotary_emb::rope(&t, &cos, &sin)?,
            };
            Ok(r.squeeze(0)?)
        };
        for b in &mut self.blocks {
            let h = b.attn_norm.forward(&x)?;
            let split = |t: Tensor, count: usize| -> Result<Tensor> {
                Ok(t.reshape((n, count, head_dim))?
                    .transpose(0, 1)?
                    .contiguous()?)
            };
            let mut qkv = b.qkv.forward(&h, rows)?.into_iter();
            let (Some(q), Some(k), Some(v)) = (qkv.next(), qkv.next(), qkv.next()) else {
                return Err(Error::Request("Q/K/V projections are missing".into()));
            };
            let q = rope(split(q, heads)?)?;
            let k = rope(split(k, kv_heads)?)?;
            let v = split(v, kv_heads)?;
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
            x = (x + b.o.forward(&att, rows)?)?;
            let h = b.ffn_norm.forward(&x)?;
            let gate_up = b.gate_up.forward(&h, rows)?;
            let [gate, up] = gate_up.as_slice() else {
                return Err(Error::Request("gate/up projections are missing".into()));
            };
            let gated = (candle_nn::ops::silu(gate)? * up)?;
            x = (x + b.down.forward(&gated, rows)?)?;
        }
        // Only the last position's logits are needed: generation never looks back.
        let last = self.norm.forward(&x.narrow(0, n - 1, 1)?)?;
        Ok(self.lm_head.forward(&last, rows)?.squeeze(0)?)
    }
}

/// Causal mask over (n, start + n): query i may see keys ≤ start + i.
fn causal_mask(n: usize, start: usize, device: &Device) -> Result<Tensor> {
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
    Ok(Tensor::from_vec(m, (n, total), device)?)
}

/// cos and sin of every (position, frequency) pair up to the context length.
fn rope_tables(config: &ModelConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let head_dim = config.head_dim();
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / config.rope_base.powf(2.0 * i as f32 / head_dim as f32))
        .collect();
    let inv_freq = Tensor::new(inv_freq, device)?.reshape((1, half))?;
    let positions = Tensor::arange(0u32, config.context as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((config.context, 1))?;
    let angles = positions.matmul(&inv_freq)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// The largest absolute difference between two logit vectors (for comparisons with other
/// implementations).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Logits as a vector (for sampling and tests).
pub fn to_vec(logits: &Tensor) -> Result<Vec<f32>> {
    Ok(logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}
