//! Crash-safe file writes: the one place lore's crates replace a file that holds state (the
//! ingest manifest, a knowledge base's settings, adapters, checkpoints, training records).
//!
//! A file is written beside its destination, flushed to disk, renamed over it, and then the
//! folder is flushed, so a crash or power loss at any point leaves either the old file or the
//! whole new one. A rename alone is not enough: it can reach the disk before the data it
//! names, leaving a complete-looking empty file.
//!
//! It owns no formats and no error type: callers serialise, and wrap the `io::Error` with
//! their own context. It depends on nothing.
//!
//! ```no_run
//! lore_durable::write(std::path::Path::new("kb/manifest.json"), b"{}")?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Where a write to `path` is staged: a hidden file beside it, so the rename stays on one
/// file system. A leftover from a crash is simply overwritten by the next write.
pub fn staging_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Replaces `path` with `bytes`, crash-safely.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(
        path,
        |staged| {
            let mut file = std::fs::File::create(staged)?;
            file.write_all(bytes)
        },
        |_, e| e,
    )
}

/// Replaces `path` with what `fill` writes to the staging path it is given (for writers that
/// want a path, such as safetensors' or a plotting library's). `io` turns an I/O error at a
/// path into the caller's error type.
pub fn write_with<E>(
    path: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
    io: impl Fn(&Path, io::Error) -> E,
) -> Result<(), E> {
    let staged = staging_path(path);
    fill(&staged)?;
    sync(&staged).map_err(|e| io(&staged, e))?;
    std::fs::rename(&staged, path).map_err(|e| io(path, e))?;
    sync_parent(path).map_err(|e| io(path, e))
}

/// Flushes a file's contents (or, on Unix, a folder's entries) to disk.
pub fn sync(path: &Path) -> io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// Flushes the folder holding `path`, so a rename or a new entry in it is on disk. Only Unix
/// can open a folder to flush it; elsewhere this does nothing.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if cfg!(unix) => sync(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_file_whole_and_leaves_no_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, b"old").unwrap();
        write(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn a_failed_fill_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, b"old").unwrap();
        let result: Result<(), String> = write_with(
            &path,
            |staged| {
                std::fs::write(staged, b"half").unwrap();
                Err("the serialiser failed".into())
            },
            |p, e| format!("{}: {e}", p.display()),
        );
        assert_eq!(result.unwrap_err(), "the serialiser failed");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn an_unwritable_place_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-folder").join("state.json");
        assert!(write(&path, b"x").is_err());
        let result: Result<(), String> =
            write_with(&path, |_| Ok(()), |p, e| format!("{}: {e}", p.display()));
        // The staging file was never made: flushing it fails, and says where.
        assert!(result.unwrap_err().contains(".state.json.tmp"));
    }

    #[test]
    fn the_staging_file_sits_beside_the_destination() {
        assert_eq!(
            staging_path(Path::new("/kb/manifest.json")),
            Path::new("/kb/.manifest.json.tmp")
        );
    }
}
