//! `--filter` expressions: what a user may restrict a search to, parsed and checked before
//! anything runs, then resolved against the manifest into a [`StoreFilter`].
//!
//! Syntax, one condition per expression (several expressions must all hold):
//! - `path:PATTERN`: a file, a folder (`docs` or `docs/` = everything under it) or a glob
//!   (`docs/**/*.md`, any of `*?[{`);
//! - `type:KIND[,KIND…]` (or `kind:`): `markdown`/`md`, `text`/`txt`, `html`, `pdf`, or a
//!   language (`rust`/`rs`, `python`/`py`, …; `code` = unrecognised source);
//! - `heading:WORDS`: every word appears in the chunk's heading path (case-insensitive);
//! - `tag:KEY=VALUE` or plainly `KEY=VALUE`: a tag given at ingest with `--tag`.

use globset::{Glob, GlobSet};
use lore_ingest::{CodeLang, DocKind};

use crate::lexical::plain_words;
use crate::store::StoreFilter;
use crate::{Error, Result};

/// One parsed `--filter` expression.
#[derive(Debug, Clone)]
pub enum FilterExpr {
    Path(PathPattern),
    Kinds(Vec<String>),
    Heading(Vec<String>),
    Tag { key: String, value: String },
}

/// A `path:` pattern.
#[derive(Debug, Clone)]
pub enum PathPattern {
    /// This file, or everything under this folder.
    Prefix(String),
    Glob(GlobSet),
}

impl PathPattern {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Prefix(p) => {
                path == p
                    || path
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            }
            PathPattern::Glob(g) => g.is_match(path),
        }
    }
}

const SYNTAX: &str = "expected path:PATTERN, type:KIND, heading:WORDS or tag:KEY=VALUE";

/// The longest `path:` glob accepted. globset compiles a glob into one regex and panics
/// when that regex outgrows its size limit (a `{…}` of 150,000 alternatives did); no real
/// path pattern comes near this.
pub const MAX_GLOB_BYTES: usize = 4096;

fn bad(expr: &str, why: impl std::fmt::Display) -> Error {
    // The expression is the client's and may be huge: quote its start only.
    let shown: String = expr.chars().take(120).collect();
    let more = if shown.len() < expr.len() { "…" } else { "" };
    Error::BadFilter(format!("`{shown}{more}`: {why}"))
}

/// The [`DocKind::name`] a user's type word means (`md` → `markdown`, `py` → `python`).
fn kind_name(word: &str) -> Option<&'static str> {
    let word = word.trim().to_ascii_lowercase();
    let alias = match word.as_str() {
        "md" | "mdx" => "markdown",
        "txt" => "text",
        "htm" => "html",
        "rs" => "rust",
        "py" => "python",
        "js" => "javascript",
        "ts" => "typescript",
        "cs" => "csharp",
        "c++" | "cc" | "cxx" => "cpp",
        "rb" => "ruby",
        "sh" | "bash" => "shell",
        "yml" => "yaml",
        other => other,
    };
    DocKind::from_name(alias).map(DocKind::name).or_else(|| {
        // `code` names the catch-all language.
        (alias == "code").then(|| CodeLang::Other.name())
    })
}

impl FilterExpr {
    /// Parses one expression; the error says what is wrong and what was expected.
    pub fn parse(expr: &str) -> Result<Self> {
        let trimmed = expr.trim();
        let Some((field, value)) = trimmed.split_once([':', '=']) else {
            return Err(bad(expr, SYNTAX));
        };
        let is_tag = trimmed.as_bytes()[field.len()] == b'=';
        let (field, value) = (field.trim(), value.trim());
        if is_tag {
            return Self::tag(expr, field, value);
        }
        if value.is_empty() {
            return Err(bad(expr, format!("`{field}:` needs a value; {SYNTAX}")));
        }
        match field.to_ascii_lowercase().as_str() {
            "path" => {
                let pattern = value.trim_start_matches("./");
                if pattern.contains(['*', '?', '[', '{']) {
                    if pattern.len() > MAX_GLOB_BYTES {
                        return Err(bad(
                            expr,
                            format!(
                                "the glob is {} bytes; at most {MAX_GLOB_BYTES}",
                                pattern.len()
                            ),
                        ));
                    }
                    let glob = Glob::new(pattern).map_err(|e| bad(expr, e))?;
                    // Through a set: its build reports a regex over the size limit as an
                    // error, where `compile_matcher` panics.
                    let set = globset::GlobSetBuilder::new()
                        .add(glob)
                        .build()
                        .map_err(|e| bad(expr, e))?;
                    Ok(FilterExpr::Path(PathPattern::Glob(set)))
                } else {
                    Ok(FilterExpr::Path(PathPattern::Prefix(
                        pattern.trim_end_matches('/').to_string(),
                    )))
                }
            }
            "type" | "kind" => value
                .split(',')
                .map(|w| {
                    kind_name(w).map(str::to_string).ok_or_else(|| {
                        bad(expr, format!("unknown type `{}` (markdown, text, html, pdf or a language such as rust, python)", w.trim()))
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(FilterExpr::Kinds),
            "heading" => {
                let words = plain_words(value);
                if words.is_empty() {
                    return Err(bad(expr, "the heading filter has no words"));
                }
                Ok(FilterExpr::Heading(words))
            }
            "tag" => match value.split_once('=') {
                Some((k, v)) => Self::tag(expr, k.trim(), v.trim()),
                None => Err(bad(expr, "expected tag:KEY=VALUE")),
            },
            other => Err(bad(expr, format!("unknown field `{other}`; {SYNTAX}"))),
        }
    }

    fn tag(expr: &str, key: &str, value: &str) -> Result<Self> {
        validate_tag(key, value).map_err(|why| bad(expr, why))?;
        Ok(FilterExpr::Tag {
            key: key.to_string(),
            value: value.to_string(),
        })
    }
}

/// Checks a tag's key and value (the same rule applies to `--tag` at ingest).
pub fn validate_tag(key: &str, value: &str) -> std::result::Result<(), String> {
    let ok_key = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok_key {
        return Err(format!(
            "tag key `{key}` must be non-empty ASCII letters, digits, `_`, `-` or `.`"
        ));
    }
    if value.is_empty() {
        return Err(format!("tag `{key}` has an empty value"));
    }
    Ok(())
}

/// Resolves parsed expressions into a store filter, matching path patterns against the files
/// the knowledge base holds.
pub(crate) fn resolve<'a>(
    exprs: &[FilterExpr],
    files: impl Iterator<Item = &'a String> + Clone,
) -> StoreFilter {
    let mut filter = StoreFilter::default();
    for expr in exprs {
        match expr {
            FilterExpr::Path(pattern) => {
                let matching: Vec<String> = match &filter.paths {
                    // Several path conditions must all hold: narrow what is already chosen.
                    Some(chosen) => chosen
                        .iter()
                        .filter(|p| pattern.matches(p))
                        .cloned()
                        .collect(),
                    None => files
                        .clone()
                        .filter(|p| pattern.matches(p))
                        .cloned()
                        .collect(),
                };
                filter.paths = Some(matching);
            }
            FilterExpr::Kinds(kinds) => {
                if filter.kinds.is_empty() {
                    filter.kinds = kinds.clone();
                } else {
                    filter.kinds.retain(|k| kinds.contains(k));
                    if filter.kinds.is_empty() {
                        // Disjoint type conditions: nothing can match.
                        filter.paths = Some(Vec::new());
                    }
                }
            }
            FilterExpr::Heading(words) => filter.heading_words.extend(words.iter().cloned()),
            FilterExpr::Tag { key, value } => filter.tags.push(format!("{key}={value}")),
        }
    }
    filter
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Vec<String> {
        ["docs/a.md", "docs/sub/b.pdf", "docs2/c.md", "src/main.rs"]
            .map(String::from)
            .to_vec()
    }

    fn paths(exprs: &[&str]) -> Option<Vec<String>> {
        let exprs: Vec<FilterExpr> = exprs
            .iter()
            .map(|e| FilterExpr::parse(e).unwrap())
            .collect();
        let files = files();
        resolve(&exprs, files.iter()).paths
    }

    #[test]
    fn folders_prefixes_and_globs_select_the_right_files() {
        assert_eq!(
            paths(&["path:docs"]).unwrap(),
            ["docs/a.md", "docs/sub/b.pdf"]
        );
        assert_eq!(
            paths(&["path:./docs/"]).unwrap(),
            ["docs/a.md", "docs/sub/b.pdf"]
        );
        assert_eq!(
            paths(&["path:**/*.md"]).unwrap(),
            ["docs/a.md", "docs2/c.md"]
        );
        assert_eq!(paths(&["path:src/main.rs"]).unwrap(), ["src/main.rs"]);
        assert_eq!(paths(&["path:docs", "path:*.md"]).unwrap(), ["docs/a.md"]);
        assert_eq!(paths(&["path:nowhere"]).unwrap(), Vec::<String>::new());
        assert_eq!(paths(&["type:md"]), None);
    }

    #[test]
    fn types_tags_and_headings_parse() {
        let f = resolve(
            &[
                FilterExpr::parse("type:md,PY").unwrap(),
                FilterExpr::parse("team=docs").unwrap(),
                FilterExpr::parse("tag: year = 2024").unwrap(),
                FilterExpr::parse("heading:Install, From-Source").unwrap(),
            ],
            files().iter(),
        );
        assert_eq!(f.kinds, ["markdown", "python"]);
        assert_eq!(f.tags, ["team=docs", "year=2024"]);
        assert_eq!(f.heading_words, ["install", "from", "source"]);
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        for (expr, says) in [
            ("docs", "expected path:"),
            ("path:", "needs a value"),
            ("colour:red", "unknown field `colour`"),
            ("type:spreadsheet", "unknown type `spreadsheet`"),
            ("path:docs/[", "docs/["),
            ("tag:novalue", "expected tag:KEY=VALUE"),
            ("=x", "tag key"),
            ("k=", "empty value"),
            ("heading:--", "no words"),
        ] {
            let err = FilterExpr::parse(expr).unwrap_err().to_string();
            assert!(err.contains(says), "{expr}: {err}");
        }
    }

    /// Hardening finding 5: this panicked inside globset (a closed connection over HTTP).
    #[test]
    fn huge_globs_are_errors_not_panics() {
        let alternatives: Vec<String> = (0..150_000).map(|i| format!("f{i}")).collect();
        let huge = format!("path:{{{}}}", alternatives.join(","));
        let err = FilterExpr::parse(&huge).unwrap_err().to_string();
        assert!(err.contains("at most"), "{err}");
        assert!(err.len() < 400, "the error echoes {} bytes", err.len());
        // Under the byte cap but over globset's regex size limit: still an error.
        let nested = format!("path:{}", "{a,b,c,d,e,f,g,h}*".repeat(200));
        if let Err(e) = FilterExpr::parse(&nested) {
            assert!(e.to_string().contains('`'), "{e}");
        }
    }
}
