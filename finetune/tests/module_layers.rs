//! The crate's modules form layers (lib.rs lists them): each module refers only to modules
//! below it, so there is no cycle, and the server reaches the crate only through what lib.rs
//! re-exports. Checked on the source text: every `crate::NAME` in a module's files, and every
//! `lore_finetune::NAME` in the server's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any error

use std::path::{Path, PathBuf};

/// Bottom to top. `error` and `fs` are the crate's own plumbing, below everything.
const LAYERS: [&str; 7] = ["error", "fs", "ops", "lm", "adapter", "generation", "train"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The first path segments after each `prefix` in `text` (`crate::lm::model` → `lm`;
/// `crate::{Error, lm::chat}` → `Error`, `lm`).
fn segments_after<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    let word = |s: &'a str| {
        let s = s.trim_start();
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        &s[..end]
    };
    let mut out = Vec::new();
    for (i, _) in text.match_indices(prefix) {
        let rest = &text[i + prefix.len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                out.extend(group.split(',').map(word).filter(|w| !w.is_empty()));
            }
            None => out.push(word(rest)),
        }
    }
    out
}

fn rank(name: &str) -> Option<usize> {
    match name {
        // The crate's error types live in `error`, re-exported at the root.
        "Error" | "Result" => Some(0),
        _ => LAYERS.iter().position(|l| *l == name),
    }
}

#[test]
fn each_module_refers_only_to_modules_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut checked = 0;
    let mut violations = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" {
            continue; // the root re-exports everything
        }
        let own = rank(&top).unwrap_or_else(|| panic!("{top} is not in LAYERS"));
        let text = std::fs::read_to_string(file).unwrap();
        for name in segments_after(&text, "crate::") {
            let Some(theirs) = rank(name) else {
                violations.push(format!(
                    "{}: crate::{name} is not a known layer",
                    relative.display()
                ));
                continue;
            };
            checked += 1;
            if theirs > own {
                violations.push(format!(
                    "{}: `{top}` refers up to `crate::{name}`",
                    relative.display()
                ));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    // The check read something: the modules do use each other.
    assert!(checked > 50, "only {checked} crate:: references found");
}

#[test]
fn the_server_uses_only_the_crates_re_exports() {
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/src");
    let mut files = Vec::new();
    rust_files(&server, &mut files);
    let mut uses = 0;
    let mut violations = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for name in segments_after(&text, "lore_finetune::") {
            uses += 1;
            if LAYERS.contains(&name) {
                violations.push(format!(
                    "{}: lore_finetune::{name}:: reaches into a module",
                    file.display()
                ));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    assert!(
        uses > 20,
        "only {uses} uses of lore_finetune found in the server"
    );
}
