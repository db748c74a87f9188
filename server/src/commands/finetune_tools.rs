//! `lore finetune merge | export | score`: adapters applied outside training.

use std::path::Path;
use std::process::ExitCode;

use lore_finetune::WeightFormat;
use lore_finetune::{Adapter, LoraRun};
use lore_finetune::{ChatFiles, write_hf};
use lore_finetune::{LanguageModel, resolve_model};
use serde_json::json;

use crate::cli::{Cli, ExportArgs, MergeArgs, ScoreArgs};
use crate::models::models_dir;

fn load(cli: &Cli, base: &str, format: WeightFormat) -> anyhow::Result<LanguageModel> {
    let path = resolve_model(base, &models_dir(cli.models_dir.as_deref()))?;
    Ok(LanguageModel::load(&path, format)?)
}

fn load_adapter(lm: &LanguageModel, dir: &Path) -> anyhow::Result<Adapter> {
    Ok(Adapter::load_peft(dir, &lm.model().config)?)
}

fn refuse_non_empty(dir: &Path) -> anyhow::Result<()> {
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        anyhow::ensure!(
            entries.next().is_none(),
            "{} is not empty; choose a new folder for --output",
            dir.display()
        );
    }
    Ok(())
}

pub fn merge(cli: &Cli, args: &MergeArgs) -> anyhow::Result<ExitCode> {
    export(
        cli,
        &ExportArgs {
            output: args.output.clone(),
            adapter: Some(args.adapter.clone()),
            base: args.base.clone(),
        },
    )
}

pub fn export(cli: &Cli, args: &ExportArgs) -> anyhow::Result<ExitCode> {
    refuse_non_empty(&args.output)?;
    // The file's own blocks, expanded exactly: the export is the model lore runs, in f32.
    let lm = load(cli, &args.base, WeightFormat::Native)?;
    let adapter = args
        .adapter
        .as_deref()
        .map(|d| load_adapter(&lm, d))
        .transpose()?;
    write_hf(
        lm.model(),
        adapter.as_ref(),
        lm.tokenizer(),
        ChatFiles {
            jinja: lm.jinja.as_deref(),
            bos_token: lm.template().bos_token(),
            end_of_turn: lm.template().end_of_turn(),
        },
        &args.output,
    )?;
    eprintln!(
        "wrote {} ({}{})",
        args.output.display(),
        lm.name,
        if adapter.is_some() {
            " with the adapter merged"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub fn score(cli: &Cli, args: &ScoreArgs) -> anyhow::Result<ExitCode> {
    let format = args.weights.format();
    let lm = load(cli, &args.base, format)?;
    let adapter = args
        .adapter
        .as_deref()
        .map(|d| load_adapter(&lm, d))
        .transpose()?;
    let tokens = lm
        .tokenizer()
        .encode(args.text.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
        .get_ids()
        .to_vec();
    anyhow::ensure!(
        tokens.len() >= 2,
        "the text must be at least two tokens long"
    );
    let lora = adapter.as_ref().map(LoraRun::inference);
    let (logprobs, last) = lm.model().score(&tokens, lora.as_ref())?;
    let mean = -logprobs.iter().map(|&l| l as f64).sum::<f64>() / logprobs.len() as f64;
    if args.json {
        super::print_json(&json!({
            "tokens": tokens,
            "logprobs": logprobs,
            "mean_nll": mean,
            "perplexity": mean.exp(),
            "last_logits": last,
        }))?;
    } else {
        println!(
            "{} tokens; mean negative log-likelihood {mean:.4} (perplexity {:.2})",
            tokens.len(),
            mean.exp()
        );
    }
    Ok(ExitCode::SUCCESS)
}
