//! The differentiable versions of the ops training needs.
//!
//! candle's fast CPU kernels for RMS norm, softmax and RoPE are registered without a backward
//! pass, and `QMatMul` detaches its output, so none of them lets a gradient reach the LoRA
//! matrices of earlier layers. Each op here runs the same fast kernel forward and supplies the
//! backward pass by hand. When the input tracks no gradient (generation), the kernel runs
//! directly, with no copy.
//!
//! The frozen matmul is the heart of 4-bit training: its backward needs only `dL/dx = g · W`,
//! computed from a fresh expansion of the 4-bit blocks, so the f32 weight never outlives one op.
//! (candle's own matmul backward would also compute the weight's gradient, a second full GEMM
//! whose result is thrown away, and keep the f32 weight alive until the backward pass.)
//!
//! Memory: the autograd graph keeps every op's inputs until the backward pass, so the larger
//! blocks of a layer are single ops here ([`lora_linear`], [`attention_block`], [`swiglu`],
//! [`crate::ops::head_loss`]) that keep only their output and recompute the rest when going back.
//! That took a 4 × 256-token step of SmolLM2 from 11 GB to 2.6 GB, and the fused output head
//! to 2.0 GB (scripts/bench-finetune).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, Device, Layout, Shape, Tensor};

use crate::ops::{RopeStyle, cpu_storage};

type CResult<T> = candle_core::Result<T>;

/// Rebuilds a contiguous f32 tensor from a custom op's input.
fn tensor_of(storage: &CpuStorage, layout: &Layout) -> CResult<Tensor> {
    let data = storage.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("custom op input must be contiguous".into()))?;
    Tensor::from_slice(&data[start..end], layout.shape(), &Device::Cpu)
}

/// A custom op's output from a tensor.
fn storage_of(t: &Tensor) -> CResult<(CpuStorage, Shape)> {
    let shape = t.shape().clone();
    Ok((CpuStorage::F32(t.flatten_all()?.to_vec1::<f32>()?), shape))
}

/// `x · wᵀ` for `x` (…, in), contiguous in `storage`, and `w` (out, in): candle's GEMM run on
/// the storages themselves, so that neither `x` is copied into a tensor nor the product out of
/// one (copies were 8% of a training step in session 7's `perf` on an Intel host; on the AMD
/// host of the performance table the change measured within noise). Returns rows × out.
fn matmul_wt(storage: &CpuStorage, layout: &Layout, w: &Tensor) -> CResult<Vec<f32>> {
    let w = w.contiguous()?;
    let (out, width) = w.dims2()?;
    if !layout.is_contiguous() || layout.dims().last() != Some(&width) {
        candle_core::bail!("matmul input must be contiguous with rows of {width}");
    }
    let rows = layout.shape().elem_count() / width.max(1);
    let (w_storage, w_layout) = w.storage_and_layout();
    let w_cpu = cpu_storage(&w_storage)?;
    let x_rows = Layout::contiguous_with_offset((rows, width), layout.start_offset());
    match storage.matmul(
        w_cpu,
        (1, rows, out, width),
        &x_rows,
        &w_layout.transpose(0, 1)?,
    )? {
        CpuStorage::F32(y) => Ok(y),
        _ => candle_core::bail!("matmul output must be f32"),
    }
}

/// `dst += t` for a tensor of `dst`'s size, in parallel; no new buffer.
fn add_into(dst: &mut [f32], t: &Tensor) -> CResult<()> {
    use rayon::prelude::*;
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let src = slice_of(cpu_storage(&storage)?, layout)?;
    if src.len() != dst.len() {
        candle_core::bail!("cannot add {} values into {}", src.len(), dst.len());
    }
    const CHUNK: usize = 1 << 14;
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, s)| *d += s));
    Ok(())
}

/// The shape of `x · wᵀ` for `x` of `layout` and `w` with `out` rows.
fn product_shape(layout: &Layout, out: usize) -> Shape {
    let mut dims = layout.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = out;
    }
    Shape::from(dims)
}

/// `x · Wᵀ` for a frozen block-quantized `W` (out, in), plus per-block offsets (transposed,
/// `(in/32, out)`) when given, with `x` (…, in).
pub fn frozen_matmul(
    x: &Tensor,
    weight: &Arc<QTensor>,
    offsets: Option<&Tensor>,
) -> crate::Result<Tensor> {
    if !x.track_op() {
        let w = crate::ops::dequant::expand_with_offsets(weight, offsets)?;
        return Ok(x.broadcast_matmul(&w.t()?)?);
    }
    Ok(x.contiguous()?.apply_op1(FrozenMatMul {
        weight: weight.clone(),
        offsets: offsets.cloned(),
    })?)
}

struct FrozenMatMul {
    weight: Arc<QTensor>,
    offsets: Option<Tensor>,
}

impl FrozenMatMul {
    fn weight(&self) -> CResult<Tensor> {
        crate::ops::dequant::expand_with_offsets(&self.weight, self.offsets.as_ref())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

impl CustomOp1 for FrozenMatMul {
    fn name(&self) -> &'static str {
        "lore-frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CResult<(CpuStorage, Shape)> {
        let w = self.weight()?;
        let y = matmul_wt(storage, layout, &w)?;
        Ok((CpuStorage::F32(y), product_shape(layout, w.dim(0)?)))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(grad.broadcast_matmul(&self.weight()?)?))
    }
}

/// RMS norm over the last dimension, `x / rms(x) · w`, with a frozen `w`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> crate::Result<Tensor> {
    if !x.track_op() {
        return Ok(candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps)?);
    }
    Ok(x.contiguous()?.apply_op2(weight, RmsNorm { eps })?)
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "lore-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (x, w) = (tensor_of(s1, l1)?, tensor_of(s2, l2)?);
        storage_of(&candle_nn::ops::rms_norm(&x, &w, self.eps)?)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        // y = x·r·w with r = (mean(x²) + eps)^-½, so
        // dx = r·(g·w) − x·r³·mean(g·w·x).
        let n = x.dim(D::Minus1)? as f64;
        let r = ((x.sqr()?.sum_keepdim(D::Minus1)? / n)? + self.eps as f64)?
            .sqrt()?
            .recip()?;
        let gw = grad.broadcast_mul(w)?;
        let dot = ((&gw * x)?.sum_keepdim(D::Minus1)? / n)?;
        let dx = (gw.broadcast_mul(&r)? - x.broadcast_mul(&(r.powf(3.0)? * dot)?)?)?;
        Ok((Some(dx), None))
    }
}

/// Runs `op` on `x`, recorded for the backward pass only when `x` needs a gradient.
fn apply1<C: CustomOp1 + Send + Sync + 'static>(x: &Tensor, op: C) -> CResult<Tensor> {
    if x.track_op() {
        x.apply_op1(op)
    } else {
        x.apply_op1_no_bwd(&op)
    }
}

/// The contiguous f32 data of a custom op's input.
fn slice_of<'a>(storage: &'a CpuStorage, layout: &Layout) -> CResult<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("custom op input must be contiguous".into()))?;
    Ok(&data[start..end])
}

/// Attention weights: `softmax(scale · scores)` over the last dimension with causal masking,
/// in one pass. `scores` is `(…, rows, total)` where row `r` is query position `r % n` (of
/// `n` new tokens after `start` cached ones) and may see keys `0..=start + r % n`. One op
/// instead of scale, mask-add and softmax keeps two score-sized tensors out of the training
/// graph per layer.
pub fn causal_softmax(
    scores: &Tensor,
    n: usize,
    start: usize,
    scale: f64,
) -> crate::Result<Tensor> {
    let op = CausalSoftmax {
        n,
        start,
        scale: scale as f32,
    };
    let scores = scores.contiguous()?;
    Ok(apply1(&scores, op)?)
}

struct CausalSoftmax {
    n: usize,
    start: usize,
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "lore-causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CResult<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let src = slice_of(storage, layout)?;
        let total = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(total)
            .zip(src.par_chunks(total))
            .enumerate()
            .for_each(|(r, (y, x))| {
                let seen = (self.start + r % self.n + 1).min(total);
                let max = x[..seen]
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &v| m.max(v * self.scale));
                let mut sum = 0f32;
                for (yj, &xj) in y[..seen].iter_mut().zip(&x[..seen]) {
                    *yj = (xj * self.scale - max).exp();
                    sum += *yj;
                }
                let inv = 1.0 / sum;
                y[..seen].iter_mut().for_each(|v| *v *= inv);
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        // dx = scale · y · (g − Σ g·y); masked entries have y = 0.
        let dot = (grad * y)?.sum_keepdim(D::Minus1)?;
        Ok(Some(
            ((y * grad.broadcast_sub(&dot)?)? * self.scale as f64)?,
        ))
    }
}

/// The attention heads' shape.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Self-attention of a whole sequence batch from the joined Q/K/V projections
/// `(b, n, (heads + 2·kv_heads)·hd)`: split into heads, RoPE on Q and K, causal
/// grouped-query attention, heads joined back to `(b, n, heads·hd)`. One op for training:
/// the graph holds only its output, and the backward pass recomputes the rest from the
/// projections (five head-sized tensors and two score-sized ones less per layer).
pub fn attention_block(
    qkv: &Tensor,
    heads: Heads,
    cos: &Tensor,
    sin: &Tensor,
    style: RopeStyle,
) -> crate::Result<Tensor> {
    Ok(qkv.contiguous()?.apply_op1(AttentionBlock {
        heads,
        cos: cos.clone(),
        sin: sin.clone(),
        style,
    })?)
}

struct AttentionBlock {
    heads: Heads,
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
}

/// The pieces of an attention forward pass the backward pass needs.
struct Attended {
    /// (b, kv, group·n, hd), after RoPE.
    q: Tensor,
    /// (b, kv, n, hd), after RoPE.
    k: Tensor,
    v: Tensor,
    /// (b, kv, group·n, n).
    p: Tensor,
}

impl AttentionBlock {
    fn scale(&self) -> f64 {
        1.0 / (self.heads.head_dim as f64).sqrt()
    }

    fn run(&self, qkv: &Tensor) -> CResult<Attended> {
        let Heads {
            heads,
            kv_heads,
            head_dim,
        } = self.heads;
        let (b, n, _) = qkv.dims3()?;
        let part = |start: usize, count: usize| -> CResult<Tensor> {
            qkv.narrow(2, start * head_dim, count * head_dim)?
                .reshape((b, n, count, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = rope_kernel(&part(0, heads)?, &self.cos, &self.sin, self.style)?;
        let k = rope_kernel(&part(heads, kv_heads)?, &self.cos, &self.sin, self.style)?;
        let v = part(heads + kv_heads, kv_heads)?;
        let q = q.reshape((b, kv_heads, heads / kv_heads * n, head_dim))?;
        let p = q.matmul(&k.t()?)?.apply_op1_no_bwd(&CausalSoftmax {
            n,
            start: 0,
            scale: self.scale() as f32,
        })?;
        Ok(Attended { q, k, v, p })
    }

    /// (b, heads, n, hd) → (b, n, heads·hd).
    fn join(&self, t: &Tensor, count: usize) -> CResult<Tensor> {
        let (b, n) = (t.dim(0)?, t.dim(2)?);
        t.transpose(1, 2)?
            .reshape((b, n, count * self.heads.head_dim))
    }
}

impl CustomOp1 for AttentionBlock {
    fn name(&self) -> &'static str {
        "lore-attention-block"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CResult<(CpuStorage, Shape)> {
        let qkv = tensor_of(storage, layout)?;
        let (b, n, _) = qkv.dims3()?;
        let a = self.run(&qkv)?;
        let att =
            a.p.matmul(&a.v)?
                .reshape((b, self.heads.heads, n, self.heads.head_dim))?;
        storage_of(&self.join(&att, self.heads.heads)?)
    }

    fn bwd(&self, qkv: &Tensor, _out: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let Heads {
            heads,
            kv_heads,
            head_dim,
        } = self.heads;
        let qkv = qkv.detach();
        let (b, n, _) = qkv.dims3()?;
        let a = self.run(&qkv)?;
        let g = grad
            .reshape((b, n, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, kv_heads, heads / kv_heads * n, head_dim))?;
        let gv = a.p.t()?.matmul(&g)?;
        let gp = g.matmul(&a.v.t()?)?;
        let dot = (&gp * &a.p)?.sum_keepdim(D::Minus1)?;
        let gs = ((&a.p * gp.broadcast_sub(&dot)?)? * self.scale())?;
        let gq = gs.matmul(&a.k)?.reshape((b, heads, n, head_dim))?;
        let gk = gs.t()?.matmul(&a.q)?;
        // RoPE is a rotation: its transpose rotates by the opposite angle.
        let unrope =
            |t: &Tensor| rope_kernel(&t.contiguous()?, &self.cos, &self.sin.neg()?, self.style);
        let gq = self.join(&unrope(&gq)?, heads)?;
        let gk = self.join(&unrope(&gk)?, kv_heads)?;
        let gv = self.join(&gv, kv_heads)?;
        Ok(Some(Tensor::cat(&[gq, gk, gv], 2)?))
    }
}

/// Seeded inverted dropout on a LoRA input, regenerated from its seed wherever needed.
#[derive(Debug, Clone, Copy)]
pub struct DropoutSeed {
    pub rate: f64,
    pub seed: u64,
}

/// A frozen block-quantized linear layer with a LoRA update, as one op for training:
/// `y = x·Wᵀ + scale · (dropout(x)·Aᵀ)·Bᵀ`. `A` (R, in) and `B` (out, R) may stack several
/// projections' matrices (`LoraRun` in `lm::lora` builds them). The graph holds only `y`: `W` is
/// expanded from its blocks when needed, and the dropout mask and rank-R activations are
/// recomputed in the backward pass, which returns gradients for `x`, `A` and `B`.
pub fn lora_linear(
    x: &Tensor,
    weight: &Arc<QTensor>,
    offsets: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<DropoutSeed>,
) -> crate::Result<Tensor> {
    Ok(x.contiguous()?.apply_op3(
        a,
        b,
        LoraLinear {
            frozen: FrozenMatMul {
                weight: weight.clone(),
                offsets: offsets.cloned(),
            },
            scale,
            dropout,
        },
    )?)
}

struct LoraLinear {
    frozen: FrozenMatMul,
    scale: f64,
    dropout: Option<DropoutSeed>,
}

impl LoraLinear {
    /// The input as LoRA sees it, and the mask used (if any).
    fn dropped(&self, x: &Tensor) -> CResult<(Tensor, Option<Tensor>)> {
        match self.dropout {
            Some(d) => {
                let mask = crate::ops::rng::dropout_mask(x.dims(), d.rate, d.seed)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                Ok(((x * &mask)?, Some(mask)))
            }
            None => Ok((x.clone(), None)),
        }
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lore-lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let w = self.frozen.weight()?;
        let out = w.dim(0)?;
        // The base product straight into the output buffer, then the update added in place.
        let mut y = matmul_wt(s1, l1, &w)?;
        drop(w);
        let (x, a, b) = (tensor_of(s1, l1)?, tensor_of(s2, l2)?, tensor_of(s3, l3)?);
        let (xd, _) = self.dropped(&x)?;
        let low = (xd.broadcast_matmul(&a.t()?)? * self.scale)?;
        add_into(&mut y, &low.broadcast_matmul(&b.t()?)?)?;
        Ok((CpuStorage::F32(y), product_shape(l1, out)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b) = (x.detach(), a.detach(), b.detach());
        let rows = grad.elem_count() / grad.dim(D::Minus1)?.max(1);
        let g = grad.reshape((rows, ()))?;
        let x2 = x.reshape((rows, ()))?;
        let (xd, mask) = self.dropped(&x2)?;
        let low = (xd.matmul(&a.t()?)? * self.scale)?;
        let gb = g.t()?.matmul(&low)?;
        let glow = (g.matmul(&b)? * self.scale)?;
        let ga = glow.t()?.matmul(&xd)?;
        let gxd = glow.matmul(&a)?;
        let gxd = match mask {
            Some(m) => (gxd * m)?,
            None => gxd,
        };
        let gx = (g.matmul(&self.frozen.weight()?)? + gxd)?.reshape(x.shape())?;
        Ok((Some(gx), Some(ga), Some(gb)))
    }
}

/// SwiGLU, `silu(gate) · up`, on the gate/up projections' joined output `(…, 2·ffn)`
/// (gate first). One op keeps one ffn-wide tensor in the training graph instead of two.
pub fn swiglu(gate_up: &Tensor) -> crate::Result<Tensor> {
    let x = gate_up.contiguous()?;
    Ok(apply1(&x, SwiGlu)?)
}

struct SwiGlu;

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "lore-swiglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CResult<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let src = slice_of(storage, layout)?;
        let dims = layout.dims();
        let width = dims.last().copied().unwrap_or(0);
        let half = width / 2;
        let mut out = vec![0f32; src.len() / 2];
        out.par_chunks_mut(half.max(1))
            .zip(src.par_chunks(width.max(1)))
            .for_each(|(y, x)| {
                let (gate, up) = x.split_at(half);
                for ((yi, &g), &u) in y.iter_mut().zip(gate).zip(up) {
                    *yi = g * sigmoid(g) * u;
                }
            });
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = half;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        use rayon::prelude::*;
        let width = x.dim(D::Minus1)?;
        let half = width / 2;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let gs = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(width)
            .zip(xs.par_chunks(width))
            .zip(gs.par_chunks(half))
            .for_each(|((dx, x), g)| {
                let (gate, up) = x.split_at(half);
                let (dgate, dup) = dx.split_at_mut(half);
                for i in 0..half {
                    let s = sigmoid(gate[i]);
                    let silu = gate[i] * s;
                    dup[i] = g[i] * silu;
                    dgate[i] = g[i] * up[i] * s * (1.0 + gate[i] * (1.0 - s));
                }
            });
        Ok(Some(Tensor::from_vec(out, x.shape(), &Device::Cpu)?))
    }
}

/// Rotary position embedding of `x` (b, heads, t, head_dim) in the model's pairing.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> crate::Result<Tensor> {
    if !x.track_op() {
        return Ok(rope_kernel(&x.contiguous()?, cos, sin, style)?);
    }
    Ok(x.contiguous()?.apply_op1(Rope {
        cos: cos.clone(),
        sin: sin.clone(),
        style,
    })?)
}

fn rope_kernel(x: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> CResult<Tensor> {
    match style {
        RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(x, cos, sin),
        RopeStyle::Halves => candle_nn::rotary_emb::rope(x, cos, sin),
    }
}

struct Rope {
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "lore-rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = tensor_of(storage, layout)?;
        storage_of(&rope_kernel(&x, &self.cos, &self.sin, self.style)?)
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        // A rotation's transpose is the rotation by the opposite angle.
        let grad = grad.contiguous()?;
        Ok(Some(rope_kernel(
            &grad,
            &self.cos,
            &self.sin.neg()?,
            self.style,
        )?))
    }
}

#[cfg(test)]
mod tests {
    //! Each op's gradient against the gradient of the same function written with plain,
    //! differentiable candle ops.
    use super::*;
    use candle_core::quantized::GgmlDType;
    use candle_core::{DType, Var};

    fn input(shape: &[usize], seed: u64) -> Var {
        let n: usize = shape.iter().product();
        let mut s = seed;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        Var::from_tensor(&Tensor::from_vec(data, shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// Gradient of Σ (f(x) · probe) with respect to x.
    fn grad_of(x: &Var, f: impl Fn(&Tensor) -> Tensor) -> Vec<f32> {
        let y = f(x.as_tensor());
        let probe = input(y.dims(), 99);
        let loss = (y * probe.as_tensor()).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn assert_close(a: &[f32], b: &[f32]) {
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "gradients differ by {diff}");
        assert!(a.iter().any(|v| v.abs() > 1e-3), "gradient is all zeros");
    }

    #[test]
    fn the_frozen_matmul_passes_the_input_gradient() {
        let x = input(&[2, 3, 64], 1);
        let w = input(&[16, 64], 2);
        let q = Arc::new(QTensor::quantize(w.as_tensor(), GgmlDType::Q8_0).unwrap());
        let w_f32 = crate::ops::dequant::dequantize(&q).unwrap();
        let ours = grad_of(&x, |x| frozen_matmul(x, &q, None).unwrap());
        let plain = grad_of(&x, |x| x.broadcast_matmul(&w_f32.t().unwrap()).unwrap());
        assert_close(&ours, &plain);
    }

    #[test]
    fn the_fused_lora_linear_matches_its_plain_composition() {
        let x = input(&[2, 3, 64], 21);
        let w = input(&[16, 64], 22);
        let q = Arc::new(QTensor::quantize(w.as_tensor(), GgmlDType::Q8_0).unwrap());
        let w_f32 = crate::ops::dequant::dequantize(&q).unwrap();
        let (a, b) = (input(&[4, 64], 23), input(&[16, 4], 24));
        let dropout = Some(DropoutSeed {
            rate: 0.25,
            seed: 5,
        });
        let mask = crate::ops::rng::dropout_mask(&[6, 64], 0.25, 5)
            .unwrap()
            .reshape((2, 3, 64))
            .unwrap();
        let probe = input(&[2, 3, 16], 25);
        let grads = |fused: bool| -> Vec<Vec<f32>> {
            let y = if fused {
                lora_linear(
                    x.as_tensor(),
                    &q,
                    None,
                    a.as_tensor(),
                    b.as_tensor(),
                    2.0,
                    dropout,
                )
                .unwrap()
            } else {
                let base = x.as_tensor().broadcast_matmul(&w_f32.t().unwrap()).unwrap();
                let xd = (x.as_tensor() * &mask).unwrap();
                let low =
                    (xd.broadcast_matmul(&a.as_tensor().t().unwrap()).unwrap() * 2.0).unwrap();
                (base + low.broadcast_matmul(&b.as_tensor().t().unwrap()).unwrap()).unwrap()
            };
            let g = (y * probe.as_tensor())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            [&x, &a, &b]
                .iter()
                .map(|t| {
                    g.get(t.as_tensor())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap()
                })
                .collect()
        };
        for (ours, plain) in grads(true).iter().zip(grads(false)) {
            assert_close(ours, &plain);
        }
    }

    #[test]
    fn rms_norm_softmax_and_rope_have_the_plain_gradients() {
        let x = input(&[2, 5, 32], 3);
        let w = input(&[32], 4)
            .as_tensor()
            .affine(1.0, 1.0)
            .unwrap()
            .detach();
        let ours = grad_of(&x, |x| rms_norm(x, &w, 1e-5).unwrap());
        let plain = grad_of(&x, |x| candle_nn::ops::rms_norm_slow(x, &w, 1e-5).unwrap());
        assert_close(&ours, &plain);

        let scores = input(&[2, 6, 5], 7);
        let ours = grad_of(&scores, |s| causal_softmax(s, 3, 2, 0.5).unwrap());
        let mask: Vec<f32> = (0..6)
            .flat_map(|r| {
                (0..5).map(move |j| {
                    if j <= 2 + r % 3 {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (6, 5), &Device::Cpu).unwrap();
        let plain = grad_of(&scores, |s| {
            let z = (s * 0.5).unwrap().broadcast_add(&mask).unwrap();
            let e = z.exp().unwrap();
            e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
        });
        assert_close(&ours, &plain);

        // The attention block (GQA: 2 query heads per kv head) against its plain composition.
        let qkv = input(&[2, 3, 16], 11);
        let heads = Heads {
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
        };
        let angles = input(&[3, 2], 12).as_tensor().affine(6.0, 0.0).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        type Slow = fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>;
        let styles: [(RopeStyle, Slow); 2] = [
            (RopeStyle::Interleaved, candle_nn::rotary_emb::rope_i_slow),
            (RopeStyle::Halves, candle_nn::rotary_emb::rope_slow),
        ];
        for (style, slow) in styles {
            let ours = grad_of(&qkv, |t| {
                attention_block(t, heads, &cos, &sin, style).unwrap()
            });
            let plain = grad_of(&qkv, |t| {
                let part = |start: usize, count: usize| {
                    t.narrow(2, start * 4, count * 4)
                        .unwrap()
                        .reshape((2, 3, count, 4))
                        .unwrap()
                        .transpose(1, 2)
                        .unwrap()
                };
                let q = slow(&part(0, 2).contiguous().unwrap(), &cos, &sin).unwrap();
                let k = slow(&part(2, 1).contiguous().unwrap(), &cos, &sin).unwrap();
                let v = part(3, 1);
                let q = q.reshape((2, 1, 6, 4)).unwrap();
                let s = q.matmul(&k.t().unwrap()).unwrap();
                let att = causal_softmax(&s, 3, 0, 0.5).unwrap().matmul(&v).unwrap();
                att.reshape((2, 2, 3, 4))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .reshape((2, 3, 8))
                    .unwrap()
            });
            assert_close(&ours, &plain);
        }

        let gu = input(&[2, 3, 8], 31);
        let ours = grad_of(&gu, |x| swiglu(x).unwrap());
        let plain = grad_of(&gu, |x| {
            let (g, u) = (x.narrow(2, 0, 4).unwrap(), x.narrow(2, 4, 4).unwrap());
            (candle_nn::ops::silu(&g).unwrap() * u).unwrap()
        });
        assert_close(&ours, &plain);

        let x = input(&[1, 2, 5, 8], 5);
        let angles = input(&[5, 4], 6).as_tensor().affine(6.0, 0.0).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        for (style, slow) in [
            (
                RopeStyle::Interleaved,
                candle_nn::rotary_emb::rope_i_slow as fn(&Tensor, &Tensor, &Tensor) -> _,
            ),
            (RopeStyle::Halves, candle_nn::rotary_emb::rope_slow),
        ] {
            let ours = grad_of(&x, |x| rope(x, &cos, &sin, style).unwrap());
            let plain = grad_of(&x, |x| slow(x, &cos, &sin).unwrap());
            assert_close(&ours, &plain);
        }
        assert_eq!(x.dtype(), DType::F32);
    }
}
