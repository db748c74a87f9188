//! Which 4/8-bit block format multiplies fastest on this CPU, against f32:
//! `cargo run --release -p lore-finetune --example qmatmul_formats`.
//! Shapes are SmolLM2-135M's (hidden 576, ffn 1536); M = 1 is a decode step, 128 a prefill.

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

fn time(f: &mut dyn FnMut() -> candle_core::Result<Tensor>) -> candle_core::Result<f64> {
    f()?;
    let mut best = f64::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for (n, k) in [(1536usize, 576usize), (576, 1536), (576, 576)] {
        let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
        for m in [1usize, 128] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let wt = w.t()?;
            let f32_ms = time(&mut || x.matmul(&wt))?;
            let mut line = format!("W {n}x{k}, M {m:>3}: f32 {f32_ms:.3} ms");
            for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
                let q = QMatMul::from_qtensor(QTensor::quantize(&w, dtype)?)?;
                let ms = time(&mut || q.forward(&x))?;
                line.push_str(&format!(", {dtype:?} {ms:.3} ms"));
            }
            let q = QTensor::quantize(&w, GgmlDType::Q4_1)?;
            let deq_ms = time(&mut || {
                q.dequantize(&dev)?
                    .t()?
                    .contiguous()
                    .and_then(|w| x.matmul(&w))
            })?;
            line.push_str(&format!(", dequantize Q4_1 + f32 {deq_ms:.3} ms"));
            println!("{line}");
        }
    }
    Ok(())
}
