//! Chat with a GGUF model through lore's runtime, streaming the answer:
//! `cargo run --release -p lore-finetune --example gguf_generate -- MODEL.gguf "question" [native|q4_0|q8_0]`.

use std::io::Write;

use candle_core::quantized::{GgmlDType, gguf_file};
use lore_finetune::chat::{ChatTemplate, Message, Role};
use lore_finetune::generate::{GenerateRequest, generate};
use lore_finetune::llama::{Llama, WeightFormat};
use lore_finetune::sampling::SamplingConfig;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = &args[0];
    let question = args
        .get(1)
        .map_or("What is the capital of France?", String::as_str);
    let format = match args.get(2).map(String::as_str) {
        Some("q4_0") => WeightFormat::Requantize(GgmlDType::Q4_0),
        Some("q8_0") => WeightFormat::Requantize(GgmlDType::Q8_0),
        _ => WeightFormat::Native,
    };
    let mut file = std::fs::File::open(path)?;
    let content = gguf_file::Content::read(&mut file)?;
    let tokenizer = lore_finetune::tokenizer::from_gguf(&content)?;
    let mut model = Llama::from_gguf(&content, &mut file, format)?;
    let template = ChatTemplate::ChatMl;
    let prompt = template.render(
        &[
            Message::new(Role::System, "You are a helpful assistant."),
            Message::new(Role::User, question),
        ],
        true,
    );
    let end: Vec<u32> = [template.end_of_turn(), "<|endoftext|>"]
        .iter()
        .filter_map(|t| tokenizer.token_to_id(t))
        .collect();
    let request = GenerateRequest {
        prompt,
        max_tokens: 128,
        sampling: SamplingConfig::default(),
        stop: vec![],
    };
    let out = generate(&mut model, &tokenizer, &end, &request, |piece| {
        print!("{piece}");
        std::io::stdout().flush().is_ok()
    })?;
    println!(
        "\n[{:?}] prefill {} tokens {:.0} tok/s; decode {} tokens {:.0} tok/s",
        out.finish_reason,
        out.prompt_tokens,
        out.prompt_tokens as f64 / out.prefill_s,
        out.completion_tokens,
        out.completion_tokens as f64 / out.decode_s.max(1e-9)
    );
    Ok(())
}
