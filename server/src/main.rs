//! The `lore` command line: flags and environment are read here and nowhere else.

use std::process::ExitCode;

use clap::Parser;

/// candle allocates a fresh buffer per tensor op; glibc hands large ones back to the kernel at
/// once, and the page faults cost a third of embedding time. mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;
mod commands;
mod models;
mod pipeline;
mod progress;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // qdrant-edge warns about its own uninitialised feature flags on every open: not news to users.
    let default = if cli.verbose {
        "info,qdrant_edge=error"
    } else {
        "warn,qdrant_edge=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
