//! Raw file bytes to text. One module per format (`html`, `pdf`); this one decides which applies.
//!
//! Interface (used by the rest of the crate; keep these signatures):
//! - [`kind_for_path`]: the document kind from the file extension, `None` when unknown.
//! - [`looks_binary`]: a cheap sniff for binary content.
//! - [`extract`]: bytes of a file of a known kind to an [`Extracted`] text.
//!
//! Markdown, plain text and code are passed through untouched (bar a UTF-8 byte-order mark),
//! so chunk spans are file offsets and a citation can point into the file itself.

mod html;
mod pdf;

use std::ops::Range;
use std::path::Path;

use crate::document::{CodeLang, DocKind};

/// The text of one file, ready to become a [`Document`](crate::document::Document).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extracted {
    pub text: String,
    /// PDF only: byte range of `text` per page (page i+1 = pages[i]); empty otherwise.
    pub pages: Vec<Range<usize>>,
    /// Human-readable warnings (e.g. "invalid UTF-8 decoded lossily").
    pub warnings: Vec<String>,
}

/// Why a file yielded no text. Both variants are about the file, not about us: the caller
/// should skip the file and report it, not abort the ingest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    /// A corrupt, truncated or encrypted PDF, or one that made the PDF parser panic.
    #[error("cannot extract text from PDF {path}: {reason}")]
    Pdf { path: String, reason: String },
    /// Nothing but whitespace after extraction (an empty file, a scanned PDF, an HTML shell).
    #[error("no text in {path}")]
    Empty { path: String },
    /// A text or source file with a line longer than [`MAX_LINE_BYTES`]: minified or generated
    /// (a bundled script, a search index), not prose a person would ask about; the splitter
    /// also slows to a crawl on a multi-megabyte line with no break in it.
    #[error("{path} looks minified or generated (a line of {line_bytes} bytes): not indexed")]
    Generated { path: String, line_bytes: usize },
    /// An HTML page that asks not to be indexed (`<meta name="robots" content="noindex">`).
    #[error("{path} asks not to be indexed (meta robots noindex)")]
    NoIndex { path: String },
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The longest line a text or source file may have to be indexed (see
/// [`ExtractError::Generated`]): prose paragraphs written on one line stay far below it.
pub const MAX_LINE_BYTES: usize = 32 * 1024;

/// How far [`looks_binary`] looks, as git and ripgrep do.
const SNIFF_LEN: usize = 8 * 1024;

/// The document kind for `path`, from its extension (case-insensitive) or, for extensionless
/// build files like `Makefile`, its name. `None` for anything we do not index.
pub fn kind_for_path(path: &Path) -> Option<DocKind> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    if matches!(
        name.as_str(),
        "makefile" | "gnumakefile" | "dockerfile" | "containerfile" | "justfile"
    ) {
        return Some(DocKind::Code(CodeLang::Other));
    }
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    let kind = match ext.as_str() {
        "md" | "markdown" | "mdx" => DocKind::Markdown,
        "txt" | "text" | "rst" | "adoc" | "org" | "log" | "csv" | "tsv" => DocKind::Text,
        "html" | "htm" | "xhtml" => DocKind::Html,
        "pdf" => DocKind::Pdf,
        other => DocKind::Code(code_lang(other)?),
    };
    Some(kind)
}

fn code_lang(ext: &str) -> Option<CodeLang> {
    let lang = match ext {
        "rs" => CodeLang::Rust,
        "py" | "pyi" => CodeLang::Python,
        "js" | "mjs" | "cjs" | "jsx" => CodeLang::JavaScript,
        "ts" | "tsx" | "mts" | "cts" => CodeLang::TypeScript,
        "go" => CodeLang::Go,
        "java" => CodeLang::Java,
        "c" | "h" => CodeLang::C,
        "cc" | "cpp" | "cxx" | "hpp" | "hh" | "hxx" => CodeLang::Cpp,
        "cs" => CodeLang::CSharp,
        "rb" => CodeLang::Ruby,
        "sh" | "bash" | "zsh" => CodeLang::Shell,
        "sql" => CodeLang::Sql,
        "toml" => CodeLang::Toml,
        "yaml" | "yml" => CodeLang::Yaml,
        "json" => CodeLang::Json,
        "kt" | "kts" | "swift" | "scala" | "sc" | "php" | "lua" | "r" | "pl" | "pm" | "hs"
        | "ex" | "exs" | "erl" | "hrl" | "clj" | "cljs" | "cljc" | "edn" | "dart" | "zig"
        | "nim" | "ml" | "mli" | "fs" | "fsi" | "fsx" | "vb" | "m" | "mm" | "groovy" | "gradle"
        | "ps1" | "bat" | "cmd" | "fish" | "vue" | "svelte" | "elm" | "jl" | "f90" | "proto"
        | "graphql" | "gql" | "tf" | "hcl" | "cmake" | "mk" | "sol" | "css" | "scss" | "sass"
        | "less" | "v" | "vhd" | "vhdl" | "asm" | "s" | "d" | "cr" | "rkt" | "scm" | "lisp"
        | "el" | "nix" | "dockerfile" => CodeLang::Other,
        _ => return None,
    };
    Some(lang)
}

/// Whether `bytes` look like a binary file: a NUL byte in the first 8 KiB (the heuristic git
/// and ripgrep use), or more than one byte in ten there a control character that text does
/// not use (anything below 0x20 but tab, newline, carriage return, form feed and escape, or
/// DEL). An empty file is not binary.
pub fn looks_binary(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(SNIFF_LEN)];
    if head.contains(&0) {
        return true;
    }
    let control = head
        .iter()
        .filter(|&&b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0c | 0x1b)) || b == 0x7f)
        .count();
    control * 10 > head.len()
}

/// Extracts the text of a file of kind `kind`; `path` only names the file in errors.
///
/// Fails with [`ExtractError::Pdf`] when a PDF cannot be read and with
/// [`ExtractError::Empty`] when the result is only whitespace. Invalid UTF-8 is not an error:
/// it is decoded lossily and reported in [`Extracted::warnings`].
pub fn extract(path: &str, bytes: &[u8], kind: DocKind) -> Result<Extracted, ExtractError> {
    let extracted = match kind {
        DocKind::Markdown | DocKind::Text | DocKind::Code(_) => {
            let longest = bytes
                .split(|&b| b == b'\n')
                .map(<[u8]>::len)
                .max()
                .unwrap_or(0);
            if longest > MAX_LINE_BYTES {
                return Err(ExtractError::Generated {
                    path: path.to_owned(),
                    line_bytes: longest,
                });
            }
            let (text, warnings) = decode(bytes);
            Extracted {
                text,
                pages: Vec::new(),
                warnings,
            }
        }
        DocKind::Html => {
            let (source, warnings) = decode(bytes);
            Extracted {
                text: html::indexable_text(&source).ok_or_else(|| ExtractError::NoIndex {
                    path: path.to_owned(),
                })?,
                pages: Vec::new(),
                warnings,
            }
        }
        DocKind::Pdf => pdf::extract_pdf(path, bytes)?,
    };
    if extracted.text.trim().is_empty() {
        return Err(ExtractError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(extracted)
}

/// UTF-8 text of `bytes` without a leading byte-order mark, decoded lossily if need be.
fn decode(bytes: &[u8]) -> (String, Vec<String>) {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), Vec::new()),
        Err(_) => (
            String::from_utf8_lossy(bytes).into_owned(),
            vec!["invalid UTF-8 decoded lossily".to_owned()],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(path: &str) -> Option<DocKind> {
        kind_for_path(Path::new(path))
    }

    #[test]
    fn minified_files_are_refused_and_long_prose_lines_are_not() {
        let bundle = format!("window.search = JSON.parse('{}');\n", "x".repeat(40_000));
        let got = extract(
            "searchindex.js",
            bundle.as_bytes(),
            DocKind::Code(crate::CodeLang::JavaScript),
        );
        assert!(
            matches!(got, Err(ExtractError::Generated { line_bytes, .. }) if line_bytes > 40_000),
            "{got:?}"
        );
        let paragraph = "A long paragraph written on one line. ".repeat(200);
        assert!(extract("notes.md", paragraph.as_bytes(), DocKind::Markdown).is_ok());
    }

    #[test]
    fn kinds_from_extensions() {
        assert_eq!(kind("docs/README.md"), Some(DocKind::Markdown));
        assert_eq!(kind("a/b.MARKDOWN"), Some(DocKind::Markdown));
        assert_eq!(kind("page.mdx"), Some(DocKind::Markdown));
        assert_eq!(kind("notes.txt"), Some(DocKind::Text));
        assert_eq!(kind("guide.rst"), Some(DocKind::Text));
        assert_eq!(kind("data.TSV"), Some(DocKind::Text));
        assert_eq!(kind("index.HTM"), Some(DocKind::Html));
        assert_eq!(kind("a.xhtml"), Some(DocKind::Html));
        assert_eq!(kind("paper.Pdf"), Some(DocKind::Pdf));
        assert_eq!(kind("src/lib.rs"), Some(DocKind::Code(CodeLang::Rust)));
        assert_eq!(kind("x.PY"), Some(DocKind::Code(CodeLang::Python)));
        assert_eq!(kind("x.cjs"), Some(DocKind::Code(CodeLang::JavaScript)));
        assert_eq!(kind("x.tsx"), Some(DocKind::Code(CodeLang::TypeScript)));
        assert_eq!(kind("x.h"), Some(DocKind::Code(CodeLang::C)));
        assert_eq!(kind("x.hpp"), Some(DocKind::Code(CodeLang::Cpp)));
        assert_eq!(kind("x.cs"), Some(DocKind::Code(CodeLang::CSharp)));
        assert_eq!(kind("x.zsh"), Some(DocKind::Code(CodeLang::Shell)));
        assert_eq!(kind("Cargo.toml"), Some(DocKind::Code(CodeLang::Toml)));
        assert_eq!(kind("ci.yml"), Some(DocKind::Code(CodeLang::Yaml)));
        assert_eq!(kind("package.json"), Some(DocKind::Code(CodeLang::Json)));
        assert_eq!(kind("Main.kt"), Some(DocKind::Code(CodeLang::Other)));
        assert_eq!(kind("x.swift"), Some(DocKind::Code(CodeLang::Other)));
        assert_eq!(kind("x.clj"), Some(DocKind::Code(CodeLang::Other)));
    }

    #[test]
    fn kinds_from_names_and_unknowns() {
        assert_eq!(kind("proj/Makefile"), Some(DocKind::Code(CodeLang::Other)));
        assert_eq!(kind("Dockerfile"), Some(DocKind::Code(CodeLang::Other)));
        assert_eq!(kind("makefile"), Some(DocKind::Code(CodeLang::Other)));
        assert_eq!(kind("photo.png"), None);
        assert_eq!(kind("archive.tar.gz"), None);
        assert_eq!(kind("LICENSE"), None);
        assert_eq!(kind(".gitignore"), None);
        assert_eq!(kind(""), None);
    }

    #[test]
    fn binary_sniffing() {
        assert!(!looks_binary(b""));
        assert!(!looks_binary("plain text, ünïcödé".as_bytes()));
        assert!(looks_binary(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"));
        // Hardening finding 4: a file of control characters is not text.
        assert!(looks_binary(&[1u8; 4096]));
        let mut mostly_text = "some words\n".repeat(100).into_bytes();
        mostly_text.extend_from_slice(&[0x1b, b'[', b'1', b'm', 0x0c]);
        assert!(!looks_binary(&mostly_text));
        let mut late = vec![b'a'; SNIFF_LEN];
        late.push(0);
        assert!(
            !looks_binary(&late),
            "a NUL past the first 8 KiB is not looked at"
        );
        late[SNIFF_LEN - 1] = 0;
        assert!(looks_binary(&late));
    }

    #[test]
    fn text_is_passed_through_untouched() {
        let src = "# Title\r\n\n  body\twith tabs  \n";
        let got = extract("a.md", src.as_bytes(), DocKind::Markdown).expect("valid text");
        assert_eq!(
            got,
            Extracted {
                text: src.to_owned(),
                ..Extracted::default()
            }
        );
    }

    #[test]
    fn bom_is_stripped() {
        let got = extract("a.txt", b"\xEF\xBB\xBFhello", DocKind::Text).expect("valid text");
        assert_eq!(got.text, "hello");
        assert!(got.warnings.is_empty());
    }

    #[test]
    fn invalid_utf8_is_decoded_lossily_with_a_warning() {
        let got = extract(
            "a.rs",
            b"fn f() {}\n// caf\xE9\n",
            DocKind::Code(CodeLang::Rust),
        )
        .expect("lossy decoding succeeds");
        assert_eq!(got.text, "fn f() {}\n// caf\u{FFFD}\n");
        assert_eq!(
            got.warnings,
            vec!["invalid UTF-8 decoded lossily".to_owned()]
        );
    }

    #[test]
    fn whitespace_only_is_empty() {
        for (bytes, kind) in [
            (&b""[..], DocKind::Text),
            (b" \n\t\r\n", DocKind::Markdown),
            (b"\xEF\xBB\xBF\n", DocKind::Code(CodeLang::Go)),
            (
                b"<html><head><script>x()</script></head><body> </body></html>",
                DocKind::Html,
            ),
        ] {
            let got = extract("e", bytes, kind);
            assert!(
                matches!(got, Err(ExtractError::Empty { ref path }) if path == "e"),
                "{got:?}"
            );
        }
    }

    #[test]
    fn html_and_pdf_dispatch() {
        let got = extract("a.html", b"<h1>T</h1><p>x &amp; y</p>", DocKind::Html).expect("html");
        assert_eq!(got.text, "# T\n\nx & y");
        assert!(got.pages.is_empty());

        let got = extract("s.pdf", &pdf::tests::sample_pdf(), DocKind::Pdf).expect("pdf");
        assert_eq!(got.pages.len(), 2);
        let err = extract("bad.pdf", b"not a pdf", DocKind::Pdf).expect_err("garbage");
        assert!(err.to_string().contains("bad.pdf"), "{err}");
    }
}
