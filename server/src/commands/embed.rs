use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use lore_embed::Embedder;
use serde::Serialize;

use crate::cli::{Cli, EmbedArgs};
use crate::models::load_embedder;

#[derive(Serialize)]
struct EmbedOutput<'a> {
    model: &'a str,
    dim: usize,
    count: usize,
    /// Seconds spent embedding (model loading excluded).
    elapsed_s: f64,
    embeddings: Vec<Vec<f32>>,
}

fn read_texts(args: &EmbedArgs) -> anyhow::Result<Vec<String>> {
    let mut texts = args.texts.clone();
    if let Some(path) = &args.input {
        let content =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        for line in content.lines().filter(|l| !l.trim().is_empty()) {
            texts.push(serde_json::from_str::<String>(line).unwrap_or_else(|_| line.to_string()));
        }
    }
    if texts.is_empty() {
        bail!("no texts to embed: pass them as arguments or with --input FILE");
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        bail!("text {} is empty", i + 1);
    }
    Ok(texts)
}

pub fn run(cli: &Cli, args: &EmbedArgs) -> anyhow::Result<ExitCode> {
    let texts = read_texts(args)?;
    let embedder = load_embedder(&args.model, cli.models_dir.as_deref())?;
    let started = Instant::now();
    let embeddings = embedder.embed(&texts)?;
    let elapsed_s = started.elapsed().as_secs_f64();
    let info = embedder.info();
    if args.json {
        super::print_json(&EmbedOutput {
            model: &info.name,
            dim: info.dim,
            count: embeddings.len(),
            elapsed_s,
            embeddings,
        })?;
    } else {
        for (text, vector) in texts.iter().zip(&embeddings) {
            let shown: String = text.chars().take(60).collect();
            println!("{shown}\t{}", serde_json::to_string(vector)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
