//! The knowledge base wholly on a real Qdrant server (`QDRANT_URL`): BM25 as sparse vectors,
//! the manifest in the catalog collection, the writer lease, replicas that follow writers.
//! Each test says it did not run when no server is configured.

use std::time::Duration;

use lore_retrieve::{
    Batch, Catalog, Connection, Error, KnowledgeBase, LEASE_TTL, Lease, Mode, OpenOptions,
    QdrantServerStore, SearchRequest, StoreConfig, VectorStore,
};

mod common;
use common::{DIM, assert_consistent, options, qdrant, update};

fn on(store: &StoreConfig) -> OpenOptions {
    OpenOptions {
        store: store.clone(),
        ..options(DIM, false)
    }
}

fn url_and_collection(store: &StoreConfig) -> (String, String) {
    match store {
        StoreConfig::Qdrant(q) => (q.url.clone(), q.collection.clone()),
        StoreConfig::Embedded => unreachable!("a server store"),
    }
}

fn drop_collections(store: &StoreConfig) {
    let (url, collection) = url_and_collection(store);
    let client = qdrant_client::Qdrant::from_url(&url)
        .skip_compatibility_check()
        .build()
        .expect("client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for name in [collection.clone(), lore_retrieve::catalog_name(&collection)] {
            let _ = client.delete_collection(name).await;
        }
    });
}

fn lexical(kb: &KnowledgeBase, query: &str) -> Vec<String> {
    let request = SearchRequest::new(query, Mode::Lexical, 5);
    kb.search(&request, None)
        .expect("lexical search")
        .hits
        .into_iter()
        .map(|h| h.path)
        .collect()
}

/// Issue 16's first data loss: a second `lore ingest` with another, empty data folder against
/// the same collection emptied it (863 → 39 points). The data folder no longer matters: it
/// opens the same knowledge base, with every file, and adds to it.
#[test]
fn another_data_folder_opens_the_same_knowledge_base_and_loses_nothing() {
    let Some(store) = qdrant(&format!("lore-same-{}", std::process::id()), false) else {
        return;
    };
    let first = tempfile::tempdir().expect("tmp");
    let mut kb = KnowledgeBase::open(first.path(), &on(&store)).expect("open");
    kb.apply(Batch {
        updates: vec![update("/a", 3, 1), update("/b", 2, 1)],
        removals: vec![],
    })
    .expect("apply");
    drop(kb);

    let second = tempfile::tempdir().expect("tmp");
    let mut kb = KnowledgeBase::open(second.path(), &on(&store)).expect("second folder");
    assert_consistent(&kb, 5);
    assert_eq!(kb.manifest().files.len(), 2);
    kb.apply(Batch {
        updates: vec![update("/c", 1, 1)],
        removals: vec!["/a".into()],
    })
    .expect("apply");
    assert_consistent(&kb, 3);
    // Nothing was written to either folder.
    for dir in [first.path(), second.path()] {
        assert_eq!(std::fs::read_dir(dir).expect("ls").count(), 0, "{dir:?}");
    }
    drop(kb);
    drop_collections(&store);
}

/// A collection another program filled (points, no lore catalog) is refused, and keeps its
/// points; taking it over has to be asked for.
#[test]
fn a_collection_lore_did_not_fill_is_refused_unless_taken_over() {
    let collection = format!("lore-foreign-{}", std::process::id());
    let Some(store) = qdrant(&collection, false) else {
        return;
    };
    let (url, _) = url_and_collection(&store);
    let plain = QdrantServerStore::open(&url, None, &collection, DIM).expect("plain store");
    let foreign = update("/theirs", 4, 1);
    plain
        .upsert(&foreign.chunks, &foreign.vectors)
        .expect("their points");
    let dir = tempfile::tempdir().expect("tmp");
    let err = KnowledgeBase::open(dir.path(), &on(&store)).expect_err("foreign");
    assert!(matches!(err, Error::ForeignCollection { .. }), "{err}");
    assert!(err.to_string().contains("--qdrant-take-over"), "{err}");
    assert_eq!(plain.count().expect("count"), 4, "their points stay");

    let take_over = qdrant(&collection, true).expect("configured");
    let kb = KnowledgeBase::open(dir.path(), &on(&take_over)).expect("taken over");
    assert_consistent(&kb, 0);
    drop(kb);
    drop_collections(&store);
}

/// One writer at a time: a second writer is refused with the holder named while the first
/// holds the lease; a writer that stops renewing (a crash) loses it when it expires, and the
/// next writer purges what it left pending and converges.
#[test]
fn the_writer_lease_admits_one_writer_and_outlives_no_crash() {
    let Some(store) = qdrant(&format!("lore-lease-{}", std::process::id()), false) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let mut kb = KnowledgeBase::open(dir.path(), &on(&store)).expect("writer");
    kb.apply(Batch {
        updates: vec![update("/a", 2, 1)],
        removals: vec![],
    })
    .expect("apply");
    let err = KnowledgeBase::open(dir.path(), &on(&store)).expect_err("second writer");
    assert!(matches!(err, Error::LeaseHeld { .. }), "{err}");
    assert!(err.to_string().contains("lore pid"), "{err}");
    // Readers are not writers: a replica opens meanwhile.
    let replica = KnowledgeBase::open_existing(dir.path(), &store).expect("replica");
    assert_eq!(replica.manifest().files.len(), 1);
    drop(kb);

    // A crashed writer: it took the lease (2 s), marked a file pending, wrote half of it,
    // and stopped renewing.
    let (url, collection) = url_and_collection(&store);
    let conn = Connection::new(&url, None).expect("connect");
    let catalog = Catalog::open(conn, &collection, Default::default()).expect("catalog");
    let crashed = Lease::acquire(catalog.clone(), Duration::from_secs(2)).expect("lease");
    let mut manifest = replica.manifest().clone();
    manifest.pending.insert("/b".into());
    catalog
        .mark_pending(&manifest, &["/b".to_string()])
        .expect("pending");
    crashed.abandon();
    let err = KnowledgeBase::open(dir.path(), &on(&store)).expect_err("lease still held");
    assert!(matches!(err, Error::LeaseHeld { .. }), "{err}");
    std::thread::sleep(Duration::from_millis(2500));
    let kb = KnowledgeBase::open(dir.path(), &on(&store)).expect("expired: taken");
    assert_eq!(kb.recovered(), 1);
    assert!(kb.manifest().pending.is_empty());
    assert_consistent(&kb, 2);
    assert!(LEASE_TTL >= Duration::from_secs(10));
    drop(kb);
    drop(replica);
    drop_collections(&store);
}

/// A replica reads the manifest once and follows the writers' commits through the catalog's
/// generation; its lexical search runs on the server's BM25 sparse vectors.
#[test]
fn a_replica_follows_a_writer_and_searches_bm25_on_the_server() {
    let Some(store) = qdrant(&format!("lore-replica-{}", std::process::id()), false) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let mut writer = KnowledgeBase::open(dir.path(), &on(&store)).expect("writer");
    writer
        .apply(Batch {
            updates: vec![update("/a", 2, 1), update("/b", 2, 1)],
            removals: vec![],
        })
        .expect("apply");
    let replica_dir = tempfile::tempdir().expect("tmp");
    let mut replica = KnowledgeBase::open_existing(replica_dir.path(), &store).expect("replica");
    assert!(!replica.is_stale().expect("generation"));
    // Chunk texts are "chunk {i} of {path} version {v}": "version 2" exists only after this.
    writer
        .apply(Batch {
            updates: vec![update("/c", 1, 2)],
            removals: vec!["/a".into()],
        })
        .expect("apply");
    assert!(replica.is_stale().expect("generation"));
    assert!(replica.refresh().expect("refresh"));
    let files: Vec<&String> = replica.manifest().files.keys().collect();
    assert_eq!(files, ["/b", "/c"]);
    assert_eq!(
        lexical(&replica, "2")[0],
        "/c",
        "BM25 finds the only chunk with the term"
    );
    assert!(!lexical(&replica, "chunk").contains(&"/a".to_string()));
    assert!(!replica.refresh().expect("refresh"), "nothing new");
    assert_consistent(&replica, 3);
    drop(writer);
    drop(replica);
    drop_collections(&store);
}
