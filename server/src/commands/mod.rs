//! One module per subcommand; each returns the process exit code.

use std::process::ExitCode;

use crate::cli::{Cli, Command};

mod ask;
mod chat;
mod embed;
mod eval;
mod ingest;
mod search;
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
    }
}

/// Prints `value` as one line of JSON on stdout.
pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
