//! The one mapping between a [`Chunk`] and the payload fields both vector stores keep.
//!
//! Field names are part of the on-disk format (and of a Qdrant collection's schema): `path`,
//! `kind` and `tags` carry keyword indexes, `heading` a word index, for filters.

use std::collections::BTreeMap;

use lore_ingest::{Chunk, ChunkId, DocKind};
use serde_json::{Map, Value, json};

use crate::{Error, Result};

/// Payload fields with a keyword index.
pub(crate) const KEYWORD_FIELDS: [&str; 3] = ["path", "kind", "tags"];
/// The payload field with a lowercase word index (heading filters).
pub(crate) const HEADING_FIELD: &str = "heading";

/// The payload stored with a chunk's vector.
pub(crate) fn to_payload(chunk: &Chunk) -> Value {
    json!({
        "chunk_id": chunk.id.as_str(),
        "path": chunk.path,
        "kind": chunk.kind.name(),
        "text": chunk.text,
        "byte_start": chunk.byte_start,
        "byte_end": chunk.byte_end,
        "start_line": chunk.start_line,
        "end_line": chunk.end_line,
        "heading": chunk.heading,
        "page": chunk.page,
        "tags": tag_terms(&chunk.tags),
    })
}

/// Tags as the `key=value` terms filters match.
pub(crate) fn tag_terms(tags: &BTreeMap<String, String>) -> Vec<String> {
    tags.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Rebuilds the chunk stored under `id` from its payload.
pub(crate) fn from_payload(id: &str, payload: &Map<String, Value>) -> Result<Chunk> {
    let bad = |field: &str| {
        Error::Store(format!(
            "point {id}: payload field `{field}` is missing or malformed"
        ))
    };
    let string = |field: &str| -> Result<String> {
        payload
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| bad(field))
    };
    let number = |field: &str| -> Result<usize> {
        payload
            .get(field)
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| bad(field))
    };
    let kind = string("kind")?;
    let tags = match payload.get("tags") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|t| t.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        Some(_) => return Err(bad("tags")),
    };
    Ok(Chunk {
        id: ChunkId(string("chunk_id").unwrap_or_else(|_| id.to_string())),
        path: string("path")?,
        kind: DocKind::from_name(&kind).ok_or_else(|| bad("kind"))?,
        text: string("text")?,
        byte_start: number("byte_start")?,
        byte_end: number("byte_end")?,
        start_line: number("start_line")?,
        end_line: number("end_line")?,
        heading: payload
            .get("heading")
            .and_then(Value::as_str)
            .map(str::to_string),
        page: payload
            .get("page")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok()),
        tags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_survives_the_round_trip() {
        let text = "Rust is a language.";
        let chunk = Chunk {
            id: ChunkId::derive("docs/a.md", &(0..text.len()), text),
            path: "docs/a.md".into(),
            kind: DocKind::Code(lore_ingest::CodeLang::Python),
            text: text.into(),
            byte_start: 0,
            byte_end: text.len(),
            start_line: 1,
            end_line: 1,
            heading: Some("Intro > Rust".into()),
            page: Some(3),
            tags: [("team".to_string(), "docs=core".to_string())].into(),
        };
        let Value::Object(map) = to_payload(&chunk) else {
            panic!("payload is an object")
        };
        assert_eq!(from_payload(chunk.id.as_str(), &map).unwrap(), chunk);
    }

    #[test]
    fn a_malformed_payload_is_an_error_not_a_panic() {
        let Value::Object(map) = json!({"path": "a", "kind": "nonsense"}) else {
            unreachable!()
        };
        let err = from_payload("x", &map).unwrap_err().to_string();
        assert!(err.contains("`text`") || err.contains("`kind`"), "{err}");
    }
}
