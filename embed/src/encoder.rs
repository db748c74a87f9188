//! lore's own BERT encoder forward pass, for throughput on CPUs.
//!
//! candle-transformers' `BertModel` pads every batch to its longest text, masks, and runs
//! GELU and softmax as single-threaded element maps. Profiling `lore embed` showed a third of
//! the time outside matrix multiplies. This encoder instead:
//! - packs the batch's tokens without padding: every linear layer runs on `(tokens, hidden)`
//!   rows, attention runs per text on exactly its own length (no mask needed);
//! - fuses Q, K and V into one matmul, with the `1/sqrt(head_dim)` scale folded into Q;
//! - runs each sub-layer's bias, residual add and layer norm as one pass, the intermediate
//!   bias and exact GELU as one, and softmax with a vectorised `exp` (see `kernels`).
//!
//! Weights and numerics are those of the Hugging Face BERT (erf GELU); the sentence-transformers
//! reference test holds it to cosine ≥ 0.9999. A call with at most [`SMALL_ROWS`] tokens (a
//! search query) multiplies by f16 copies of the layer weights instead (`small.rs`).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};

use crate::kernels::{BiasGelu, ResidualNorm, SoftmaxRows};
use crate::small::PackedF16;

/// Calls with at most this many tokens in all use the packed f16 weights: below it gemm's
/// per-call packing of the weight costs more than the product.
pub(crate) const SMALL_ROWS: usize = 64;

type Result<T> = candle_core::Result<T>;

struct Linear {
    /// `(in, out)`, contiguous: the matmul reads it row-major.
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    fn load(vb: &VarBuilder, name: &str, in_dim: usize, out_dim: usize) -> Result<Self> {
        let vb = vb.pp(name);
        let weight = vb.get((out_dim, in_dim), "weight")?;
        Ok(Self {
            weight_t: weight.t()?.contiguous()?,
            bias: vb.get(out_dim, "bias")?,
        })
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn load(vb: &VarBuilder, name: &str, dim: usize, eps: f64) -> Result<Self> {
        let vb = vb.pp(name);
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps: eps as f32,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm(xs, &self.weight, &self.bias, self.eps)
    }
}

struct Layer {
    qkv: Linear,
    /// The attention output projection's `(in, out)` weight; its bias is applied by
    /// `attention_norm`, with the residual and the layer norm.
    attention_out: Tensor,
    attention_norm: ResidualNorm,
    /// The intermediate projection's weight; its bias is applied by `activation`.
    intermediate: Tensor,
    activation: BiasGelu,
    output: Tensor,
    output_norm: ResidualNorm,
    /// The four weights in f16 for small calls; `None` without AVX-512.
    small: Option<[PackedF16; 4]>,
}

/// `xs · weight`, through the packed copy when the call is small and there is one.
fn project(xs: &Tensor, weight: &Tensor, packed: Option<&PackedF16>) -> Result<Tensor> {
    match packed {
        Some(packed) => xs.apply_op1_no_bwd(packed),
        None => xs.matmul(weight),
    }
}

/// A sub-layer's output bias and the layer norm after its residual add, as one op.
fn residual_norm(
    vb: &VarBuilder,
    dense: &str,
    norm: &str,
    dims: (usize, usize),
    eps: f64,
) -> Result<(Tensor, ResidualNorm)> {
    let dense = Linear::load(vb, dense, dims.0, dims.1)?;
    let norm = LayerNorm::load(vb, norm, dims.1, eps)?;
    Ok((
        dense.weight_t,
        ResidualNorm {
            bias: dense.bias.to_vec1()?,
            gamma: norm.weight.to_vec1()?,
            beta: norm.bias.to_vec1()?,
            eps: norm.eps,
        },
    ))
}

/// A BERT encoder over packed (unpadded) token rows.
pub(crate) struct Encoder {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    hidden: usize,
    /// Calls with at most this many tokens use the packed f16 weights (the embedder sets it
    /// from `EmbedderConfig::small_call_tokens`; 0: never).
    pub(crate) small_rows: usize,
}

impl Encoder {
    /// Loads Hugging Face BERT weights (with or without a `bert.` prefix).
    ///
    /// Fails on a missing tensor or an activation other than exact GELU.
    pub(crate) fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        if config.hidden_act != HiddenAct::Gelu {
            candle_core::bail!("only the exact (erf) GELU activation is supported");
        }
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else {
            vb.pp("bert")
        };
        let h = config.hidden_size;
        let heads = config.num_attention_heads;
        let head_dim = h / heads;
        let emb = vb.pp("embeddings");
        let token_types = emb.get((config.type_vocab_size, h), "token_type_embeddings.weight")?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let att = l.pp("attention");
            let q = Linear::load(&att, "self.query", h, h)?;
            let k = Linear::load(&att, "self.key", h, h)?;
            let v = Linear::load(&att, "self.value", h, h)?;
            // Scaling Q's weights once saves scaling every attention score matrix.
            let scale = 1.0 / (head_dim as f64).sqrt();
            let qkv = Linear {
                weight_t: Tensor::cat(&[(q.weight_t * scale)?, k.weight_t, v.weight_t], 1)?
                    .contiguous()?,
                bias: Tensor::cat(&[(q.bias * scale)?, k.bias, v.bias], 0)?,
            };
            let eps = config.layer_norm_eps;
            let (attention_out, attention_norm) =
                residual_norm(&att, "output.dense", "output.LayerNorm", (h, h), eps)?;
            let intermediate = Linear::load(&l, "intermediate.dense", h, config.intermediate_size)?;
            let (output, output_norm) = residual_norm(
                &l,
                "output.dense",
                "output.LayerNorm",
                (config.intermediate_size, h),
                eps,
            )?;
            let small = match (
                PackedF16::new(&qkv.weight_t)?,
                PackedF16::new(&attention_out)?,
                PackedF16::new(&intermediate.weight_t)?,
                PackedF16::new(&output)?,
            ) {
                (Some(a), Some(b), Some(c), Some(d)) => Some([a, b, c, d]),
                _ => None,
            };
            layers.push(Layer {
                small,
                qkv,
                attention_out,
                attention_norm,
                activation: BiasGelu {
                    bias: intermediate.bias.to_vec1()?,
                },
                intermediate: intermediate.weight_t,
                output,
                output_norm,
            });
        }
        Ok(Self {
            word: emb.get((config.vocab_size, h), "word_embeddings.weight")?,
            position: emb.get(
                (config.max_position_embeddings, h),
                "position_embeddings.weight",
            )?,
            token_type: token_types.get(0)?,
            embedding_norm: LayerNorm::load(&emb, "LayerNorm", h, config.layer_norm_eps)?,
            layers,
            heads,
            head_dim,
            hidden: h,
            small_rows: 0,
        })
    }

    /// Token vectors of the last layer for texts given as consecutive runs of `ids`, each
    /// `lengths[i]` long: `(sum of lengths, hidden)`.
    pub(crate) fn forward(&self, ids: &[u32], lengths: &[usize]) -> Result<Tensor> {
        let small = ids.len() <= self.small_rows;
        let device = self.word.device();
        let positions: Vec<u32> = lengths.iter().flat_map(|&n| 0..n as u32).collect();
        let ids = Tensor::new(ids, device)?;
        let positions = Tensor::new(positions.as_slice(), device)?;
        let xs = self
            .word
            .index_select(&ids, 0)?
            .add(&self.position.index_select(&positions, 0)?)?
            .broadcast_add(&self.token_type)?;
        let mut xs = self.embedding_norm.forward(&xs)?;
        for layer in &self.layers {
            let packed = |i: usize| layer.small.as_ref().filter(|_| small).map(|p| &p[i]);
            let qkv =
                project(&xs, &layer.qkv.weight_t, packed(0))?.broadcast_add(&layer.qkv.bias)?;
            let context = if small {
                self.attention_small(&qkv, lengths)?
            } else {
                self.attention(&qkv, lengths)?
            };
            let xs1 = project(&context, &layer.attention_out, packed(1))?
                .apply_op2_no_bwd(&xs, &layer.attention_norm)?;
            let inner = project(&xs1, &layer.intermediate, packed(2))?
                .apply_op1_no_bwd(&layer.activation)?;
            xs = project(&inner, &layer.output, packed(3))?
                .apply_op2_no_bwd(&xs1, &layer.output_norm)?;
        }
        Ok(xs)
    }

    /// Self-attention of each text over its own tokens only.
    fn attention(&self, qkv: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let (h, heads, d) = (self.hidden, self.heads, self.head_dim);
        let mut contexts = Vec::with_capacity(lengths.len());
        let mut offset = 0;
        for &n in lengths {
            let rows = qkv.narrow(0, offset, n)?;
            // (n, h) → (heads, n, d)
            let split = |i: usize| {
                rows.narrow(1, i * h, h)?
                    .reshape((n, heads, d))?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let (q, k, v) = (split(0)?, split(1)?, split(2)?);
            let scores = q.matmul(&k.t()?)?;
            let probs = scores.apply_op1_no_bwd(&SoftmaxRows)?;
            let context = probs.matmul(&v)?.transpose(0, 1)?.reshape((n, h))?;
            contexts.push(context);
            offset += n;
        }
        Tensor::cat(&contexts, 0)
    }

    /// [`Encoder::attention`] for a query-sized call, in plain loops over the few rows: the
    /// dozen tensor ops (splits, transposes, two batched products, softmax) each cost more in
    /// allocation and thread hand-offs than their arithmetic at this size.
    fn attention_small(&self, qkv: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let (h, heads, d) = (self.hidden, self.heads, self.head_dim);
        let rows: Vec<f32> = qkv.flatten_all()?.to_vec1()?;
        let total: usize = lengths.iter().sum();
        let mut context = vec![0f32; total * h];
        let mut scores = Vec::new();
        let mut start = 0;
        for &n in lengths {
            let row = |i: usize| &rows[(start + i) * 3 * h..(start + i + 1) * 3 * h];
            for head in 0..heads {
                let (q, k, v) = (head * d, h + head * d, 2 * h + head * d);
                for i in 0..n {
                    let qi = &row(i)[q..q + d];
                    scores.clear();
                    scores.extend((0..n).map(|j| {
                        let kj = &row(j)[k..k + d];
                        qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>()
                    }));
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    scores
                        .iter_mut()
                        .for_each(|s| *s = crate::kernels::exp(*s - max));
                    let scale = 1.0 / scores.iter().sum::<f32>();
                    let out = &mut context[(start + i) * h + head * d..][..d];
                    for (j, p) in scores.iter().enumerate() {
                        let vj = &row(j)[v..v + d];
                        out.iter_mut()
                            .zip(vj)
                            .for_each(|(o, x)| *o += p * scale * x);
                    }
                }
            }
            start += n;
        }
        Tensor::from_vec(context, (total, h), qkv.device())
    }
}
