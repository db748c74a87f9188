//! AdamW with a warmup-then-decay learning-rate schedule and global gradient-norm clipping,
//! written out (rather than candle-nn's) so its moments can be checkpointed and restored.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};

use crate::{Error, Result};

/// Learning-rate shape after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Linearly to zero at the last step (Hugging Face's default).
    Linear,
    /// Half a cosine to zero.
    Cosine,
    Constant,
}

/// The learning rate at each optimizer step.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub peak: f64,
    pub warmup: usize,
    pub total: usize,
    pub decay: Decay,
}

impl Schedule {
    /// The rate for step `step` (0-based): rising linearly over the warmup, then decaying.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let done = (step - self.warmup) as f64 / span;
        match self.decay {
            Decay::Linear => self.peak * (1.0 - done).max(0.0),
            Decay::Cosine => self.peak * 0.5 * (1.0 + (std::f64::consts::PI * done.min(1.0)).cos()),
            Decay::Constant => self.peak,
        }
    }
}

/// AdamW (Loshchilov & Hutter) over named variables.
#[derive(Debug)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Updates applied so far.
    pub steps: usize,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, weight_decay: f64) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        let m = vars
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle_core::Result<_>>()?;
        let v = vars
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            steps: 0,
            vars,
            m,
            v,
        })
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// One update with `grads` (one per variable, in order) at learning rate `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let (c1, c2) = (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t));
        for (i, g) in grads.iter().enumerate() {
            let var = &self.vars[i].1;
            let m = ((&self.m[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&m / c1)? / ((&v / c2)?.sqrt()? + self.eps)?)?;
            let theta = var.as_tensor();
            let decayed = (theta * (1.0 - lr * self.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments, by variable name (`name.m`, `name.v`), for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("{name}.m"), self.m[i].clone());
            out.insert(format!("{name}.v"), self.v[i].clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`] after `steps` updates.
    pub fn restore(&mut self, state: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (suffix, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let t = state.get(&format!("{name}.{suffix}")).ok_or_else(|| {
                    Error::Request(format!("the checkpoint lacks optimizer state for {name}"))
                })?;
                if t.dims() != var.as_tensor().dims() {
                    return Err(Error::Request(format!(
                        "the checkpoint's optimizer state for {name} has shape {:?}, not {:?}",
                        t.dims(),
                        var.as_tensor().dims()
                    )));
                }
                *slot = t.to_device(&Device::Cpu)?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.iter() {
        total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_then_decays_to_zero() {
        let s = Schedule {
            peak: 1.0,
            warmup: 2,
            total: 10,
            decay: Decay::Linear,
        };
        assert_eq!(s.lr(0), 0.5);
        assert_eq!(s.lr(1), 1.0);
        assert_eq!(s.lr(2), 1.0);
        assert!(s.lr(9) < s.lr(5) && s.lr(9) > 0.0);
        assert_eq!(s.lr(10), 0.0);
    }

    #[test]
    fn adamw_minimises_a_quadratic_and_clipping_bounds_the_norm() {
        let x = Var::new(&[3f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("x".into(), x.clone())], 0.0).unwrap();
        for _ in 0..300 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap().get(x.as_tensor()).unwrap().clone();
            opt.step(&[g], 0.05).unwrap();
        }
        let end: Vec<f32> = x.as_tensor().to_vec1().unwrap();
        assert!(end.iter().all(|v| v.abs() < 0.05), "{end:?}");
        let mut grads = vec![Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap()];
        assert_eq!(clip_grad_norm(&mut grads, 1.0).unwrap(), 5.0);
        let clipped: Vec<f32> = grads[0].to_vec1().unwrap();
        assert!((clipped[0] - 0.6).abs() < 1e-4 && (clipped[1] - 0.8).abs() < 1e-4);
    }
}
