//! LoRA supervised fine-tuning on a frozen 4-bit base.
//!
//! The base's linear weights stay in GGML blocks (see [`crate::lm::linear::WeightFormat::Auto`]);
//! gradients reach earlier layers through [`crate::ops::autograd::frozen_matmul`]. Every random
//! choice is drawn from streams derived from the seed and the step ([`crate::ops::rng`]), so a run
//! is reproducible and a run resumed from a checkpoint follows the uninterrupted one exactly.

pub mod checkpoint;
pub mod data;
pub mod gendata;
pub mod history;
pub mod optim;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::lm::lora::{Adapter, LoraConfig, LoraRun, Target};
use crate::lm::model::{CausalLm, TokenBatch};
use crate::ops::rng::SplitMix64;
use crate::{Error, Result};
use checkpoint::TrainerState;
use data::{Encoded, Prepared};
use history::Record;
use optim::{AdamW, Decay, Schedule, clip_grad_norm};

/// Everything that decides a run's trajectory (a resumed run must match it), plus how often
/// to evaluate and save (which may change on resume).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The base model as given (recorded as PEFT's `base_model_name_or_path`).
    pub base: String,
    pub lr: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub targets: Vec<Target>,
    pub max_len: usize,
    pub warmup_ratio: f64,
    pub decay: Decay,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Stop after this many optimizer steps (the schedule still spans all epochs).
    pub max_steps: Option<usize>,
    /// A digest of the encoded training and validation data.
    pub data_digest: String,
    /// Evaluate every this many steps (0: at the end of each epoch).
    #[serde(default)]
    pub eval_every: usize,
    /// Checkpoint every this many steps (0: at the end of each epoch).
    #[serde(default)]
    pub save_every: usize,
}

impl TrainConfig {
    pub fn lora(&self) -> LoraConfig {
        LoraConfig {
            r: self.lora_r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: self.targets.clone(),
            rslora: false,
        }
    }

    pub fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Request(m.into()));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("the learning rate must be a positive number");
        }
        if self.epochs == 0 || self.batch_size == 0 || self.grad_accum == 0 {
            return bad("epochs, batch size and gradient accumulation must be at least 1");
        }
        if self.max_len < 2 {
            return bad("the model max length must be at least 2 tokens");
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad("the warmup ratio must be in [0, 1)");
        }
        if self.max_steps == Some(0) {
            return bad("--max-steps must be at least 1");
        }
        self.lora().check()
    }

    /// The settings that differ from `other` in ways that change the trajectory.
    pub fn differences(&self, other: &TrainConfig) -> Vec<String> {
        let (a, b) = (self.trajectory(), other.trajectory());
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            return vec![];
        };
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .map(|(k, v)| {
                format!(
                    "{k}: {} now, {} in the checkpoint",
                    v,
                    b.get(k).unwrap_or(&serde_json::Value::Null)
                )
            })
            .collect()
    }

    fn trajectory(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            for k in ["eval_every", "save_every", "max_steps"] {
                o.remove(k);
            }
        }
        v
    }
}

/// A digest of the encoded data, so a resume notices changed data.
pub fn digest(data: &Prepared) -> String {
    let mut h = blake3::Hasher::new();
    for (tag, set) in [(b"t", &data.train), (b"v", &data.valid)] {
        h.update(tag);
        for e in set {
            h.update(&(e.tokens.len() as u64).to_le_bytes());
            for (t, m) in e.tokens.iter().zip(&e.trained) {
                h.update(&t.to_le_bytes());
                h.update(&[*m as u8]);
            }
        }
    }
    h.finalize().to_hex()[..16].to_string()
}

/// What the trainer reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    Started {
        total_steps: usize,
        resumed_from: usize,
    },
    Step(&'a Record, usize),
    Eval {
        step: usize,
        loss: f64,
    },
    Saved {
        step: usize,
        dir: &'a Path,
    },
}

/// A training event as a line of `lore finetune --events` output: the protocol between a
/// training process and what drives it (`lore serve`'s fine-tuning jobs), typed on both ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    Started {
        total_steps: usize,
        resumed_from: usize,
    },
    Step {
        step: usize,
        total_steps: usize,
        epoch: f64,
        /// Mean training loss of the step's tokens.
        loss: Option<f64>,
        lr: f64,
        /// Input tokens processed so far.
        tokens: usize,
        elapsed_s: f64,
    },
    Eval {
        step: usize,
        /// `None` when the loss is not a number (a diverged run): JSON has no NaN.
        loss: Option<f64>,
    },
    Saved {
        step: usize,
        dir: PathBuf,
    },
}

impl From<&Event<'_>> for Progress {
    fn from(e: &Event<'_>) -> Self {
        match *e {
            Event::Started {
                total_steps,
                resumed_from,
            } => Self::Started {
                total_steps,
                resumed_from,
            },
            Event::Step(r, total_steps) => Self::Step {
                step: r.step,
                total_steps,
                epoch: r.epoch,
                loss: r.train_loss,
                lr: r.lr,
                tokens: r.tokens,
                elapsed_s: r.elapsed_s,
            },
            Event::Eval { step, loss } => Self::Eval {
                step,
                loss: loss.is_finite().then_some(loss),
            },
            Event::Saved { step, dir } => Self::Saved {
                step,
                dir: dir.to_path_buf(),
            },
        }
    }
}

/// Why training stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stopped {
    Finished,
    /// The stop flag was raised (Ctrl-C); a checkpoint was written.
    Interrupted,
}

/// The run's result.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub initial_val_loss: Option<f64>,
    pub final_val_loss: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub steps: usize,
    pub total_steps: usize,
    pub train_tokens: usize,
    pub elapsed_s: f64,
    pub tokens_per_s: f64,
    /// As `tokens_per_s`, leaving out this run's first step (which also faults in the
    /// memory the rest reuse): the steady rate, measured as peers measure theirs.
    pub steady_tokens_per_s: Option<f64>,
    pub stopped: Stopped,
    pub train_examples: usize,
    pub valid_examples: usize,
    #[serde(skip)]
    pub history: Vec<Record>,
}

/// A training run over `model` (its weights are never modified), writing to `output`.
#[derive(Debug)]
pub struct Run<'a> {
    pub model: &'a CausalLm,
    pub config: TrainConfig,
    pub data: &'a Prepared,
    pub output: PathBuf,
    /// Continue from the newest checkpoint in `output`.
    pub resume: bool,
}

impl Run<'_> {
    fn steps_per_epoch(&self) -> usize {
        let per_step = self.config.batch_size * self.config.grad_accum;
        self.data.train.len().div_ceil(per_step)
    }

    /// The micro-batches of optimizer step `step`: the epoch's seeded permutation, cut into
    /// batches of `batch_size`, `grad_accum` of them per step.
    fn micro_batches(&self, step: usize) -> Vec<TokenBatch> {
        let spe = self.steps_per_epoch();
        let (epoch, within) = (step / spe, step % spe);
        let mut order: Vec<usize> = (0..self.data.train.len()).collect();
        SplitMix64::derive(self.config.seed, 1 + epoch as u64).shuffle(&mut order);
        let (b, accum) = (self.config.batch_size, self.config.grad_accum);
        (0..accum)
            .filter_map(|k| {
                let start = (within * accum + k) * b;
                (start < order.len()).then(|| {
                    let end = (start + b).min(order.len());
                    batch_of(order[start..end].iter().map(|&i| &self.data.train[i]))
                })
            })
            .collect()
    }

    /// Token-weighted mean loss over the validation set (no dropout, no graph).
    fn evaluate(&self, adapter: &Adapter) -> Result<Option<f64>> {
        if self.data.valid.is_empty() {
            return Ok(None);
        }
        let lora = LoraRun::inference(adapter);
        let (mut sum, mut count) = (0f64, 0usize);
        for chunk in self.data.valid.chunks(self.config.batch_size) {
            let (loss, n) = self.model.loss(&batch_of(chunk.iter()), Some(&lora))?;
            sum += loss.to_scalar::<f32>()? as f64 * n as f64;
            count += n;
        }
        Ok(Some(sum / count.max(1) as f64))
    }

    fn checkpoint(
        &self,
        state: &TrainerState,
        adapter: &Adapter,
        optimizer: &AdamW,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<()> {
        let dir = checkpoint::save(
            &self.output,
            state,
            adapter,
            &optimizer.state(),
            &self.model.config,
        )?;
        on_event(Event::Saved {
            step: state.step,
            dir: &dir,
        });
        Ok(())
    }

    /// Trains until the last step or until `stop` is raised.
    pub fn train(self, stop: &AtomicBool, on_event: &mut dyn FnMut(Event)) -> Result<Outcome> {
        self.config.check()?;
        let model_config = &self.model.config;
        let spe = self.steps_per_epoch();
        let schedule_total = spe * self.config.epochs;
        let total = self
            .config
            .max_steps
            .map_or(schedule_total, |m| m.min(schedule_total));
        let schedule = Schedule {
            peak: self.config.lr,
            warmup: (schedule_total as f64 * self.config.warmup_ratio).ceil() as usize,
            total: schedule_total,
            decay: self.config.decay,
        };
        std::fs::create_dir_all(&self.output).map_err(|e| Error::io(&self.output, e))?;
        let resumed = if self.resume {
            checkpoint::load_latest(&self.output, model_config)?
        } else {
            None
        };
        let (start_adapter, mut state, moments) = match resumed {
            Some(c) => {
                let diffs = self.config.differences(&c.state.config);
                if !diffs.is_empty() {
                    return Err(Error::Request(format!(
                        "{} was trained with other settings; resuming would not continue it: {}",
                        c.dir.display(),
                        diffs.join("; ")
                    )));
                }
                (c.adapter, c.state, Some(c.optimizer))
            }
            None => {
                let adapter = Adapter::init(
                    model_config,
                    self.config.lora(),
                    self.config.base.clone(),
                    SplitMix64::derive(self.config.seed, 0).next_u64(),
                )?;
                let state = TrainerState {
                    step: 0,
                    config: self.config.clone(),
                    history: Vec::new(),
                    tokens: 0,
                    elapsed_s: 0.0,
                };
                (adapter, state, None)
            }
        };
        // eval/save intervals may change on resume.
        state.config = self.config.clone();
        let (adapter, vars) = start_adapter.to_vars()?;
        let eval_adapter = adapter.detached();
        let mut optimizer = AdamW::new(vars, self.config.weight_decay)?;
        if let Some(m) = &moments {
            optimizer.restore(m, state.step)?;
        }
        on_event(Event::Started {
            total_steps: total,
            resumed_from: state.step,
        });
        let mut initial = state.history.first().and_then(|r| r.val_loss);
        if state.step == 0 && state.history.is_empty() {
            initial = self.evaluate(&eval_adapter)?;
            if let Some(loss) = initial {
                on_event(Event::Eval { step: 0, loss });
            }
            state.history.push(Record {
                step: 0,
                epoch: 0.0,
                train_loss: None,
                val_loss: initial,
                lr: 0.0,
                grad_norm: None,
                tokens: 0,
                elapsed_s: 0.0,
            });
        }
        let clock = Instant::now();
        let elapsed_before = state.elapsed_s;
        let tokens_before = state.tokens;
        let save_every = if self.config.save_every == 0 {
            spe
        } else {
            self.config.save_every
        };
        let eval_every = if self.config.eval_every == 0 {
            spe
        } else {
            self.config.eval_every
        };
        let first_of_run = state.history.len();
        let mut stopped = Stopped::Finished;
        // The state whose loss was last seen finite, kept to save if training diverges.
        let mut last_good = (state.clone(), eval_adapter.snapshot()?, optimizer.state());
        while state.step < total {
            if stop.load(Ordering::SeqCst) {
                stopped = Stopped::Interrupted;
                break;
            }
            let step = state.step;
            let batches = self.micro_batches(step);
            let trained: usize = batches.iter().map(TokenBatch::trained_tokens).sum();
            let mut grads: Vec<Option<Tensor>> = vec![None; optimizer.vars().len()];
            let mut loss_sum = 0f64;
            for (k, batch) in batches.iter().enumerate() {
                let stream = (step * self.config.grad_accum + k) as u64;
                let lora = LoraRun::training(
                    &adapter,
                    SplitMix64::derive(self.config.seed ^ 0xD0, stream).next_u64(),
                );
                let (loss, n) = self.model.loss(batch, Some(&lora))?;
                // Token-weighted: the step's loss is the mean over all its trained tokens.
                let weight = n as f64 / trained as f64;
                let value = loss.to_scalar::<f32>()? as f64;
                loss_sum += value * weight;
                if !value.is_finite() {
                    break;
                }
                let g = (loss * weight)?.backward()?;
                for (slot, (_, var)) in grads.iter_mut().zip(optimizer.vars()) {
                    let Some(gv) = g.get(var.as_tensor()) else {
                        continue;
                    };
                    *slot = Some(match slot.take() {
                        Some(acc) => (acc + gv)?,
                        None => gv.clone(),
                    });
                }
                state.tokens += batch.input_tokens();
            }
            let mut grads: Vec<Tensor> = grads
                .into_iter()
                .zip(optimizer.vars())
                .map(|(g, (_, v))| g.map_or_else(|| v.as_tensor().zeros_like(), Ok))
                .collect::<candle_core::Result<_>>()?;
            let norm = clip_grad_norm(&mut grads, self.config.max_grad_norm)?;
            if !loss_sum.is_finite() || !norm.is_finite() {
                // The previous update broke the weights: keep the state before it.
                let (good_state, good_adapter, good_moments) = last_good;
                let dir = checkpoint::save(
                    &self.output,
                    &good_state,
                    &good_adapter,
                    &good_moments,
                    model_config,
                )?;
                return Err(Error::Request(format!(
                    "the loss became {} at step {} (gradient norm {norm:.3e}), so training stopped. \
                     The last good state (step {}, before the update that diverged) is saved in {}; \
                     it is a usable adapter. Start again with a lower --lr, or rerun with --resume to retry from it",
                    if loss_sum.is_finite() {
                        "unstable"
                    } else {
                        "NaN or infinite"
                    },
                    step + 1,
                    good_state.step,
                    dir.display()
                )));
            }
            last_good = (state.clone(), eval_adapter.snapshot()?, optimizer.state());
            let lr = schedule.lr(step);
            optimizer.step(&grads, lr)?;
            state.step += 1;
            state.elapsed_s = elapsed_before + clock.elapsed().as_secs_f64();
            let mut record = Record {
                step: state.step,
                epoch: state.step as f64 / spe as f64,
                train_loss: Some(loss_sum),
                val_loss: None,
                lr,
                grad_norm: Some(norm),
                tokens: state.tokens,
                elapsed_s: state.elapsed_s,
            };
            if state.step % eval_every == 0 || state.step == total {
                record.val_loss = self.evaluate(&eval_adapter)?;
                if let Some(loss) = record.val_loss {
                    on_event(Event::Eval {
                        step: state.step,
                        loss,
                    });
                }
            }
            on_event(Event::Step(&record, total));
            state.history.push(record);
            if state.step % save_every == 0 || state.step == total {
                self.checkpoint(&state, &eval_adapter, &optimizer, on_event)?;
            }
        }
        if stopped == Stopped::Interrupted {
            self.checkpoint(&state, &eval_adapter, &optimizer, on_event)?;
        } else {
            eval_adapter.save_peft(&self.output, model_config)?;
        }
        history::write_csv(&state.history, &self.output.join("loss.csv"))?;
        history::draw_chart(&state.history, &self.output.join("loss.png"))?;
        let run_elapsed = clock.elapsed().as_secs_f64();
        let run_tokens = state.tokens - tokens_before;
        Ok(Outcome {
            initial_val_loss: initial,
            final_val_loss: state.history.iter().rev().find_map(|r| r.val_loss),
            final_train_loss: state.history.iter().rev().find_map(|r| r.train_loss),
            steps: state.step,
            total_steps: total,
            train_tokens: state.tokens,
            elapsed_s: state.elapsed_s,
            tokens_per_s: run_tokens as f64 / run_elapsed.max(1e-9),
            steady_tokens_per_s: match (state.history.get(first_of_run), state.history.last()) {
                (Some(first), Some(last)) if last.step > first.step => Some(
                    (last.tokens - first.tokens) as f64
                        / (last.elapsed_s - first.elapsed_s).max(1e-9),
                ),
                _ => None,
            },
            stopped,
            train_examples: self.data.train.len(),
            valid_examples: self.data.valid.len(),
            history: state.history,
        })
    }
}

fn batch_of<'a>(examples: impl Iterator<Item = &'a Encoded>) -> TokenBatch {
    TokenBatch {
        sequences: examples
            .map(|e| (e.tokens.clone(), e.trained.clone()))
            .collect(),
    }
}

/// Whether `output` can take a new run: absent, empty, or (with `resume`) holding this run's
/// checkpoints. Anything else is refused so another run's results are never overwritten.
pub fn check_output(output: &Path, resume: bool) -> Result<()> {
    let entries: Vec<String> = match std::fs::read_dir(output) {
        Ok(e) => e
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) if !output.exists() => return Ok(()),
        Err(e) => return Err(Error::io(output, e)),
    };
    if !output.is_dir() {
        return Err(Error::Request(format!(
            "{} is not a folder",
            output.display()
        )));
    }
    let checkpoints = checkpoint::list(output);
    if resume {
        if checkpoints.is_empty() {
            return Err(Error::Request(format!(
                "--resume: {} holds no checkpoint to resume from",
                output.display()
            )));
        }
        return Ok(());
    }
    if entries.is_empty() {
        return Ok(());
    }
    Err(Error::Request(match checkpoints.last() {
        Some((step, _)) => format!(
            "{} already holds a run (checkpoint at step {step}); pass --resume to continue it, or choose another --output",
            output.display()
        ),
        None => format!(
            "{} is not empty and holds no lore run; choose an empty or new folder for --output",
            output.display()
        ),
    }))
}
