//! The causal LM forward pass with a KV cache, for the llama and qwen2 families, over weights
//! held as GGML blocks. Weights come from a GGUF file or a Hugging Face safetensors folder
//! ([`crate::lm::weights`]).

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::lm::config::ModelConfig;
pub use crate::lm::decode::KvCache;
use crate::lm::decode::LayerKv;
use crate::lm::linear::{GEMM_ROWS, Projections, QLinear, WeightFormat};
use crate::lm::lora::{LoraRun, Target};
use crate::lm::weights::{GgufSource, Source};
use crate::ops::autograd::{Heads, attention_block, causal_softmax, rms_norm, rope, swiglu};
use crate::ops::dequant::dequantize;
use crate::{Error, Result};
use candle_core::quantized::gguf_file::Content;

#[derive(Debug)]
pub(crate) struct Block {
    pub(crate) attn_norm: Tensor,
    /// Q, K and V.
    pub(crate) qkv: Projections,
    pub(crate) o: QLinear,
    pub(crate) ffn_norm: Tensor,
    /// Gate and up.
    pub(crate) gate_up: Projections,
    pub(crate) down: QLinear,
}

/// The model: frozen weights shared by every sequence and adapter, plus a KV cache for
/// callers that run one sequence at a time ([`CausalLm::forward`]).
#[derive(Debug)]
pub struct CausalLm {
    pub config: ModelConfig,
    pub(crate) embeddings: Arc<QTensor>,
    pub(crate) blocks: Vec<Block>,
    pub(crate) norm: Tensor,
    pub(crate) lm_head: QLinear,
    /// The output head is the embedding matrix (no `output.weight` in the file).
    pub(crate) tied: bool,
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    /// Row count from which matmuls expand weights to f32 ([`GEMM_ROWS`]); `usize::MAX`
    /// keeps every matmul on the block kernels, as candle-transformers' models do.
    pub gemm_rows: usize,
    cache: KvCache,
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
        let output = source.get("output.weight")?;
        let tied = output.is_none();
        let lm_head = match output {
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
            let mut norm = |name: &str| -> Result<Tensor> {
                vector(source.require(&format!("blk.{i}.{name}.weight"))?)
            };
            blocks.push(Block {
                attn_norm: norm("attn_norm")?,
                ffn_norm: norm("ffn_norm")?,
                qkv: Projections::new(vec![q, k, v])?,
                o,
                gate_up: Projections::new(vec![gate, up])?,
                down,
            });
        }
        let norm = vector(source.require("output_norm.weight")?)?;
        let (cos, sin) = rope_tables(&config, &device)?;
        Ok(Self {
            config,
            embeddings,
            blocks,
            norm,
            lm_head,
            tied,
            cos,
            sin,
            gemm_rows: GEMM_ROWS,
            cache: KvCache::default(),
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
        self.cache = KvCache::default();
    }

    /// Runs `tokens` at positions `start..` with the model's own cache and no adapter;
    /// returns the logits of the last token.
    pub fn forward(&mut self, tokens: &[u32], start: usize) -> Result<Tensor> {
        let mut cache = std::mem::take(&mut self.cache);
        let out = self.forward_with(tokens, start, &mut cache, None);
        self.cache = cache;
        out
    }

    /// Runs `tokens` of one sequence at positions `start..`, extending `cache`, with an
    /// optional adapter; returns the logits of the last token.
    pub fn forward_with(
        &self,
        tokens: &[u32],
        start: usize,
        cache: &mut KvCache,
        lora: Option<&LoraRun>,
    ) -> Result<Tensor> {
        let n = tokens.len();
        self.check_tokens(tokens, start)?;
        if start == 0 {
            *cache = KvCache::default();
        }
        if let [token] = tokens {
            return self.decode_step(*token, start, cache, lora);
        }
        let ids = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        let x = self.hidden(&ids, start, Some(cache), lora)?;
        // Only the last position's logits are needed: generation never looks back.
        let last = self.final_norm(&x.narrow(1, n - 1, 1)?.squeeze(0)?)?;
        Ok(self.lm_head.forward(&last, self.gemm_rows)?.squeeze(0)?)
    }

    /// Logits at every position of one sequence, `(n, vocab)` (for scoring text).
    pub fn logits(&self, tokens: &[u32], lora: Option<&LoraRun>) -> Result<Tensor> {
        self.check_tokens(tokens, 0)?;
        let ids = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        let x = self.hidden(&ids, 0, None, lora)?.squeeze(0)?;
        self.lm_head.forward(&self.final_norm(&x)?, self.gemm_rows)
    }

    /// Log-probabilities of each token given those before it (`tokens.len() - 1` values), and
    /// the last position's logits.
    pub fn score(&self, tokens: &[u32], lora: Option<&LoraRun>) -> Result<(Vec<f32>, Vec<f32>)> {
        if tokens.len() < 2 {
            return Err(Error::Request("scoring needs at least two tokens".into()));
        }
        let logits = self.logits(tokens, lora)?;
        let logp: Vec<Vec<f32>> =
            candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?.to_vec2()?;
        let scores = (1..tokens.len())
            .map(|i| logp[i - 1][tokens[i] as usize])
            .collect();
        Ok((scores, logits.get(tokens.len() - 1)?.to_vec1()?))
    }

    /// Mean cross-entropy over the batch's trained tokens, differentiable with respect to the
    /// adapter's variables; and the number of tokens it averages.
    pub fn loss(&self, batch: &TokenBatch, lora: Option<&LoraRun>) -> Result<(Tensor, usize)> {
        let (ids, rows, targets) = batch.to_tensors(self.config.vocab, self.config.context)?;
        let count = targets.len();
        let width = ids.dim(1)?;
        let x = self.hidden(&ids, 0, None, lora)?;
        let x = x.reshape((ids.dim(0)? * width, self.config.hidden))?;
        // The output head (the largest matmul) runs only where a token is predicted.
        let x = x.index_select(&rows, 0)?;
        let loss = self
            .lm_head
            .cross_entropy(&self.final_norm(&x)?, &targets)?;
        Ok((loss, count))
    }

    fn check_tokens(&self, tokens: &[u32], start: usize) -> Result<()> {
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
        Ok(())
    }

    fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        rms_norm(x, &self.norm, self.config.rms_eps as f32)
    }

    /// The last layer's output `(b, t, hidden)` for token ids `(b, t)` at positions
    /// `start..start + t`. With a cache (one sequence), keys and values are appended to it.
    fn hidden(
        &self,
        ids: &Tensor,
        start: usize,
        mut cache: Option<&mut KvCache>,
        lora: Option<&LoraRun>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (batch, n) = ids.dims2()?;
        let heads = Heads {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim(),
        };
        let mut x = self
            .embeddings
            .embedding(&ids.flatten_all()?)?
            .to_dtype(DType::F32)?
            .reshape((batch, n, c.hidden))?;
        let cos = self.cos.narrow(0, start, n)?;
        let sin = self.sin.narrow(0, start, n)?;
        let rows = self.gemm_rows;
        let eps = c.rms_eps as f32;
        if let Some(cache) = cache.as_deref_mut() {
            cache.layers.resize(self.blocks.len(), LayerKv::default());
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let h = rms_norm(&x, &b.attn_norm, eps)?;
            let qkv = match lora {
                Some(l) => {
                    l.projections_joined(i, &[Target::Q, Target::K, Target::V], &b.qkv, &h, rows)?
                }
                None => b.qkv.forward_joined(&h, rows)?,
            };
            let att = match cache.as_deref_mut() {
                None if qkv.track_op() => attention_block(&qkv, heads, &cos, &sin, c.rope)?,
                cache => self.attend(&qkv, i, start, cache, &cos, &sin)?,
            };
            let o = match lora {
                Some(l) => l.linear(i, Target::O, &b.o, &att, rows)?,
                None => b.o.forward(&att, rows)?,
            };
            x = (x + o)?;
            let h = rms_norm(&x, &b.ffn_norm, eps)?;
            let gate_up = match lora {
                Some(l) => {
                    l.projections_joined(i, &[Target::Gate, Target::Up], &b.gate_up, &h, rows)?
                }
                None => b.gate_up.forward_joined(&h, rows)?,
            };
            let gated = swiglu(&gate_up)?;
            let down = match lora {
                Some(l) => l.linear(i, Target::Down, &b.down, &gated, rows)?,
                None => b.down.forward(&gated, rows)?,
            };
            x = (x + down)?;
        }
        Ok(x)
    }
}

impl CausalLm {
    /// Attention for generation and evaluation: no graph is kept, so the plain ops run, and
    /// keys and values are appended to the cache when there is one.
    fn attend(
        &self,
        qkv: &Tensor,
        layer: usize,
        start: usize,
        cache: Option<&mut KvCache>,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (heads, kv_heads, head_dim) = (c.heads, c.kv_heads, c.head_dim());
        let (batch, n, _) = qkv.dims3()?;
        let part = |first: usize, count: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, first * head_dim, count * head_dim)?
                .reshape((batch, n, count, head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = rope(&part(0, heads)?, cos, sin, c.rope)?;
        let k = rope(&part(heads, kv_heads)?, cos, sin, c.rope)?;
        let v = part(heads + kv_heads, kv_heads)?;
        let (k, v) = match cache {
            Some(cache) => {
                let layer = &mut cache.layers[layer];
                if layer.len() != start {
                    return Err(Error::Request(format!(
                        "the KV cache holds {} tokens but the new ones start at position {start}",
                        layer.len()
                    )));
                }
                let (kv, limit) = ((kv_heads, head_dim), c.context);
                let k_rows: Vec<f32> = k.flatten_all()?.to_vec1()?;
                let v_rows: Vec<f32> = v.flatten_all()?.to_vec1()?;
                layer.append(&k_rows, &v_rows, n, kv, limit);
                if start == 0 {
                    (k, v)
                } else {
                    layer.tensors(kv_heads, head_dim)?
                }
            }
            None => (k, v),
        };
        // Grouped-query attention: each kv head serves heads / kv_heads query heads.
        let q = q.reshape((batch, kv_heads, heads / kv_heads * n, head_dim))?;
        let scores = q.matmul(&k.t()?)?; // (b, kv, group*n, total)
        let scale = 1.0 / (head_dim as f64).sqrt();
        let att = causal_softmax(&scores, n, start, scale)?.matmul(&v)?; // (b, kv, group*n, hd)
        Ok(att
            .reshape((batch, heads, n, head_dim))?
            .transpose(1, 2)?
            .reshape((batch, n, heads * head_dim))?)
    }
}

/// Sequences for a training step: each token list with a flag per token saying whether the
/// model is trained to predict it (the assistant's tokens), padded on the right in
/// [`TokenBatch::to_tensors`].
#[derive(Debug, Clone, Default)]
pub struct TokenBatch {
    pub sequences: Vec<(Vec<u32>, Vec<bool>)>,
}

impl TokenBatch {
    /// Tokens fed to the model (padding excluded).
    pub fn input_tokens(&self) -> usize {
        self.sequences.iter().map(|(t, _)| t.len()).sum()
    }

    /// Tokens the loss is taken over.
    pub fn trained_tokens(&self) -> usize {
        self.sequences
            .iter()
            .map(|(_, m)| m.iter().skip(1).filter(|&&t| t).count())
            .sum()
    }

    /// Padded ids `(b, width)`, the flat rows whose output predicts a trained token, and
    /// those tokens.
    fn to_tensors(&self, vocab: usize, context: usize) -> Result<(Tensor, Tensor, Vec<u32>)> {
        let width = self
            .sequences
            .iter()
            .map(|(t, _)| t.len())
            .max()
            .unwrap_or(0);
        if width == 0 {
            return Err(Error::Request("an empty training batch".into()));
        }
        if width > context {
            return Err(Error::Request(format!(
                "a sequence of {width} tokens exceeds the context window of {context}"
            )));
        }
        let mut ids = Vec::with_capacity(self.sequences.len() * width);
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        for (s, (tokens, trained)) in self.sequences.iter().enumerate() {
            if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::Request(format!(
                    "token id {bad} is outside the vocabulary"
                )));
            }
            ids.extend_from_slice(tokens);
            // Right padding: causal attention never lets a real token see the pads.
            ids.extend(std::iter::repeat_n(0, width - tokens.len()));
            for (p, (&token, &train)) in tokens.iter().zip(trained).enumerate().skip(1) {
                if train {
                    rows.push((s * width + p - 1) as u32);
                    targets.push(token);
                }
            }
        }
        if rows.is_empty() {
            return Err(Error::Request("the batch has no trained tokens".into()));
        }
        let device = Device::Cpu;
        Ok((
            Tensor::from_vec(ids, (self.sequences.len(), width), &device)?,
            Tensor::new(rows, &device)?,
            targets,
        ))
    }
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
