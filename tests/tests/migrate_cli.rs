//! `lore migrate` through the CLI against the real Qdrant server `scripts/test` starts
//! (`QDRANT_URL`): a real knowledge base moves to a server collection and back, searches the
//! same on both, and verifies consistent each time.

use lore_tests::server::{copy_dir, template_kb};
use lore_tests::{fails_with, lore, real_embedding_model, run_json};

#[test]
fn a_real_knowledge_base_moves_to_the_server_and_back() {
    let Some(model) = real_embedding_model() else {
        return;
    };
    let Ok(url) = std::env::var("QDRANT_URL") else {
        eprintln!("QDRANT_URL is not set: this test against a Qdrant server did not run");
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("kb");
    copy_dir(&template_kb().join("kb"), &data).expect("copying the kb");
    let collection = format!("lore-migrate-cli-{}", std::process::id());
    let on_server = [
        "--qdrant-url",
        url.as_str(),
        "--qdrant-collection",
        &collection,
    ];
    let hits_in = |extra: &[&str], mode: &str| -> Vec<String> {
        let out = run_json(lore(&data, &model).args(extra).args([
            "search",
            "--json",
            "-k",
            "3",
            "--mode",
            mode,
            "Where was Lincoln born?",
        ]))
        .expect("search");
        // As a set: the two engines' cosines may differ in the last bits, which may swap
        // two hits that score alike.
        let mut ids: Vec<String> = out["hits"]
            .as_array()
            .expect("hits")
            .iter()
            .map(|h| h["chunk_id"].as_str().expect("id").to_string())
            .collect();
        ids.sort();
        ids
    };
    let hits = |extra: &[&str]| hits_in(extra, "hybrid");
    let verified = |extra: &[&str]| -> serde_json::Value {
        run_json(
            lore(&data, &model)
                .args(extra)
                .args(["status", "--verify", "--json"]),
        )
        .expect("status")
    };
    let before = hits(&[]);
    let lexical_before = hits_in(&[], "lexical");
    let chunks = verified(&[])["chunks"].clone();

    let out = lore(&data, &model)
        .args([
            "migrate",
            "--to-qdrant",
            &url,
            "--qdrant-collection",
            &collection,
        ])
        .output()
        .expect("migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!data.join("qdrant").exists());
    assert_eq!(hits(&on_server), before);
    // BM25 on the server's sparse vectors finds what tantivy found.
    assert_eq!(hits_in(&on_server, "lexical"), lexical_before);
    // A replica with an empty data folder sees the same knowledge base.
    let elsewhere = tmp.path().join("replica");
    let replica = run_json(lore(&elsewhere, &model).args(on_server).args([
        "search",
        "--json",
        "-k",
        "3",
        "Where was Lincoln born?",
    ]))
    .expect("search from a replica");
    assert_eq!(replica["hits"].as_array().map(Vec::len), Some(3));
    assert!(!elsewhere.join("kb.json").exists());
    let status = verified(&on_server);
    assert_eq!(status["consistent"], true, "{status}");
    assert_eq!(status["chunks"], chunks);
    // Without the server flags, the knowledge base says where it is now.
    fails_with(
        lore(&data, &model).args(["search", "x"]),
        "--qdrant-collection",
    );

    let out = lore(&data, &model)
        .args(on_server)
        .args(["migrate", "--to-embedded"])
        .output()
        .expect("migrate back");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hits(&[]), before);
    assert_eq!(verified(&[])["consistent"], true);
    // Nothing to say where to: refused by name.
    fails_with(lore(&data, &model).args(["migrate"]), "--to-qdrant");
}
