//! The numeric kernels under the model, depending on nothing else in the crate: forward and
//! backward ops for training ([`autograd`], and the output head fused with its loss in
//! [`head_loss`]), block dequantization ([`dequant`]), the decode
//! step's block-quantized products ([`gemv`]) and its thread split ([`pool`]), and the seeded
//! random streams ([`rng`]).

pub mod autograd;
pub mod dequant;
#[cfg(target_arch = "x86_64")]
pub mod gemv;
/// Elsewhere the decode step keeps candle's block kernels.
#[cfg(not(target_arch = "x86_64"))]
#[path = "gemv_elsewhere.rs"]
pub mod gemv;
pub mod head_loss;
pub mod pool;
pub mod rng;

use candle_core::{CpuStorage, Storage};

/// The CPU storage under a tensor (from `storage_and_layout`), for the kernels here that run
/// on candle's storages directly rather than through tensor ops.
pub(crate) fn cpu_storage(storage: &Storage) -> candle_core::Result<&CpuStorage> {
    match storage {
        Storage::Cpu(cpu) => Ok(cpu),
        _ => candle_core::bail!("lore's own kernels run on the CPU only"),
    }
}

/// How query and key rows pair up for rotary embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimensions (2i, 2i+1) rotate together. llama.cpp permutes the Q and K rows of llama-arch
    /// GGUFs so that this is what the file's layout needs.
    Interleaved,
    /// Dimensions (i, i + d/2) rotate together: Hugging Face's layout, and qwen2 GGUFs.
    Halves,
}
