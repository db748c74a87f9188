//! The AVX-512 block products of `gemv.rs` exist only on x86-64: elsewhere there are none, and
//! the decode step multiplies with candle's block kernels.

use std::sync::Arc;

use candle_core::Tensor;
use candle_core::quantized::QTensor;

use crate::Result;

/// Whether this CPU has the kernel: never, here.
pub fn available() -> bool {
    false
}

/// Runs `f` (no wider vectors to enable here).
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Never built here: [`BlockGemv::new`] always says `None`.
#[derive(Debug)]
pub struct BlockGemv(());

impl BlockGemv {
    pub fn new(_weight: Arc<QTensor>, _offsets: Option<&Tensor>) -> Result<Option<Self>> {
        Ok(None)
    }

    pub fn rows(&self) -> usize {
        0
    }

    pub fn extra_bytes(&self) -> usize {
        0
    }

    pub fn multiply(&self, _x: &[f32]) -> Result<Vec<f32>> {
        Err(crate::Error::Unsupported(
            "block products need x86-64 with AVX-512".into(),
        ))
    }
}
