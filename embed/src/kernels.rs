//! The encoder's element-wise work as fused, vectorised candle ops.
//!
//! candle runs a bias add, a residual add, layer norm, GELU and softmax as separate passes,
//! each allocating and writing a fresh tensor, and its maps compile for baseline x86-64 (SSE2).
//! Profiling `lore embed` put over a fifth of the time in them. These ops do each step's
//! element-wise work in one pass over rows, in parallel, inside `pulp::Arch::dispatch`, so the
//! loops are compiled and chosen at run time for AVX-512 or AVX2 where the CPU has them, with no
//! `unsafe`. Numerics stay those of the reference model: the fast `erf` and `exp` are tested
//! against libm and std, and the packed-encoder test holds the whole model to the padded one.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

type Result<T> = candle_core::Result<T>;

/// Elements per parallel task: enough that a task is worth a thread hand-off.
const TASK_ELEMENTS: usize = 8192;

/// Lanes of the reductions' partial results: one AVX-512 register.
const LANES: usize = 16;

fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(src) = storage else {
        candle_core::bail!("{op}: f32 only")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: input must be contiguous")
    };
    Ok(&src[start..end])
}

/// Rows per parallel task for rows of `width`.
fn rows_per_task(width: usize) -> usize {
    (TASK_ELEMENTS / width.max(1)).max(1)
}

/// A new buffer filled by `rows(src_rows, dst_rows)` over whole rows of `width`, tasks of
/// several rows in parallel.
fn map_rows(src: &[f32], width: usize, rows: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut dst = vec![0f32; src.len()];
    let task = width * rows_per_task(width);
    if src.len() <= task {
        // One task (a query's few rows): a hand-off to the pool would cost more than the work.
        rows(src, &mut dst);
    } else {
        dst.par_chunks_mut(task)
            .zip(src.par_chunks(task))
            .for_each(|(d, s)| rows(s, d));
    }
    dst
}

/// `gelu(x + bias)` with the exact (erf) GELU, `bias` added along the last dimension: the
/// intermediate layer's bias and activation in one pass.
pub(crate) struct BiasGelu {
    pub bias: Vec<f32>,
}

impl CustomOp1 for BiasGelu {
    fn name(&self) -> &'static str {
        "lore-bias-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous(storage, layout, "gelu")?;
        let width = self.bias.len();
        if layout.dims().last() != Some(&width) {
            candle_core::bail!("gelu: rows of {:?}, bias of {width}", layout.dims());
        }
        let dst = map_rows(src, width, |src, dst| {
            pulp::Arch::new().dispatch(BiasGeluRows {
                src,
                dst,
                bias: &self.bias,
            })
        });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

struct BiasGeluRows<'a> {
    src: &'a [f32],
    dst: &'a mut [f32],
    bias: &'a [f32],
}

impl WithSimd for BiasGeluRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let width = self.bias.len();
        for (d, s) in self.dst.chunks_mut(width).zip(self.src.chunks(width)) {
            for ((d, &x), &b) in d.iter_mut().zip(s).zip(self.bias) {
                let x = x + b;
                *d = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
    }
}

/// `layer_norm(x + bias + residual)` along the last dimension: a sub-layer's output bias,
/// its residual connection and the layer norm after it in one pass per row. Applied as
/// `x.apply_op2_no_bwd(&residual, &op)`.
pub(crate) struct ResidualNorm {
    pub bias: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub eps: f32,
}

impl CustomOp2 for ResidualNorm {
    fn name(&self) -> &'static str {
        "lore-residual-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "residual norm")?;
        let residual = contiguous(s2, l2, "residual norm")?;
        let width = self.bias.len();
        if l1.dims() != l2.dims() || l1.dims().last() != Some(&width) {
            candle_core::bail!(
                "residual norm: {:?} + {:?} with parameters of {width}",
                l1.dims(),
                l2.dims()
            );
        }
        let mut dst = vec![0f32; x.len()];
        let task = width * rows_per_task(width);
        let run = |(dst, (x, residual)): (&mut [f32], (&[f32], &[f32]))| {
            pulp::Arch::new().dispatch(ResidualNormRows {
                op: self,
                x,
                residual,
                dst,
            })
        };
        if x.len() <= task {
            // One task: no hand-off to the pool (see `map_rows`).
            run((&mut dst, (x, residual)));
        } else {
            dst.par_chunks_mut(task)
                .zip(x.par_chunks(task).zip(residual.par_chunks(task)))
                .for_each(run);
        }
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }
}

struct ResidualNormRows<'a> {
    op: &'a ResidualNorm,
    x: &'a [f32],
    residual: &'a [f32],
    dst: &'a mut [f32],
}

impl WithSimd for ResidualNormRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let op = self.op;
        let width = op.bias.len();
        let rows = self
            .dst
            .chunks_mut(width)
            .zip(self.x.chunks(width).zip(self.residual.chunks(width)));
        for (d, (x, r)) in rows {
            for (((d, &x), &r), &b) in d.iter_mut().zip(x).zip(r).zip(&op.bias) {
                *d = x + r + b;
            }
            let mean = lane_sum(d) / width as f32;
            d.iter_mut().for_each(|v| *v -= mean);
            let var = lane_sum_squares(d) / width as f32;
            let inv = 1.0 / (var + op.eps).sqrt();
            for ((d, &g), &b) in d.iter_mut().zip(&op.gamma).zip(&op.beta) {
                *d = *d * inv * g + b;
            }
        }
    }
}

/// erf as a rational function of x² on [-4, 4] (erf is ±1 to f32 precision beyond): the
/// approximation Eigen and XLA use for f32. Branch-free, so the GELU loop vectorises; libm's
/// erff spent 13% of embedding time. Tested against libm below.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.9546e-3;
    p = p * x2 + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329e-3;
    q = q * x2 + -1.426_474e-2;
    x * p / q
}

/// Softmax over the last dimension with a branch-free `exp`, rows in parallel. candle's
/// softmax calls libm's `expf` per element: 8% of embedding time in `perf`, where this
/// loop vectorises.
pub(crate) struct SoftmaxRows;

impl CustomOp1 for SoftmaxRows {
    fn name(&self) -> &'static str {
        "lore-softmax-rows"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous(storage, layout, "softmax")?;
        let width = layout.dims().last().copied().unwrap_or(1).max(1);
        let dst = map_rows(src, width, |src, dst| {
            pulp::Arch::new().dispatch(Softmax { src, dst, width })
        });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// Softmax of each `width`-long row of `src` into `dst`, written so that every pass is a plain
/// map or a lane-wise reduction the compiler vectorises for the CPU pulp dispatches to.
struct Softmax<'a> {
    src: &'a [f32],
    dst: &'a mut [f32],
    width: usize,
}

impl WithSimd for Softmax<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        for (d, s) in self
            .dst
            .chunks_mut(self.width)
            .zip(self.src.chunks(self.width))
        {
            let max = lane_max(s);
            for (d, &x) in d.iter_mut().zip(s) {
                *d = exp(x - max);
            }
            let scale = 1.0 / lane_sum(d);
            d.iter_mut().for_each(|d| *d *= scale);
        }
    }
}

#[inline(always)]
fn lane_max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = if x > *l { x } else { *l };
        }
    }
    lanes
        .iter()
        .chain(tail)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

#[inline(always)]
fn lane_sum_squares(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += x * x;
        }
    }
    lanes.iter().sum::<f32>() + tail.iter().map(|x| x * x).sum::<f32>()
}

#[inline(always)]
fn lane_sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    lanes.iter().chain(tail).sum()
}

/// e^x for x ≤ 0 (softmax after subtracting the row's maximum), to about 2 ulp: x = n·ln2 + r
/// with |r| ≤ ln2/2, e^r by its degree-6 Taylor polynomial, 2^n put into the exponent bits.
/// Below -87 the result is flushed to 0, as f32 cannot hold it normalised.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer without a branch or an
    // SSE4.1 instruction.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    // n as an integer, read from t's low mantissa bits: integer ops only, so the loop stays
    // vectorised (a float-to-int `as` cast saturates, and that does not vectorise).
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let mut p = 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    p * f32::from_bits((n_int.wrapping_add(127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    #[test]
    fn fast_exp_matches_std_where_softmax_uses_it() {
        let mut worst = 0f32;
        for i in 0..=870_000 {
            let x = -(i as f32) / 10_000.0;
            let (fast, exact) = (super::exp(x), x.exp());
            worst = worst.max((fast - exact).abs() / exact.max(f32::MIN_POSITIVE));
        }
        assert!(worst < 1e-6, "max relative error {worst}");
    }

    #[test]
    fn softmax_rows_match_candle() {
        let device = Device::Cpu;
        let scores = Tensor::randn(0f32, 3.0, (12, 37, 37), &device).expect("randn");
        let ours = scores.apply_op1_no_bwd(&super::SoftmaxRows).expect("ours");
        let theirs = candle_nn::ops::softmax_last_dim(&scores).expect("candle");
        let worst = max_diff(&vec(&ours), &vec(&theirs));
        assert!(worst < 1e-6, "max |ours - candle| = {worst}");
    }

    fn vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("vec")
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    }

    #[test]
    fn fused_ops_match_candles_separate_ones() {
        let device = Device::Cpu;
        let rand = |shape: (usize, usize)| Tensor::randn(0f32, 1.0, shape, &device).expect("randn");
        let (x, residual) = (rand((37, 40)), rand((37, 40)));
        let [bias, gamma, beta] = [rand((1, 40)), rand((1, 40)), rand((1, 40))];
        let row = |t: &Tensor| t.flatten_all().expect("flat");

        let fused = x
            .apply_op2_no_bwd(
                &residual,
                &super::ResidualNorm {
                    bias: vec(&bias),
                    gamma: vec(&gamma),
                    beta: vec(&beta),
                    eps: 1e-12,
                },
            )
            .expect("fused norm");
        let summed = x
            .broadcast_add(&bias)
            .and_then(|t| t.add(&residual))
            .expect("sum");
        let reference =
            candle_nn::ops::layer_norm(&summed, &row(&gamma), &row(&beta), 1e-12).expect("norm");
        let worst = max_diff(&vec(&fused), &vec(&reference));
        assert!(worst < 1e-5, "norm: max diff {worst}");

        let fused = x
            .apply_op1_no_bwd(&super::BiasGelu { bias: vec(&bias) })
            .expect("fused gelu");
        let reference = x
            .broadcast_add(&bias)
            .and_then(|t| t.gelu_erf())
            .expect("gelu");
        let worst = max_diff(&vec(&fused), &vec(&reference));
        assert!(worst < 1e-5, "gelu: max diff {worst}");
    }

    #[test]
    fn fast_erf_matches_libm() {
        let mut worst = 0f32;
        for i in -80_000..=80_000 {
            let x = i as f32 / 10_000.0;
            worst = worst.max((super::erf(x) - libm::erff(x)).abs());
        }
        assert!(worst < 1e-6, "max |erf - libm::erff| = {worst}");
    }
}
