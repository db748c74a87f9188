//! One activation row times a block-quantized weight (GGML Q4_0, Q5_0 or Q8_0), with
//! AVX-512: the products of the decode step, which are most of its time.
//!
//! Why lore has its own: candle 0.11's x86 kernels for these block types are AVX2 and take one
//! 32-value block per step; its AVX-512 VNNI path repacks only Q4_K, Q6_K and Q8_0 weights whose
//! rows are a multiple of 256 values, which SmolLM2's 576 and Qwen2.5-0.5B's 896 are not. And
//! with no Q5_0 kernel in candle, lore used to widen Qwen's Q5_0 layers to Q8_0, which reads
//! 55% more bytes per token. This kernel reads the weight's blocks where they lie in the
//! `QTensor` (no second copy: only each block's scale is widened to f32 once, and a Q5_0
//! block's fifth bits regrouped, one or two bits per weight), four blocks per step in 512-bit
//! registers. The activation row is quantized to 8 bits per block exactly as GGML's Q8_0 does
//! (scale rounded to f16), so the integer products are the ones candle's kernels compute, and
//! the result differs from theirs only in the order of float additions.
//!
//! Safe code only (`pulp`'s checked AVX-512 intrinsics); without AVX-512BW [`BlockGemv::new`]
//! returns `None` and callers keep candle's kernels.

use std::arch::x86_64::{__m128, __m128i, __m256i, __m512, __m512i};
use std::sync::Arc;

use candle_core::Tensor;
use candle_core::quantized::{GgmlDType, QTensor};
use pulp::x86::V4;
use pulp::{NullaryFnOnce, cast};

use crate::Result;
use crate::ops::pool;

/// Values per block.
const QK: usize = 32;
/// Blocks per step: 128 values, two 512-bit registers of 8-bit products.
const GROUP: usize = 4;
/// Below this many multiply-adds a product runs on the calling thread alone.
const PARALLEL_MACS: usize = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Q4_0,
    Q5_0,
    Q8_0,
}

impl Kind {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q5_0 => Some(Self::Q5_0),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q5_0 => 22,
            Self::Q8_0 => 34,
        }
    }

    /// The unsigned nibble formats store `value + offset`.
    fn offset(self) -> i32 {
        match self {
            Self::Q4_0 => 8,
            Self::Q5_0 => 16,
            Self::Q8_0 => 0,
        }
    }
}

/// Whether this CPU runs the kernel (AVX-512 with byte and word ops).
pub fn available() -> bool {
    V4::try_new().is_some()
}

/// Runs `f` with AVX-512 enabled for the compiler where the CPU has it, so that plain loops in
/// it (and in `#[inline(always)]` functions it calls) become 512-bit vector code.
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    match V4::try_new() {
        Some(simd) => simd.vectorize(f),
        None => f(),
    }
}

/// A weight `(n, k)` in GGML blocks, ready for [`BlockGemv::multiply`].
pub struct BlockGemv {
    simd: V4,
    kind: Kind,
    weight: Arc<QTensor>,
    n: usize,
    k: usize,
    /// Blocks per row.
    blocks: usize,
    /// Steps per row (blocks / 4, rounded up).
    groups: usize,
    /// Each block's scale as f32, `n × groups·4`, zero past a row's last block.
    scales: Vec<f32>,
    /// A split Q4_1 (or widened Q5_1) weight's per-block constants, laid out as `scales`;
    /// empty without. Block `b` adds `mins[b] · Σ x` over its 32 values.
    mins: Vec<f32>,
    /// Q5_0 only: per row and step, the fifth bits of the low and of the high nibbles, one bit
    /// per byte lane of the step's registers.
    fifth: Vec<u64>,
}

impl std::fmt::Debug for BlockGemv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockGemv")
            .field("kind", &self.kind)
            .field("n", &self.n)
            .field("k", &self.k)
            .finish()
    }
}

impl BlockGemv {
    /// `None` without AVX-512BW, or for another block type. `offsets`, `(k / 32, n)`, are a
    /// split Q4_1 weight's per-block constants ([`crate::ops::dequant::split_q4_1`]).
    pub fn new(weight: Arc<QTensor>, offsets: Option<&Tensor>) -> Result<Option<Self>> {
        let (Some(simd), Some(kind)) = (V4::try_new(), Kind::of(weight.dtype())) else {
            return Ok(None);
        };
        let (n, k) = weight.shape().dims2()?;
        if k % QK != 0 {
            return Ok(None);
        }
        let blocks = k / QK;
        let groups = blocks.div_ceil(GROUP);
        let mut scales = vec![0f32; n * groups * GROUP];
        let mut mins = Vec::new();
        if let Some(offsets) = offsets {
            if offsets.dims2()? != (blocks, n) {
                return Ok(None);
            }
            let values: Vec<f32> = offsets.t()?.contiguous()?.flatten_all()?.to_vec1()?;
            mins = vec![0f32; n * groups * GROUP];
            for (row, values) in values.chunks_exact(blocks).enumerate() {
                mins[row * groups * GROUP..][..blocks].copy_from_slice(values);
            }
        }
        let mut fifth = vec![
            0u64;
            if kind == Kind::Q5_0 {
                n * groups * 2
            } else {
                0
            }
        ];
        {
            let data = weight.data()?;
            let bs = kind.block_bytes();
            for row in 0..n {
                for b in 0..blocks {
                    let block = &data[(row * blocks + b) * bs..][..bs];
                    scales[row * groups * GROUP + b] =
                        half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                    if kind == Kind::Q5_0 {
                        let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                        let (g, lane) = (b / GROUP, 16 * (b % GROUP));
                        let at = (row * groups + g) * 2;
                        fifth[at] |= u64::from(qh & 0xFFFF) << lane;
                        fifth[at + 1] |= u64::from(qh >> 16) << lane;
                    }
                }
            }
        }
        Ok(Some(Self {
            simd,
            kind,
            weight,
            n,
            k,
            blocks,
            groups,
            scales,
            mins,
            fifth,
        }))
    }

    /// Output values per row (the weight's `n`).
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Bytes held besides the weight itself.
    pub fn extra_bytes(&self) -> usize {
        (self.scales.len() + self.mins.len()) * 4 + self.fifth.len() * 8
    }

    /// `W x` for one row `x` of `k` values.
    pub fn multiply(&self, x: &[f32]) -> Result<Vec<f32>> {
        if x.len() != self.k {
            return Err(candle_core::Error::Msg(format!(
                "a row of {} values for a weight of {} columns",
                x.len(),
                self.k
            ))
            .into());
        }
        let prepared = self.simd.vectorize(Quantize { gemv: self, x });
        let data = self.weight.data()?;
        let mut out = vec![0f32; self.n];
        let run = |first: usize, out: &mut [f32]| {
            self.simd.vectorize(Rows {
                gemv: self,
                x: &prepared,
                bytes: &data[..],
                first,
                out,
            })
        };
        // Rows in chunks the pool's threads take in turn, eight per thread.
        let rows = if self.n * self.k < PARALLEL_MACS {
            self.n
        } else {
            self.n.div_ceil(pool::threads() * 8).max(16)
        };
        pool::for_each_chunk(&mut out, rows, |first, out| run(first, out));
        Ok(out)
    }
}

/// The activation row quantized per block as GGML's Q8_0 (8-bit values, f16 scale), laid out
/// to meet the weight's registers: for each step, two registers of 64 values, the per-lane
/// activation scales, and the nibble formats' offset correction.
struct Prepared {
    x0: Vec<__m512i>,
    x1: Vec<__m512i>,
    scale0: Vec<__m512>,
    scale1: Vec<__m512>,
    /// `offset · Σ q` of each block, in the first of its four i32 lanes.
    correction: Vec<__m512i>,
    /// `Σ x` of each block (unquantized), in the first of its four f32 lanes: what a block's
    /// constant multiplies.
    sums: Vec<__m512>,
}

struct Quantize<'a> {
    gemv: &'a BlockGemv,
    x: &'a [f32],
}

impl NullaryFnOnce for Quantize<'_> {
    type Output = Prepared;

    #[inline(always)]
    fn call(self) -> Prepared {
        let g = self.gemv;
        let mut p = Prepared {
            x0: Vec::with_capacity(g.groups),
            x1: Vec::with_capacity(g.groups),
            scale0: Vec::with_capacity(g.groups),
            scale1: Vec::with_capacity(g.groups),
            correction: Vec::with_capacity(g.groups),
            sums: Vec::with_capacity(g.groups),
        };
        for step in 0..g.groups {
            let (mut x0, mut x1) = ([0i8; 64], [0i8; 64]);
            let (mut s0, mut s1) = ([0f32; 16], [0f32; 16]);
            let mut corr = [0i32; 16];
            let mut sums = [0f32; 16];
            for j in 0..GROUP {
                let b = step * GROUP + j;
                if b >= g.blocks {
                    break;
                }
                let x = &self.x[b * QK..(b + 1) * QK];
                sums[4 * j] = x.iter().sum();
                let (q, d) = quantize_block(x);
                match g.kind {
                    // Nibble layout: a block's bytes hold values i (low) and i + 16 (high).
                    Kind::Q4_0 | Kind::Q5_0 => {
                        x0[16 * j..16 * j + 16].copy_from_slice(&q[..16]);
                        x1[16 * j..16 * j + 16].copy_from_slice(&q[16..]);
                        s0[4 * j..4 * j + 4].fill(d);
                        let sum: i32 = q.iter().map(|&v| i32::from(v)).sum();
                        corr[4 * j] = g.kind.offset() * sum;
                    }
                    // Plain bytes: blocks 0 and 1 in the first register, 2 and 3 in the second.
                    Kind::Q8_0 => {
                        let (x, s) = if j < 2 {
                            (&mut x0, &mut s0)
                        } else {
                            (&mut x1, &mut s1)
                        };
                        let half = j % 2;
                        x[32 * half..32 * half + 32].copy_from_slice(&q);
                        s[8 * half..8 * half + 8].fill(d);
                    }
                }
            }
            p.x0.push(cast(x0));
            p.x1.push(cast(x1));
            p.scale0.push(cast(s0));
            p.scale1.push(cast(s1));
            p.correction.push(cast(corr));
            p.sums.push(cast(sums));
        }
        p
    }
}

/// GGML's `quantize_row_q8_0` for one block: scale `max|x| / 127` (stored as f16), values
/// rounded half away from zero.
fn quantize_block(x: &[f32]) -> ([i8; QK], f32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0i8; QK];
    for (q, v) in q.iter_mut().zip(x) {
        *q = (v * inv).round() as i8;
    }
    (q, half::f16::from_f32(d).to_f32())
}

/// Rows `first..first + out.len()` of the product, on this thread.
struct Rows<'a> {
    gemv: &'a BlockGemv,
    x: &'a Prepared,
    bytes: &'a [u8],
    first: usize,
    out: &'a mut [f32],
}

impl NullaryFnOnce for Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        // One copy of the loop per block type, so that block sizes and offsets are constants
        // and the compiler can drop the bounds checks from the inner loop.
        match self.gemv.kind {
            Kind::Q4_0 => self.nibbles::<18, 2, false>(),
            Kind::Q5_0 => self.nibbles::<22, 6, true>(),
            Kind::Q8_0 => self.bytes8::<34, 2>(),
        }
    }
}

/// 16 bytes of `bytes` from `at`, as a register.
pub(crate) fn load16(bytes: &[u8], at: usize) -> __m128i {
    let mut a = [0u8; 16];
    a.copy_from_slice(&bytes[at..at + 16]);
    cast(a)
}

fn load32(bytes: &[u8], at: usize) -> __m256i {
    let mut a = [0u8; 32];
    a.copy_from_slice(&bytes[at..at + 32]);
    cast(a)
}

/// Lane patterns spreading 4 block scales over the lanes their products land in: 4 lanes per
/// block (nibble formats), or 8 lanes per block for blocks 0–1 and 2–3 (Q8_0's two registers).
const BY4: [i32; 16] = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3];
const FIRST2: [i32; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];
const LAST2: [i32; 16] = [2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3];

/// Row `row`'s slices: its blocks, its 4-aligned scales and (for split weights) constants.
#[inline(always)]
fn row_slices<'a>(
    g: &'a BlockGemv,
    all: &'a [u8],
    row: usize,
    block_bytes: usize,
) -> (&'a [u8], &'a [f32], Option<&'a [f32]>) {
    let per_row = g.groups * GROUP;
    let bytes = &all[row * g.blocks * block_bytes..(row + 1) * g.blocks * block_bytes];
    let scales = &g.scales[row * per_row..(row + 1) * per_row];
    let mins = (!g.mins.is_empty()).then(|| &g.mins[row * per_row..(row + 1) * per_row]);
    (bytes, scales, mins)
}

impl Rows<'_> {
    /// Q4_0 and Q5_0: a step's four blocks hold 16 bytes of nibbles each; low nibbles are
    /// values 0–15 of a block, high nibbles 16–31, and Q5_0 adds a fifth bit (`fifth`).
    #[inline(always)]
    fn nibbles<const BS: usize, const QUANTS: usize, const Q5: bool>(self) {
        let Rows {
            gemv: g,
            x: p,
            bytes: all,
            first,
            out,
        } = self;
        let (f, bw) = (g.simd.avx512f, g.simd.avx512bw);
        let low4 = f._mm512_set1_epi8(0x0F);
        let sixteen = f._mm512_set1_epi8(16);
        let ones = f._mm512_set1_epi16(1);
        let by4: __m512i = cast(BY4);
        let steps = g.groups;
        let (x0, x1, corr, xs, sums) = (
            &p.x0[..steps],
            &p.x1[..steps],
            &p.correction[..steps],
            &p.scale0[..steps],
            &p.sums[..steps],
        );
        for (r, out) in out.iter_mut().enumerate() {
            let (bytes, scales, mins) = row_slices(g, all, first + r, BS);
            let mut acc = f._mm512_setzero_ps();
            for step in 0..steps {
                let blocks = &bytes[step * GROUP * BS..];
                let present = (blocks.len() / BS).min(GROUP);
                // Q5_0's fifth bits come regrouped from `fifth` (one load per register, where
                // reading them from the blocks took four scalar loads and shifts: 15% slower
                // in `gemv_kernel`).
                let at = ((first + r) * g.groups + step) * 2;
                let fifth = if Q5 {
                    [g.fifth[at], g.fifth[at + 1]]
                } else {
                    [0, 0]
                };
                let w = if present == GROUP {
                    let blocks = &blocks[..GROUP * BS];
                    let w = f._mm512_zextsi128_si512(load16(blocks, QUANTS));
                    let w = f._mm512_inserti32x4::<1>(w, load16(blocks, BS + QUANTS));
                    let w = f._mm512_inserti32x4::<2>(w, load16(blocks, 2 * BS + QUANTS));
                    f._mm512_inserti32x4::<3>(w, load16(blocks, 3 * BS + QUANTS))
                } else {
                    // A row's last, partial step: absent blocks stay zero (their activations
                    // are zero too).
                    let mut parts = [[0u8; 16]; GROUP];
                    for (j, part) in parts.iter_mut().enumerate().take(present) {
                        part.copy_from_slice(&blocks[j * BS + QUANTS..j * BS + QUANTS + 16]);
                    }
                    cast(parts)
                };
                let mut lo = f._mm512_and_si512(w, low4);
                let mut hi = f._mm512_and_si512(bw._mm512_srli_epi16::<4>(w), low4);
                if Q5 {
                    lo = bw._mm512_mask_add_epi8(lo, fifth[0], lo, sixteen);
                    hi = bw._mm512_mask_add_epi8(hi, fifth[1], hi, sixteen);
                }
                let pairs = bw._mm512_add_epi16(
                    bw._mm512_maddubs_epi16(lo, x0[step]),
                    bw._mm512_maddubs_epi16(hi, x1[step]),
                );
                let dots = f._mm512_sub_epi32(bw._mm512_madd_epi16(pairs, ones), corr[step]);
                let sc = scale4(&scales[step * GROUP..step * GROUP + GROUP], f);
                let scale = f._mm512_mul_ps(f._mm512_permutexvar_ps(by4, sc), xs[step]);
                acc = f._mm512_fmadd_ps(f._mm512_cvtepi32_ps(dots), scale, acc);
                if let Some(mins) = mins {
                    acc = add_block_constants(f, acc, &mins[step * GROUP..], sums[step]);
                }
            }
            *out = f._mm512_reduce_add_ps(acc);
        }
    }

    /// Q8_0: 32 signed bytes per block, blocks 0–1 of a step in one register, 2–3 in another.
    #[inline(always)]
    fn bytes8<const BS: usize, const QUANTS: usize>(self) {
        let Rows {
            gemv: g,
            x: p,
            bytes: all,
            first,
            out,
        } = self;
        let (f, bw) = (g.simd.avx512f, g.simd.avx512bw);
        let ones = f._mm512_set1_epi16(1);
        let zero = f._mm512_setzero_si512();
        let (first2, last2): (__m512i, __m512i) = (cast(FIRST2), cast(LAST2));
        let steps = g.groups;
        let (x0, x1, xs0, xs1, sums) = (
            &p.x0[..steps],
            &p.x1[..steps],
            &p.scale0[..steps],
            &p.scale1[..steps],
            &p.sums[..steps],
        );
        for (r, out) in out.iter_mut().enumerate() {
            let (bytes, scales, mins) = row_slices(g, all, first + r, BS);
            let mut acc = f._mm512_setzero_ps();
            for step in 0..steps {
                let blocks = &bytes[step * GROUP * BS..];
                let present = (blocks.len() / BS).min(GROUP);
                let q: [__m256i; GROUP] = if present == GROUP {
                    let blocks = &blocks[..GROUP * BS];
                    std::array::from_fn(|j| load32(blocks, j * BS + QUANTS))
                } else {
                    std::array::from_fn(|j| {
                        if j < present {
                            load32(blocks, j * BS + QUANTS)
                        } else {
                            cast([0u8; 32])
                        }
                    })
                };
                let sc = scale4(&scales[step * GROUP..step * GROUP + GROUP], f);
                let halves = [
                    (q[0], q[1], x0[step], first2, xs0[step]),
                    (q[2], q[3], x1[step], last2, xs1[step]),
                ];
                for (a, b, x, spread, x_scale) in halves {
                    let w = f._mm512_inserti64x4::<1>(f._mm512_castsi256_si512(a), b);
                    // vpmaddubsw multiplies unsigned by signed bytes: |w| times x carrying w's
                    // sign.
                    let negative = bw._mm512_movepi8_mask(w);
                    let x = bw._mm512_mask_sub_epi8(x, negative, zero, x);
                    let dots = bw
                        ._mm512_madd_epi16(bw._mm512_maddubs_epi16(bw._mm512_abs_epi8(w), x), ones);
                    let scale = f._mm512_mul_ps(f._mm512_permutexvar_ps(spread, sc), x_scale);
                    acc = f._mm512_fmadd_ps(f._mm512_cvtepi32_ps(dots), scale, acc);
                }
                if let Some(mins) = mins {
                    acc = add_block_constants(f, acc, &mins[step * GROUP..], sums[step]);
                }
            }
            *out = f._mm512_reduce_add_ps(acc);
        }
    }
}

/// `acc` plus a split weight's four block constants (`mins`, from the step's first block)
/// times the activations' block sums (`sums`, in each block's first lane).
#[inline(always)]
fn add_block_constants(
    f: pulp::core_arch::x86::Avx512f,
    acc: __m512,
    mins: &[f32],
    sums: __m512,
) -> __m512 {
    let m = scale4(&mins[..GROUP], f);
    f._mm512_fmadd_ps(f._mm512_permutexvar_ps(cast(BY4), m), sums, acc)
}

/// Four f32 (a step's block scales) in the low lanes of a register.
#[inline(always)]
fn scale4(values: &[f32], f: pulp::core_arch::x86::Avx512f) -> __m512 {
    let mut four = [0f32; 4];
    four.copy_from_slice(values);
    f._mm512_castps128_ps512(cast::<[f32; 4], __m128>(four))
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};

    use super::*;

    /// The kernel against candle's own block kernels on the same weight and row, for each
    /// block type, with a row length that leaves a partial last step (k = 576: 18 blocks).
    #[test]
    fn matches_candles_block_kernels() -> Result<()> {
        let device = Device::Cpu;
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q5_0, GgmlDType::Q8_0] {
            for (n, k) in [(40, 576), (300, 896), (8, 64)] {
                let w = Tensor::randn(0f32, 1.0, (n, k), &device)?;
                let q = Arc::new(QTensor::quantize(&w, dtype)?);
                let Some(gemv) = BlockGemv::new(q.clone(), None)? else {
                    eprintln!("no AVX-512BW here: the kernel is not used, and not tested");
                    return Ok(());
                };
                let x = Tensor::randn(0f32, 1.0, (1, k), &device)?;
                let want: Vec<f32> = QMatMul::from_arc(q)?
                    .forward(&x)?
                    .flatten_all()?
                    .to_vec1()?;
                let got = gemv.multiply(&x.flatten_all()?.to_vec1()?)?;
                let worst = want
                    .iter()
                    .zip(&got)
                    .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
                    .fold(0f32, f32::max);
                assert!(worst < 1e-4, "{dtype:?} {n}×{k}: off by {worst}");
            }
        }
        Ok(())
    }

    /// A split Q4_1 weight: the kernel with the block constants folded in gives what the
    /// dequantized weight gives, within the activations' 8-bit rounding.
    #[test]
    fn folds_a_split_q4_1_weights_constants() -> Result<()> {
        let device = Device::Cpu;
        let (n, k) = (72, 576);
        let w = (Tensor::randn(0f32, 1.0, (n, k), &device)? + 0.5)?;
        let q41 = QTensor::quantize(&w, GgmlDType::Q4_1)?;
        let (q40, offsets) = crate::ops::dequant::split_q4_1(&q41)?;
        let offsets = offsets.t()?.contiguous()?;
        let Some(gemv) = BlockGemv::new(Arc::new(q40), Some(&offsets))? else {
            return Ok(());
        };
        let x = Tensor::randn(0f32, 1.0, (1, k), &device)?;
        let want: Vec<f32> = x
            .matmul(&crate::ops::dequant::dequantize(&q41)?.t()?)?
            .flatten_all()?
            .to_vec1()?;
        let got = gemv.multiply(&x.flatten_all()?.to_vec1()?)?;
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in want.iter().zip(&got) {
            assert!((a - b).abs() < 0.02 * scale, "{a} vs {b} (largest {scale})");
        }
        Ok(())
    }
}
