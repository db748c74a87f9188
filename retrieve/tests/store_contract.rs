//! The vector store contract, written once and run against every implementation: the
//! in-process engine always, and a Qdrant server when `QDRANT_URL` is set (then it must pass;
//! `QDRANT_API_KEY` is sent if set). Each server run uses a fresh collection and drops it.

#![allow(clippy::unwrap_used)] // a test fails loudly on any error

use std::collections::BTreeMap;

use lore_ingest::{Chunk, ChunkId, DocKind};
use lore_retrieve::{Connection, EdgeStore, QdrantServerStore, StoreFilter, VectorStore};

const DIM: usize = 4;

fn chunk(
    path: &str,
    i: usize,
    kind: DocKind,
    heading: Option<&str>,
    tags: &[(&str, &str)],
) -> Chunk {
    let text = format!("chunk {i} of {path}");
    let span = i * 100..i * 100 + text.len();
    Chunk {
        id: ChunkId::derive(path, &span, &text),
        path: path.into(),
        kind,
        text,
        byte_start: span.start,
        byte_end: span.end,
        start_line: i + 1,
        end_line: i + 2,
        heading: heading.map(String::from),
        page: (kind == DocKind::Pdf).then_some(i as u32 + 1),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn unit(v: [f32; DIM]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

/// Six chunks in three files; vector i points mostly along axis i % 4.
fn corpus() -> (Vec<Chunk>, Vec<Vec<f32>>) {
    let chunks = vec![
        chunk(
            "docs/a.md",
            0,
            DocKind::Markdown,
            Some("Install > From source"),
            &[("team", "core")],
        ),
        chunk(
            "docs/a.md",
            1,
            DocKind::Markdown,
            Some("Install > Packages"),
            &[("team", "core")],
        ),
        chunk(
            "docs/b.pdf",
            0,
            DocKind::Pdf,
            None,
            &[("team", "web"), ("year", "2024")],
        ),
        chunk(
            "docs/b.pdf",
            1,
            DocKind::Pdf,
            Some("Appendix"),
            &[("year", "2024")],
        ),
        chunk(
            "src/c.rs",
            0,
            DocKind::Code(lore_ingest::CodeLang::Rust),
            None,
            &[],
        ),
        chunk(
            "src/c.rs",
            1,
            DocKind::Code(lore_ingest::CodeLang::Rust),
            Some("Usage notes"),
            &[],
        ),
    ];
    let vectors = (0..chunks.len())
        .map(|i| {
            let mut v = [0.1f32; DIM];
            v[i % DIM] = 1.0 + i as f32 * 0.01;
            unit(v)
        })
        .collect();
    (chunks, vectors)
}

fn ids(hits: &[lore_retrieve::ScoredId]) -> Vec<String> {
    hits.iter().map(|h| h.id.to_string()).collect()
}

fn contract(store: &dyn VectorStore) {
    let (chunks, vectors) = corpus();
    store.upsert(&chunks, &vectors).unwrap();
    store.commit().unwrap();
    assert_eq!(store.count().unwrap(), 6);
    let mut all: Vec<String> = store
        .chunk_ids()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    all.sort();
    let mut want: Vec<String> = chunks.iter().map(|c| c.id.to_string()).collect();
    want.sort();
    assert_eq!(all, want);

    // Nearest first, cosine scores, the path carried along.
    let none = StoreFilter::default();
    let hits = store.search(&vectors[2], 3, &none).unwrap();
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0].id, chunks[2].id);
    assert_eq!(hits[0].path, "docs/b.pdf");
    assert!(
        (hits[0].score - 1.0).abs() < 1e-4,
        "cosine of a vector with itself: {}",
        hits[0].score
    );
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));

    // Filters: each kind of condition, alone and together.
    let only = |f: StoreFilter| {
        let mut got = ids(&store.search(&vectors[0], 10, &f).unwrap());
        got.sort();
        got
    };
    let pick = |idx: &[usize]| {
        let mut v: Vec<String> = idx.iter().map(|&i| chunks[i].id.to_string()).collect();
        v.sort();
        v
    };
    let paths = |p: &[&str]| Some(p.iter().map(|s| s.to_string()).collect());
    assert_eq!(
        only(StoreFilter {
            paths: paths(&["docs/a.md", "src/c.rs"]),
            ..Default::default()
        }),
        pick(&[0, 1, 4, 5])
    );
    assert_eq!(
        only(StoreFilter {
            paths: paths(&[]),
            ..Default::default()
        }),
        pick(&[])
    );
    assert_eq!(
        only(StoreFilter {
            kinds: vec!["pdf".into(), "rust".into()],
            ..Default::default()
        }),
        pick(&[2, 3, 4, 5])
    );
    assert_eq!(
        only(StoreFilter {
            tags: vec!["year=2024".into()],
            ..Default::default()
        }),
        pick(&[2, 3])
    );
    assert_eq!(
        only(StoreFilter {
            tags: vec!["year=2024".into(), "team=web".into()],
            ..Default::default()
        }),
        pick(&[2])
    );
    assert_eq!(
        only(StoreFilter {
            heading_words: vec!["install".into()],
            ..Default::default()
        }),
        pick(&[0, 1])
    );
    assert_eq!(
        only(StoreFilter {
            heading_words: vec!["install".into(), "source".into()],
            ..Default::default()
        }),
        pick(&[0])
    );
    assert_eq!(
        only(StoreFilter {
            paths: paths(&["docs/a.md", "docs/b.pdf"]),
            tags: vec!["team=core".into()],
            heading_words: vec!["packages".into()],
            ..Default::default()
        }),
        pick(&[1])
    );

    // Get: caller's order, unknown ids left out, payload and vector intact.
    let unknown = ChunkId("00000000-0000-4000-8000-000000000000".into());
    let got = store
        .get(&[chunks[3].id.clone(), unknown, chunks[0].id.clone()], true)
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].chunk, chunks[3]);
    assert_eq!(got[1].chunk, chunks[0]);
    let v = got[1].vector.as_ref().expect("vector asked for");
    assert!(
        v.iter().zip(&vectors[0]).all(|(a, b)| (a - b).abs() < 1e-5),
        "{v:?}"
    );
    assert!(
        store.get(&[chunks[1].id.clone()], false).unwrap()[0]
            .vector
            .is_none()
    );

    // Upsert of an existing id replaces it.
    let mut changed = chunks[4].clone();
    changed.text = "rewritten".into();
    store
        .upsert(std::slice::from_ref(&changed), &[vectors[4].clone()])
        .unwrap();
    store.commit().unwrap();
    assert_eq!(store.count().unwrap(), 6);
    assert_eq!(
        store.get(&[changed.id.clone()], false).unwrap()[0]
            .chunk
            .text,
        "rewritten"
    );

    // Bad input is refused and writes nothing.
    assert!(store.upsert(&chunks[..2], &vectors[..1]).is_err());
    assert!(store.upsert(&chunks[..1], &[vec![1.0; DIM + 1]]).is_err());
    assert!(store.search(&[1.0; DIM - 1], 3, &none).is_err());
    assert_eq!(store.count().unwrap(), 6);

    // Delete by path removes exactly those files' chunks.
    store
        .delete_paths(&["docs/a.md".into(), "not/there.md".into()])
        .unwrap();
    store.commit().unwrap();
    assert_eq!(store.count().unwrap(), 4);
    assert!(
        store
            .get(&[chunks[0].id.clone(), chunks[1].id.clone()], false)
            .unwrap()
            .is_empty()
    );
    assert_eq!(only(StoreFilter::default()), pick(&[2, 3, 4, 5]));

    store.optimize().unwrap();
    assert_eq!(store.count().unwrap(), 4);
    assert!(!store.describe().is_empty());

    store.clear().unwrap();
    assert_eq!(store.count().unwrap(), 0);
    assert!(store.search(&vectors[0], 5, &none).unwrap().is_empty());
}

#[test]
fn the_embedded_engine_fulfils_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeStore::open(&dir.path().join("qdrant"), DIM).unwrap();
    contract(&store);
    drop(store);
    // And it survives a reopen after the clear.
    let store = EdgeStore::open(&dir.path().join("qdrant"), DIM).unwrap();
    assert_eq!(store.count().unwrap(), 0);
}

#[test]
fn a_qdrant_server_fulfils_the_contract_when_one_is_configured() {
    let Ok(url) = std::env::var("QDRANT_URL") else {
        eprintln!("QDRANT_URL is not set: the server half of the contract did not run");
        return;
    };
    let key = std::env::var("QDRANT_API_KEY").ok();
    let collection = format!("lore-contract-{}", std::process::id());
    let store = QdrantServerStore::open(&url, key.as_deref(), &collection, DIM).unwrap();
    contract(&store);
    // A second open of the same collection with another dimension is refused clearly.
    let err = QdrantServerStore::open(&url, key.as_deref(), &collection, DIM + 1).unwrap_err();
    assert!(err.to_string().contains("dimension"), "{err}");
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    // Port 9 (discard) on loopback: nothing listens there.
    let err = QdrantServerStore::open("http://127.0.0.1:9", None, "lore", DIM)
        .unwrap_err()
        .to_string();
    assert!(err.contains("127.0.0.1:9"), "{err}");
}

/// Issue 16's second data loss: a collection its operator created with 3 shards was dropped
/// and recreated with lore's defaults on the first ingest. Now lore claims an empty, unmarked
/// collection as it is, clears it by deleting points, and refuses one that holds points it
/// did not write.
#[test]
fn a_server_collection_keeps_its_operators_settings() {
    use lore_retrieve::{CollectionShape, OWNER_KEY, Owner};
    use qdrant_client::Qdrant;
    use qdrant_client::qdrant::{
        CreateCollectionBuilder, Distance, Modifier, SparseVectorParamsBuilder,
        SparseVectorsConfigBuilder, VectorParamsBuilder, VectorsConfigBuilder,
    };
    let Ok(url) = std::env::var("QDRANT_URL") else {
        eprintln!("QDRANT_URL is not set: the server half of the contract did not run");
        return;
    };
    let key = std::env::var("QDRANT_API_KEY").ok();
    let collection = format!("lore-sharded-{}", std::process::id());
    let conn = Connection::new(&url, key.as_deref()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = Qdrant::from_url(&url)
        .api_key(key.clone())
        .skip_compatibility_check()
        .build()
        .unwrap();
    // A collection's shard count and owner mark, as the server reports them.
    let shards = |name: &str| {
        runtime.block_on(async {
            let info = client.collection_info(name).await.unwrap().result.unwrap();
            let config = info.config.unwrap();
            let owner = config.metadata.get(OWNER_KEY).cloned();
            (config.params.unwrap().shard_number, owner)
        })
    };
    runtime.block_on(async {
        let mut vectors = VectorsConfigBuilder::default();
        vectors.add_named_vector_params(
            "dense",
            VectorParamsBuilder::new(DIM as u64, Distance::Cosine),
        );
        // An operator makes lore's vectors: `dense`, and `bm25` with the IDF modifier.
        let mut sparse = SparseVectorsConfigBuilder::default();
        sparse.add_named_vector_params(
            "bm25",
            SparseVectorParamsBuilder::default().modifier(Modifier::Idf),
        );
        client
            .create_collection(
                CreateCollectionBuilder::new(&collection)
                    .vectors_config(vectors)
                    .sparse_vectors_config(sparse)
                    .shard_number(3),
            )
            .await
            .unwrap();
    });
    let owner = Owner {
        id: "kb-one".into(),
        take_over: false,
    };
    let store = QdrantServerStore::open_as(
        conn.clone(),
        &collection,
        DIM,
        Some(&owner),
        CollectionShape::default(),
    )
    .unwrap();
    let chunks: Vec<Chunk> = (0..4)
        .map(|i| chunk("/s.md", i, DocKind::Markdown, None, &[]))
        .collect();
    let vectors: Vec<Vec<f32>> = (0..4).map(|i| vec![1.0, i as f32, 0.5, 0.25]).collect();
    store.upsert(&chunks, &vectors).unwrap();
    store.clear().unwrap();
    assert_eq!(store.count().unwrap(), 0);
    let (shard_number, marked) = shards(&collection);
    assert_eq!(shard_number, 3, "the operator's shards were lost");
    assert!(
        marked.is_some(),
        "the collection is not marked as the knowledge base's"
    );
    drop(store);

    // Points lore did not write, and no owner's mark: refused.
    let other = format!("{collection}-foreign");
    let plain = QdrantServerStore::open(&url, key.as_deref(), &other, DIM).unwrap();
    plain.upsert(&chunks, &vectors).unwrap();
    let err = QdrantServerStore::open_as(
        conn.clone(),
        &other,
        DIM,
        Some(&owner),
        CollectionShape::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("no lore knowledge base claims"),
        "{err}"
    );
    assert_eq!(plain.count().unwrap(), 4);
    // Shards asked for are applied to a new collection and checked on an existing one.
    let shaped = format!("{collection}-shaped");
    let two = CollectionShape {
        shards: Some(2),
        on_disk: Some(true),
        ..CollectionShape::default()
    };
    drop(QdrantServerStore::open_as(conn.clone(), &shaped, DIM, Some(&owner), two).unwrap());
    let three = CollectionShape {
        shards: Some(3),
        ..two
    };
    let err =
        QdrantServerStore::open_as(conn.clone(), &shaped, DIM, Some(&owner), three).unwrap_err();
    assert!(err.to_string().contains("--qdrant-shards"), "{err}");
    let in_memory = CollectionShape {
        on_disk: Some(false),
        ..two
    };
    let err = QdrantServerStore::open_as(conn.clone(), &shaped, DIM, Some(&owner), in_memory)
        .unwrap_err();
    assert!(err.to_string().contains("--qdrant-on-disk"), "{err}");
    let consistent = CollectionShape {
        write_consistency: Some(2),
        ..two
    };
    let err = QdrantServerStore::open_as(conn.clone(), &shaped, DIM, Some(&owner), consistent)
        .unwrap_err();
    assert!(
        err.to_string().contains("--qdrant-write-consistency"),
        "{err}"
    );
    QdrantServerStore::open_as(conn.clone(), &shaped, DIM, Some(&owner), two).unwrap();
    assert_eq!(shards(&shaped).0, 2);
    runtime.block_on(async {
        for name in [&collection, &other, &shaped] {
            client.delete_collection(name).await.unwrap();
        }
    });
}
