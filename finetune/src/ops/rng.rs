//! A small seeded random number generator. Training draws every random choice (LoRA
//! initialisation, data order, dropout masks, the validation split) from streams derived from
//! the run's seed and the step, so a run is reproducible and a resumed run needs no RNG state.

use candle_core::{Device, Tensor};

use crate::Result;

/// SplitMix64 (Steele, Lea and Flood, 2014): one `u64` of state, full period, good enough for
/// shuffles and masks, and identical on every platform.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator for sub-stream `stream` of `seed` (an epoch, a step).
    pub fn derive(seed: u64, stream: u64) -> Self {
        let mut r = Self(seed ^ stream.wrapping_mul(0xA24B_AED4_963E_E407));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Inverted dropout: each element kept with probability `1 − rate` and scaled by `1/(1 − rate)`.
pub fn dropout_mask(shape: &[usize], rate: f64, seed: u64) -> Result<Tensor> {
    use rayon::prelude::*;
    let n: usize = shape.iter().product();
    let keep = (1.0 / (1.0 - rate)) as f32;
    let threshold = (rate * (1u64 << 53) as f64) as u64;
    const CHUNK: usize = 1 << 14;
    let mut mask = vec![0f32; n];
    // Chunks draw from their own streams so the mask does not depend on the thread count.
    mask.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        let mut rng = SplitMix64::new(seed ^ (c as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        for v in out {
            *v = if rng.next_u64() >> 11 >= threshold {
                keep
            } else {
                0.0
            };
        }
    });
    Ok(Tensor::from_vec(mask, shape, &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let draw = |mut r: SplitMix64| (0..4).map(|_| r.next_u64()).collect::<Vec<_>>();
        assert_eq!(
            draw(SplitMix64::derive(7, 1)),
            draw(SplitMix64::derive(7, 1))
        );
        assert_ne!(
            draw(SplitMix64::derive(7, 1)),
            draw(SplitMix64::derive(7, 2))
        );
        let mut v: Vec<usize> = (0..10).collect();
        SplitMix64::new(3).shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }
}
