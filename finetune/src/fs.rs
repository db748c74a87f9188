//! Files written so that a crash leaves the old version or the whole new one, through
//! `lore_durable` (shared with the other crates), with this crate's error type.

use std::path::Path;

use crate::{Error, Result};

pub(crate) fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::io(path, e)
}

/// Replaces `path` with what `write` puts in the staging file it is given, crash-safely.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    lore_durable::write_with(path, write, io_error)
}

/// Flushes a file's (or, on Unix, a folder's) contents to disk.
pub(crate) fn sync_path(path: &Path) -> Result<()> {
    lore_durable::sync(path).map_err(|e| io_error(path, e))
}

/// Flushes the folder holding `path`.
pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    lore_durable::sync_parent(path).map_err(|e| io_error(path, e))
}
