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

/// Allocator settings for batch jobs that free and reallocate large activations on every
/// step: training (gigabytes per step) and embedding whole folders (`ingest`, `embed`). By
/// default mimalloc hands freed memory back to the kernel, and the kernel zeroes every
/// (transparent huge) page again when it is reused: 28% of a training step's time and 5% of
/// embedding's in `perf`. Keeping freed pages mapped and skipping huge OS pages took a
/// 4 × 256-token training step from 90 to 142 tokens/s (scripts/bench-finetune) and
/// `lore embed` of 600 passages from 26–28 to 29–30 texts/s at the same peak RSS. A one-shot
/// `chat`, `ask` or `eval` is the same kind of job: its prompt expands each weight matrix to
/// f32 once per layer, a fresh buffer each time. mimalloc reads these only from the
/// environment at start-up, so these commands re-execute themselves once with them set; a
/// user's own settings win. `serve` is left alone: a long-running server should hand memory
/// back.
const BATCH_ALLOCATOR: [(&str, &str); 2] = [
    ("MIMALLOC_PURGE_DELAY", "-1"),
    ("MIMALLOC_ALLOW_LARGE_OS_PAGES", "0"),
];

#[cfg(unix)]
fn reexec_for_batch_jobs(cli: &cli::Cli) {
    use std::os::unix::process::CommandExt;
    let batch = match &cli.command {
        cli::Command::Finetune(f) => f.command.is_none(),
        cli::Command::Ingest(_)
        | cli::Command::Embed(_)
        | cli::Command::Chat(_)
        | cli::Command::Ask(_)
        | cli::Command::Eval(_) => true,
        _ => false,
    };
    if !batch
        || BATCH_ALLOCATOR
            .iter()
            .any(|(k, _)| std::env::var_os(k).is_some())
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1)).envs(BATCH_ALLOCATOR);
    // exec only returns on failure; then training runs here with the default settings.
    let err = cmd.exec();
    eprintln!("note: could not tune the allocator for this batch job ({err})");
}

#[cfg(not(unix))]
fn reexec_for_batch_jobs(_: &cli::Cli) {}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = cli::Cli::parse();
    reexec_for_batch_jobs(&cli);
    // qdrant-edge warns about its own uninitialised feature flags on every open: not news to
    // users. A server logs its requests and jobs by default.
    let serving = matches!(cli.command, cli::Command::Serve(_));
    let default = if cli.verbose || serving {
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

/// `lore search … | head` closes stdout early, and `println!` panics on the broken pipe.
/// Unix tools end quietly there (SIGPIPE's default, which Rust ignores and safe code cannot
/// restore), so that panic ends the process with SIGPIPE's exit status and no message; every
/// other panic still reports.
fn quiet_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}
