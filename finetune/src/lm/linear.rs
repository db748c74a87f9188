//! Frozen linear layers over block-quantized weights. LoRA updates are added to their outputs
//! ([`crate::lm::lora::LoraRun::apply`]).

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};

use crate::Result;
use crate::ops::autograd::{DropoutSeed, frozen_matmul, lora_linear};
use crate::ops::dequant::{dequantize, expand_with_offsets, split_q4_1, widen_q5};
use crate::ops::gemv::{self, BlockGemv};
use crate::ops::head_loss::head_cross_entropy;

/// How base weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// 4-bit, as fast as this CPU allows without losing anything a file holds: Q4_1 blocks
    /// are split exactly into Q4_0 + offsets ([`split_q4_1`]), floats are quantized to Q4_0,
    /// Q5 blocks (no fast kernel in candle) are widened exactly to Q8_0 ([`widen_q5`]), other
    /// block types are kept.
    #[default]
    Auto,
    /// As stored: the GGUF's own blocks, or a safetensors folder's floats (as f32).
    Native,
    /// This GGML block type (Q4_1 → Q4_0 by the exact split; anything else re-quantized).
    Blocks(GgmlDType),
}

/// At or above this many rows (tokens) a quantized weight is expanded to f32 for one GEMM;
/// below it candle's block kernel runs. Measured with `examples/qmatmul_formats.rs`: on this
/// 2-core AVX-512 CPU the expansion pays off from about 8 rows.
pub const GEMM_ROWS: usize = 8;

/// `y = x Wᵀ (+ b)` with `W` held as GGML blocks.
#[derive(Debug, Clone)]
pub struct QLinear {
    weight: Arc<QTensor>,
    blocks: QMatMul,
    /// Per-block offsets of a split Q4_1 (or widened Q5_1) weight, transposed: (in/32, out).
    offsets: Option<Tensor>,
    bias: Option<Tensor>,
    /// lore's own one-row kernel over the same blocks, built on the first one-row product
    /// (training never makes one, so never pays for it); `None` inside where it has no kernel
    /// for this block type or CPU.
    gemv: Arc<OnceLock<Option<BlockGemv>>>,
}

impl QLinear {
    pub fn new(weight: QTensor, format: WeightFormat, bias: Option<Tensor>) -> Result<Self> {
        Self::from_arc(Arc::new(weight), format, bias)
    }

    /// As [`QLinear::new`], over a weight that may be shared (a tied output head): it is
    /// shared when kept as is, and converted into a new tensor otherwise.
    pub fn from_arc(
        weight: Arc<QTensor>,
        format: WeightFormat,
        bias: Option<Tensor>,
    ) -> Result<Self> {
        let source = weight.dtype();
        let float = source.block_size() == 1;
        let target = match format {
            WeightFormat::Native => source,
            WeightFormat::Auto if source == GgmlDType::Q4_1 || float => GgmlDType::Q4_0,
            // lore's one-row kernel reads Q5_0 as stored; without it, candle has no fast Q5
            // kernel, and the exact widening to Q8_0 is faster for the bytes it adds.
            WeightFormat::Auto if source == GgmlDType::Q5_0 && gemv::available() => source,
            WeightFormat::Auto if matches!(source, GgmlDType::Q5_0 | GgmlDType::Q5_1) => {
                GgmlDType::Q8_0
            }
            WeightFormat::Auto => source,
            WeightFormat::Blocks(dtype) => dtype,
        };
        let fits = weight.shape().dims2()?.1 % target.block_size() == 0;
        if source == target || !fits {
            return Self::shared(weight, bias);
        }
        if source == GgmlDType::Q4_1 && target == GgmlDType::Q4_0 {
            let (q, offsets) = split_q4_1(&weight)?;
            let mut layer = Self::shared(Arc::new(q), bias)?;
            layer.offsets = Some(offsets.t()?.contiguous()?);
            return Ok(layer);
        }
        if matches!(source, GgmlDType::Q5_0 | GgmlDType::Q5_1) && target == GgmlDType::Q8_0 {
            let (q, offsets) = widen_q5(&weight)?;
            let mut layer = Self::shared(Arc::new(q), bias)?;
            layer.offsets = offsets.map(|o| o.t()?.contiguous()).transpose()?;
            return Ok(layer);
        }
        let requantized = QTensor::quantize(&dequantize(&weight)?, target)?;
        Self::shared(Arc::new(requantized), bias)
    }

    /// A layer over a weight another part of the model also uses (a tied output head).
    pub fn shared(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            blocks: QMatMul::from_arc(weight.clone())?,
            weight,
            offsets: None,
            bias,
            gemv: Arc::default(),
        })
    }

    pub fn dtype(&self) -> GgmlDType {
        self.weight.dtype()
    }

    /// Whether this layer's weight is `other` (not a copy).
    pub fn shares(&self, other: &Arc<QTensor>) -> bool {
        Arc::ptr_eq(&self.weight, other)
    }

    /// Bytes the weight takes in memory, the one-row kernel's side arrays included once built.
    pub fn weight_bytes(&self) -> usize {
        self.weight.storage_size_in_bytes()
            + self.offsets.as_ref().map_or(0, |o| o.elem_count() * 4)
            + self
                .gemv
                .get()
                .and_then(Option::as_ref)
                .map_or(0, BlockGemv::extra_bytes)
    }

    /// Mean cross-entropy of this layer's output for `x` `(m, in)` against `targets`, as one
    /// training op that never holds all the logits ([`head_cross_entropy`]).
    pub fn cross_entropy(&self, x: &Tensor, targets: &[u32]) -> Result<Tensor> {
        head_cross_entropy(
            x,
            &self.weight,
            self.offsets.as_ref(),
            self.bias.as_ref(),
            targets,
        )
    }

    /// `x` is `(…, in)`; rows is the product of the leading dimensions.
    pub fn forward(&self, x: &Tensor, gemm_rows: usize) -> Result<Tensor> {
        let rows = x.elem_count() / x.dim(candle_core::D::Minus1)?.max(1);
        let quantized = !matches!(self.blocks, QMatMul::Tensor(_) | QMatMul::TensorF16(_));
        let y = if quantized && x.track_op() {
            // Training: one op whose f32 weight (offsets included) lives only inside it, so
            // the graph holds nothing but its output.
            frozen_matmul(x, &self.weight, self.offsets.as_ref())?
        } else if quantized
            && rows < gemm_rows
            && let Some(kernel) = self.row_kernel()?
        {
            // A few rows: lore's one-row kernel, block offsets included.
            let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let k = values.len() / rows.max(1);
            let mut out = Vec::with_capacity(rows * kernel.rows());
            for row in values.chunks_exact(k) {
                out.extend(kernel.multiply(row)?);
            }
            let mut shape = x.dims().to_vec();
            if let Some(last) = shape.last_mut() {
                *last = kernel.rows();
            }
            Tensor::from_vec(out, shape, x.device())?
        } else {
            let y = if quantized && rows >= gemm_rows {
                frozen_matmul(x, &self.weight, None)?
            } else {
                self.blocks.forward(x)?
            };
            match &self.offsets {
                Some(offsets) => {
                    let (k, blocks) = (x.dim(candle_core::D::Minus1)?, offsets.dim(0)?);
                    let sums = x.reshape((rows, blocks, k / blocks))?.sum(2)?;
                    (y.reshape((rows, ()))? + sums.matmul(offsets)?)?.reshape(y.shape())?
                }
                None => y,
            }
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// `x Wᵀ (+ b)` for one input row, on plain vectors: the decode step's product
    /// ([`crate::lm::decode`]), on lore's one-row kernel where it has one for this block type
    /// (else candle's); a split Q4_1 weight's offsets and the bias are added in loops rather
    /// than five more tensor ops.
    pub fn forward_row(&self, x: &[f32]) -> Result<Vec<f32>> {
        let mut y = match self.row_kernel()? {
            // The kernel adds the block offsets itself.
            Some(kernel) => kernel.multiply(x)?,
            None => {
                let input = Tensor::from_slice(x, (1, x.len()), &Device::Cpu)?;
                let mut y: Vec<f32> = self.blocks.forward(&input)?.flatten_all()?.to_vec1()?;
                if let Some(offsets) = &self.offsets {
                    // y[j] += Σ_b (Σ of block b of x) · offsets[b][j]
                    let (blocks, n) = offsets.dims2()?;
                    let width = x.len() / blocks;
                    with_slice(offsets, |offsets| {
                        for (sum, row) in x
                            .chunks_exact(width)
                            .map(|b| b.iter().sum::<f32>())
                            .zip(offsets.chunks_exact(n))
                        {
                            for (y, o) in y.iter_mut().zip(row) {
                                *y += sum * o;
                            }
                        }
                    })?;
                }
                y
            }
        };
        if let Some(bias) = &self.bias {
            with_slice(bias, |bias| {
                for (y, b) in y.iter_mut().zip(bias) {
                    *y += b;
                }
            })?;
        }
        Ok(y)
    }

    /// The one-row kernel, built on first use.
    fn row_kernel(&self) -> Result<Option<&BlockGemv>> {
        if let Some(built) = self.gemv.get() {
            return Ok(built.as_ref());
        }
        let quantized = !matches!(self.blocks, QMatMul::Tensor(_) | QMatMul::TensorF16(_));
        let kernel = if quantized {
            BlockGemv::new(self.weight.clone(), self.offsets.as_ref())?
        } else {
            None
        };
        Ok(self.gemv.get_or_init(|| kernel).as_ref())
    }

    /// `x·Wᵀ + scale·(dropout(x)·Aᵀ)·Bᵀ (+ bias)` as one training op ([`lora_linear`]).
    pub fn forward_lora(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        scale: f64,
        dropout: Option<DropoutSeed>,
    ) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / k.max(1);
        let y = lora_linear(
            &x.reshape((rows, k))?,
            &self.weight,
            self.offsets.as_ref(),
            a,
            b,
            scale,
            dropout,
        )?;
        let mut shape = dims;
        if let Some(last) = shape.last_mut() {
            *last = y.dim(1)?;
        }
        let y = y.reshape(shape)?;
        Ok(match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        })
    }

    /// The weight as f32 (for tests and merges).
    pub fn weight_f32(&self) -> Result<Tensor> {
        expand_with_offsets(&self.weight, self.offsets.as_ref())
    }
}

/// Linear layers that read the same input (Q/K/V, gate/up), run as one matmul when their
/// weights share a block type: a decode step is dominated by per-op overhead, not arithmetic,
/// so fewer, larger matmuls are faster. The fused weight is the parts' rows stacked; outputs
/// are split back in order.
#[derive(Debug, Clone)]
pub enum Projections {
    Fused { layer: QLinear, sizes: Vec<usize> },
    Separate(Vec<QLinear>),
}

impl Projections {
    pub fn new(parts: Vec<QLinear>) -> Result<Self> {
        let first = &parts[0];
        let cols = first.weight.shape().dims2()?.1;
        let same = parts.iter().all(|p| {
            p.weight.dtype() == first.weight.dtype()
                && p.weight.shape().dims2().is_ok_and(|(_, c)| c == cols)
                && p.offsets.is_some() == first.offsets.is_some()
                && p.bias.is_some() == first.bias.is_some()
                && !matches!(p.blocks, QMatMul::Tensor(_) | QMatMul::TensorF16(_))
        });
        if !same || parts.len() < 2 {
            return Ok(Self::Separate(parts));
        }
        let mut sizes = Vec::with_capacity(parts.len());
        let mut bytes = Vec::new();
        for p in &parts {
            sizes.push(p.weight.shape().dims2()?.0);
            bytes.extend_from_slice(&p.weight.data()?);
        }
        let rows = sizes.iter().sum::<usize>();
        let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, first.weight.dtype())?;
        let weight = Arc::new(QTensor::new(storage, (rows, cols))?);
        let cat =
            |pick: &dyn Fn(&QLinear) -> Option<Tensor>, dim: usize| -> Result<Option<Tensor>> {
                let all: Option<Vec<Tensor>> = parts.iter().map(pick).collect();
                Ok(match all {
                    Some(ts) => Some(Tensor::cat(&ts, dim)?),
                    None => None,
                })
            };
        let mut layer = QLinear::shared(weight, cat(&|p| p.bias.clone(), 0)?)?;
        layer.offsets = cat(&|p| p.offsets.clone(), 1)?;
        Ok(Self::Fused { layer, sizes })
    }

    /// Each part's output, in order.
    pub fn forward(&self, x: &Tensor, gemm_rows: usize) -> Result<Vec<Tensor>> {
        match self {
            Self::Separate(parts) => parts.iter().map(|p| p.forward(x, gemm_rows)).collect(),
            Self::Fused { layer, sizes } => Self::split(&layer.forward(x, gemm_rows)?, sizes),
        }
    }

    /// The parts' outputs for one row, joined ([`QLinear::forward_row`]).
    pub fn forward_row(&self, x: &[f32]) -> Result<Vec<f32>> {
        match self {
            Self::Fused { layer, .. } => layer.forward_row(x),
            Self::Separate(parts) => {
                let mut out = Vec::new();
                for p in parts {
                    out.extend(p.forward_row(x)?);
                }
                Ok(out)
            }
        }
    }

    /// The parts' outputs joined along the last dimension (as a fused layer computes them).
    pub fn forward_joined(&self, x: &Tensor, gemm_rows: usize) -> Result<Tensor> {
        match self {
            Self::Fused { layer, .. } => layer.forward(x, gemm_rows),
            Self::Separate(parts) => {
                let ys = parts
                    .iter()
                    .map(|p| p.forward(x, gemm_rows))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&ys, ys[0].rank() - 1)?)
            }
        }
    }

    /// A fused output cut back into its parts along the last dimension.
    pub fn split(y: &Tensor, sizes: &[usize]) -> Result<Vec<Tensor>> {
        let last = y.rank() - 1;
        let mut start = 0;
        sizes
            .iter()
            .map(|&n| {
                let part = y.narrow(last, start, n)?;
                start += n;
                Ok(part)
            })
            .collect()
    }

    /// Each part's weight as f32 and its bias (for exports and merges).
    pub fn parts_f32(&self) -> Result<Vec<(Tensor, Option<Tensor>)>> {
        match self {
            Self::Separate(parts) => parts
                .iter()
                .map(|p| Ok((p.weight_f32()?, p.bias.clone())))
                .collect(),
            Self::Fused { layer, sizes } => {
                let w = layer.weight_f32()?;
                let mut start = 0;
                sizes
                    .iter()
                    .map(|&n| {
                        let bias = layer
                            .bias
                            .as_ref()
                            .map(|b| b.narrow(0, start, n))
                            .transpose()?;
                        let part = (w.narrow(0, start, n)?, bias);
                        start += n;
                        Ok(part)
                    })
                    .collect()
            }
        }
    }

    pub fn weight_bytes(&self) -> usize {
        match self {
            Self::Separate(parts) => parts.iter().map(QLinear::weight_bytes).sum(),
            Self::Fused { layer, .. } => layer.weight_bytes(),
        }
    }
}

/// Runs `f` over a contiguous f32 tensor's values without copying them.
pub(crate) fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("expected a contiguous tensor".into()))?;
    let values = crate::ops::cpu_storage(&storage)?.as_slice::<f32>()?;
    Ok(f(&values[start..end]))
}
