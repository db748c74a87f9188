//! How fast lore could possibly be at f32: the time of the products alone, measured with
//! candle's GEMM (the one every training step and prompt of lore runs) at the real shapes, for
//! one LoRA training step of SmolLM2-135M (4 × 256 tokens, as `scripts/bench-finetune`) and one
//! ~300-token prompt of Qwen2.5-0.5B (as `BENCH_GGUF=… scripts/bench-llm`).
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p lore-finetune --example gemm_ceiling`
//!
//! The printed ceilings are what lore would reach if everything but the f32 products (norms,
//! activations, softmax, dequantization, the optimizer, candle's graph) took no time. They are
//! the yardstick for the speed issue's goals that f32 cannot meet: compare them with the
//! peers' figures that `scripts/bench-finetune` and `scripts/bench-llm` print.

use std::time::Instant;

use candle_core::{Device, Tensor};

/// Best of a few timed runs after one warm-up, in seconds.
fn best(f: &mut dyn FnMut() -> candle_core::Result<Tensor>) -> candle_core::Result<f64> {
    f()?;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// One family of products: `count` times `(m × k) · (k × n)` (batched when `batch` > 1).
struct Product {
    what: &'static str,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    count: usize,
    /// The weight side is a transposed view of an `(n, k)` matrix, as in `x · Wᵀ`.
    transposed: bool,
}

impl Product {
    fn flops(&self) -> f64 {
        2.0 * (self.batch * self.m * self.k * self.n * self.count) as f64
    }

    fn seconds(&self) -> candle_core::Result<f64> {
        let dev = Device::Cpu;
        let lhs = Tensor::randn(0f32, 1.0, (self.batch, self.m, self.k), &dev)?;
        let rhs = if self.transposed {
            Tensor::randn(0f32, 0.02, (self.batch, self.n, self.k), &dev)?.transpose(1, 2)?
        } else {
            Tensor::randn(0f32, 0.02, (self.batch, self.k, self.n), &dev)?
        };
        Ok(best(&mut || lhs.matmul(&rhs))? * self.count as f64)
    }
}

/// Times every family, prints each one's rate and returns (total seconds, total GFLOP).
fn report(title: &str, products: &[Product]) -> candle_core::Result<(f64, f64)> {
    println!("{title}");
    let (mut seconds, mut flops) = (0.0, 0.0);
    for p in products {
        let s = p.seconds()?;
        println!(
            "  {:<34} {:>4} × {:>3}×{:<5}·{:>5}×{:<5} {:>7.1} GFLOP {:>7.3} s {:>6.1} GFLOP/s",
            p.what,
            p.count * p.batch,
            p.m,
            p.k,
            p.k,
            p.n,
            p.flops() / 1e9,
            s,
            p.flops() / s / 1e9
        );
        seconds += s;
        flops += p.flops();
    }
    println!(
        "  all products: {:.1} GFLOP in {:.3} s, {:.1} GFLOP/s",
        flops / 1e9,
        seconds,
        flops / seconds / 1e9
    );
    Ok((seconds, flops))
}

fn main() -> candle_core::Result<()> {
    println!("threads: {}", rayon::current_num_threads());

    // SmolLM2-135M: 30 layers, hidden 576, 9 query and 3 key/value heads of 64, ffn 1536,
    // vocabulary 49,152. A step is 4 × 256 = 1,024 token rows. Frozen weights need no weight
    // gradients, so each projection is one forward product and one input-gradient product
    // (`g · W`, same FLOPs). LoRA's rank-16 products are under 3% of these and left out.
    let (layers, rows) = (30, 1024);
    let mut step = Vec::new();
    for (what, out, inp, count) in [
        ("q and o projections", 576, 576, 2),
        ("k and v projections", 192, 576, 2),
        ("gate and up projections", 1536, 576, 2),
        ("down projection", 576, 1536, 1),
    ] {
        step.push(Product {
            what,
            batch: 1,
            m: rows,
            k: inp,
            n: out,
            count: count * layers,
            transposed: true,
        });
        step.push(Product {
            what: "  … their input gradients",
            batch: 1,
            m: rows,
            k: out,
            n: inp,
            count: count * layers,
            transposed: false,
        });
    }
    // Attention per sequence and head: scores (256×64·64×256) and mix (256×256·256×64)
    // forward, four products of the same size backward.
    step.push(Product {
        what: "attention (fwd 2, bwd 4)",
        batch: 4 * 9,
        m: 256,
        k: 64,
        n: 256,
        count: 6 * layers,
        transposed: false,
    });
    // The output head: logits, then the input gradient.
    step.push(Product {
        what: "output head",
        batch: 1,
        m: rows,
        k: 576,
        n: 49_152,
        count: 1,
        transposed: true,
    });
    step.push(Product {
        what: "  … its input gradient",
        batch: 1,
        m: rows,
        k: 49_152,
        n: 576,
        count: 1,
        transposed: false,
    });
    let (seconds, _) = report("SmolLM2-135M LoRA step, 4 × 256 tokens:", &step)?;
    println!(
        "  ceiling: {:.0} trained tokens/s if nothing but these products took time\n",
        rows as f64 / seconds
    );

    // Qwen2.5-0.5B: 24 layers, hidden 896, 14 query and 2 key/value heads of 64, ffn 4,864.
    // A prompt of 311 tokens (the bench's); the head runs for the last row only.
    let (layers, rows) = (24, 311);
    let mut prompt = Vec::new();
    for (what, out, inp, count) in [
        ("q and o projections", 896, 896, 2),
        ("k and v projections", 128, 896, 2),
        ("gate and up projections", 4864, 896, 2),
        ("down projection", 896, 4864, 1),
    ] {
        prompt.push(Product {
            what,
            batch: 1,
            m: rows,
            k: inp,
            n: out,
            count: count * layers,
            transposed: true,
        });
    }
    prompt.push(Product {
        what: "attention (scores and mix)",
        batch: 14,
        m: rows,
        k: 64,
        n: rows,
        count: 2 * layers,
        transposed: false,
    });
    let (seconds, _) = report("Qwen2.5-0.5B prefill, 311 tokens:", &prompt)?;
    println!(
        "  ceiling: {:.0} prompt tokens/s if nothing but these products took time",
        rows as f64 / seconds
    );
    Ok(())
}
