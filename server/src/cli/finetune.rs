//! `lore finetune` flags. autotrain's spellings are accepted as aliases where they mean the
//! same thing, so its command lines carry over.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::{GenerationArgs, WeightsArg};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct FinetuneArgs {
    #[command(subcommand)]
    pub command: Option<FinetuneCommand>,
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Debug, Subcommand)]
pub enum FinetuneCommand {
    /// Write the base model with an adapter merged in, as a Hugging Face folder (f32).
    Merge(MergeArgs),
    /// Write the base model as a Hugging Face folder (f32), optionally with an adapter merged.
    Export(ExportArgs),
    /// Per-token log-probabilities of a text under the base model (and an adapter).
    Score(ScoreArgs),
    /// Generate a training dataset for a use case with the configured generator.
    GenData(GenDataArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchedulerArg {
    Linear,
    Cosine,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QuantizationArg {
    Int4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChatTemplateArg {
    Tokenizer,
    Chatml,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TrainerArg {
    /// Supervised fine-tuning on conversations or texts (the only trainer).
    Sft,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training data: .jsonl, .json (an array) or .csv rows holding `messages`,
    /// prompt/completion, instruction/input/output, question/answer, or a text column.
    #[arg(
        long,
        value_name = "FILE",
        alias = "data-path",
        alias = "data_path",
        alias = "train-data",
        required = true
    )]
    pub data: Option<PathBuf>,
    /// Where the adapter, checkpoints, loss.csv and loss.png go.
    #[arg(
        long,
        value_name = "DIR",
        alias = "project-name",
        alias = "project_name",
        required_unless_present = "dry_run"
    )]
    pub output: Option<PathBuf>,
    /// The base model: a GGUF file, a Hugging Face folder, or a name in the models folder.
    #[arg(long, env = "LORE_LM", default_value = lore_finetune::DEFAULT_LM, alias = "model")]
    pub base: String,
    /// Peak learning rate.
    #[arg(
        long,
        default_value_t = 2e-4,
        alias = "learning-rate",
        alias = "learning_rate"
    )]
    pub lr: f64,
    #[arg(
        long,
        default_value_t = 3,
        alias = "num-train-epochs",
        alias = "num_train_epochs"
    )]
    pub epochs: usize,
    /// Examples per micro-batch.
    #[arg(
        long,
        default_value_t = 2,
        alias = "train-batch-size",
        alias = "train_batch_size",
        alias = "batch_size"
    )]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(
        long,
        default_value_t = 1,
        alias = "gradient-accumulation",
        alias = "gradient_accumulation",
        alias = "gradient-accumulation-steps"
    )]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 16, alias = "lora_r")]
    pub lora_r: usize,
    #[arg(long, default_value_t = 32.0, alias = "lora_alpha")]
    pub lora_alpha: f64,
    #[arg(long, default_value_t = 0.05, alias = "lora_dropout")]
    pub lora_dropout: f64,
    /// Projections to adapt (comma-separated): q_proj, k_proj, v_proj, o_proj, gate_proj,
    /// up_proj, down_proj, or all-linear.
    #[arg(
        long,
        default_value = "all-linear",
        alias = "target_modules",
        value_delimiter = ','
    )]
    pub target_modules: Vec<String>,
    /// Longest example in tokens; longer ones are cut (their end is not trained).
    #[arg(
        long,
        default_value_t = 1024,
        alias = "model_max_length",
        alias = "block-size",
        alias = "block_size"
    )]
    pub model_max_length: usize,
    /// Validation loss every N steps [default: at the end of each epoch].
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub eval_every: usize,
    /// A checkpoint every N steps [default: at the end of each epoch]; also on Ctrl-C.
    #[arg(long, value_name = "N", default_value_t = 0, alias = "save-steps")]
    pub save_every: usize,
    /// Continue the run in --output from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Print one JSON object with the results on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also print each training event (start, step, evaluation, checkpoint) as a JSON line
    /// on stdout as it happens, for programs that drive training (`lore serve` does).
    #[arg(long)]
    pub events: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Validation data in its own file (instead of a split of --data).
    #[arg(long, value_name = "FILE", alias = "valid-data-path")]
    pub valid_data: Option<PathBuf>,
    /// With --data a folder (autotrain's layout): the training rows are DATA/NAME.jsonl,
    /// .json or .csv [default: train].
    #[arg(long, value_name = "NAME", alias = "train_split")]
    pub train_split: Option<String>,
    /// With --data a folder: the validation rows are DATA/NAME.jsonl, .json or .csv
    /// (instead of holding out --valid-fraction of the training rows).
    #[arg(
        long,
        value_name = "NAME",
        alias = "valid_split",
        conflicts_with = "valid_data"
    )]
    pub valid_split: Option<String>,
    /// The fraction of --data held out for validation.
    #[arg(long, default_value_t = 0.1, alias = "valid_fraction")]
    pub valid_fraction: f64,
    /// Train on this column's raw text (every token trained) instead of conversations.
    #[arg(long, alias = "text_column")]
    pub text_column: Option<String>,
    /// A system message for conversations that bring none (serve with the same --system).
    #[arg(long)]
    pub system: Option<String>,
    /// Read the system message from a file (gen-data writes one beside its dataset).
    #[arg(long, value_name = "FILE", conflicts_with = "system")]
    pub system_file: Option<PathBuf>,
    /// Fraction of steps spent warming the learning rate up.
    #[arg(long, default_value_t = 0.1, alias = "warmup_ratio")]
    pub warmup_ratio: f64,
    #[arg(long, value_enum, default_value_t = SchedulerArg::Linear)]
    pub scheduler: SchedulerArg,
    #[arg(long, default_value_t = 0.0, alias = "weight_decay")]
    pub weight_decay: f64,
    /// Clip the gradients' global norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0, alias = "max_grad_norm")]
    pub max_grad_norm: f64,
    /// Stop after N optimizer steps.
    #[arg(long, value_name = "N")]
    pub max_steps: Option<usize>,
    /// autotrain compatibility (`--peft`, older `--use-peft`): LoRA is how lore always trains.
    #[arg(long, alias = "use_peft", alias = "peft", hide = true)]
    pub use_peft: bool,
    /// autotrain compatibility (older `--use-int4`): the base is always held in 4 bits.
    #[arg(long, alias = "use_int4", hide = true)]
    pub use_int4: bool,
    /// autotrain compatibility: `int4`, how lore always holds the base (other values are
    /// refused: lore has no 8-bit or unquantized training path).
    #[arg(long, value_enum, value_name = "int4")]
    pub quantization: Option<QuantizationArg>,
    /// The chat template training renders with: `tokenizer` (the model's own, the default,
    /// as serving renders) or `chatml` (built-in ChatML, for bases whose template is not
    /// what the tuned model should speak; the model's vocabulary needs ChatML's markers).
    #[arg(long, value_enum, alias = "chat_template")]
    pub chat_template: Option<ChatTemplateArg>,
    /// Prepare the data and print, per training example, the text the loss is taken on (the
    /// trained token runs, decoded) as JSON lines, then stop without training or writing
    /// anything: a check that the chat template masks what it should.
    #[arg(long)]
    pub dry_run: bool,
    /// autotrain compatibility: lore always ends a plain-text example with the model's end
    /// token, and a conversation's replies with their end-of-turn marker.
    #[arg(long, alias = "add_eos_token", hide = true)]
    pub add_eos_token: bool,
    /// Also write the base model with the adapter merged in, as a Hugging Face folder (f32),
    /// to OUTPUT/merged when training finishes (as `lore finetune merge` does).
    #[arg(long, alias = "merge_adapter")]
    pub merge_adapter: bool,
    /// autotrain compatibility: the trainer (sft only).
    #[arg(long, value_enum, default_value_t = TrainerArg::Sft, hide = true)]
    pub trainer: TrainerArg,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The adapter folder (PEFT layout).
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// The folder to write the merged model into (must be empty or absent).
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// The base model the adapter was trained on.
    #[arg(long, env = "LORE_LM", default_value = lore_finetune::DEFAULT_LM)]
    pub base: String,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    #[arg(long, env = "LORE_LM", default_value = lore_finetune::DEFAULT_LM)]
    pub base: String,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The text (tokenized as is, no special tokens added; ChatML markers are recognised).
    #[arg(long)]
    pub text: String,
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    #[arg(long, env = "LORE_LM", default_value = lore_finetune::DEFAULT_LM)]
    pub base: String,
    /// How base weights are held (see `lore chat --help`); native keeps a float folder exact.
    #[arg(long, value_enum, default_value_t = WeightsArg::Auto)]
    pub weights: WeightsArg,
    /// Also print the last position's logits in full.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GenDataArgs {
    /// What the tuned model should do, in plain words.
    #[arg(long)]
    pub use_case: String,
    /// How many prompt/response pairs to end up with.
    #[arg(long, default_value_t = 50)]
    pub examples: usize,
    /// The JSONL dataset to write (appended to on reruns: generation resumes).
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// Pairs asked for per request.
    #[arg(long, default_value_t = 5)]
    pub batch: usize,
    /// Give up after this many requests that yield nothing new.
    #[arg(long, default_value_t = 10)]
    pub max_failures: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub generation: GenerationArgs,
}
