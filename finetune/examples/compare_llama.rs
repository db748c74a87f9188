//! lore's llama against candle-transformers' `quantized_llama` on the same GGUF: logits of a
//! prompt, a greedy continuation, and prefill/decode speed per weight format and matmul path.
//! `cargo run --release -p lore-finetune --example compare_llama -- MODEL.gguf`

use std::time::Instant;

use candle_core::quantized::{GgmlDType, gguf_file};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use lore_finetune::generation::sampling::argmax;
use lore_finetune::lm::linear::WeightFormat;
use lore_finetune::lm::model::{CausalLm, to_vec};

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).expect("MODEL.gguf");
    let mut file = std::fs::File::open(&path)?;
    let content = gguf_file::Content::read(&mut file)?;
    let tokenizer = lore_finetune::lm::tokenizer::from_gguf(&content)?;
    let prompt = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nName three colours of the rainbow.<|im_end|>\n<|im_start|>assistant\n";
    let ids = tokenizer
        .encode(prompt, false)
        .map_err(anyhow::Error::msg)?
        .get_ids()
        .to_vec();

    let mut file = std::fs::File::open(&path)?;
    let mut reference = ModelWeights::from_gguf(
        gguf_file::Content::read(&mut file)?,
        &mut file,
        &Device::Cpu,
    )?;
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let theirs = to_vec(&reference.forward(&input, 0)?)?;
    let mut their_tokens = vec![argmax(&theirs)];
    for i in 0..20 {
        let input = Tensor::new(&[their_tokens[i]], &Device::Cpu)?.unsqueeze(0)?;
        their_tokens.push(argmax(&to_vec(&reference.forward(&input, ids.len() + i)?)?));
    }

    for (format, gemm_rows) in [
        (WeightFormat::Native, usize::MAX),
        (WeightFormat::Native, lore_finetune::lm::linear::GEMM_ROWS),
        (WeightFormat::Auto, usize::MAX),
        (WeightFormat::Auto, lore_finetune::lm::linear::GEMM_ROWS),
        (
            WeightFormat::Blocks(GgmlDType::Q8_0),
            lore_finetune::lm::linear::GEMM_ROWS,
        ),
    ] {
        let mut file = std::fs::File::open(&path)?;
        let content = gguf_file::Content::read(&mut file)?;
        let mut model = CausalLm::from_gguf(&content, &mut file, format)?;
        model.gemm_rows = gemm_rows;
        let t = Instant::now();
        let ours = to_vec(&model.forward(&ids, 0)?)?;
        let prefill = t.elapsed().as_secs_f64();
        let max_diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let mut tokens = vec![argmax(&ours)];
        let t = Instant::now();
        for i in 0..20 {
            tokens.push(argmax(&to_vec(
                &model.forward(&[tokens[i]], ids.len() + i)?,
            )?));
        }
        let decode = t.elapsed().as_secs_f64();
        let same = tokens
            .iter()
            .zip(&their_tokens)
            .take_while(|(a, b)| a == b)
            .count();
        println!(
            "{format:?} gemm from {gemm_rows} rows: max |logit diff| {max_diff:.5}; greedy tokens equal for {same}/21; prefill {} tokens {:.0} tok/s; decode {:.0} tok/s; text: {:?}",
            ids.len(),
            ids.len() as f64 / prefill,
            20.0 / decode,
            tokenizer
                .decode(&tokens, true)
                .map_err(anyhow::Error::msg)?
        );
    }
    Ok(())
}
