//! Linear layers for a handful of token rows (a search query), with half-size weights.
//!
//! A query of ~16 tokens multiplies a `(16, 384)` matrix by each `(384, n)` weight: gemm then
//! spends more time packing the weight into its own layout on every call than multiplying
//! (about 250 µs for `n = 1152`, where the arithmetic is 7 M multiply-adds), and the weights
//! are streamed from memory at full f32 size. This kernel reads weights packed once at load, in
//! f16 (half the bytes), widens them to f32 in registers and accumulates in f32, eight rows by
//! 32 columns at a time: about 110 µs for the same product on one core, with no thread
//! hand-off. Only the weights are rounded to f16: on 600 real passages that kept every embedding
//! at cosine ≥ 0.9999997 with the f32 model (session 5's measurement); the encoder's test holds
//! this path to the f32 one.
//!
//! AVX-512 only (through `pulp`, so no `unsafe`): elsewhere [`PackedF16::new`] returns `None`
//! and the encoder keeps gemm.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use pulp::x86::V4;
use pulp::{NullaryFnOnce, cast, u16x16};

type Result<T> = candle_core::Result<T>;

/// Output columns per panel: two AVX-512 registers.
const PANEL: usize = 32;
/// Rows per tile: 8 × 2 accumulators, 2 weight registers and a broadcast fit 32 registers.
const TILE_ROWS: usize = 8;

/// A `(k, n)` weight in f16, in panels of 32 columns: for each panel, for each of the `k`
/// rows, its 32 values as two `u16x16`. Applied as `xs.apply_op1_no_bwd(&packed)` to
/// `(m, k)` rows, giving `(m, n)`.
pub(crate) struct PackedF16 {
    simd: V4,
    k: usize,
    n: usize,
    panels: Vec<u16x16>,
}

impl std::fmt::Debug for PackedF16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedF16")
            .field("k", &self.k)
            .field("n", &self.n)
            .finish()
    }
}

impl PackedF16 {
    /// Packs a contiguous `(k, n)` f32 weight; `None` without AVX-512 or when `n` is not a
    /// multiple of 32.
    pub(crate) fn new(weight: &Tensor) -> Result<Option<Self>> {
        let Some(simd) = V4::try_new() else {
            return Ok(None);
        };
        let (k, n) = weight.dims2()?;
        if n % PANEL != 0 {
            return Ok(None);
        }
        let values: Vec<f32> = weight.flatten_all()?.to_vec1()?;
        let mut panels = Vec::with_capacity(k * n / 16);
        for panel in 0..n / PANEL {
            for row in values.chunks_exact(n) {
                for half in 0..2 {
                    let start = panel * PANEL + half * 16;
                    let bits: [u16; 16] =
                        std::array::from_fn(|j| half::f16::from_f32(row[start + j]).to_bits());
                    panels.push(cast(bits));
                }
            }
        }
        Ok(Some(Self { simd, k, n, panels }))
    }

    /// `x · W` for `m` rows of `x` (each `k` long) into `y` (`m` rows of `n`): beyond one
    /// tile of rows, the rows split evenly in two halves for candle's pool (each streams the
    /// whole weight, which both cores' caches share, and writes its own rows).
    fn multiply(&self, x: &[f32], y: &mut [f32]) {
        let m = x.len() / self.k;
        if m <= TILE_ROWS {
            return self.multiply_rows(x, y);
        }
        let split = m.div_ceil(2);
        let (x0, x1) = x.split_at(split * self.k);
        let (y0, y1) = y.split_at_mut(split * self.n);
        // candle's barrier pool, not rayon: its workers spin for a while after each call, so
        // the next of a forward pass's two dozen products starts without a futex wake-up
        // (rayon's were about 12% of a query's time in `perf`). Each half is written by the
        // one thread that takes it.
        let halves = [Mutex::new((x0, y0)), Mutex::new((x1, y1))];
        candle_core::utils::barrier_pool().execute_chunked(halves.len(), |range| {
            for i in range {
                let mut half = halves[i].lock().unwrap_or_else(|e| e.into_inner());
                let (x, y) = &mut *half;
                self.multiply_rows(x, y);
            }
        });
    }

    /// `x · W` for `m` rows of `x` into `y`, on this thread.
    fn multiply_rows(&self, x: &[f32], y: &mut [f32]) {
        let (k, n) = (self.k, self.n);
        let m = x.len() / k;
        for (panel, w) in self.panels.chunks_exact(2 * k).enumerate() {
            let mut row = 0;
            while row < m {
                let rows = (m - row).min(TILE_ROWS);
                let x = &x[row * k..(row + rows) * k];
                let y = &mut y[row * n + panel * PANEL..];
                let simd = self.simd;
                macro_rules! tile {
                    ($($r:literal)*) => {
                        match rows {
                            $($r => simd.vectorize(Tile::<$r> { simd, x, w, y, k, n }),)*
                            _ => unreachable!("tiles are 1 to {TILE_ROWS} rows"),
                        }
                    };
                }
                tile!(1 2 3 4 5 6 7 8);
                row += rows;
            }
        }
    }
}

/// `R` rows of `x` times one panel `w`, into the panel's 32 columns of `R` rows of `y`.
struct Tile<'a, const R: usize> {
    simd: V4,
    x: &'a [f32],
    w: &'a [u16x16],
    y: &'a mut [f32],
    k: usize,
    n: usize,
}

impl<const R: usize> NullaryFnOnce for Tile<'_, R> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let s = self.simd.avx512f;
        let k = self.k;
        let rows: [&[f32]; R] = std::array::from_fn(|i| &self.x[i * k..(i + 1) * k]);
        let w = &self.w[..2 * k];
        let mut acc = [[s._mm512_setzero_ps(); 2]; R];
        for kk in 0..k {
            let w0 = s._mm512_cvtph_ps(cast(w[2 * kk]));
            let w1 = s._mm512_cvtph_ps(cast(w[2 * kk + 1]));
            for (acc, row) in acc.iter_mut().zip(&rows) {
                let x = s._mm512_set1_ps(row[kk]);
                acc[0] = s._mm512_fmadd_ps(x, w0, acc[0]);
                acc[1] = s._mm512_fmadd_ps(x, w1, acc[1]);
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            let out = &mut self.y[i * self.n..i * self.n + PANEL];
            out[..16].copy_from_slice(&cast::<_, [f32; 16]>(acc[0]));
            out[16..].copy_from_slice(&cast::<_, [f32; 16]>(acc[1]));
        }
    }
}

impl CustomOp1 for PackedF16 {
    fn name(&self) -> &'static str {
        "lore-packed-f16-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(src) = storage else {
            candle_core::bail!("packed linear: f32 only")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("packed linear: input must be contiguous")
        };
        let (m, k) = layout.shape().dims2()?;
        if k != self.k {
            candle_core::bail!("packed linear: rows of {k} for a weight of {}", self.k);
        }
        let mut dst = vec![0f32; m * self.n];
        self.multiply(&src[start..end], &mut dst);
        Ok((CpuStorage::F32(dst), Shape::from((m, self.n))))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn the_packed_product_matches_f32_to_f16_rounding() {
        let device = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (96, 64), &device).expect("w");
        let Some(packed) = PackedF16::new(&w).expect("pack") else {
            eprintln!("no AVX-512 here: the packed kernel is not used, and not tested");
            return;
        };
        // Every tile height (1 to 8 rows) and a second tile.
        for m in [1, 3, 8, 13] {
            let x = Tensor::randn(0f32, 1.0, (m, 96), &device).expect("x");
            let want: Vec<f32> = x
                .matmul(&w)
                .expect("f32")
                .flatten_all()
                .expect("f")
                .to_vec1()
                .expect("v");
            let got: Vec<f32> = x
                .apply_op1_no_bwd(&packed)
                .expect("packed")
                .flatten_all()
                .expect("f")
                .to_vec1()
                .expect("v");
            assert_eq!(got.len(), want.len());
            // f16 keeps 11 significant bits: each product is off by ≤ 2^-11 relative, so the
            // sum of 96 terms of size ~1 by well under 0.05.
            let worst = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 0.05, "m {m}: max |Δ| {worst}");
            assert!(worst > 0.0, "m {m}: the f16 rounding should show");
        }
    }

    #[test]
    fn widths_that_are_not_whole_panels_are_left_to_gemm() {
        let w = Tensor::zeros((8, 48), candle_core::DType::F32, &Device::Cpu).expect("w");
        assert!(PackedF16::new(&w).expect("pack").is_none());
    }
}
