//! Receiving uploaded files: streamed to a temporary file on disk as they arrive, never
//! held whole in memory (six concurrent 60 MB uploads once took 600 MB of RAM), and capped
//! in size while they stream.

use std::path::Path;

use axum::extract::multipart::Field;
use axum::http::StatusCode;
use tempfile::NamedTempFile;
use tokio::io::AsyncWriteExt;

use super::error::{ApiError, ApiResult};

/// Names of uploads still streaming in (hidden: a folder walk never picks them up).
const TEMP_PREFIX: &str = ".upload-";

/// Streams `field` into a new temporary file in `dir` (created if missing). Fails with 413
/// once it passes `max_bytes`; the partial file is removed when the error drops it.
pub async fn receive(
    mut field: Field<'_>,
    dir: &Path,
    name: &str,
    max_bytes: u64,
) -> ApiResult<NamedTempFile> {
    let dir = dir.to_path_buf();
    let tmp = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&dir)
    })
    .await?
    .map_err(|e| ApiError::internal(format!("creating a file for the upload: {e}")))?;
    let handle = tmp
        .as_file()
        .try_clone()
        .map_err(|e| ApiError::internal(format!("opening the upload's file: {e}")))?;
    let mut file = tokio::fs::File::from_std(handle);
    let mut received: u64 = 0;
    while let Some(chunk) = field.chunk().await? {
        received += chunk.len() as u64;
        if received > max_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "`{name}` is over {max_bytes} bytes; this server takes files up to that \
                     size (--max-file-bytes)"
                ),
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal(format!("writing the upload: {e}")))?;
    }
    file.sync_all()
        .await
        .map_err(|e| ApiError::internal(format!("writing the upload: {e}")))?;
    Ok(tmp)
}

/// Removes the temporary files of uploads a killed server was receiving (`.upload-*` in
/// `dir`); a missing folder is fine.
pub fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
            && let Err(e) = std::fs::remove_file(entry.path())
        {
            tracing::warn!("removing {}: {e}", entry.path().display());
        }
    }
}

/// Characters that make a name display as something else: bidirectional overrides and
/// isolates (`U+202E` turns `gpj.exe` around), zero-width and byte-order marks.
fn deceptive(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}'
        | '\u{FEFF}')
}

/// A client's file name reduced to a safe single name: no folders, no `..`, no hidden
/// files, no control or direction-changing characters. `None` when nothing usable is left.
pub fn safe_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next()?.trim();
    let ok = !base.is_empty()
        && !base.starts_with('.')
        && base.len() <= 255
        && !base
            .chars()
            .any(|c| c.is_control() || c == ':' || deceptive(c));
    ok.then(|| base.to_string())
}

#[cfg(test)]
mod tests {
    use super::safe_name;

    #[test]
    fn upload_names_cannot_escape() {
        assert_eq!(safe_name("notes.md").as_deref(), Some("notes.md"));
        assert_eq!(safe_name("../../etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(safe_name("C:\\x\\y.txt").as_deref(), Some("y.txt"));
        assert_eq!(safe_name("résumé.md").as_deref(), Some("résumé.md"));
        assert_eq!(safe_name(".."), None);
        assert_eq!(safe_name(".hidden"), None);
        assert_eq!(safe_name("dir/"), None);
        assert_eq!(safe_name(""), None);
        assert_eq!(safe_name("a\nb"), None);
    }

    /// Hardening finding 9: U+202E made `notes\u{202E}dm.exe` display as `notesexe.md`.
    #[test]
    fn upload_names_cannot_pretend() {
        for name in [
            "notes\u{202E}dm.exe",
            "a\u{200B}b.md",
            "x\u{2067}.md",
            "\u{FEFF}a.md",
        ] {
            assert_eq!(safe_name(name), None, "{}", name.escape_unicode());
        }
    }
}
