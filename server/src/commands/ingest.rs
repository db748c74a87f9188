use std::process::ExitCode;

use lore_embed::{EmbedWorker, Embedder};
use lore_ingest::{ChunkerConfig, WalkOptions};

use crate::cli::{Cli, IngestArgs};
use crate::models::{load_embedder, store_config};
use lore_server::pipeline::{IngestRequest, ingest};
use lore_server::progress::Progress;

pub fn run(cli: &Cli, args: &IngestArgs) -> anyhow::Result<ExitCode> {
    let embedder = load_embedder(&args.model, cli.models_dir.as_deref())?;
    let tokenizer = embedder.tokenizer().clone();
    let worker = EmbedWorker::spawn(embedder);
    let request = IngestRequest {
        roots: args.paths.clone(),
        walk: WalkOptions {
            include: args.include.clone(),
            exclude: args.exclude.clone(),
            max_file_bytes: args.max_file_bytes,
            hidden: args.hidden,
            exclude_dirs: Vec::new(),
        },
        chunker: ChunkerConfig {
            max_tokens: args.chunk_tokens as usize,
            overlap_tokens: args.overlap as usize,
        },
        rebuild: args.rebuild,
        commit_chunks: args.commit_chunks as usize,
        tags: args.tags.iter().cloned().collect(),
        store: store_config(&cli.store)?,
        exclude_data_dir: true,
    };
    let progress = Progress::new(!args.json);
    let report = ingest(&cli.data_dir, &worker, tokenizer, &request, &progress)?;

    if args.json {
        super::print_json(&report)?;
    } else {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        for s in &report.skipped_files {
            eprintln!("skipped: {}: {}", s.path, s.reason);
        }
        println!(
            "{} new, {} changed, {} unchanged, {} removed, {} skipped; {} chunks written, {} deleted in {:.1} s ({:.1} s embedding) into {} with {}",
            report.new,
            report.changed,
            report.unchanged,
            report.removed,
            report.skipped,
            report.chunks_written,
            report.chunks_deleted,
            report.elapsed_s,
            report.embed_s,
            report.data_dir,
            worker.info().name,
        );
        if report.recovered > 0 {
            println!(
                "repaired {} files an interrupted run had left half-written",
                report.recovered
            );
        }
    }
    if report.missing_roots.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: not found: {}", report.missing_roots.join(", "));
        Ok(ExitCode::FAILURE)
    }
}
