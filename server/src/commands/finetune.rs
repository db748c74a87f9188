//! `lore finetune`: LoRA training on a frozen 4-bit base, with a progress bar, checkpoints
//! on Ctrl-C, and the loss history as CSV and PNG.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lore_finetune::Decay;
use lore_finetune::Target;
use lore_finetune::WeightFormat;
use lore_finetune::{DataOptions, Encoder, Validation, prepare};
use lore_finetune::{LanguageModel, Message, Role, resolve_model};
use lore_finetune::{Run, Stopped, TrainConfig, TrainEvent as Event, check_output, digest};
use serde_json::json;

use crate::cli::{ChatTemplateArg, Cli, SchedulerArg, TrainArgs};
use crate::models::models_dir;

/// The training file and, from `--valid-split`, the validation file. `--data` is a file, or a
/// folder in autotrain's layout where `--train-split`/`--valid-split` name the files.
fn data_files(
    data: &Path,
    args: &TrainArgs,
) -> anyhow::Result<(std::path::PathBuf, Option<std::path::PathBuf>)> {
    if data.is_dir() {
        let train = split_file(data, args.train_split.as_deref().unwrap_or("train"))?;
        let valid = match &args.valid_split {
            Some(name) => Some(split_file(data, name)?),
            None => None,
        };
        return Ok((train, valid));
    }
    anyhow::ensure!(data.is_file(), "--data {}: no such file", data.display());
    anyhow::ensure!(
        args.train_split.is_none() && args.valid_split.is_none(),
        "--train-split and --valid-split name files in a folder: give --data a folder \
         holding NAME.jsonl, NAME.json or NAME.csv (autotrain's layout), or drop them"
    );
    Ok((data.to_path_buf(), None))
}

/// `--dry-run`'s output: per training example, its token count and each run of trained
/// tokens decoded (special tokens kept), one JSON object per line.
fn print_masks(
    prepared: &lore_finetune::Prepared,
    tokenizer: &tokenizers::Tokenizer,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for example in &prepared.train {
        let mut runs: Vec<Vec<u32>> = Vec::new();
        let mut previous = false;
        for (&token, &trained) in example.tokens.iter().zip(&example.trained) {
            match (trained, previous) {
                (true, true) => runs.last_mut().expect("a run is open").push(token),
                (true, false) => runs.push(vec![token]),
                _ => {}
            }
            previous = trained;
        }
        let trained = runs
            .iter()
            .map(|ids| {
                tokenizer
                    .decode(ids, false)
                    .map_err(|e| anyhow::anyhow!("{e}"))
            })
            .collect::<anyhow::Result<Vec<String>>>()?;
        writeln!(
            out,
            "{}",
            json!({"tokens": example.tokens.len(), "trained": trained})
        )?;
    }
    Ok(())
}

/// `DIR/NAME.jsonl`, `.json` or `.csv`, the first that exists.
fn split_file(dir: &Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    anyhow::ensure!(
        !name.is_empty() && !name.contains(['/', '\\']) && name != "..",
        "a split name is a file name without its extension, not {name:?}"
    );
    let candidates: Vec<_> = ["jsonl", "json", "csv"]
        .iter()
        .map(|ext| dir.join(format!("{name}.{ext}")))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "split {name:?}: none of {} exists",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

pub fn run(cli: &Cli, args: &TrainArgs) -> anyhow::Result<ExitCode> {
    let Some(data) = &args.data else {
        anyhow::bail!("--data is required");
    };
    let output = match (&args.output, args.dry_run) {
        (Some(output), _) => output,
        (None, true) => Path::new(""),
        (None, false) => anyhow::bail!("--output is required"),
    };
    let (data, split_valid) = data_files(data, args)?;
    let data = &data;
    let valid_data = split_valid.or_else(|| args.valid_data.clone());
    if let Some(v) = &valid_data {
        anyhow::ensure!(v.is_file(), "--valid-data {}: no such file", v.display());
    }
    if !args.dry_run {
        check_output(output, args.resume)?;
    }
    let targets = Target::parse_list(&args.target_modules)?;
    let system = match &args.system_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("--system-file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => args.system.clone(),
    };

    let path = resolve_model(&args.base, &models_dir(cli.models_dir.as_deref()))?;
    let lm = LanguageModel::load(&path, WeightFormat::Auto)?;
    let chatml = lore_finetune::ChatTemplate::chatml();
    let template = match args.chat_template {
        Some(ChatTemplateArg::Chatml) => {
            anyhow::ensure!(
                lm.tokenizer().token_to_id("<|im_start|>").is_some(),
                "--chat-template chatml: {} has no <|im_start|> token; use its own template (--chat-template tokenizer)",
                lm.name
            );
            // Serving renders with the model's own template: an adapter trained in another
            // format would be served in one it never saw.
            let probe = [
                Message::new(Role::System, "s"),
                Message::new(Role::User, "u"),
                Message::new(Role::Assistant, "a"),
            ];
            anyhow::ensure!(
                lm.template().render(&probe, false).ok() == chatml.render(&probe, false).ok(),
                "--chat-template chatml: {}'s own template is not ChatML, and lore serves an adapter with its base's template; train with --chat-template tokenizer",
                lm.name
            );
            &chatml
        }
        _ => lm.template(),
    };
    let encoder = Encoder {
        tokenizer: lm.tokenizer(),
        template,
        end_of_text: lm
            .tokenizer()
            .token_to_id("<|endoftext|>")
            .or_else(|| lm.end_tokens().first().copied()),
        max_len: args.model_max_length.min(lm.context()),
    };
    let options = DataOptions {
        text_column: args.text_column.clone(),
        system,
    };
    let validation = match &valid_data {
        Some(v) => Validation::File(v.clone()),
        None => Validation::Split(args.valid_fraction),
    };
    let prepared = prepare(data, &validation, &options, &encoder, args.seed)?;
    let notes = [
        (prepared.duplicates, "duplicate examples dropped"),
        (prepared.truncated, "examples cut to --model-max-length"),
        (
            prepared.empty,
            "examples dropped: nothing left to learn after the cut",
        ),
    ];
    for (n, what) in notes {
        if n > 0 {
            eprintln!("note: {n} {what}");
        }
    }
    if args.dry_run {
        print_masks(&prepared, lm.tokenizer())?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = TrainConfig {
        base: args.base.clone(),
        lr: args.lr,
        epochs: args.epochs,
        batch_size: args.batch_size,
        grad_accum: args.grad_accum,
        lora_r: args.lora_r,
        lora_alpha: args.lora_alpha,
        lora_dropout: args.lora_dropout,
        targets,
        max_len: encoder.max_len,
        warmup_ratio: args.warmup_ratio,
        decay: match args.scheduler {
            SchedulerArg::Linear => Decay::Linear,
            SchedulerArg::Cosine => Decay::Cosine,
            SchedulerArg::Constant => Decay::Constant,
        },
        weight_decay: args.weight_decay,
        max_grad_norm: args.max_grad_norm,
        seed: args.seed,
        max_steps: args.max_steps,
        data_digest: digest(&prepared),
        eval_every: args.eval_every,
        save_every: args.save_every,
    };
    config.check()?;
    let stop = interrupt_flag();
    let bar = Bar::new(!args.json, args.events);
    let run = Run {
        model: lm.model(),
        config,
        data: &prepared,
        output: output.to_path_buf(),
        resume: args.resume,
    };
    let outcome = run.train(&stop, &mut |e| bar.event(e));
    bar.finish();
    let outcome = outcome?;
    // Which weights this adapter belongs to, for `ask`/`chat`/`serve --adapter` to check.
    lore_server::adapter_base::record(output, &args.base, &path)?;
    write_training_params(output, args)?;
    let peak_rss_mb = peak_rss_mb();
    if args.json {
        super::print_json(&json!({
            "initial_val_loss": outcome.initial_val_loss,
            "final_val_loss": outcome.final_val_loss,
            "final_train_loss": outcome.final_train_loss,
            "steps": outcome.steps,
            "total_steps": outcome.total_steps,
            "train_tokens": outcome.train_tokens,
            "elapsed_s": outcome.elapsed_s,
            "tokens_per_s": outcome.tokens_per_s,
            "steady_tokens_per_s": outcome.steady_tokens_per_s,
            "peak_rss_mb": peak_rss_mb,
            "output": output,
            "stopped": outcome.stopped,
            "train_examples": outcome.train_examples,
            "valid_examples": outcome.valid_examples,
            "duplicates_dropped": prepared.duplicates,
            "truncated": prepared.truncated,
        }))?;
    } else {
        let loss = |v: Option<f64>| v.map_or("-".to_string(), |l| format!("{l:.4}"));
        eprintln!(
            "{} {} steps, {} tokens in {:.1} s ({:.0} tokens/s, peak RSS {} MB); validation loss {} -> {}",
            if outcome.stopped == Stopped::Finished {
                "trained"
            } else {
                "interrupted after"
            },
            outcome.steps,
            outcome.train_tokens,
            outcome.elapsed_s,
            outcome.tokens_per_s,
            peak_rss_mb.map_or("?".into(), |m| m.to_string()),
            loss(outcome.initial_val_loss),
            loss(outcome.final_val_loss),
        );
    }
    if outcome.stopped == Stopped::Interrupted {
        eprintln!(
            "checkpoint saved; continue with: lore finetune --resume --output {} (and the same settings)",
            output.display()
        );
        return Ok(ExitCode::from(130));
    }
    if args.merge_adapter {
        let merged = output.join("merged");
        super::finetune_tools::export(
            cli,
            &crate::cli::ExportArgs {
                output: merged,
                adapter: Some(output.to_path_buf()),
                base: args.base.clone(),
            },
        )?;
    }
    if !args.json {
        println!("{}", adapter_note(output));
    }
    Ok(ExitCode::SUCCESS)
}

/// `training_params.json` as autotrain writes it (its key names), so a run can be read, and
/// repeated, by people and tools that know autotrain's.
fn write_training_params(output: &Path, args: &TrainArgs) -> anyhow::Result<()> {
    let scheduler = match args.scheduler {
        SchedulerArg::Linear => "linear",
        SchedulerArg::Cosine => "cosine",
        SchedulerArg::Constant => "constant",
    };
    let params = json!({
        "model": args.base,
        "project_name": output,
        "data_path": args.data,
        "valid_data_path": args.valid_data,
        "train_split": args.train_split,
        "valid_split": args.valid_split,
        "valid_fraction": (args.valid_data.is_none() && args.valid_split.is_none())
            .then_some(args.valid_fraction),
        "text_column": args.text_column,
        "lr": args.lr,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "gradient_accumulation": args.grad_accum,
        "warmup_ratio": args.warmup_ratio,
        "scheduler": scheduler,
        "optimizer": "adamw",
        "weight_decay": args.weight_decay,
        "max_grad_norm": args.max_grad_norm,
        "seed": args.seed,
        "block_size": args.model_max_length,
        "model_max_length": args.model_max_length,
        "max_steps": args.max_steps,
        "peft": true,
        "quantization": "int4",
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "lora_dropout": args.lora_dropout,
        "target_modules": args.target_modules.join(","),
        "merge_adapter": args.merge_adapter,
        "chat_template": match args.chat_template {
            Some(ChatTemplateArg::Chatml) => "chatml",
            _ => "tokenizer",
        },
        "add_eos_token": true,
        "trainer": "sft",
        "save_steps": args.save_every,
        "system": args.system,
    });
    let path = output.join("training_params.json");
    lore_durable::write(&path, serde_json::to_string_pretty(&params)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn adapter_note(output: &Path) -> String {
    format!(
        "adapter: {0} (PEFT LoRA); try it: lore chat --adapter {0} \"…\"; loss history: {1}, {2}",
        output.display(),
        output.join("loss.csv").display(),
        output.join("loss.png").display()
    )
}

/// Raised on the first Ctrl-C or SIGTERM: training checkpoints after the current step and
/// stops. A second Ctrl-C exits at once.
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let raised = flag.clone();
    let spawned = std::thread::Builder::new()
        .name("lore-signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                wait_for_signal().await;
                eprintln!(
                    "\nstopping after this step to save a checkpoint (Ctrl-C again to quit now)"
                );
                raised.store(true, Ordering::SeqCst);
                wait_for_signal().await;
                std::process::exit(130);
            });
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot watch for Ctrl-C: {e}");
    }
    flag
}

/// Resolves on Ctrl-C or SIGTERM (also `lore serve`'s shutdown signal).
pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Peak resident memory of this process (Linux), in MB.
pub(crate) fn peak_rss_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// The progress bar (a terminal only), or plain lines on stderr for logs.
struct Bar {
    bar: Option<ProgressBar>,
    plain: bool,
    /// JSON lines on stdout for a driving program (`--events`).
    events: bool,
}

impl Bar {
    fn new(visible: bool, events: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = (visible && tty).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("[{bar:30}] step {pos}/{len}  {msg}  ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar
        });
        Self {
            bar,
            plain: visible && !tty,
            events,
        }
    }

    /// One event as a JSON line on stdout ([`lore_finetune::Progress`], which the server
    /// reads back), flushed at once so a reader sees it now.
    fn emit(&self, e: &Event) {
        let Ok(line) = serde_json::to_string(&lore_finetune::Progress::from(e)) else {
            return;
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }

    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None if self.plain => eprintln!("{text}"),
            None => {}
        }
    }

    fn event(&self, e: Event) {
        if self.events {
            self.emit(&e);
        }
        match e {
            Event::Started {
                total_steps,
                resumed_from,
            } => {
                if let Some(bar) = &self.bar {
                    bar.set_length(total_steps as u64);
                    bar.set_position(resumed_from as u64);
                    bar.reset_eta();
                }
                if resumed_from > 0 {
                    self.line(format!("resuming at step {resumed_from} of {total_steps}"));
                }
            }
            Event::Step(r, total) => {
                let speed = r.tokens as f64 / r.elapsed_s.max(1e-9);
                let msg = format!(
                    "loss {:.4}  lr {:.2e}  {speed:.0} tokens/s",
                    r.train_loss.unwrap_or(f64::NAN),
                    r.lr
                );
                match &self.bar {
                    Some(bar) => {
                        bar.set_position(r.step as u64);
                        bar.set_message(msg);
                    }
                    None if self.plain && (r.step % 10 == 0 || r.step == total) => {
                        eprintln!("step {}/{total}  {msg}", r.step);
                    }
                    None => {}
                }
            }
            Event::Eval { step, loss } => {
                self.line(format!("step {step}: validation loss {loss:.4}"))
            }
            Event::Saved { step, dir } => {
                self.line(format!("step {step}: checkpoint {}", dir.display()))
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
