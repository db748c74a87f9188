//! `lore migrate --to-qdrant URL | --to-embedded`: the knowledge base moves between its data
//! folder and a Qdrant server as it is (vectors, payloads and manifest; no re-embedding; the
//! destination builds its own BM25 side). See `KnowledgeBase::migrate` for the crash-safety
//! argument.

use std::process::ExitCode;
use std::time::Instant;

use lore_retrieve::{KnowledgeBase, StoreConfig};

use crate::cli::{Cli, MigrateArgs};
use crate::models::store_config;

pub fn run(cli: &Cli, args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let server = |url: Option<String>| {
        let mut store = cli.store.clone();
        store.qdrant_url = url;
        store_config(&store)
    };
    let (from, to) = match &args.to_qdrant {
        Some(url) => (StoreConfig::Embedded, server(Some(url.clone()))?),
        None => {
            anyhow::ensure!(
                cli.store.qdrant_url.is_some(),
                "--to-embedded needs --qdrant-url (and --qdrant-collection): the server the \
                 knowledge base is on now"
            );
            (server(cli.store.qdrant_url.clone())?, StoreConfig::Embedded)
        }
    };
    let t = Instant::now();
    let moved = KnowledgeBase::migrate(&cli.data_dir, &from, &to)?;
    eprintln!(
        "moved {} files ({} chunks) from {} to {} in {:.1} s",
        moved.files,
        moved.points,
        moved.from,
        moved.to,
        t.elapsed().as_secs_f64(),
    );
    if let StoreConfig::Qdrant(q) = &to {
        eprintln!(
            "from now on pass --qdrant-url {} --qdrant-collection {} (or set LORE_QDRANT_URL)",
            q.url, q.collection
        );
    }
    Ok(ExitCode::SUCCESS)
}
