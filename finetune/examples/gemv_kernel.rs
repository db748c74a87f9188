//! The decode step's one-row products: lore's AVX-512 block kernel (`ops/gemv.rs`) against
//! candle's `QMatMul` on the same blocks, at the real models' shapes, with the bytes each call
//! reads and the rate that makes:
//! `cargo run --release -p lore-finetune --example gemv_kernel`.
//! Threads: candle's pool (`CANDLE_NUM_THREADS` or `RAYON_NUM_THREADS`, default all cores).

use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use lore_finetune::ops::gemv::BlockGemv;

fn best_ms(f: &mut dyn FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    let mut best = f64::MAX;
    for _ in 0..50 {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let shapes = [
        ("SmolLM2 qkv", 960, 576, GgmlDType::Q4_0),
        ("SmolLM2 gate+up", 3072, 576, GgmlDType::Q4_0),
        ("SmolLM2 down", 576, 1536, GgmlDType::Q4_0),
        ("SmolLM2 head", 49152, 576, GgmlDType::Q8_0),
        ("SmolLM2-sized Q4_0 head", 49152, 576, GgmlDType::Q4_0),
        ("Qwen2.5-0.5B gate+up", 9728, 896, GgmlDType::Q5_0),
        ("Qwen2.5-0.5B head", 151936, 896, GgmlDType::Q8_0),
    ];
    for (name, n, k, dtype) in shapes {
        let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
        let q = Arc::new(QTensor::quantize(&w, dtype)?);
        let bytes = q.storage_size_in_bytes() as f64;
        let x = Tensor::randn(0f32, 1.0, (1, k), &dev)?;
        let row: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let candle = QMatMul::from_arc(q.clone())?;
        let candle_ms = best_ms(&mut || {
            candle.forward(&x)?;
            Ok(())
        })?;
        let mut line = format!(
            "{name:<22} {dtype:?} {n}x{k}: candle {candle_ms:.3} ms ({:.1} GB/s)",
            bytes / candle_ms / 1e6
        );
        if let Some(gemv) = BlockGemv::new(q, None)? {
            let ms = best_ms(&mut || {
                gemv.multiply(&row)?;
                Ok(())
            })?;
            line.push_str(&format!(
                ", lore {ms:.3} ms ({:.1} GB/s), {:.2}x",
                bytes / ms / 1e6,
                candle_ms / ms
            ));
        } else {
            line.push_str(", lore: no AVX-512 kernel on this CPU");
        }
        println!("{line}");
    }
    Ok(())
}
