//! Finding the files to ingest under the folders a user names.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use globset::{Glob, GlobSet, GlobSetBuilder};
use ignore::WalkBuilder;

use crate::extract::kind_for_path;
use crate::{DocKind, Error, Result};

/// Which files a walk yields.
#[derive(Debug, Clone)]
pub struct WalkOptions {
    /// When non-empty, only files whose path relative to their root matches one of these globs.
    pub include: Vec<String>,
    /// Files whose relative path matches one of these globs are left out.
    pub exclude: Vec<String>,
    /// Files larger than this are skipped (reported, not read).
    pub max_file_bytes: u64,
    /// Also walk hidden files and folders (dot-files). `.gitignore` rules apply regardless.
    pub hidden: bool,
    /// Directories never walked, e.g. the knowledge base's own data directory.
    pub exclude_dirs: Vec<PathBuf>,
}

impl WalkOptions {
    /// Checks the globs, so that a caller can refuse a bad request before it starts a walk.
    pub fn check(&self) -> Result<()> {
        globset(&self.include)?;
        globset(&self.exclude)?;
        Ok(())
    }
}

impl Default for WalkOptions {
    fn default() -> Self {
        Self {
            include: Vec::new(),
            exclude: Vec::new(),
            max_file_bytes: 20 * 1024 * 1024,
            hidden: false,
            exclude_dirs: Vec::new(),
        }
    }
}

/// A file to ingest.
#[derive(Debug, Clone)]
pub struct FoundFile {
    /// Absolute, canonical path on disk.
    pub path: PathBuf,
    /// The key the knowledge base stores: the canonical path, `/`-separated.
    pub key: String,
    /// The kind from the extension; `None` means unknown, to be sniffed when read.
    pub kind: Option<DocKind>,
    pub size: u64,
}

/// A file (or root) left out, with the reason a user sees.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedFile {
    pub path: String,
    pub reason: String,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct WalkResult {
    /// The roots that exist, canonical. Files recorded under other roots are not this walk's
    /// business: the caller must not treat them as deleted.
    pub roots: Vec<PathBuf>,
    /// Roots that do not exist (reported, and nothing under them is considered deleted).
    pub missing_roots: Vec<PathBuf>,
    /// Sorted by key, without duplicates (roots may overlap).
    pub files: Vec<FoundFile>,
    pub skipped: Vec<SkippedFile>,
    /// What the walk left out on purpose, for [`WalkResult::covers`].
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    exclude_dirs: Vec<PathBuf>,
}

impl WalkResult {
    /// True when `key` is this walk's business: it lies under a walked root, outside the
    /// excluded folders, and passes the include/exclude globs. A covered key the walk did
    /// not yield is gone (deleted, ignored or unreadable); an uncovered one was never looked
    /// at, so a run with `--include '*.md'` leaves the folder's other files alone, and a
    /// walk that skips the data folder leaves the uploads in it alone.
    pub fn covers(&self, key: &str) -> bool {
        let key = Path::new(key);
        if self.exclude_dirs.iter().any(|d| key.starts_with(d)) {
            return false;
        }
        self.roots.iter().any(|root| {
            key.strip_prefix(root).is_ok_and(|rel| {
                let rel = relative_for_globs(rel, key);
                self.include.as_ref().is_none_or(|set| set.is_match(rel))
                    && !self.exclude.as_ref().is_some_and(|set| set.is_match(rel))
            })
        })
    }
}

fn globset(globs: &[String]) -> Result<Option<GlobSet>> {
    if globs.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for g in globs {
        let glob = Glob::new(g).map_err(|e| Error::Glob {
            glob: g.clone(),
            reason: e.to_string(),
        })?;
        builder.add(glob);
    }
    builder.build().map(Some).map_err(|e| Error::Glob {
        glob: globs.join(","),
        reason: e.to_string(),
    })
}

/// The stored form of a path: canonical and `/`-separated, so keys compare across runs.
pub(crate) fn path_key(path: &Path) -> String {
    path.to_string_lossy().replace('\\', "/")
}

/// Walks `roots` (folders or single files), honouring `.gitignore`, `.ignore`, `.loreignore`
/// and hidden-file rules, the include/exclude globs and the size cap.
///
/// Links are followed within a root; a file a link reaches outside it is skipped.
///
/// Fails only on invalid globs. Missing roots, unreadable entries and symlink loops are
/// reported in the result, never fatal.
pub fn walk(roots: &[PathBuf], options: &WalkOptions) -> Result<WalkResult> {
    let include = globset(&options.include)?;
    let exclude = globset(&options.exclude)?;
    let exclude_dirs: Vec<PathBuf> = options
        .exclude_dirs
        .iter()
        .filter_map(|d| d.canonicalize().ok())
        .collect();
    let mut result = WalkResult {
        include: include.clone(),
        exclude: exclude.clone(),
        exclude_dirs: exclude_dirs.clone(),
        ..WalkResult::default()
    };

    for root in roots {
        let Ok(root) = root.canonicalize() else {
            result.skipped.push(SkippedFile {
                path: root.display().to_string(),
                reason: "does not exist".into(),
            });
            result.missing_roots.push(root.clone());
            continue;
        };
        result.roots.push(root.clone());
        // Linked folders that lead out of the root are not entered at all: walking them only
        // to skip each file would still name every file under the target in the report
        // (which the server returns to a client who may not see that folder).
        let linked_out = Arc::new(Mutex::new(Vec::new()));
        let walker = WalkBuilder::new(&root)
            .hidden(!options.hidden)
            .follow_links(true)
            .require_git(false)
            .add_custom_ignore_filename(".loreignore")
            .filter_entry({
                let (root, linked_out) = (root.clone(), Arc::clone(&linked_out));
                move |entry| {
                    let out = entry.path_is_symlink()
                        && entry.file_type().is_some_and(|t| t.is_dir())
                        && entry
                            .path()
                            .canonicalize()
                            .is_ok_and(|target| !target.starts_with(&root));
                    if out {
                        linked_out
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(entry.path().display().to_string());
                    }
                    !out
                }
            })
            .build();
        for entry in walker {
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) => {
                    // Loops, permission errors: report and carry on with the rest.
                    let path = err_path(&err).unwrap_or_else(|| root.display().to_string());
                    result.skipped.push(SkippedFile {
                        path,
                        reason: err.to_string(),
                    });
                    continue;
                }
            };
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let Ok(path) = entry.path().canonicalize() else {
                continue;
            };
            if exclude_dirs.iter().any(|d| path.starts_with(d)) {
                continue;
            }
            // A link that leads out of the folder is not followed: the user (or the server's
            // allowed roots) chose this folder, and a file stored under a key outside it
            // could never be seen as deleted by a later walk of the folder.
            if !path.starts_with(&root) {
                result.skipped.push(link_out_of(entry.path(), &root));
                continue;
            }
            let rel = entry.path().strip_prefix(&root).unwrap_or(entry.path());
            let rel = relative_for_globs(rel, &path);
            if include.as_ref().is_some_and(|set| !set.is_match(rel))
                || exclude.as_ref().is_some_and(|set| set.is_match(rel))
            {
                continue;
            }
            let key = path_key(&path);
            let size = match entry.metadata() {
                Ok(m) => m.len(),
                Err(err) => {
                    result.skipped.push(SkippedFile {
                        path: key,
                        reason: err.to_string(),
                    });
                    continue;
                }
            };
            if size > options.max_file_bytes {
                result.skipped.push(SkippedFile {
                    path: key,
                    reason: format!(
                        "too large: {size} bytes, the limit is {} (raise it with --max-file-bytes)",
                        options.max_file_bytes
                    ),
                });
                continue;
            }
            result.files.push(FoundFile {
                kind: kind_for_path(&path),
                path,
                key,
                size,
            });
        }
        let linked_out = std::mem::take(
            &mut *linked_out
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for link in linked_out {
            result.skipped.push(link_out_of(Path::new(&link), &root));
        }
    }
    result.files.sort_by(|a, b| a.key.cmp(&b.key));
    result.files.dedup_by(|a, b| a.key == b.key);
    Ok(result)
}

/// The report of a link leading out of `root`. It names the link, not its target: the
/// target is outside what the caller chose to show.
fn link_out_of(link: &Path, root: &Path) -> SkippedFile {
    SkippedFile {
        path: link.display().to_string(),
        reason: format!(
            "a link out of {}: links out of the folder are not followed",
            root.display()
        ),
    }
}

/// What the include/exclude globs see: the path relative to its root, or, for a root that
/// is a single file, the file's name.
fn relative_for_globs<'a>(rel: &'a Path, path: &'a Path) -> &'a Path {
    if rel.as_os_str().is_empty() {
        path.file_name().map_or(path, Path::new)
    } else {
        rel
    }
}

fn err_path(err: &ignore::Error) -> Option<String> {
    match err {
        ignore::Error::WithPath { path, .. } => Some(path.display().to_string()),
        ignore::Error::WithDepth { err, .. } => err_path(err),
        ignore::Error::Loop { child, .. } => Some(child.display().to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn keys(r: &WalkResult, root: &Path) -> Vec<String> {
        let root = root.canonicalize().expect("root");
        r.files
            .iter()
            .map(|f| {
                f.path
                    .strip_prefix(&root)
                    .expect("under root")
                    .display()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn honours_gitignore_hidden_and_globs() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        fs::create_dir_all(d.join("sub/.hidden")).expect("mkdir");
        fs::write(d.join(".gitignore"), "ignored.md\n").expect("w");
        fs::write(d.join("a.md"), "a").expect("w");
        fs::write(d.join("ignored.md"), "x").expect("w");
        fs::write(d.join("sub/b.txt"), "b").expect("w");
        fs::write(d.join("sub/.hidden/c.md"), "c").expect("w");
        fs::write(d.join("sub/.dot.md"), "c").expect("w");

        let all = walk(&[d.to_path_buf()], &WalkOptions::default()).expect("walk");
        assert_eq!(keys(&all, d), vec!["a.md", "sub/b.txt"]);

        let opts = WalkOptions {
            include: vec!["*.md".into()],
            ..Default::default()
        };
        assert_eq!(
            keys(&walk(&[d.to_path_buf()], &opts).expect("walk"), d),
            vec!["a.md"]
        );

        let opts = WalkOptions {
            exclude: vec!["sub/**".into()],
            ..Default::default()
        };
        assert_eq!(
            keys(&walk(&[d.to_path_buf()], &opts).expect("walk"), d),
            vec!["a.md"]
        );
    }

    #[test]
    fn reports_missing_roots_large_files_and_bad_globs() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        fs::write(d.join("big.txt"), "0123456789").expect("w");
        let opts = WalkOptions {
            max_file_bytes: 5,
            ..Default::default()
        };
        let r = walk(&[d.to_path_buf(), d.join("nope")], &opts).expect("walk");
        assert!(r.files.is_empty());
        assert_eq!(r.missing_roots.len(), 1);
        assert!(r.skipped.iter().any(|s| s.reason.contains("too large")));
        assert!(r.skipped.iter().any(|s| s.reason == "does not exist"));

        let bad = WalkOptions {
            include: vec!["a[".into()],
            ..Default::default()
        };
        assert!(matches!(
            walk(&[d.to_path_buf()], &bad),
            Err(Error::Glob { .. })
        ));
    }

    #[test]
    fn covers_only_what_the_walk_could_yield() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().canonicalize().expect("canonical");
        fs::create_dir_all(d.join("data/uploads")).expect("mkdir");
        fs::write(d.join("a.md"), "a").expect("w");
        fs::write(d.join("data/uploads/u.md"), "u").expect("w");
        let opts = WalkOptions {
            include: vec!["*.md".into()],
            exclude_dirs: vec![d.join("data")],
            ..Default::default()
        };
        let r = walk(std::slice::from_ref(&d), &opts).expect("walk");
        assert_eq!(keys(&r, &d), vec!["a.md"]);
        let key = |rel: &str| path_key(&d.join(rel));
        assert!(r.covers(&key("a.md")));
        assert!(
            r.covers(&key("gone.md")),
            "a deleted .md is this walk's business"
        );
        assert!(!r.covers(&key("notes.txt")), "outside the include globs");
        assert!(
            !r.covers(&key("data/uploads/u.md")),
            "inside an excluded folder"
        );
        assert!(!r.covers("/elsewhere/a.md"), "outside the root");

        // A root that is a single file covers that file.
        let one = walk(&[d.join("a.md")], &WalkOptions::default()).expect("walk");
        assert!(one.covers(&key("a.md")));
        assert!(!one.covers(&key("b.md")));
    }

    #[cfg(unix)]
    #[test]
    fn does_not_follow_links_out_of_the_root() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        fs::create_dir_all(d.join("root/sub")).expect("mkdir");
        fs::create_dir_all(d.join("secret")).expect("mkdir");
        fs::write(d.join("root/sub/in.md"), "in").expect("w");
        fs::write(d.join("secret/key.md"), "k").expect("w");
        std::os::unix::fs::symlink(d.join("secret"), d.join("root/out")).expect("symlink");
        std::os::unix::fs::symlink(d.join("secret/key.md"), d.join("root/key.md"))
            .expect("symlink");
        // A link that stays inside the root is followed (and its target stored once).
        std::os::unix::fs::symlink(d.join("root/sub"), d.join("root/alias")).expect("symlink");
        let root = d.join("root");
        let r = walk(std::slice::from_ref(&root), &WalkOptions::default()).expect("walk");
        assert_eq!(keys(&r, &root), vec!["sub/in.md"]);
        let outside: Vec<_> = r
            .skipped
            .iter()
            .filter(|s| s.reason.contains("a link out of"))
            .collect();
        assert_eq!(outside.len(), 2, "{:?}", r.skipped);
        // Hardening finding 9: the report names the links, never what lies behind them.
        for s in &r.skipped {
            assert!(
                !s.path.contains("secret") && !s.reason.contains("secret"),
                "{s:?}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn survives_symlink_loops() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        fs::create_dir_all(d.join("x")).expect("mkdir");
        fs::write(d.join("x/f.md"), "f").expect("w");
        std::os::unix::fs::symlink(d, d.join("x/loop")).expect("symlink");
        let r = walk(&[d.to_path_buf()], &WalkOptions::default()).expect("walk");
        assert_eq!(keys(&r, d), vec!["x/f.md"]);
        assert!(
            r.skipped.iter().any(|s| s.reason.contains("loop")),
            "{:?}",
            r.skipped
        );
    }
}
