//! Reading one found file into a [`Document`].

use crate::extract::{extract, looks_binary};
use crate::{DocKind, Document, Error, FoundFile, Result};

/// A file's bytes and their hash: enough to decide whether it changed, before any extraction.
#[derive(Debug)]
pub struct RawFile {
    pub bytes: Vec<u8>,
    /// blake3 of `bytes`, hex.
    pub hash: String,
}

/// A document and the warnings met while reading it (for example lossy UTF-8).
#[derive(Debug)]
pub struct Loaded {
    pub document: Document,
    pub warnings: Vec<String>,
}

/// Reads a file and hashes it.
///
/// Fails when the file cannot be read.
pub fn read_file(file: &FoundFile) -> Result<RawFile> {
    let bytes = std::fs::read(&file.path).map_err(|e| Error::io(&file.path, e))?;
    let hash = blake3::hash(&bytes).to_hex().to_string();
    Ok(RawFile { bytes, hash })
}

/// Extracts the text of a file already read.
///
/// Fails when it is binary (a file of unknown kind or a text kind with NUL bytes) or has no
/// text (see [`crate::ExtractError`]). Callers skip such files and report the message.
pub fn to_document(file: &FoundFile, raw: RawFile) -> Result<Loaded> {
    let kind = match file.kind {
        Some(DocKind::Pdf) => DocKind::Pdf,
        Some(_) | None if looks_binary(&raw.bytes) => {
            return Err(Error::Binary {
                path: file.key.clone(),
            });
        }
        Some(kind) => kind,
        // Unknown extension but text-like content (README, LICENSE, Makefile-likes): ingest it.
        None => DocKind::Text,
    };
    let extracted = extract(&file.key, &raw.bytes, kind)?;
    let document = Document {
        path: file.key.clone(),
        kind,
        text: extracted.text,
        pages: extracted.pages,
        content_hash: raw.hash,
    };
    Ok(Loaded {
        document,
        warnings: extracted.warnings,
    })
}

/// [`read_file`] then [`to_document`].
pub fn load_document(file: &FoundFile) -> Result<Loaded> {
    to_document(file, read_file(file)?)
}
