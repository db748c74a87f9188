//! Helpers shared by the knowledge base tests.
#![allow(dead_code)] // each test file uses its own subset

use lore_embed::{ModelInfo, Pooling};
use lore_ingest::{Chunk, ChunkId, ChunkerConfig, DocKind, FileEntry, ManifestSettings};
use lore_retrieve::{FileUpdate, KnowledgeBase, OpenOptions};

pub const DIM: usize = 8;

pub fn model(dim: usize, fingerprint: &str) -> ModelInfo {
    ModelInfo {
        name: "test-model".into(),
        dim,
        pooling: Pooling::Mean,
        normalize: true,
        max_seq_len: 128,
        special_tokens: 2,
        fingerprint: fingerprint.into(),
    }
}

pub fn options(dim: usize, rebuild: bool) -> OpenOptions {
    OpenOptions {
        model: model(dim, "aaaa"),
        settings: ManifestSettings {
            chunker: ChunkerConfig::default(),
            extractor_version: 1,
        },
        rebuild,
        store: Default::default(),
    }
}

/// A file's update with `n` chunks whose text depends on `version`.
pub fn update(path: &str, n: usize, version: u32) -> FileUpdate {
    let chunks: Vec<Chunk> = (0..n)
        .map(|i| {
            let text = format!("chunk {i} of {path} version {version}");
            let span = i * 100..i * 100 + text.len();
            Chunk {
                id: ChunkId::derive(path, &span, &text),
                path: path.into(),
                kind: DocKind::Text,
                text,
                byte_start: span.start,
                byte_end: span.end,
                start_line: i + 1,
                end_line: i + 1,
                heading: None,
                page: None,
                tags: Default::default(),
            }
        })
        .collect();
    let vectors = (0..n)
        .map(|i| {
            (0..DIM)
                .map(|d| ((i * 7 + d * 3) % 11) as f32 + 0.5)
                .collect()
        })
        .collect();
    FileUpdate {
        path: path.into(),
        entry: FileEntry {
            hash: format!("hash-{version}"),
            size: 1,
            kind: DocKind::Text,
            chunk_ids: chunks.iter().map(|c| c.id.clone()).collect(),
            tags: Default::default(),
        },
        chunks,
        vectors,
    }
}

pub fn assert_consistent(kb: &KnowledgeBase, chunks: usize) {
    let audit = kb.audit().expect("audit");
    assert!(audit.consistent(), "{audit:?}");
    assert_eq!(audit.manifest_chunks, chunks);
}

/// The Qdrant server the server-backed tests use (`QDRANT_URL`, as `scripts/test` starts
/// one); `None` (the test then says it did not run) when none is configured.
pub fn qdrant(collection: &str, take_over: bool) -> Option<lore_retrieve::StoreConfig> {
    let Ok(url) = std::env::var("QDRANT_URL") else {
        eprintln!("QDRANT_URL is not set: this test against a Qdrant server did not run");
        return None;
    };
    Some(lore_retrieve::StoreConfig::Qdrant(
        lore_retrieve::QdrantConfig {
            url,
            api_key: std::env::var("QDRANT_API_KEY").ok(),
            collection: collection.into(),
            take_over,
            shape: Default::default(),
        },
    ))
}
