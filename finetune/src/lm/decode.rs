//! The decode step: one new token through the model, against a KV cache.
//!
//! Generation runs this once per token, so its cost is what a user waits for. The general
//! forward pass ([`CausalLm::forward_with`] over many tokens) builds each layer from some forty
//! tensor ops (norms, reshapes, transposes, rotary embeddings, concatenations, softmax); for one
//! row those ops do almost no arithmetic, and their dispatch, allocation and copies, plus a
//! cache that was concatenated anew every step, cost as much as the weights' products. Here
//! everything but the products is plain loops over small vectors, and keys and values are
//! written into buffers that grow by doubling. The products stay candle's block kernels
//! ([`QLinear::forward_row`]). The step gives the same logits as the general pass up to float
//! rounding (tests: `decode_step_matches_the_full_pass` and the interop fixtures).

use candle_core::{DType, Device, Tensor};

use crate::lm::linear::with_slice;
use crate::lm::lora::{LoraRun, Target};
use crate::lm::model::CausalLm;
use crate::ops::RopeStyle;
use crate::ops::{gemv, pool};
use crate::{Error, Result};

/// Keys and values of the tokens a sequence has seen, per layer.
#[derive(Debug, Default, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerKv>,
}

impl KvCache {
    /// Tokens held (every layer holds the same number).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One layer's keys and values, laid out `[kv_head][capacity][head_dim]` so that each head's
/// rows are contiguous for the attention loops.
#[derive(Debug, Default, Clone)]
pub(crate) struct LayerKv {
    keys: Vec<f32>,
    values: Vec<f32>,
    len: usize,
    capacity: usize,
}

impl LayerKv {
    /// Appends `n` positions; `k` and `v` are `[kv_head][n][head_dim]`. The buffers double
    /// when full (up to `limit` positions), so a long generation copies them O(log n) times.
    pub(crate) fn append(
        &mut self,
        k: &[f32],
        v: &[f32],
        n: usize,
        (kv_heads, head_dim): (usize, usize),
        limit: usize,
    ) {
        let needed = self.len + n;
        if needed > self.capacity {
            let capacity = needed.max(2 * self.capacity).max(64).min(limit.max(needed));
            let grow = |old: &[f32]| {
                let mut new = vec![0f32; kv_heads * capacity * head_dim];
                for h in 0..kv_heads {
                    let used = self.len * head_dim;
                    let src = &old[h * self.capacity * head_dim..][..used];
                    new[h * capacity * head_dim..][..used].copy_from_slice(src);
                }
                new
            };
            self.keys = grow(&self.keys);
            self.values = grow(&self.values);
            self.capacity = capacity;
        }
        for h in 0..kv_heads {
            let at = (h * self.capacity + self.len) * head_dim;
            let src = h * n * head_dim..(h + 1) * n * head_dim;
            self.keys[at..at + n * head_dim].copy_from_slice(&k[src.clone()]);
            self.values[at..at + n * head_dim].copy_from_slice(&v[src]);
        }
        self.len = needed;
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Keys and values of every position held, as `(1, kv_heads, len, head_dim)` tensors.
    pub(crate) fn tensors(&self, kv_heads: usize, head_dim: usize) -> Result<(Tensor, Tensor)> {
        let take = |buf: &[f32]| -> Result<Tensor> {
            let mut out = Vec::with_capacity(kv_heads * self.len * head_dim);
            for h in 0..kv_heads {
                out.extend_from_slice(&buf[h * self.capacity * head_dim..][..self.len * head_dim]);
            }
            Ok(Tensor::from_vec(
                out,
                (1, kv_heads, self.len, head_dim),
                &Device::Cpu,
            )?)
        };
        Ok((take(&self.keys)?, take(&self.values)?))
    }

    /// Head `h`'s keys and values, `len × head_dim` each.
    fn head(&self, h: usize, head_dim: usize) -> (&[f32], &[f32]) {
        let at = h * self.capacity * head_dim;
        let used = self.len * head_dim;
        (&self.keys[at..at + used], &self.values[at..at + used])
    }
}

/// From this many multiply-adds, a layer's attention splits its heads over the thread pool.
const PARALLEL_ATTENTION: usize = 1 << 15;

impl CausalLm {
    /// Runs one token at position `pos` (the cache holds positions `0..pos`), appending its
    /// keys and values; returns the logits for the next token.
    pub(crate) fn decode_step(
        &self,
        token: u32,
        pos: usize,
        cache: &mut KvCache,
        lora: Option<&LoraRun>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (heads, kv_heads, head_dim) = (c.heads, c.kv_heads, c.head_dim());
        cache.layers.resize(self.blocks.len(), LayerKv::default());
        if let Some(l) = cache.layers.iter().find(|l| l.len != pos) {
            return Err(Error::Request(format!(
                "the KV cache holds {} tokens but the next token is at position {pos}",
                l.len
            )));
        }
        let ids = Tensor::new(&[token], &Device::Cpu)?;
        let mut x: Vec<f32> = self
            .embeddings
            .embedding(&ids)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let cos: Vec<f32> = self.cos.get(pos)?.to_vec1()?;
        let sin: Vec<f32> = self.sin.get(pos)?.to_vec1()?;
        let eps = c.rms_eps as f32;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let rows = self.gemm_rows;
        // With an adapter the products go through LoRA's tensor ops; without, straight to the
        // block kernels.
        let row = |v: &[f32]| -> Result<Tensor> {
            Ok(Tensor::from_slice(v, (1, 1, v.len()), &Device::Cpu)?)
        };
        let flat = |t: Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1()?) };
        for (i, b) in self.blocks.iter().enumerate() {
            let h = with_slice(&b.attn_norm, |w| rms_norm(&x, w, eps))?;
            let mut qkv = match lora {
                Some(l) => flat(l.projections_joined(
                    i,
                    &[Target::Q, Target::K, Target::V],
                    &b.qkv,
                    &row(&h)?,
                    rows,
                )?)?,
                None => b.qkv.forward_row(&h)?,
            };
            let (q, kv) = qkv.split_at_mut(heads * head_dim);
            let (k, v) = kv.split_at_mut(kv_heads * head_dim);
            for head in q
                .chunks_exact_mut(head_dim)
                .chain(k.chunks_exact_mut(head_dim))
            {
                rope(head, &cos, &sin, c.rope);
            }
            let layer = &mut cache.layers[i];
            layer.append(k, v, 1, (kv_heads, head_dim), c.context);
            let att = attend(q, layer, (heads, kv_heads, head_dim), scale);
            let o = match lora {
                Some(l) => flat(l.linear(i, Target::O, &b.o, &row(&att)?, rows)?)?,
                None => b.o.forward_row(&att)?,
            };
            add(&mut x, &o);
            let h = with_slice(&b.ffn_norm, |w| rms_norm(&x, w, eps))?;
            let gate_up = match lora {
                Some(l) => flat(l.projections_joined(
                    i,
                    &[Target::Gate, Target::Up],
                    &b.gate_up,
                    &row(&h)?,
                    rows,
                )?)?,
                None => b.gate_up.forward_row(&h)?,
            };
            let gated = swiglu(&gate_up);
            let down = match lora {
                Some(l) => flat(l.linear(i, Target::Down, &b.down, &row(&gated)?, rows)?)?,
                None => b.down.forward_row(&gated)?,
            };
            add(&mut x, &down);
        }
        let last = with_slice(&self.norm, |w| rms_norm(&x, w, eps))?;
        let logits = self.lm_head.forward_row(&last)?;
        let n = logits.len();
        Ok(Tensor::from_vec(logits, n, &Device::Cpu)?)
    }
}

/// `x / rms(x) · w`, as `candle_nn::ops::rms_norm` computes it.
fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (mean + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v * inv * w).collect()
}

/// Rotates one head's vector in place at the position whose `cos` and `sin` (head_dim / 2
/// each) are given, pairing dimensions as the model's layout does.
fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = x.len() / 2;
    match style {
        RopeStyle::Interleaved => {
            for (pair, (c, s)) in x.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * c - b * s;
                pair[1] = a * s + b * c;
            }
        }
        RopeStyle::Halves => {
            let (lo, hi) = x.split_at_mut(half);
            for ((a, b), (c, s)) in lo.iter_mut().zip(hi).zip(cos.iter().zip(sin)) {
                let (x1, x2) = (*a, *b);
                *a = x1 * c - x2 * s;
                *b = x2 * c + x1 * s;
            }
        }
    }
}

/// One query row against every cached position: `softmax(q·Kᵀ·scale)·V` per head, grouped
/// query heads sharing their kv head.
fn attend(
    q: &[f32],
    layer: &LayerKv,
    (heads, kv_heads, head_dim): (usize, usize, usize),
    scale: f32,
) -> Vec<f32> {
    let group = heads / kv_heads;
    let mut out = vec![0f32; heads * head_dim];
    // Plain indexed loops: iterator adapters may be compiled out of line, without the
    // AVX-512 that `gemv::vectorized` enables here.
    let one = |h: usize, out: &mut [f32], scores: &mut Vec<f32>| {
        let (keys, values) = layer.head(h / group, head_dim);
        let q = &q[h * head_dim..(h + 1) * head_dim];
        let len = keys.len() / head_dim;
        scores.clear();
        scores.resize(len, 0.0);
        let mut max = f32::NEG_INFINITY;
        for t in 0..len {
            let s = dot(q, &keys[t * head_dim..(t + 1) * head_dim]) * scale;
            scores[t] = s;
            max = max.max(s);
        }
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        for t in 0..len {
            let p = scores[t] * inv;
            let v = &values[t * head_dim..(t + 1) * head_dim];
            for i in 0..head_dim {
                out[i] += p * v[i];
            }
        }
    };
    // Heads split over the pool only when there is enough work to pay for the hand-off.
    let per_part = if heads * layer.len() * head_dim >= PARALLEL_ATTENTION {
        head_dim
    } else {
        heads * head_dim
    };
    pool::for_each_chunk(&mut out, per_part, |start, part| {
        gemv::vectorized(|| {
            let mut scores = Vec::new();
            for (i, out) in part.chunks_mut(head_dim).enumerate() {
                one(start / head_dim + i, out, &mut scores);
            }
        })
    });
    out
}

/// A dot product in 16 independent lanes, which the compiler turns into vector code (a plain
/// `sum()` must keep the additions in order and cannot).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `silu(gate) · up` for a `[gate | up]` row.
fn swiglu(gate_up: &[f32]) -> Vec<f32> {
    let (gate, up) = gate_up.split_at(gate_up.len() / 2);
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
        .collect()
}
