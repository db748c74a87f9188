//! Greedy generation with candle-transformers' quantized llama and lore's GGUF tokenizer:
//! `cargo run --release -p lore-finetune --example gguf_generate -- MODEL.gguf "prompt"`.

use std::io::Write;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = &args[0];
    let question = args
        .get(1)
        .map_or("What is the capital of France?", String::as_str);
    let mut file = std::fs::File::open(path)?;
    let content = gguf_file::Content::read(&mut file)?;
    let tokenizer = lore_finetune::tokenizer::from_gguf(&content)?;
    for probe in ["<|im_start|>", "system", "\n"] {
        let ids = tokenizer.encode(probe, false).map_err(anyhow::Error::msg)?;
        println!("{probe:?} -> {:?}", ids.get_ids());
    }
    let t = Instant::now();
    let mut model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu)?;
    println!("loaded in {:.2} s", t.elapsed().as_secs_f64());
    let prompt = format!(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    );
    let mut ids = tokenizer
        .encode(prompt, false)
        .map_err(anyhow::Error::msg)?
        .get_ids()
        .to_vec();
    let end = tokenizer.token_to_id("<|im_end|>").unwrap_or(2);
    let t = Instant::now();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let logits = model.forward(&input, 0)?.squeeze(0)?;
    let mut next = logits.argmax(0)?.to_scalar::<u32>()?;
    let prefill = t.elapsed().as_secs_f64();
    let prompt_len = ids.len();
    let t = Instant::now();
    let mut out = Vec::new();
    while next != end && out.len() < 64 {
        out.push(next);
        ids.push(next);
        let input = Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?;
        let logits = model.forward(&input, ids.len() - 1)?.squeeze(0)?;
        next = logits.argmax(0)?.to_scalar::<u32>()?;
    }
    let decode = t.elapsed().as_secs_f64();
    println!(
        "{}",
        tokenizer.decode(&out, true).map_err(anyhow::Error::msg)?
    );
    println!(
        "prefill {prompt_len} tokens in {prefill:.3} s ({:.0} tok/s); decode {} tokens in {decode:.3} s ({:.0} tok/s)",
        prompt_len as f64 / prefill,
        out.len(),
        out.len() as f64 / decode.max(1e-9)
    );
    std::io::stdout().flush()?;
    Ok(())
}
