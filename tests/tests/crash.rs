//! Crash safety: a real `lore ingest` killed with SIGKILL at several points of its commit
//! protocol, then rerun, must end in exactly the state of a clean run: same manifest, and
//! manifest, vector store and BM25 index agreeing chunk by chunk.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};

use lore_ingest::Manifest;
use lore_tests::{copy_articles, lore, real_embedding_model, run_json};

/// Small batches, so a run has many commit points to be killed between.
const INGEST: [&str; 4] = ["ingest", "--json", "--commit-chunks", "6"];

/// Starts an ingest and returns once its log has shown `marker` for the `nth` time, with
/// the process still running (or finished, if it got there first).
fn run_until(
    data: &Path,
    model: &Path,
    docs: &Path,
    marker: &str,
    nth: usize,
) -> anyhow::Result<Child> {
    let mut child = lore(data, model)
        .args(INGEST)
        .arg(docs)
        .env("RUST_LOG", "lore_retrieve=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = 0;
    while seen < nth {
        match lines.next() {
            Some(line) => seen += usize::from(line?.contains(marker)),
            None => break,
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Ok(child)
}

/// Starts an ingest and kills it (SIGKILL) right after its log shows `marker` for the
/// `nth` time. Fails if the run finished before that.
fn kill_at(data: &Path, model: &Path, docs: &Path, marker: &str, nth: usize) -> anyhow::Result<()> {
    let mut child = run_until(data, model, docs, marker, nth)?;
    child.kill()?;
    let status = child.wait()?;
    assert!(
        !status.success(),
        "the run ended before the {nth}th {marker:?}: nothing was killed"
    );
    Ok(())
}

fn manifest(data: &Path) -> Manifest {
    Manifest::load(&data.join("manifest.json"))
        .expect("readable manifest")
        .expect("a manifest")
}

/// Reruns to completion and checks the result equals the clean run's.
fn converges(data: &Path, model: &Path, docs: &Path, clean: &Manifest) -> anyhow::Result<()> {
    run_json(lore(data, model).args(INGEST).arg(docs))?;
    let status = run_json(lore(data, model).args(["status", "--verify", "--json"]))?;
    assert_eq!(status["consistent"], true, "{status:#}");
    let got = manifest(data);
    assert!(got.pending.is_empty());
    assert_eq!(
        got.files, clean.files,
        "the rerun's manifest differs from a clean run's"
    );
    assert_eq!(
        status["audit"]["vector_chunks"].as_u64(),
        Some(clean.chunk_count() as u64)
    );
    Ok(())
}

#[test]
fn kill_nine_then_rerun_converges_to_a_clean_run() -> anyhow::Result<()> {
    let Some(model) = real_embedding_model() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let docs = tmp.path().join("docs");
    let articles = copy_articles(&docs, 10, 5_000)?;

    let clean_dir = tmp.path().join("clean");
    run_json(lore(&clean_dir, &model).args(INGEST).arg(&docs))?;
    let clean = manifest(&clean_dir);
    assert!(
        clean.chunk_count() >= 30,
        "too few chunks for several batches: {}",
        clean.chunk_count()
    );

    // One knowledge base per kill point of the commit protocol (see lore_retrieve::kb).
    let points = [
        ("batch pending", 2),     // journal saved, stores untouched
        ("batch written", 3),     // stores written, nothing flushed
        ("vectors committed", 2), // Qdrant durable, tantivy not
        ("lexical committed", 3), // both stores durable, manifest not
        ("manifest saved", 2),    // between batches
    ];
    for (i, (marker, nth)) in points.into_iter().enumerate() {
        let data = tmp.path().join(format!("kb{i}"));
        kill_at(&data, &model, &docs, marker, nth)?;
        converges(&data, &model, &docs, &clean)?;
    }

    // Killed twice in a row, at different points, before a rerun completes.
    let data = tmp.path().join("twice");
    kill_at(&data, &model, &docs, "vectors committed", 2)?;
    kill_at(&data, &model, &docs, "batch written", 2)?;
    converges(&data, &model, &docs, &clean)?;

    // Killed, then the folder changes (one file edited, one deleted) before the rerun: the
    // half-written files must not linger as orphans.
    let data = tmp.path().join("changed");
    kill_at(&data, &model, &docs, "vectors committed", 3)?;
    let mut text = std::fs::read_to_string(&articles[1])?;
    text.push_str("\nAn appended sentence changes this file.\n");
    std::fs::write(&articles[1], text)?;
    std::fs::remove_file(&articles[2])?;
    let clean_dir2 = tmp.path().join("clean2");
    run_json(lore(&clean_dir2, &model).args(INGEST).arg(&docs))?;
    converges(&data, &model, &docs, &manifest(&clean_dir2))?;
    Ok(())
}

#[test]
fn a_second_lore_on_the_same_knowledge_base_is_refused_not_queued() -> anyhow::Result<()> {
    let Some(model) = real_embedding_model() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let docs = tmp.path().join("docs");
    copy_articles(&docs, 20, 10_000)?;
    let data = tmp.path().join("kb");
    let mut first = run_until(&data, &model, &docs, "batch pending", 1)?;
    let out = lore(&data, &model).args(INGEST).arg(&docs).output()?;
    let still_running = first.try_wait()?.is_none();
    first.kill()?;
    first.wait()?;
    assert!(
        still_running,
        "the first ingest ended before the second started: nothing was tested"
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("in use by another running lore process"),
        "{stderr}"
    );
    Ok(())
}
