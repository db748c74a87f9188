//! One module per subcommand; each returns the process exit code.

use std::process::ExitCode;

use crate::cli::{Cli, Command, FinetuneCommand};

mod ask;
mod chat;
mod embed;
mod eval;
mod eval_answers;
mod finetune;
mod finetune_tools;
mod gen_data;
mod ingest;
mod migrate;
mod search;
mod serve;
mod status;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Ingest(args) => ingest::run(&cli, args),
        Command::Embed(args) => embed::run(&cli, args),
        Command::Status(args) => status::run(&cli, args),
        Command::Search(args) => search::run(&cli, args),
        Command::Chat(args) => chat::run(&cli, args),
        Command::Ask(args) => ask::run(&cli, args),
        Command::Eval(crate::cli::EvalCommand::Retrieval(args)) => eval::run(&cli, args),
        Command::Eval(crate::cli::EvalCommand::Answers(args)) => eval_answers::run(&cli, args),
        Command::Serve(args) => serve::run(&cli, args),
        Command::Migrate(args) => migrate::run(&cli, args),
        Command::Finetune(f) => match &f.command {
            None => finetune::run(&cli, &f.train),
            Some(FinetuneCommand::Merge(args)) => finetune_tools::merge(&cli, args),
            Some(FinetuneCommand::Export(args)) => finetune_tools::export(&cli, args),
            Some(FinetuneCommand::Score(args)) => finetune_tools::score(&cli, args),
            Some(FinetuneCommand::GenData(args)) => gen_data::run(&cli, args),
        },
    }
}

/// Prints `value` as one line of JSON on stdout.
pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
