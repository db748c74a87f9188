//! The output head and the cross-entropy loss of a training step, as one op.
//!
//! The head is the widest product of a step: `(tokens, vocab)` logits, 201 MB for a 4 × 256
//! batch of SmolLM2 (49,152 words) and 620 MB for Qwen2.5 (151,936). Built as a matmul followed
//! by a loss op, the step held those logits until the backward pass, allocated a second block
//! of their size for their gradient and copied them once more on the way, and expanded the
//! head's 4-bit blocks to f32 twice (forward and backward): the largest blocks of a step's
//! peak memory.
//!
//! Here the logits exist a few rows at a time. For each slice of rows the forward pass
//! computes the logits, the loss, the gradient of the mean loss with respect to those logits
//! (`softmax − onehot`, written over the logits in place) and at once the gradient with respect
//! to the head's input, `(softmax − onehot) · W`. The backward pass only scales that stored
//! gradient by the one it receives. Same two products as before, one expansion of `W`, and no
//! logits buffer larger than [`LOGITS_PER_SLICE`] values. Peak RSS of a 4 × 256 step: SmolLM2
//! 2.58 → 2.0 GB, Qwen2.5-0.5B 6.5 → 4.7 GB, at the same speed (`scripts/bench-finetune`).

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::cpu_storage;

type CResult<T> = candle_core::Result<T>;

/// Logits held at once: 16 Mi values (64 MB), 341 rows of SmolLM2's vocabulary and 110 of
/// Qwen2.5's. Thinner slices make thinner GEMMs: at 4 Mi values (27 rows of Qwen2.5) a training
/// step was 10% slower (`scripts/bench-finetune`, 58 against 64 tokens/s).
const LOGITS_PER_SLICE: usize = 16 << 20;

/// Mean cross-entropy of `x · Wᵀ (+ bias)` against `targets`, where `x` is `(m, in)` and the
/// frozen block-quantized head `W` is `(vocab, in)`, with per-block offsets (transposed,
/// `(in/32, vocab)`) when given. Differentiable with respect to `x` only.
pub fn head_cross_entropy(
    x: &Tensor,
    weight: &Arc<QTensor>,
    offsets: Option<&Tensor>,
    bias: Option<&Tensor>,
    targets: &[u32],
) -> crate::Result<Tensor> {
    sliced(x, weight, offsets, bias, targets, LOGITS_PER_SLICE)
}

/// [`head_cross_entropy`] holding at most `slice_values` logits at once.
fn sliced(
    x: &Tensor,
    weight: &Arc<QTensor>,
    offsets: Option<&Tensor>,
    bias: Option<&Tensor>,
    targets: &[u32],
    slice_values: usize,
) -> crate::Result<Tensor> {
    let (m, width) = x.dims2()?;
    let (vocab, in_dim) = weight.shape().dims2()?;
    if width != in_dim {
        return Err(crate::Error::Request(format!(
            "the head takes rows of {in_dim} values, not {width}"
        )));
    }
    if m == 0 || m != targets.len() || targets.iter().any(|&t| t as usize >= vocab) {
        return Err(crate::Error::Request(
            "cross-entropy targets do not match the head's input".into(),
        ));
    }
    let bias = match bias {
        Some(b) => Some(b.flatten_all()?.to_vec1::<f32>()?),
        None => None,
    };
    if bias.as_ref().is_some_and(|b| b.len() != vocab) {
        return Err(crate::Error::Request(
            "the head's bias does not match its vocabulary".into(),
        ));
    }
    let op = HeadLoss {
        weight: weight.clone(),
        offsets: offsets.cloned(),
        bias,
        targets: targets.to_vec(),
        slice_values,
        input_grad: Mutex::new(None),
    };
    let x = x.contiguous()?;
    if x.track_op() {
        Ok(x.apply_op1(op)?)
    } else {
        // Evaluation: the loss alone, without the second product.
        let (storage, layout) = x.storage_and_layout();
        let (loss, _) = op.run(cpu_storage(&storage)?, layout, false)?;
        Ok(Tensor::new(loss, &Device::Cpu)?)
    }
}

struct HeadLoss {
    weight: Arc<QTensor>,
    offsets: Option<Tensor>,
    bias: Option<Vec<f32>>,
    targets: Vec<u32>,
    slice_values: usize,
    /// `d mean loss / d x`, computed by the forward pass for the backward pass to take.
    input_grad: Mutex<Option<Vec<f32>>>,
}

/// log Σ exp over a row, stably.
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    max + row.iter().map(|&v| (v - max).exp()).sum::<f32>().ln()
}

impl HeadLoss {
    /// The mean loss over `x`'s rows and, when asked, its gradient with respect to `x`.
    fn run(
        &self,
        x: &CpuStorage,
        layout: &Layout,
        with_grad: bool,
    ) -> CResult<(f32, Option<Vec<f32>>)> {
        let w = crate::ops::dequant::expand_with_offsets(&self.weight, self.offsets.as_ref())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .contiguous()?;
        let (w_storage, w_layout) = w.storage_and_layout();
        let w_cpu = cpu_storage(&w_storage)?;
        let (vocab, width) = w_layout.shape().dims2()?;
        let w_t = w_layout.transpose(0, 1)?;
        let m = self.targets.len();
        if layout.shape().elem_count() != m * width {
            candle_core::bail!("the head's input does not match its targets");
        }
        let slice_rows = (self.slice_values / vocab).clamp(1, m);
        let scale = 1.0 / m as f32;
        let mut loss = 0f64;
        let mut grad = with_grad.then(|| Vec::with_capacity(m * width));
        for first in (0..m).step_by(slice_rows) {
            let rows = slice_rows.min(m - first);
            let x_rows = Layout::contiguous_with_offset(
                (rows, width),
                layout.start_offset() + first * width,
            );
            let CpuStorage::F32(mut logits) =
                x.matmul(w_cpu, (1, rows, vocab, width), &x_rows, &w_t)?
            else {
                candle_core::bail!("the head's logits must be f32");
            };
            if let Some(bias) = &self.bias {
                logits
                    .par_chunks_mut(vocab)
                    .for_each(|row| row.iter_mut().zip(bias).for_each(|(v, b)| *v += b));
            }
            let targets = &self.targets[first..first + rows];
            loss += logits
                .par_chunks_mut(vocab)
                .zip(targets.par_iter())
                .map(|(row, &t)| {
                    let lse = log_sum_exp(row);
                    let value = (lse - row[t as usize]) as f64;
                    if with_grad {
                        // d mean / d logits = (softmax − onehot) / m, over the logits.
                        row.iter_mut().for_each(|v| *v = (*v - lse).exp() * scale);
                        row[t as usize] -= scale;
                    }
                    value
                })
                .sum::<f64>();
            if let Some(grad) = grad.as_mut() {
                let logits_grad = CpuStorage::F32(logits);
                let g_rows = Layout::contiguous((rows, vocab));
                let CpuStorage::F32(part) =
                    logits_grad.matmul(w_cpu, (1, rows, width, vocab), &g_rows, w_layout)?
                else {
                    candle_core::bail!("the head's gradient must be f32");
                };
                grad.extend_from_slice(&part);
            }
        }
        Ok(((loss / m as f64) as f32, grad))
    }
}

impl CustomOp1 for HeadLoss {
    fn name(&self) -> &'static str {
        "lore-head-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (loss, grad) = self.run(storage, layout, true)?;
        *self
            .input_grad
            .lock()
            .map_err(|_| candle_core::Error::Msg("head gradient lock poisoned".into()))? = grad;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, _loss: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let stored = self
            .input_grad
            .lock()
            .map_err(|_| candle_core::Error::Msg("head gradient lock poisoned".into()))?
            .take();
        // Normally the forward pass left it; a second backward pass recomputes it.
        let input_grad = match stored {
            Some(g) => g,
            None => {
                let x = x.contiguous()?;
                let (storage, layout) = x.storage_and_layout();
                self.run(cpu_storage(&storage)?, layout, true)?
                    .1
                    .unwrap_or_default()
            }
        };
        let upstream = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let dx = Tensor::from_vec(input_grad, x.shape(), &Device::Cpu)?;
        Ok(Some(dx.affine(upstream as f64, 0.0)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use candle_core::quantized::GgmlDType;

    /// The same loss and input gradient as the head's matmul followed by candle's own
    /// cross-entropy, with offsets (a split Q4_1 head), a bias, and rows in several slices.
    #[test]
    fn matches_the_head_then_the_loss() -> crate::Result<()> {
        let device = Device::Cpu;
        let (vocab, width, m) = (5_000, 64, 40);
        let slice_values = 13 * vocab;
        let w = Tensor::randn(0f32, 0.5, (vocab, width), &device)?;
        let (q, offsets) =
            crate::ops::dequant::split_q4_1(&QTensor::quantize(&w, GgmlDType::Q4_1)?)?;
        let offsets = offsets.t()?.contiguous()?;
        let weight = Arc::new(q);
        let bias = Tensor::randn(0f32, 0.1, vocab, &device)?;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (m, width), &device)?)?;
        let targets: Vec<u32> = (0..m as u32).map(|i| (i * 7919) % vocab as u32).collect();
        let run = |x: &Tensor| {
            sliced(
                x,
                &weight,
                Some(&offsets),
                Some(&bias),
                &targets,
                slice_values,
            )
        };

        // Four slices of 13, 13, 13 and 1 rows.
        let ours = run(x.as_tensor())?;
        let ours_grad = (&ours * 3.0)?.backward()?;
        let ours_grad = ours_grad.get(x.as_tensor()).expect("a gradient for x");

        let full = crate::ops::dequant::expand_with_offsets(&weight, Some(&offsets))?;
        let logits = x.as_tensor().matmul(&full.t()?)?.broadcast_add(&bias)?;
        let t = Tensor::new(targets.as_slice(), &device)?;
        let plain = candle_nn::loss::cross_entropy(&logits, &t)?;
        let plain_grad = (&plain * 3.0)?.backward()?;
        let plain_grad = plain_grad.get(x.as_tensor()).expect("a gradient for x");

        let (a, b) = (ours.to_scalar::<f32>()?, plain.to_scalar::<f32>()?);
        assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "loss {a} vs {b}");
        let diff = (ours_grad - plain_grad)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        let size = plain_grad.abs()?.max_all()?.to_scalar::<f32>()?;
        // Each gradient value sums thousands of products in another order: f32 rounding leaves
        // up to a few 1e-4 of the largest (a missing `− onehot` or scale is off by far more).
        assert!(
            diff < 1e-3 * size,
            "gradient differs by {diff} (largest {size})"
        );

        // Without a graph, the loss alone, and the same.
        let detached = run(&x.as_tensor().detach())?;
        assert!((detached.to_scalar::<f32>()? - b).abs() < 1e-4 * b.abs().max(1.0));
        Ok(())
    }

    #[test]
    fn targets_must_fit() -> crate::Result<()> {
        let w = Arc::new(QTensor::quantize(
            &Tensor::zeros((64, 32), candle_core::DType::F32, &Device::Cpu)?,
            GgmlDType::Q4_0,
        )?);
        let x = Tensor::zeros((2, 32), candle_core::DType::F32, &Device::Cpu)?;
        assert!(head_cross_entropy(&x, &w, None, None, &[1, 64]).is_err());
        assert!(head_cross_entropy(&x, &w, None, None, &[1]).is_err());
        assert!(head_cross_entropy(&x.narrow(1, 0, 16)?, &w, None, None, &[1, 2]).is_err());
        assert!(head_cross_entropy(&x, &w, None, None, &[1, 63]).is_ok());
        Ok(())
    }
}
