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
    /// `count` products `(m × k) · (k × n)` in batches of `batch`.
    fn new(
        what: &'static str,
        batch: usize,
        (m, k, n): (usize, usize, usize),
        count: usize,
        transposed: bool,
    ) -> Self {
        Self {
            what,
            batch,
            m,
            k,
            n,
            count,
            transposed,
        }
    }

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

/// Rounds over all families; each family keeps its fastest round. This host's speed drifts by
/// tens of percent over seconds, and the ceiling should be the most generous one it shows.
const ROUNDS: usize = 3;

/// Times every family, prints each one's rate and returns (total seconds, total GFLOP).
fn report(title: &str, products: &[Product]) -> candle_core::Result<(f64, f64)> {
    println!("{title} (best of {ROUNDS} rounds)");
    let mut times = vec![f64::MAX; products.len()];
    for _ in 0..ROUNDS {
        for (t, p) in times.iter_mut().zip(products) {
            *t = t.min(p.seconds()?);
        }
    }
    let (mut seconds, mut flops) = (0.0, 0.0);
    for (p, &s) in products.iter().zip(&times) {
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

/// Each layer's seven projections for `rows` token rows, from the model's `(hidden, key/value
/// width, ffn)`; with `gradients`, each also once more as its input gradient `g · W` (same
/// FLOPs).
fn projections(
    rows: usize,
    layers: usize,
    (hidden, kv, ffn): (usize, usize, usize),
    gradients: bool,
) -> Vec<Product> {
    let shapes = [
        ("q and o projections", hidden, hidden, 2),
        ("k and v projections", kv, hidden, 2),
        ("gate and up projections", ffn, hidden, 2),
        ("down projection", hidden, ffn, 1),
    ];
    let mut products = Vec::new();
    for (what, out, inp, count) in shapes {
        products.push(Product::new(
            what,
            1,
            (rows, inp, out),
            count * layers,
            true,
        ));
        if gradients {
            products.push(Product::new(
                "  … their input gradients",
                1,
                (rows, out, inp),
                count * layers,
                false,
            ));
        }
    }
    products
}

fn main() -> candle_core::Result<()> {
    println!("threads: {}", rayon::current_num_threads());

    // SmolLM2-135M: 30 layers, hidden 576, 9 query and 3 key/value heads of 64, ffn 1536,
    // vocabulary 49,152. A step is 4 × 256 = 1,024 token rows. Frozen weights need no weight
    // gradients, so each projection is one forward product and one input-gradient product
    // (`g · W`, same FLOPs). LoRA's rank-16 products are under 3% of these and left out.
    let (layers, rows) = (30, 1024);
    let mut step = projections(rows, layers, (576, 192, 1536), true);
    // Attention per sequence and head: scores (256×64·64×256) and mix (256×256·256×64)
    // forward, four products of the same size backward.
    step.push(Product::new(
        "attention (fwd 2, bwd 4)",
        4 * 9,
        (256, 64, 256),
        6 * layers,
        false,
    ));
    // The output head: logits, then the input gradient.
    step.push(Product::new("output head", 1, (rows, 576, 49_152), 1, true));
    step.push(Product::new(
        "  … its input gradient",
        1,
        (rows, 49_152, 576),
        1,
        false,
    ));
    let (seconds, _) = report("SmolLM2-135M LoRA step, 4 × 256 tokens:", &step)?;
    println!(
        "  ceiling: {:.0} trained tokens/s if nothing but these products took time\n",
        rows as f64 / seconds
    );

    // Qwen2.5-0.5B: 24 layers, hidden 896, 14 query and 2 key/value heads of 64, ffn 4,864.
    // A prompt of 311 tokens (the bench's); the head runs for the last row only.
    let (layers, rows) = (24, 311);
    let mut prompt = projections(rows, layers, (896, 128, 4864), false);
    prompt.push(Product::new(
        "attention (scores and mix)",
        14,
        (rows, 64, rows),
        2 * layers,
        false,
    ));
    let (seconds, _) = report("Qwen2.5-0.5B prefill, 311 tokens:", &prompt)?;
    println!(
        "  ceiling: {:.0} prompt tokens/s if nothing but these products took time",
        rows as f64 / seconds
    );
    Ok(())
}
