//! `lore finetune` on the real default model: a short run writes a valid PEFT adapter that
//! `score`, `merge` and `chat` use; a run stopped and resumed matches an uninterrupted one;
//! every kind of training row is masked to the assistant's reply; bad input is named.
//!
//! Runs are kept to a few steps on short sequences so the suite stays fast on 2 cores; the
//! evidence that tuning teaches a style is `scripts/bench-finetune-style`.

#![allow(clippy::unwrap_used)] // a test fails loudly on any error

use std::path::{Path, PathBuf};
use std::process::Command;

use lore_finetune::generation::runtime::LanguageModel;
use lore_finetune::lm::linear::WeightFormat;
use lore_finetune::train::data::{DataOptions, Encoder, Validation, prepare};
use lore_tests::{fails_with, lore_bin, real_language_model, repo_root, run_json};

fn lm_cmd(lm: &Path) -> Command {
    let mut cmd = Command::new(lore_bin());
    cmd.env("LORE_LM", lm)
        .env_remove("LORE_LLM_URL")
        .env_remove("LORE_LLM_MODEL")
        .env("RUST_LOG", "warn");
    cmd
}

/// The first `n` rows of the styled dataset, in a file of their own.
fn pirate_rows(dir: &Path, n: usize) -> PathBuf {
    let all = std::fs::read_to_string(repo_root().join("tests/data/finetune/pirate_train.jsonl"))
        .unwrap();
    let rows: Vec<&str> = all.lines().take(n).collect();
    let path = dir.join(format!("pirate{n}.jsonl"));
    std::fs::write(&path, rows.join("\n")).unwrap();
    path
}

/// Short, fast training settings.
fn quick<'a>(cmd: &'a mut Command, data: &Path, out: &Path) -> &'a mut Command {
    cmd.args(["finetune", "--data"])
        .arg(data)
        .arg("--output")
        .arg(out)
        .args([
            "--model-max-length",
            "64",
            "--lora-r",
            "8",
            "--lora-alpha",
            "16",
            "--json",
        ])
}

const CONVERSATION: &str = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nAhoy! The capital of France is Paris. Arr!<|im_end|>\n";

fn score(lm: &Path, extra: &[&str]) -> Vec<f64> {
    let v = run_json(
        lm_cmd(lm)
            .args(["finetune", "score", "--text", CONVERSATION, "--json"])
            .args(extra),
    )
    .unwrap();
    v["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn a_short_run_writes_a_peft_adapter_that_score_merge_and_chat_use() {
    let Some(lm) = real_language_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = pirate_rows(dir.path(), 16);
    let out = dir.path().join("adapter");
    // autotrain's spellings are accepted.
    let report = run_json(quick(&mut lm_cmd(&lm), &data, &out).args([
        "--learning_rate",
        "1e-3",
        "--num_train_epochs",
        "1",
        "--train_batch_size",
        "4",
        "--max-steps",
        "2",
        "--use_peft",
        "--use_int4",
        "--trainer",
        "sft",
    ]))
    .unwrap();
    for key in [
        "initial_val_loss",
        "final_val_loss",
        "elapsed_s",
        "tokens_per_s",
    ] {
        assert!(
            report[key].as_f64().is_some_and(f64::is_finite),
            "{key}: {report}"
        );
    }
    assert_eq!(report["steps"], 2, "{report}");
    assert!(report["train_tokens"].as_u64().unwrap() > 0);
    assert!(report["peak_rss_mb"].as_u64().unwrap() > 0);
    assert_eq!(report["output"].as_str().unwrap(), out.to_str().unwrap());

    // The PEFT layout: the config's fields and every projection's A and B.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["r"], 8);
    assert_eq!(config["lora_alpha"], 16.0);
    assert_eq!(config["target_modules"].as_array().unwrap().len(), 7);
    assert!(config["base_model_name_or_path"].as_str().is_some());
    let tensors = candle_core::safetensors::load(
        out.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(tensors.len(), 30 * 7 * 2);
    let a = &tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    let b = &tensors["base_model.model.model.layers.29.mlp.down_proj.lora_B.weight"];
    assert_eq!((a.dims(), b.dims()), (&[8, 576][..], &[576, 8][..]));
    let csv = std::fs::read_to_string(out.join("loss.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    let png = std::fs::read(out.join("loss.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");

    // The adapter changes the model's scores; merged into an f32 export it scores the same.
    let base = score(&lm, &["--weights", "native"]);
    let tuned = score(
        &lm,
        &["--weights", "native", "--adapter", out.to_str().unwrap()],
    );
    let effect = max_diff(&base, &tuned);
    assert!(effect > 1e-3, "the adapter changed nothing ({effect})");
    let merged = dir.path().join("merged");
    lore_tests::check(
        &lm_cmd(&lm)
            .args(["finetune", "merge", "--adapter"])
            .arg(&out)
            .arg("--output")
            .arg(&merged)
            .output()
            .unwrap(),
    )
    .unwrap();
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(merged.join(file).is_file(), "{file}");
    }
    let from_merged = score(
        &lm,
        &["--weights", "native", "--base", merged.to_str().unwrap()],
    );
    let gap = max_diff(&tuned, &from_merged);
    println!("adapter effect {effect:.4}, merged vs adapter {gap:.2e}");
    assert!(
        gap < 2e-3 && gap * 10.0 < effect,
        "merged model differs by {gap} (effect {effect})"
    );

    // chat and ask take the adapter.
    let reply = run_json(
        lm_cmd(&lm)
            .args(["chat", "Hi", "--max-tokens", "8", "--json", "--adapter"])
            .arg(&out),
    )
    .unwrap();
    assert!(reply["answer"].as_str().is_some(), "{reply}");
    fails_with(
        lm_cmd(&lm).args(["chat", "Hi", "--adapter", "/nowhere/adapter"]),
        "adapter_config.json",
    );
}

#[test]
fn autotrains_current_flags_and_trls_conversational_rows_train() {
    let Some(lm) = real_language_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // TRL's conversational prompt/completion rows.
    let row = r#"{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Ahoy there, matey!"}]}"#;
    let data = dir.path().join("trl.jsonl");
    let rows: Vec<String> = (0..8)
        .map(|i| row.replace("Hi", &format!("Hello number {i}")))
        .collect();
    std::fs::write(&data, rows.join("\n")).unwrap();
    let out = dir.path().join("adapter");
    let report = run_json(quick(&mut lm_cmd(&lm), &data, &out).args([
        "--max-steps",
        "1",
        "--peft",
        "--quantization",
        "int4",
        "--chat-template",
        "tokenizer",
        "--add-eos-token",
        "--merge-adapter",
    ]))
    .unwrap();
    assert_eq!(report["steps"], 1, "{report}");
    let params: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("training_params.json")).unwrap())
            .unwrap();
    assert_eq!(params["peft"], true);
    assert_eq!(params["quantization"], "int4");
    assert_eq!(params["merge_adapter"], true);
    assert_eq!(params["lora_r"], 8);
    assert_eq!(params["block_size"], 64);
    assert_eq!(
        params["data_path"].as_str().unwrap(),
        data.to_str().unwrap()
    );
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(out.join("merged").join(file).is_file(), "{file}");
    }
    // What lore cannot do is refused by name.
    fails_with(
        quick(&mut lm_cmd(&lm), &data, &dir.path().join("x")).args(["--quantization", "int8"]),
        "int4",
    );

    // autotrain's folder layout: --data a folder, the splits named by --train-split and
    // --valid-split; the validation rows are exactly that file's.
    let folder = dir.path().join("dataset");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("train.jsonl"), rows.join("\n")).unwrap();
    // Rows of their own: a validation row that repeats a training row is dropped.
    let held_out: Vec<String> = (100..103)
        .map(|i| row.replace("Hi", &format!("Hello number {i}")))
        .collect();
    std::fs::write(folder.join("held-out.jsonl"), held_out.join("\n")).unwrap();
    let out = dir.path().join("split-adapter");
    let report = run_json(quick(&mut lm_cmd(&lm), &folder, &out).args([
        "--max-steps",
        "1",
        "--valid-split",
        "held-out",
    ]))
    .unwrap();
    assert_eq!(report["valid_examples"], 3, "{report}");
    assert_eq!(report["train_examples"], 8, "{report}");
    fails_with(
        quick(&mut lm_cmd(&lm), &folder, &dir.path().join("y")).args(["--valid-split", "nope"]),
        "none of",
    );
    fails_with(
        quick(&mut lm_cmd(&lm), &data, &dir.path().join("z")).args(["--valid-split", "held-out"]),
        "give --data a folder",
    );
}

fn train_losses(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("loss.csv"))
        .unwrap()
        .lines()
        .skip(1)
        // step and training loss: a run stopped early also evaluates where it stops.
        .map(|l| l.split(',').take(3).collect::<Vec<_>>().join(","))
        .collect()
}

#[test]
fn a_run_stopped_and_resumed_matches_an_uninterrupted_one() {
    let Some(lm) = real_language_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = pirate_rows(dir.path(), 10);
    let settings = [
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--valid-fraction",
        "0.2",
        "--lr",
        "1e-3",
    ];
    let whole = dir.path().join("whole");
    let a = run_json(quick(&mut lm_cmd(&lm), &data, &whole).args(settings)).unwrap();
    assert_eq!(a["steps"], 4, "{a}");

    let parts = dir.path().join("parts");
    run_json(
        quick(&mut lm_cmd(&lm), &data, &parts)
            .args(settings)
            .args(["--max-steps", "2"]),
    )
    .unwrap();
    fails_with(
        quick(&mut lm_cmd(&lm), &data, &parts).args(settings),
        "--resume",
    );
    fails_with(
        quick(&mut lm_cmd(&lm), &data, &parts).args(settings).args([
            "--resume",
            "--lora-dropout",
            "0.1",
        ]),
        "lora_dropout",
    );
    let b = run_json(
        quick(&mut lm_cmd(&lm), &data, &parts)
            .args(settings)
            .arg("--resume"),
    )
    .unwrap();
    assert_eq!(b["steps"], 4, "{b}");
    assert_eq!(train_losses(&whole), train_losses(&parts));
    assert_eq!(
        std::fs::read(whole.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(parts.join("adapter_model.safetensors")).unwrap()
    );
}

#[test]
fn every_row_shape_is_rendered_as_served_and_masked_to_the_reply() {
    let Some(lm_path) = real_language_model() else {
        return;
    };
    let lm = LanguageModel::load(&lm_path, WeightFormat::Auto).unwrap();
    let tok = lm.tokenizer();
    let encoder = Encoder {
        tokenizer: tok,
        template: lm.template(),
        end_of_text: tok.token_to_id("<|endoftext|>"),
        max_len: 256,
    };
    let dir = tempfile::tempdir().unwrap();
    let files = [
        (
            "chat.jsonl",
            "{\"messages\": [{\"role\": \"system\", \"content\": \"Be a pirate.\"}, {\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Ahoy there!\"}]}\n",
        ),
        (
            "alpaca.json",
            "[{\"instruction\": \"Greet\", \"input\": \"Bob\", \"output\": \"Ahoy there!\"}]",
        ),
        (
            "pairs.csv",
            "prompt,completion\nHi,Ahoy there!\nHi,Ahoy there!\n",
        ),
    ];
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let options = DataOptions {
            text_column: None,
            system: Some("Default system.".into()),
        };
        let data = prepare(&path, &Validation::Split(0.0), &options, &encoder, 1).unwrap();
        assert_eq!(data.train.len(), 1, "{name}");
        let e = &data.train[0];
        let pick = |want: bool| -> Vec<u32> {
            e.tokens
                .iter()
                .zip(&e.trained)
                .filter(|(_, t)| **t == want)
                .map(|(id, _)| *id)
                .collect()
        };
        assert_eq!(
            tok.decode(&pick(true), false).unwrap(),
            "Ahoy there!<|im_end|>",
            "{name}"
        );
        // The whole text is exactly what serving renders for the same conversation.
        let text = tok.decode(&e.tokens, false).unwrap();
        assert!(
            text.ends_with("<|im_start|>assistant\nAhoy there!<|im_end|>\n"),
            "{name}: {text}"
        );
        let system = if name == "chat.jsonl" {
            "Be a pirate."
        } else {
            "Default system."
        };
        assert!(
            text.starts_with(&format!("<|im_start|>system\n{system}<|im_end|>")),
            "{name}: {text}"
        );
        if name == "pairs.csv" {
            assert_eq!(data.duplicates, 1);
        }
    }
    // A text column is trained whole, with an end-of-text token so tuned models stop.
    let path = dir.path().join("text.csv");
    std::fs::write(&path, "body\nPlain words to learn.\n").unwrap();
    let options = DataOptions {
        text_column: Some("body".into()),
        system: None,
    };
    let data = prepare(&path, &Validation::Split(0.0), &options, &encoder, 1).unwrap();
    let e = &data.train[0];
    assert!(e.trained.iter().all(|t| *t));
    assert_eq!(
        tok.decode(&e.tokens, false).unwrap(),
        "Plain words to learn.<|endoftext|>"
    );
    // Truncation keeps the start.
    let short = Encoder {
        max_len: 3,
        ..encoder
    };
    let data = prepare(&path, &Validation::Split(0.0), &options, &short, 1).unwrap();
    assert_eq!((data.train[0].tokens.len(), data.truncated), (3, 1));
}

#[test]
fn bad_training_input_is_named() {
    let Some(lm) = real_language_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    fails_with(
        quick(&mut lm_cmd(&lm), &dir.path().join("none.jsonl"), &out),
        "no such file",
    );
    fails_with(
        quick(&mut lm_cmd(&lm), &write("empty.jsonl", "\n"), &out),
        "the dataset is empty",
    );
    let rows = write(
        "rows.jsonl",
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"foo\": 1}\n",
    );
    fails_with(quick(&mut lm_cmd(&lm), &rows, &out), "rows.jsonl:2");
    fails_with(
        quick(&mut lm_cmd(&lm), &rows, &out),
        "none of the recognised fields",
    );
    let broken = write(
        "broken.jsonl",
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \n",
    );
    fails_with(
        quick(&mut lm_cmd(&lm), &broken, &out),
        "broken.jsonl:2: not valid JSON",
    );
    let noanswer = write("noanswer.jsonl", "{\"prompt\": \"a\"}\n");
    fails_with(quick(&mut lm_cmd(&lm), &noanswer, &out), "no answer field");
    fails_with(
        quick(&mut lm_cmd(&lm), &write("d.txt", "hello"), &out),
        "unknown dataset format",
    );
    let good = pirate_rows(dir.path(), 4);
    fails_with(
        quick(&mut lm_cmd(&lm), &good, &out).args(["--target-modules", "q_proj,wq"]),
        "no module `wq`",
    );
    fails_with(
        quick(&mut lm_cmd(&lm), &good, &out).args(["--lora-dropout", "1.5"]),
        "dropout",
    );
    fails_with(
        quick(&mut lm_cmd(&lm), &good, &out).args(["--lr", "0"]),
        "learning rate",
    );
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    fails_with(quick(&mut lm_cmd(&lm), &good, &out), "holds no lore run");
    fails_with(
        quick(&mut lm_cmd(&lm), &good, &out).arg("--resume"),
        "no checkpoint",
    );
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn gen_data_writes_only_well_formed_rows_and_a_system_message() {
    let Some(lm) = real_language_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gen/data.jsonl");
    let run = lm_cmd(&lm)
        .args([
            "finetune",
            "gen-data",
            "--use-case",
            "Answer cooking questions briefly",
            "--examples",
            "2",
            "--batch",
            "2",
            "--max-failures",
            "1",
            "--max-tokens",
            "120",
            "--json",
            "--output",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The 135M default model rarely follows the format: success or "stopped" (3), never junk.
    let code = run.status.code();
    assert!(code == Some(0) || code == Some(3), "{code:?}: {stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let system = std::fs::read_to_string(dir.path().join("gen/data.system.txt")).unwrap();
    assert!(system.trim().len() >= 10, "{summary}");
    let rows = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(
        rows.lines().count() as u64,
        summary["examples"].as_u64().unwrap()
    );
    for line in rows.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let m = v["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3);
        assert!(
            m.iter()
                .all(|x| !x["content"].as_str().unwrap().trim().is_empty())
        );
    }
    fails_with(
        lm_cmd(&lm)
            .args(["finetune", "gen-data", "--use-case", " ", "--output"])
            .arg(&out),
        "--use-case is empty",
    );
}

/// Ctrl-C (SIGINT) stops training after the current step with a checkpoint; `--resume`
/// finishes the run.
#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_checkpoint_that_resume_finishes() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let Some(lm) = real_language_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = pirate_rows(dir.path(), 10);
    let out = dir.path().join("run");
    let settings = [
        "--epochs",
        "3",
        "--batch-size",
        "2",
        "--valid-fraction",
        "0.2",
        "--save-every",
        "1000",
        "--model-max-length",
        "64",
        "--lora-r",
        "8",
    ];
    let mut child = lm_cmd(&lm)
        .args(["finetune", "--data"])
        .arg(&data)
        .arg("--output")
        .arg(&out)
        .args(settings)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    // The initial evaluation is printed before the first step starts.
    while !seen.contains("validation loss") {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
    }
    assert!(seen.contains("validation loss"), "{seen}");
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert!(rest.contains("checkpoint saved"), "{rest}");
    let saved = lore_finetune::train::checkpoint::list(&out);
    assert_eq!(saved.len(), 1, "{rest}");
    assert!(saved[0].0 < 12, "stopped at step {} of 12", saved[0].0);
    assert!(!out.join("adapter_model.safetensors").exists());
    let done = run_json(
        lm_cmd(&lm)
            .args(["finetune", "--data"])
            .arg(&data)
            .arg("--output")
            .arg(&out)
            .args(settings)
            .args(["--resume", "--json"]),
    )
    .unwrap();
    assert_eq!(done["steps"], 12, "{done}");
    assert!(out.join("adapter_model.safetensors").is_file());
}
