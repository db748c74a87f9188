//! The packed f16 linear layers of `small.rs` need AVX-512: on other architectures there are
//! none, and the encoder multiplies every call with gemm.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// Never built here: [`PackedF16::new`] always says `None`.
#[derive(Debug)]
pub(crate) struct PackedF16(());

impl PackedF16 {
    pub(crate) fn new(_weight: &Tensor) -> candle_core::Result<Option<Self>> {
        Ok(None)
    }
}

impl CustomOp1 for PackedF16 {
    fn name(&self) -> &'static str {
        "lore-packed-f16-linear"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("packed f16 linear layers need x86-64 with AVX-512")
    }
}
