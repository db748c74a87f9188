//! The knowledge base against the real Qdrant engine and a real tantivy index.

use std::path::Path;

use lore_ingest::Manifest;
use lore_retrieve::{Batch, Error, KnowledgeBase, Status};

mod common;
use common::{DIM, assert_consistent, options, qdrant, update};

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

/// `search_embedding` (the query embedded during the search, BM25 alongside) gives exactly
/// what `search` gives with the vector made beforehand, in every mode; it never embeds for
/// a lexical search, and an embedding failure comes back as `Error::Embed`.
#[test]
fn embedding_during_the_search_gives_the_same_hits() {
    use lore_retrieve::{Mode, SearchRequest};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().expect("tmp");
    let mut kb = KnowledgeBase::open(dir.path(), &options(DIM, false)).expect("open");
    kb.apply(Batch {
        updates: vec![update("/a", 4, 1), update("/b", 3, 2)],
        removals: vec![],
    })
    .expect("apply");
    let query: Vec<f32> = (0..DIM).map(|d| (d % 3) as f32 + 0.25).collect();
    let calls = AtomicUsize::new(0);
    for mode in Mode::ALL {
        let request = SearchRequest::new("chunk 2 version", mode, 5);
        let want = kb
            .search(&request, mode.needs_vector().then_some(&query[..]))
            .expect("search");
        let got = kb
            .search_embedding(&request, || {
                calls.fetch_add(1, Ordering::Relaxed);
                Ok(query.clone())
            })
            .expect("search while embedding");
        assert!(!got.hits.is_empty(), "{mode:?}");
        assert_eq!(got.hits, want.hits, "{mode:?}");
        assert_eq!(got.best_dense, want.best_dense, "{mode:?}");
    }
    assert_eq!(
        calls.load(Ordering::Relaxed),
        2,
        "hybrid and dense embed, lexical does not"
    );
    let err = kb
        .search_embedding(&SearchRequest::new("chunk", Mode::Hybrid, 5), || {
            Err(lore_embed::Error::WorkerGone)
        })
        .expect_err("the embedding failed");
    assert!(
        matches!(err, Error::Embed(lore_embed::Error::WorkerGone)),
        "{err}"
    );
}
