//! Choosing the next token from logits: greedy, or temperature with top-k / top-p, with a
//! repetition penalty; seeded so a run can be repeated exactly.

/// Sampling settings (the defaults are greedy).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = all).
    pub top_p: f32,
    /// Divides positive (multiplies negative) logits of tokens already seen; 1 = off.
    pub repetition_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repetition_window: usize,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            repetition_window: 64,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Checks ranges, naming the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!("temperature must be ≥ 0, not {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p must be within (0, 1], not {}", self.top_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(format!(
                "repetition penalty must be > 0, not {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// A seeded sampler (SplitMix64: small, fast, and the same on every platform).
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplingConfig,
    state: u64,
}

impl Sampler {
    pub fn new(config: SamplingConfig) -> Self {
        let state = config.seed;
        Self { config, state }
    }

    fn uniform(&mut self) -> f32 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// The next token: `logits` are penalised for `history` (in place), then chosen from.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.penalize(logits, history);
        self.choose(logits)
    }

    /// The most likely token `accept` takes from logits [`Self::penalize`] has seen, drawn
    /// as [`Self::sample`] would: a refused draw is masked out and drawn again (a few
    /// times), then the candidates are tried in order of score. `None` when `accept` takes
    /// no token at all.
    pub fn choose_where(
        &mut self,
        logits: &mut [f32],
        accept: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        for _ in 0..32 {
            let t = self.choose(logits);
            if accept(t) {
                return Some(t);
            }
            logits[t as usize] = f32::NEG_INFINITY;
        }
        let mut order: Vec<u32> = (0..logits.len() as u32)
            .filter(|&t| logits[t as usize] > f32::NEG_INFINITY)
            .collect();
        order.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        order.into_iter().find(|&t| accept(t))
    }

    /// The repetition penalty: tokens seen in the window lose score.
    pub fn penalize(&self, logits: &mut [f32], history: &[u32]) {
        let c = &self.config;
        if c.repetition_penalty != 1.0 {
            let start = history.len().saturating_sub(c.repetition_window);
            let mut seen: Vec<u32> = history[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / c.repetition_penalty
                    } else {
                        *l * c.repetition_penalty
                    };
                }
            }
        }
    }

    /// Greedy, or a draw at the temperature within top-k / top-p, from penalised logits.
    pub fn choose(&mut self, logits: &[f32]) -> u32 {
        let c = &self.config;
        if c.temperature == 0.0 {
            return argmax(logits);
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if c.top_k > 0 {
            order.truncate(c.top_k);
        }
        let max = logits[order[0]];
        let mut probs: Vec<f32> = order
            .iter()
            .map(|&i| ((logits[i] - max) / c.temperature).exp())
            .collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if c.top_p < 1.0 {
            let mut mass = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    mass += p;
                    mass >= c.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            order.truncate(keep);
            let total: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let r = self.uniform();
        let mut acc = 0.0;
        for (p, &i) in probs.iter().zip(&order) {
            acc += p;
            if r < acc {
                return i as u32;
            }
        }
        order[order.len() - 1] as u32
    }
}

/// The index of the largest logit (the first on ties): greedy decoding.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplingConfig::default());
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn the_penalty_demotes_seen_tokens() {
        let config = SamplingConfig {
            repetition_penalty: 2.0,
            ..Default::default()
        };
        let mut s = Sampler::new(config);
        assert_eq!(s.sample(&mut [2.0, 1.5], &[0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let hot = SamplingConfig {
            temperature: 1.5,
            top_k: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(hot);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.0, 0.5, 0.2], &[]), 1);
        }
        let warm = SamplingConfig {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let draw = |c: &SamplingConfig| {
            let mut s = Sampler::new(c.clone());
            (0..50)
                .map(|_| s.sample(&mut [0.0, 0.1, 0.2, 0.3], &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(&warm), draw(&warm));
        assert!(
            draw(&warm).iter().any(|&t| t != 3),
            "temperature 1 should not always pick the max"
        );
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let config = SamplingConfig {
            temperature: 1.0,
            top_p: 0.5,
            seed: 3,
            ..Default::default()
        };
        let mut s = Sampler::new(config);
        // Token 0 holds ~88% of the mass: the nucleus at p = 0.5 is token 0 alone.
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [4.0, 2.0, 0.0], &[]), 0);
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = SamplingConfig {
            top_p: 0.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("top-p"));
    }
}
