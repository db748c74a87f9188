//! `lore ingest` end to end: real model, real engine, real files, good and bad.

use std::fs;

use lore_tests::{copy_articles, int, lore, real_embedding_model, repo_root, run_json};

#[test]
fn articles_and_bad_files_then_incremental_reruns() -> anyhow::Result<()> {
    let Some(model) = real_embedding_model() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let docs = tmp.path().join("docs");
    let data = tmp.path().join("kb");
    let articles = copy_articles(&docs, 30, 12_000)?;
    assert_eq!(
        articles.len(),
        30,
        "examples/articles must hold 30 articles"
    );

    // The bad files.
    let bad = docs.join("bad");
    fs::create_dir_all(&bad)?;
    fs::write(bad.join("image.png"), b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0")?;
    fs::write(bad.join("data.txt"), b"text with a NUL \0 byte inside")?;
    fs::write(bad.join("empty.md"), b"")?;
    fs::write(bad.join("blank.txt"), b"   \n\n  \t\n")?;
    fs::write(bad.join("huge.txt"), "big line of text\n".repeat(20_000))?;
    let pdf = fs::read(repo_root().join("tests/data/docs/sample.pdf"))?;
    fs::write(bad.join("truncated.pdf"), &pdf[..pdf.len() / 2])?;
    fs::write(bad.join("not-really.pdf"), b"%PDF-1.4 garbage garbage")?;
    std::os::unix::fs::symlink(&docs, bad.join("loop"))?;
    // Odd but readable: ingested, with a warning for the lossy decode.
    fs::write(
        bad.join("latin1.txt"),
        b"caf\xe9 cr\xe8me br\xfbl\xe9e is a dessert made of custard and caramel",
    )?;
    fs::write(
        bad.join("broken.html"),
        "<html><body><h1>Broken page<p>unclosed <b>tags <div>and text</body",
    )?;
    fs::write(bad.join("page.pdf"), &pdf)?;

    let ingest = |extra: &[&str]| {
        let mut cmd = lore(&data, &model);
        cmd.args(["ingest", "--json", "--max-file-bytes", "200000"])
            .arg(&docs)
            .args(extra);
        run_json(&mut cmd)
    };

    let first = ingest(&[])?;
    assert_eq!(int(&first, "new"), 33, "{first:#}");
    assert_eq!(
        int(&first, "changed") + int(&first, "unchanged") + int(&first, "removed"),
        0
    );
    let skipped: Vec<String> = first["skipped_files"]
        .as_array()
        .expect("list")
        .iter()
        .map(|s| s.to_string())
        .collect();
    for name in [
        "image.png",
        "data.txt",
        "empty.md",
        "blank.txt",
        "huge.txt",
        "truncated.pdf",
        "not-really.pdf",
        "loop",
    ] {
        assert!(
            skipped.iter().any(|s| s.contains(name)),
            "{name} not reported in {skipped:#?}"
        );
    }
    assert_eq!(int(&first, "skipped"), skipped.len() as u64);
    assert!(
        first["warnings"].to_string().contains("latin1.txt"),
        "{first:#}"
    );
    let written = int(&first, "chunks_written");
    assert!(written >= 60, "{first:#}");

    let status = run_json(lore(&data, &model).args(["status", "--verify", "--json"]))?;
    assert_eq!(int(&status, "files"), 33);
    assert_eq!(int(&status, "chunks"), written);
    assert_eq!(status["consistent"], true, "{status:#}");
    assert_eq!(status["model"]["dim"], 384);

    let second = ingest(&[])?;
    assert_eq!(int(&second, "unchanged"), 33, "{second:#}");
    assert_eq!(
        int(&second, "new") + int(&second, "changed") + int(&second, "removed"),
        0
    );
    assert_eq!(int(&second, "chunks_written"), 0);

    let mut edited = fs::read_to_string(&articles[3])?;
    edited.push_str("\n\nA new closing paragraph about something else entirely.\n");
    fs::write(&articles[3], edited)?;
    fs::remove_file(&articles[7])?;
    let third = ingest(&[])?;
    assert_eq!(int(&third, "changed"), 1, "{third:#}");
    assert_eq!(int(&third, "removed"), 1, "{third:#}");
    assert_eq!(int(&third, "new"), 0);
    assert_eq!(int(&third, "unchanged"), 31);
    assert!(int(&third, "chunks_deleted") > 0 && int(&third, "chunks_written") > 0);

    let status = run_json(lore(&data, &model).args(["status", "--verify", "--json"]))?;
    assert_eq!(int(&status, "files"), 32);
    assert_eq!(status["consistent"], true, "{status:#}");

    // New chunking settings on one file: that file is redone, but the base keeps its old
    // settings (the other 31 files still follow them), and the run says so.
    let chunk_tokens =
        |status: &serde_json::Value| status["settings"]["chunker"]["max_tokens"].clone();
    let before = chunk_tokens(&status);
    assert_eq!(before, 254, "256 capped by MiniLM's window: {status:#}");
    let mut one = lore(&data, &model);
    one.args(["ingest", "--json", "--chunk-tokens", "128"])
        .arg(&articles[3]);
    let partial = run_json(&mut one)?;
    assert_eq!(int(&partial, "changed"), 1, "{partial:#}");
    assert_eq!(int(&partial, "removed"), 0, "{partial:#}");
    assert!(
        partial["warnings"]
            .to_string()
            .contains("only the files this run walked were redone"),
        "{partial:#}"
    );
    let status = run_json(lore(&data, &model).args(["status", "--json"]))?;
    assert_eq!(chunk_tokens(&status), before, "{status:#}");

    // The whole folder with the new settings: every file is redone and the base records them.
    let full = ingest(&["--chunk-tokens", "128"])?;
    assert_eq!(int(&full, "changed"), 32, "{full:#}");
    assert!(
        !full["warnings"].to_string().contains("were redone"),
        "{full:#}"
    );
    let status = run_json(lore(&data, &model).args(["status", "--json"]))?;
    assert_eq!(chunk_tokens(&status), 128, "{status:#}");

    // A run limited by globs is responsible only for the files they match: the others stay.
    let only_txt = ingest(&["--chunk-tokens", "128", "--include", "*.txt"])?;
    assert_eq!(int(&only_txt, "removed"), 0, "{only_txt:#}");
    let status = run_json(lore(&data, &model).args(["status", "--verify", "--json"]))?;
    assert_eq!(int(&status, "files"), 32);
    assert_eq!(status["consistent"], true, "{status:#}");
    Ok(())
}

#[test]
fn bad_invocations_fail_clearly_and_write_nothing() -> anyhow::Result<()> {
    let Some(model) = real_embedding_model() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("kb");
    let untouched = |what: &str| {
        assert!(
            !data.exists(),
            "{what}: the knowledge base folder was created: {:?}",
            std::fs::read_dir(&data).map(|d| d.count())
        );
    };

    // A path that does not exist.
    let out = lore(&data, &model)
        .args(["ingest", "--json"])
        .arg(tmp.path().join("nope"))
        .output()?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
    untouched("a missing path");

    // A bad glob: refused before the store is touched.
    let out = lore(&data, &model)
        .args(["ingest", "--include", "a[", "--json"])
        .arg(tmp.path())
        .output()?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid glob"),
        "{out:?}"
    );
    untouched("a bad glob");

    // An unknown model names the fetch script.
    let out = lore(&data, &model)
        .args(["ingest", "--model", "no-such-model"])
        .arg(tmp.path())
        .output()?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("scripts/fetch-models"),
        "{out:?}"
    );
    untouched("an unknown model");

    // status on a folder that is not a knowledge base.
    let out = lore(&tmp.path().join("empty"), &model)
        .args(["status"])
        .output()?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a lore knowledge base"),
        "{out:?}"
    );
    assert!(
        !tmp.path().join("empty").exists(),
        "status created a folder"
    );
    Ok(())
}

#[test]
fn a_knowledge_base_of_another_model_is_refused_unless_rebuilt() -> anyhow::Result<()> {
    let Some(model) = real_embedding_model() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let docs = tmp.path().join("docs");
    let data = tmp.path().join("kb");
    copy_articles(&docs, 2, 3_000)?;
    let tiny = tmp.path().join("tiny-model");
    lore_embed::testing::write_tiny_bert(&tiny, 128)?;

    run_json(lore(&data, &model).args(["ingest", "--json"]).arg(&docs))?;
    let out = lore(&data, &tiny)
        .args(["ingest", "--json"])
        .arg(&docs)
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("all-MiniLM-L6-v2") && stderr.contains("--rebuild"),
        "{stderr}"
    );

    let rebuilt = run_json(
        lore(&data, &tiny)
            .args(["ingest", "--json", "--rebuild"])
            .arg(&docs),
    )?;
    assert_eq!(int(&rebuilt, "new"), 2, "{rebuilt:#}");
    let status = run_json(lore(&data, &tiny).args(["status", "--json", "--verify"]))?;
    assert_eq!(status["model"]["dim"], 32);
    assert_eq!(status["consistent"], true);
    Ok(())
}
