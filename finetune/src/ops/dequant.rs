//! Block dequantization to f32, fast enough to run per matmul.
//!
//! Why: candle multiplies GGML blocks by first quantizing the activations to 8 bits and then
//! taking one block dot product per (row, column); that is the right kernel for a decode step
//! (one row) but, on this CPU, 5–6× slower than an f32 GEMM for a prompt of 128 tokens.
//! Expanding one weight matrix to f32 just before the multiply costs less than the GEMM it
//! enables, and the f32 copy is dropped right after: weights stay in 4-bit blocks at rest.
//! candle's own `dequantize` is serial and several times slower than this.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::Result;

/// Block types with a fast path here; others go through candle's `dequantize`.
fn block_layout(dtype: GgmlDType) -> Option<(usize, usize)> {
    // (bytes per block, values per block)
    match dtype {
        GgmlDType::Q4_0 => Some((18, 32)),
        GgmlDType::Q4_1 => Some((20, 32)),
        GgmlDType::Q5_0 => Some((22, 32)),
        GgmlDType::Q5_1 => Some((24, 32)),
        GgmlDType::Q8_0 => Some((34, 32)),
        _ => None,
    }
}

fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Expands one block into `out` (32 values), with GGML's value order: for 4-bit blocks the
/// low nibbles of the 16 bytes are values 0..16 and the high nibbles values 16..32.
fn expand(dtype: GgmlDType, block: &[u8], out: &mut [f32]) {
    match dtype {
        GgmlDType::Q4_0 => {
            let d = half_at(block, 0);
            for (i, &q) in block[2..18].iter().enumerate() {
                out[i] = (f32::from(q & 0x0f) - 8.0) * d;
                out[i + 16] = (f32::from(q >> 4) - 8.0) * d;
            }
        }
        GgmlDType::Q4_1 => {
            let (d, m) = (half_at(block, 0), half_at(block, 2));
            for (i, &q) in block[4..20].iter().enumerate() {
                out[i] = f32::from(q & 0x0f) * d + m;
                out[i + 16] = f32::from(q >> 4) * d + m;
            }
        }
        GgmlDType::Q5_0 => {
            let d = half_at(block, 0);
            for (i, q) in q5_values(&block[2..22]).into_iter().enumerate() {
                out[i] = (f32::from(q) - 16.0) * d;
            }
        }
        GgmlDType::Q5_1 => {
            let (d, m) = (half_at(block, 0), half_at(block, 2));
            for (i, q) in q5_values(&block[4..24]).into_iter().enumerate() {
                out[i] = f32::from(q) * d + m;
            }
        }
        GgmlDType::Q8_0 => {
            let d = half_at(block, 0);
            for (o, &q) in out.iter_mut().zip(&block[2..34]) {
                *o = f32::from(q as i8) * d;
            }
        }
        _ => unreachable!("block_layout admits only the types above"),
    }
}

/// AVX-512 expansion of the 32-value block types, from the same bytes to the same f32 values
/// (bit for bit: each value gets the same one or two roundings as in [`expand`]). Measured on
/// a 4864 × 896 weight, 2 threads: Q5_0 (most of Qwen2.5-0.5B's layers) 1.6 ms against the
/// scalar loop's 3.6–4.0; Q4_0 and Q8_0 barely move (1.6 and 1.2 ms), since writing the
/// 17 MB of f32 already bounds them.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{__m128i, __m512, __m512i};

    use candle_core::quantized::GgmlDType;
    use pulp::x86::V4;
    use pulp::{NullaryFnOnce, cast};

    use super::half_at;
    use crate::ops::gemv::load16;

    /// The CPU's AVX-512, checked once.
    #[derive(Clone, Copy)]
    pub struct Expander(V4);

    impl Expander {
        /// `None` without AVX-512 (F and BW): callers keep the scalar loop.
        pub fn new() -> Option<Self> {
            V4::try_new().map(Self)
        }

        /// Expands one block of a 32-value type into `out`; `false` (nothing written) for
        /// other block types.
        pub fn expand(self, dtype: GgmlDType, block: &[u8], out: &mut [f32; 32]) -> bool {
            self.0.vectorize(Block {
                simd: self.0,
                dtype,
                block,
                out,
            })
        }
    }

    struct Block<'a> {
        simd: V4,
        dtype: GgmlDType,
        block: &'a [u8],
        out: &'a mut [f32; 32],
    }

    fn store(out: &mut [f32], v: __m512) {
        let v: [f32; 16] = cast(v);
        out.copy_from_slice(&v);
    }

    impl NullaryFnOnce for Block<'_> {
        type Output = bool;

        #[inline(always)]
        fn call(self) -> bool {
            let Block {
                simd,
                dtype,
                block: b,
                out,
            } = self;
            let f = simd.avx512f;
            let (low, high) = out.split_at_mut(16);
            // The value lanes of a nibble block: bytes' low nibbles are values 0..16, high
            // nibbles 16..32; a Q5 block's `qh` bit j adds 16 to value j.
            let nibbles = |qs: __m128i, qh: Option<u32>| -> (__m512i, __m512i) {
                let q = f._mm512_cvtepu8_epi32(qs);
                let mut lo = f._mm512_and_si512(q, f._mm512_set1_epi32(0x0f));
                let mut hi = f._mm512_srli_epi32::<4>(q);
                if let Some(qh) = qh {
                    let sixteen = f._mm512_set1_epi32(16);
                    lo = f._mm512_mask_add_epi32(lo, qh as u16, lo, sixteen);
                    hi = f._mm512_mask_add_epi32(hi, (qh >> 16) as u16, hi, sixteen);
                }
                (lo, hi)
            };
            let qh_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            // (q − offset)·d, the symmetric types; q·d + m, the ones with a minimum.
            let centred = |q: __m512i, offset: i32, d: f32| {
                let q = f._mm512_sub_epi32(q, f._mm512_set1_epi32(offset));
                f._mm512_mul_ps(f._mm512_cvtepi32_ps(q), f._mm512_set1_ps(d))
            };
            let shifted = |q: __m512i, d: f32, m: f32| {
                let v = f._mm512_mul_ps(f._mm512_cvtepi32_ps(q), f._mm512_set1_ps(d));
                f._mm512_add_ps(v, f._mm512_set1_ps(m))
            };
            match dtype {
                GgmlDType::Q4_0 => {
                    let (lo, hi) = nibbles(load16(b, 2), None);
                    let d = half_at(b, 0);
                    store(low, centred(lo, 8, d));
                    store(high, centred(hi, 8, d));
                }
                GgmlDType::Q4_1 => {
                    let (lo, hi) = nibbles(load16(b, 4), None);
                    let (d, m) = (half_at(b, 0), half_at(b, 2));
                    store(low, shifted(lo, d, m));
                    store(high, shifted(hi, d, m));
                }
                GgmlDType::Q5_0 => {
                    let (lo, hi) = nibbles(load16(b, 6), Some(qh_at(2)));
                    let d = half_at(b, 0);
                    store(low, centred(lo, 16, d));
                    store(high, centred(hi, 16, d));
                }
                GgmlDType::Q5_1 => {
                    let (lo, hi) = nibbles(load16(b, 8), Some(qh_at(4)));
                    let (d, m) = (half_at(b, 0), half_at(b, 2));
                    store(low, shifted(lo, d, m));
                    store(high, shifted(hi, d, m));
                }
                GgmlDType::Q8_0 => {
                    let d = half_at(b, 0);
                    let first = f._mm512_cvtepi8_epi32(load16(b, 2));
                    let second = f._mm512_cvtepi8_epi32(load16(b, 18));
                    store(low, centred(first, 0, d));
                    store(high, centred(second, 0, d));
                }
                _ => return false,
            }
            true
        }
    }
}

/// Elsewhere the scalar loop expands every block.
#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    use candle_core::quantized::GgmlDType;

    #[derive(Clone, Copy)]
    pub struct Expander;

    impl Expander {
        pub fn new() -> Option<Self> {
            None
        }

        pub fn expand(self, _: GgmlDType, _: &[u8], _: &mut [f32; 32]) -> bool {
            false
        }
    }
}

/// The 32 unsigned 5-bit values of a Q5 block's `qh` (4 bytes: bit j is value j's high bit)
/// and `qs` (16 bytes: low nibbles are values 0..16, high nibbles 16..32).
fn q5_values(bits: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([bits[0], bits[1], bits[2], bits[3]]);
    let mut out = [0u8; 32];
    for (j, &q) in bits[4..20].iter().enumerate() {
        let high0 = (((qh >> j) & 1) << 4) as u8;
        let high1 = (((qh >> (j + 16)) & 1) << 4) as u8;
        out[j] = (q & 0x0f) | high0;
        out[j + 16] = (q >> 4) | high1;
    }
    out
}

/// The tensor's values as f32, in its shape.
pub fn dequantize(tensor: &QTensor) -> Result<Tensor> {
    dequantize_plus(tensor, None)
}

/// As [`dequantize`], adding `offsets[i]` to every value of block `i` (blocks in storage
/// order) in the same pass: a split Q4_1 weight expanded whole.
pub fn dequantize_plus(tensor: &QTensor, offsets: Option<&[f32]>) -> Result<Tensor> {
    let dtype = tensor.dtype();
    let Some((block_bytes, block_values)) = block_layout(dtype) else {
        let t = tensor.dequantize(&Device::Cpu)?;
        return Ok(match offsets {
            Some(o) => {
                let per_block = Tensor::from_slice(o, (o.len(), 1), &Device::Cpu)?;
                t.reshape((o.len(), ()))?
                    .broadcast_add(&per_block)?
                    .reshape(tensor.shape())?
            }
            None => t,
        });
    };
    debug_assert_eq!(block_values, 32);
    let data = tensor.data()?;
    let simd = avx512::Expander::new();
    // Collected block by block into memory that is never zeroed first: the expanded matrix is
    // the size of an f32 weight, and zeroing it (memset, or the kernel clearing fresh pages)
    // cost as much as the expansion. Tasks of at least 64 blocks keep rayon's per-task
    // overhead small next to the work.
    let blocks: Vec<[f32; 32]> = data
        .par_chunks_exact(block_bytes)
        .with_min_len(64)
        .enumerate()
        .map(|(i, bytes)| {
            let mut out = [0f32; 32];
            if !simd.is_some_and(|simd| simd.expand(dtype, bytes, &mut out)) {
                expand(dtype, bytes, &mut out);
            }
            if let Some(offsets) = offsets {
                let m = offsets[i];
                out.iter_mut().for_each(|v| *v += m);
            }
            out
        })
        .collect();
    let values = blocks.into_flattened();
    Ok(Tensor::from_vec(values, tensor.shape(), &Device::Cpu)?)
}

/// Splits Q4_1 blocks, exactly, into Q4_0 blocks plus one f32 offset per block.
///
/// A Q4_1 value is `q·d + m` with `q` in 0..16; that is `(q − 8)·d + (m + 8d)`: a Q4_0 value
/// with the same scale and nibbles, plus a per-block constant. So `W·x = W₀·x + O·s(x)`, where
/// `s(x)` sums `x` over each 32-wide block and `O` is (rows, cols/32). candle's Q4_0 kernel is
/// about 5× faster than its Q4_1 kernel here, and `O·s(x)` costs 1/32 of the main product,
/// so Q4_1 models run at Q4_0 speed without a second, lossy quantization.
pub fn split_q4_1(tensor: &QTensor) -> Result<(QTensor, Tensor)> {
    let (rows, cols) = tensor.shape().dims2()?;
    let data = tensor.data()?;
    let blocks = data.len() / 20;
    let mut q4_0 = Vec::with_capacity(blocks * 18);
    let mut offsets = Vec::with_capacity(blocks);
    for b in data.chunks_exact(20) {
        let (d, m) = (half_at(b, 0), half_at(b, 2));
        q4_0.extend_from_slice(&b[0..2]);
        q4_0.extend_from_slice(&b[4..20]);
        offsets.push(m + 8.0 * d);
    }
    let storage = QStorage::from_data(Cow::Owned(q4_0), &Device::Cpu, GgmlDType::Q4_0)?;
    let q = QTensor::new(storage, (rows, cols))?;
    let offsets = Tensor::from_vec(offsets, (rows, cols / 32), &Device::Cpu)?;
    Ok((q, offsets))
}

/// Widens Q5_0 or Q5_1 blocks, exactly, to Q8_0 (candle has no fast Q5 kernel): a 5-bit
/// value minus 16 fits in a signed byte with the same scale. Q5_1's `q·d + m` becomes
/// `(q − 16)·d` plus a per-block offset `m + 16d`, used as in [`split_q4_1`].
pub fn widen_q5(tensor: &QTensor) -> Result<(QTensor, Option<Tensor>)> {
    let dtype = tensor.dtype();
    let (rows, cols) = tensor.shape().dims2()?;
    let data = tensor.data()?;
    let block_bytes = if dtype == GgmlDType::Q5_1 { 24 } else { 22 };
    let mut q8 = Vec::with_capacity(data.len() / block_bytes * 34);
    let mut offsets = Vec::new();
    for b in data.chunks_exact(block_bytes) {
        let bits = if dtype == GgmlDType::Q5_1 {
            offsets.push(half_at(b, 2) + 16.0 * half_at(b, 0));
            &b[4..24]
        } else {
            &b[2..22]
        };
        q8.extend_from_slice(&b[0..2]);
        q8.extend(q5_values(bits).iter().map(|&q| (q as i8 - 16) as u8));
    }
    let storage = QStorage::from_data(Cow::Owned(q8), &Device::Cpu, GgmlDType::Q8_0)?;
    let q = QTensor::new(storage, (rows, cols))?;
    let offsets = if dtype == GgmlDType::Q5_1 {
        Some(Tensor::from_vec(offsets, (rows, cols / 32), &Device::Cpu)?)
    } else {
        None
    };
    Ok((q, offsets))
}

/// A block-quantized weight as f32, with per-block offsets (transposed, `(in/32, out)`) added,
/// in one parallel pass.
pub fn expand_with_offsets(weight: &QTensor, offsets: Option<&Tensor>) -> Result<Tensor> {
    let per_block = match offsets {
        // Storage order is row-major over (out, in/32): transpose back (a small tensor).
        Some(o) => Some(o.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?),
        None => None,
    };
    dequantize_plus(weight, per_block.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_q4_1_split_reproduces_every_value() -> Result<()> {
        let w = Tensor::randn(0.3f32, 1.0, (8, 96), &Device::Cpu)?;
        let q = QTensor::quantize(&w, GgmlDType::Q4_1)?;
        let (q0, offsets) = split_q4_1(&q)?;
        let rebuilt = dequantize(&q0)?
            .reshape((8, 3, 32))?
            .broadcast_add(&offsets.unsqueeze(2)?)?
            .reshape((8, 96))?;
        let diff = (rebuilt - dequantize(&q)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-6, "split differs by {diff}");
        Ok(())
    }

    /// The block types with a fast path here.
    const THIRTY_TWO_VALUE_TYPES: [GgmlDType; 5] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
    ];

    #[test]
    fn equals_candle_for_each_fast_type() -> Result<()> {
        let w = Tensor::randn(0f32, 1.0, (64, 96), &Device::Cpu)?;
        for dtype in THIRTY_TWO_VALUE_TYPES {
            let q = QTensor::quantize(&w, dtype)?;
            let ours = dequantize(&q)?.flatten_all()?.to_vec1::<f32>()?;
            let theirs = q
                .dequantize(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            assert_eq!(ours, theirs, "{dtype:?}");
        }
        Ok(())
    }

    #[test]
    fn vector_expansion_equals_the_scalar_loop() -> Result<()> {
        let Some(simd) = avx512::Expander::new() else {
            eprintln!("no AVX-512 here: nothing to compare");
            return Ok(());
        };
        let w = Tensor::randn(0.2f32, 1.5, (16, 256), &Device::Cpu)?;
        for dtype in THIRTY_TWO_VALUE_TYPES {
            let q = QTensor::quantize(&w, dtype)?;
            let (bytes, _) = block_layout(dtype).expect("a 32-value type");
            for (i, block) in q.data()?.chunks_exact(bytes).enumerate() {
                let (mut scalar, mut vector) = ([0f32; 32], [f32::NAN; 32]);
                expand(dtype, block, &mut scalar);
                assert!(simd.expand(dtype, block, &mut vector), "{dtype:?}");
                assert_eq!(scalar, vector, "{dtype:?} block {i}");
            }
        }
        let q = QTensor::quantize(&w, GgmlDType::Q4K)?;
        assert!(!simd.expand(GgmlDType::Q4K, &q.data()?[..32], &mut [0f32; 32]));
        Ok(())
    }
}
