//! The values that flow out of this crate: a document's extracted text and its chunks.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// What a file is, which decides how its text is extracted and how it is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocKind {
    Markdown,
    Text,
    /// HTML is converted to Markdown-like text (headings as `#` lines), so it is chunked
    /// and given heading paths like Markdown.
    Html,
    Pdf,
    Code(CodeLang),
}

impl DocKind {
    /// A short stable name, stored in payloads and used by file-type filters.
    pub fn name(self) -> &'static str {
        match self {
            DocKind::Markdown => "markdown",
            DocKind::Text => "text",
            DocKind::Html => "html",
            DocKind::Pdf => "pdf",
            DocKind::Code(lang) => lang.name(),
        }
    }

    /// The inverse of [`DocKind::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "markdown" => DocKind::Markdown,
            "text" => DocKind::Text,
            "html" => DocKind::Html,
            "pdf" => DocKind::Pdf,
            other => DocKind::Code(CodeLang::ALL.into_iter().find(|l| l.name() == other)?),
        })
    }
}

/// Source languages we recognise by extension. Those with a tree-sitter grammar compiled in
/// are split along syntax; the rest are split as plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodeLang {
    Rust,
    Python,
    JavaScript,
    TypeScript,
    Go,
    Java,
    C,
    Cpp,
    CSharp,
    Ruby,
    Shell,
    Sql,
    Toml,
    Yaml,
    Json,
    Other,
}

impl CodeLang {
    pub const ALL: [CodeLang; 16] = [
        CodeLang::Rust,
        CodeLang::Python,
        CodeLang::JavaScript,
        CodeLang::TypeScript,
        CodeLang::Go,
        CodeLang::Java,
        CodeLang::C,
        CodeLang::Cpp,
        CodeLang::CSharp,
        CodeLang::Ruby,
        CodeLang::Shell,
        CodeLang::Sql,
        CodeLang::Toml,
        CodeLang::Yaml,
        CodeLang::Json,
        CodeLang::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CodeLang::Rust => "rust",
            CodeLang::Python => "python",
            CodeLang::JavaScript => "javascript",
            CodeLang::TypeScript => "typescript",
            CodeLang::Go => "go",
            CodeLang::Java => "java",
            CodeLang::C => "c",
            CodeLang::Cpp => "cpp",
            CodeLang::CSharp => "csharp",
            CodeLang::Ruby => "ruby",
            CodeLang::Shell => "shell",
            CodeLang::Sql => "sql",
            CodeLang::Toml => "toml",
            CodeLang::Yaml => "yaml",
            CodeLang::Json => "json",
            CodeLang::Other => "code",
        }
    }
}

/// A file's text after extraction, ready to be chunked.
///
/// For Markdown, plain text and code `text` is the file's content (decoded lossily if it was
/// not UTF-8), so byte spans are file offsets. For HTML and PDF it is the extracted text and
/// spans refer to it.
#[derive(Debug, Clone)]
pub struct Document {
    /// The file's path as stored in the knowledge base (absolute, `/`-separated).
    pub path: String,
    pub kind: DocKind,
    pub text: String,
    /// For PDFs: the byte range of `text` each page occupies; page `i + 1` is `pages[i]`.
    pub pages: Vec<Range<usize>>,
    /// blake3 of the raw file bytes, hex.
    pub content_hash: String,
}

/// A UUID-shaped string (lowercase, hyphenated: what Qdrant accepts as a point id) from the
/// blake3 hash of `parts`, hashed one after another.
pub fn hash_uuid(parts: &[&[u8]]) -> String {
    let mut h = blake3::Hasher::new();
    for part in parts {
        h.update(part);
    }
    let hex = h.finalize().to_hex();
    let s = hex.as_str();
    format!(
        "{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

/// A deterministic chunk identifier: a UUID-shaped hex string derived from the chunk's path,
/// span and text, so that re-ingesting the same content yields the same ids.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChunkId(pub String);

impl ChunkId {
    pub fn derive(path: &str, span: &Range<usize>, text: &str) -> Self {
        ChunkId(hash_uuid(&[
            path.as_bytes(),
            &[0],
            &(span.start as u64).to_le_bytes(),
            &(span.end as u64).to_le_bytes(),
            text.as_bytes(),
        ]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A piece of a document small enough to embed, with everything a citation needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub id: ChunkId,
    pub path: String,
    pub kind: DocKind,
    pub text: String,
    /// Byte span in the document's text (see [`Document::text`]).
    pub byte_start: usize,
    pub byte_end: usize,
    /// 1-based, inclusive line range in the document's text.
    pub start_line: usize,
    pub end_line: usize,
    /// Markdown/HTML heading path at the chunk's start, e.g. `Install > From source`.
    pub heading: Option<String>,
    /// 1-based PDF page of the chunk's start.
    pub page: Option<u32>,
    /// Metadata tags attached at ingest (`--tag key=value`), for filtering.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}
