use std::process::ExitCode;

use lore_retrieve::{KnowledgeBase, Status};

use crate::cli::{Cli, StatusArgs};
use crate::models::store_config;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn run(cli: &Cli, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let store = store_config(&cli.store)?;
    let status = Status::read_at(&cli.data_dir, &store)?;
    let audit = if args.verify {
        Some(KnowledgeBase::open_existing(&cli.data_dir, &store)?.audit()?)
    } else {
        None
    };
    let consistent = audit.as_ref().is_none_or(|a| a.consistent());
    if args.json {
        let mut value = serde_json::to_value(&status)?;
        if let Some(audit) = &audit {
            value["audit"] = serde_json::to_value(audit)?;
            value["consistent"] = consistent.into();
        }
        super::print_json(&value)?;
    } else {
        let m = &status.model;
        println!("knowledge base  {}", status.data_dir);
        println!("files           {}", status.files);
        println!("chunks          {}", status.chunks);
        println!("vectors         {}", status.vectors);
        println!(
            "model           {} ({} dims, {:?} pooling, window {})",
            m.name, m.dim, m.pooling, m.max_seq_len
        );
        if let Some(s) = &status.settings {
            println!(
                "chunking        {} tokens, {} overlap",
                s.chunker.max_tokens, s.chunker.overlap_tokens
            );
        }
        println!(
            "disk            {:.1} MiB (vectors {:.1}, bm25 {:.1})",
            mib(status.disk_bytes.total),
            mib(status.disk_bytes.vectors),
            mib(status.disk_bytes.lexical)
        );
        if status.pending > 0 {
            println!(
                "pending         {} files from an interrupted ingest (the next ingest repairs them)",
                status.pending
            );
        }
        if let Some(a) = &audit {
            println!(
                "verify          {}: manifest {} / vectors {} / bm25 {} chunks, {} mismatched",
                if consistent {
                    "consistent"
                } else {
                    "INCONSISTENT"
                },
                a.manifest_chunks,
                a.vector_chunks,
                a.lexical_chunks,
                a.mismatched.len()
            );
        }
    }
    Ok(if consistent {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
