//! The knowledge base against the real Qdrant engine and a real tantivy index.

use std::path::Path;

use lore_embed::{ModelInfo, Pooling};
use lore_ingest::{Chunk, ChunkId, ChunkerConfig, DocKind, FileEntry, Manifest, ManifestSettings};
use lore_retrieve::{Batch, Error, FileUpdate, KnowledgeBase, OpenOptions, Status};

const DIM: usize = 8;

fn model(dim: usize, fingerprint: &str) -> ModelInfo {
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

fn options(dim: usize, rebuild: bool) -> OpenOptions {
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
fn update(path: &str, n: usize, version: u32) -> FileUpdate {
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

fn assert_consistent(kb: &KnowledgeBase, chunks: usize) {
    let audit = kb.audit().expect("audit");
    assert!(audit.consistent(), "{audit:?}");
    assert_eq!(audit.manifest_chunks, chunks);
}

#[test]
fn batches_replace_and_remove_files_in_both_stores() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut kb = KnowledgeBase::open(dir.path(), &options(DIM, false)).expect("open");
    let stats = kb
        .apply(Batch {
            updates: vec![update("/a", 3, 1), update("/b", 2, 1)],
            removals: vec![],
        })
        .expect("apply");
    assert_eq!((stats.chunks_written, stats.chunks_deleted), (5, 0));
    assert_consistent(&kb, 5);

    // A changed file: old chunks go, new ones come, nothing duplicated.
    let stats = kb
        .apply(Batch {
            updates: vec![update("/a", 4, 2)],
            removals: vec!["/b".into()],
        })
        .expect("apply");
    assert_eq!((stats.chunks_written, stats.chunks_deleted), (4, 5));
    assert_consistent(&kb, 4);
    drop(kb);

    // Durable across reopen.
    let kb = KnowledgeBase::open(dir.path(), &options(DIM, false)).expect("reopen");
    assert_consistent(&kb, 4);
    assert_eq!(kb.manifest().files.keys().collect::<Vec<_>>(), ["/a"]);
    assert_eq!(Status::read(dir.path()).expect("status").chunks, 4);
}

#[test]
fn a_second_writer_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let _kb = KnowledgeBase::open(dir.path(), &options(DIM, false)).expect("open");
    let err = KnowledgeBase::open(dir.path(), &options(DIM, false)).expect_err("locked");
    assert!(matches!(err, Error::Locked(_)), "{err}");
    assert!(err.to_string().contains("another running lore"));
}

#[test]
fn another_model_is_refused_unless_rebuilding() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut kb = KnowledgeBase::open(dir.path(), &options(DIM, false)).expect("open");
    kb.apply(Batch {
        updates: vec![update("/a", 2, 1)],
        removals: vec![],
    })
    .expect("apply");
    drop(kb);
    let err = KnowledgeBase::open(dir.path(), &options(16, false)).expect_err("mismatch");
    assert!(matches!(err, Error::ModelMismatch { .. }), "{err}");
    assert!(err.to_string().contains("--rebuild"));
    // Refusing changed nothing.
    assert_eq!(Status::read(dir.path()).expect("status").chunks, 2);

    let kb = KnowledgeBase::open(dir.path(), &options(16, true)).expect("rebuild");
    assert_eq!(kb.model().dim, 16);
    assert_consistent(&kb, 0);
}

fn mark_pending(dir: &Path, path: &str) {
    let manifest_path = dir.join("manifest.json");
    let mut m = Manifest::load(&manifest_path)
        .expect("load")
        .expect("exists");
    m.pending.insert(path.into());
    m.save(&manifest_path).expect("save");
}

#[test]
fn pending_files_are_purged_on_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut kb = KnowledgeBase::open(dir.path(), &options(DIM, false)).expect("open");
    kb.apply(Batch {
        updates: vec![update("/a", 3, 1), update("/b", 2, 1)],
        removals: vec![],
    })
    .expect("apply");
    drop(kb);
    // As if a batch rewriting /a was interrupted after writing its stores.
    mark_pending(dir.path(), "/a");
    let kb = KnowledgeBase::open(dir.path(), &options(DIM, false)).expect("reopen");
    assert_eq!(kb.recovered(), 1);
    assert_consistent(&kb, 2);
    assert!(!kb.manifest().files.contains_key("/a"));
}

#[test]
fn stores_without_a_manifest_are_reset() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut kb = KnowledgeBase::open(dir.path(), &options(DIM, false)).expect("open");
    kb.apply(Batch {
        updates: vec![update("/a", 3, 1)],
        removals: vec![],
    })
    .expect("apply");
    drop(kb);
    std::fs::remove_file(dir.path().join("manifest.json")).expect("rm");
    let kb = KnowledgeBase::open(dir.path(), &options(DIM, false)).expect("reopen");
    assert_consistent(&kb, 0);
}

fn wal_bytes(dir: &Path) -> u64 {
    lore_retrieve::EdgeStore::wal_and_segment_bytes(&dir.join("qdrant")).0
}

#[test]
fn compaction_keeps_every_point_and_drops_the_wal() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut kb = KnowledgeBase::open(dir.path(), &options(DIM, false)).expect("open");
    // Rewriting the same files grows the WAL (0.7.2 never truncates it) but not the data.
    for version in 0..20 {
        kb.apply(Batch {
            updates: vec![update("/a", 20, version), update("/b", 10, version)],
            removals: vec![],
        })
        .expect("apply");
    }
    drop(kb);
    let before = wal_bytes(dir.path());
    lore_retrieve::EdgeStore::compact(&dir.path().join("qdrant"), DIM).expect("compact");
    let after = wal_bytes(dir.path());
    assert!(after < before, "wal {before} -> {after} bytes");
    let kb = KnowledgeBase::open(dir.path(), &options(DIM, false)).expect("reopen");
    assert_consistent(&kb, 30);
    drop(kb);

    // A crash between the two renames of the swap: the complete copy is adopted on open.
    let qdrant = dir.path().join("qdrant");
    std::fs::rename(&qdrant, dir.path().join("qdrant.compacting")).expect("rename");
    let kb = KnowledgeBase::open(dir.path(), &options(DIM, false)).expect("reopen after crash");
    assert_consistent(&kb, 30);
    assert!(!dir.path().join("qdrant.compacting").exists());
}

/// The Qdrant server the server-backed tests use (`QDRANT_URL`, as `scripts/test` starts
/// one); `None` (the test then says it did not run) when none is configured.
fn qdrant(collection: &str, take_over: bool) -> Option<lore_retrieve::StoreConfig> {
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

/// Issue 16's first data loss: a second knowledge base (another, empty data folder) pointed
/// at the same server collection emptied it (863 → 39 points). Now it is refused and the
/// collection keeps every point; taking over has to be asked for.
#[test]
fn a_new_knowledge_base_leaves_another_ones_server_collection_alone() {
    let collection = format!("lore-owner-{}", std::process::id());
    let Some(store) = qdrant(&collection, false) else {
        return;
    };
    let first = tempfile::tempdir().expect("tmp");
    let mut kb = KnowledgeBase::open(
        first.path(),
        &OpenOptions {
            store: store.clone(),
            ..options(DIM, false)
        },
    )
    .expect("open");
    kb.apply(Batch {
        updates: vec![update("/a", 3, 1), update("/b", 2, 1)],
        removals: vec![],
    })
    .expect("apply");
    drop(kb);

    let second = tempfile::tempdir().expect("tmp");
    let refused = KnowledgeBase::open(
        second.path(),
        &OpenOptions {
            store: store.clone(),
            ..options(DIM, false)
        },
    );
    let err = refused.expect_err("another knowledge base's collection");
    assert!(matches!(err, Error::ForeignCollection { .. }), "{err}");
    assert!(err.to_string().contains("--qdrant-take-over"), "{err}");
    // Every point is still there, and the first knowledge base still opens and searches.
    let kb = KnowledgeBase::open(
        first.path(),
        &OpenOptions {
            store: store.clone(),
            ..options(DIM, false)
        },
    )
    .expect("reopen");
    assert_consistent(&kb, 5);
    drop(kb);

    // Asked for in as many words, the takeover happens (and starts the collection afresh).
    let take_over = qdrant(&collection, true).expect("configured");
    let kb = KnowledgeBase::open(
        second.path(),
        &OpenOptions {
            store: take_over,
            ..options(DIM, false)
        },
    )
    .expect("take over");
    assert_consistent(&kb, 0);
    drop(kb);
    // Now the first one is the stranger.
    let err = KnowledgeBase::open(
        first.path(),
        &OpenOptions {
            store,
            ..options(DIM, false)
        },
    )
    .expect_err("taken over");
    assert!(matches!(err, Error::ForeignCollection { .. }), "{err}");
}

/// `lore migrate`: an embedded knowledge base moves to a server collection and back without
/// re-embedding; each time every point arrives, searches rank the same, and `kb.json` names
/// the new store only once the copy is complete.
#[test]
fn a_knowledge_base_moves_to_a_server_and_back() {
    let collection = format!("lore-migrate-{}", std::process::id());
    let Some(server) = qdrant(&collection, false) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let embedded = lore_retrieve::StoreConfig::Embedded;
    let mut kb = KnowledgeBase::open(dir.path(), &options(DIM, false)).expect("open");
    kb.apply(Batch {
        updates: vec![update("/a", 3, 1), update("/b", 2, 1)],
        removals: vec![],
    })
    .expect("apply");
    let query: Vec<f32> = (0..DIM).map(|d| d as f32 + 1.0).collect();
    // Each point with its score: chunks of the two files share vectors, so tied points may
    // come back in either order from either engine.
    let ranked = |kb: &KnowledgeBase| -> Vec<(i64, String)> {
        let request = lore_retrieve::SearchRequest::new("chunk", lore_retrieve::Mode::Dense, 5);
        let mut hits: Vec<(i64, String)> = kb
            .search(&request, Some(&query))
            .expect("search")
            .hits
            .into_iter()
            .map(|h| ((h.score * 1e4).round() as i64, h.chunk_id))
            .collect();
        hits.sort();
        hits
    };
    let before = ranked(&kb);
    drop(kb);

    let moved = KnowledgeBase::migrate(dir.path(), &embedded, &server).expect("to the server");
    assert_eq!(moved.points, 5);
    assert!(
        !dir.path().join("qdrant").exists(),
        "the local engine's files stay"
    );
    // The base now opens only against the server, with every point.
    let err = KnowledgeBase::open_existing(dir.path(), &embedded).expect_err("moved");
    assert!(matches!(err, Error::BackendMismatch { .. }), "{err}");
    let kb = KnowledgeBase::open_existing(dir.path(), &server).expect("on the server");
    assert_consistent(&kb, 5);
    assert_eq!(ranked(&kb), before);
    drop(kb);
    // Moving to where it already is, is refused.
    let err = KnowledgeBase::migrate(dir.path(), &server, &server).expect_err("same store");
    assert!(err.to_string().contains("already"), "{err}");

    let back = KnowledgeBase::migrate(dir.path(), &server, &embedded).expect("back");
    assert_eq!(back.points, 5);
    let kb = KnowledgeBase::open_existing(dir.path(), &embedded).expect("embedded again");
    assert_consistent(&kb, 5);
    assert_eq!(ranked(&kb), before);
}
