//! Splitting a document's text into token-sized chunks with `text-splitter`.

use std::collections::HashMap;
use std::sync::Arc;

use text_splitter::{ChunkConfig, CodeSplitter, MarkdownSplitter, TextSplitter};
use tokenizers::Tokenizer;

use crate::headings::{heading_paths, path_at};
use crate::{Chunk, ChunkId, CodeLang, DocKind, Document, Error, Result};

/// How big chunks are, in tokens of the embedding model's own tokenizer (special tokens such
/// as `[CLS]` not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkerConfig {
    pub max_tokens: usize,
    /// Tokens shared by neighbouring chunks. `text-splitter` overlaps whole sections of the
    /// level it split at, so small overlaps on coarse sections may produce none.
    pub overlap_tokens: usize,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            overlap_tokens: 32,
        }
    }
}

type Sizer = Arc<Tokenizer>;

/// The most bytes a chunk may hold per token of its budget. A token is a few bytes of real
/// text, but some text never fills a token budget: tokenizers drop control characters and
/// turn an over-long word into one `[UNK]`, so a file of such bytes would otherwise become
/// a single chunk of any size (and every search returning it as large). 32 bytes a token
/// leaves ordinary prose and code untouched.
pub const MAX_BYTES_PER_TOKEN: usize = 32;

impl ChunkerConfig {
    /// The byte cap of one chunk: [`MAX_BYTES_PER_TOKEN`] per token of the budget.
    pub fn max_bytes(&self) -> usize {
        self.max_tokens.saturating_mul(MAX_BYTES_PER_TOKEN)
    }
}

/// Splits `(start, text)` spans longer than `max_bytes` into pieces of at most that many
/// bytes, cut after the last whitespace in the piece when there is one, else at a character
/// boundary.
fn cap_spans(spans: Vec<(usize, &str)>, max_bytes: usize) -> Vec<(usize, &str)> {
    let max_bytes = max_bytes.max(4);
    let mut out = Vec::with_capacity(spans.len());
    for (start, mut text) in spans {
        let mut offset = start;
        while text.len() > max_bytes {
            let mut cut = max_bytes;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            if let Some(space) = text[..cut].rfind(char::is_whitespace)
                && space > 0
            {
                let width = text[space..].chars().next().map_or(1, char::len_utf8);
                cut = space + width;
            }
            out.push((offset, &text[..cut]));
            offset += cut;
            text = &text[cut..];
        }
        out.push((offset, text));
    }
    out
}

/// Splits documents: Markdown-aware for Markdown and HTML, syntax-aware for code with a
/// compiled-in grammar, by text structure (paragraphs, sentences, words) otherwise.
pub struct Chunker {
    config: ChunkerConfig,
    /// The tokenizer every splitter measures with.
    sizer: Sizer,
    text: TextSplitter<Sizer>,
    markdown: MarkdownSplitter<Sizer>,
    code: HashMap<CodeLang, CodeSplitter<Sizer>>,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Chunker {
    /// Builds a chunker sizing by `tokenizer` (truncation and padding are switched off on it:
    /// with them every chunk would measure the same).
    ///
    /// Fails when `max_tokens` is 0 or the overlap is not smaller than `max_tokens`.
    pub fn new(mut tokenizer: Tokenizer, config: ChunkerConfig) -> Result<Self> {
        if config.max_tokens == 0 {
            return Err(Error::ChunkConfig(
                "chunk size must be at least 1 token".into(),
            ));
        }
        if config.overlap_tokens >= config.max_tokens {
            return Err(Error::ChunkConfig(format!(
                "overlap ({}) must be smaller than the chunk size ({})",
                config.overlap_tokens, config.max_tokens
            )));
        }
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::ChunkConfig(format!("tokenizer: {e}")))?;
        tokenizer.with_padding(None);
        let sizer: Sizer = Arc::new(tokenizer);
        let chunk_config = || {
            ChunkConfig::new(config.max_tokens)
                .with_sizer(Arc::clone(&sizer))
                .with_overlap(config.overlap_tokens)
                .map_err(|e| Error::ChunkConfig(e.to_string()))
        };
        let mut code = HashMap::new();
        let grammars: [(CodeLang, tree_sitter_language::LanguageFn); 4] = [
            (CodeLang::Rust, tree_sitter_rust::LANGUAGE),
            (CodeLang::Python, tree_sitter_python::LANGUAGE),
            (CodeLang::JavaScript, tree_sitter_javascript::LANGUAGE),
            (CodeLang::Go, tree_sitter_go::LANGUAGE),
        ];
        for (lang, grammar) in grammars {
            let splitter = CodeSplitter::new(grammar, chunk_config()?)
                .map_err(|e| Error::ChunkConfig(format!("{} grammar: {e}", lang.name())))?;
            code.insert(lang, splitter);
        }
        Ok(Self {
            config,
            sizer: Arc::clone(&sizer),
            text: TextSplitter::new(chunk_config()?),
            markdown: MarkdownSplitter::new(chunk_config()?),
            code,
        })
    }

    pub fn config(&self) -> ChunkerConfig {
        self.config
    }

    /// The token count the chunker measures for `text`.
    pub fn count_tokens(&self, text: &str) -> usize {
        use text_splitter::ChunkSizer;
        self.text_sizer().size(text)
    }

    fn text_sizer(&self) -> &Tokenizer {
        &self.sizer
    }

    /// Splits `doc` into chunks with spans, line ranges, heading paths and pages.
    pub fn chunk(&self, doc: &Document) -> Result<Vec<Chunk>> {
        let text = doc.text.as_str();
        let spans: Vec<(usize, &str)> = match doc.kind {
            DocKind::Markdown | DocKind::Html => self.markdown.chunk_indices(text).collect(),
            DocKind::Code(lang) => match self.code.get(&lang) {
                Some(splitter) => splitter.chunk_indices(text).collect(),
                None => self.text.chunk_indices(text).collect(),
            },
            DocKind::Text | DocKind::Pdf => self.text.chunk_indices(text).collect(),
        };
        let spans = cap_spans(spans, self.config.max_bytes());
        let headings = match doc.kind {
            DocKind::Markdown | DocKind::Html => heading_paths(text),
            _ => Vec::new(),
        };
        let newlines: Vec<usize> = text
            .bytes()
            .enumerate()
            .filter(|(_, b)| *b == b'\n')
            .map(|(i, _)| i)
            .collect();
        let line_of = |offset: usize| newlines.partition_point(|&p| p < offset) + 1;
        let chunks = spans
            .into_iter()
            .filter(|(_, s)| !s.trim().is_empty())
            .map(|(start, s)| {
                let end = start + s.len();
                let span = start..end;
                let page = (!doc.pages.is_empty())
                    .then(|| doc.pages.partition_point(|r| r.end <= start) + 1)
                    .and_then(|p| u32::try_from(p.min(doc.pages.len())).ok());
                Chunk {
                    id: ChunkId::derive(&doc.path, &span, s),
                    path: doc.path.clone(),
                    kind: doc.kind,
                    text: s.to_string(),
                    byte_start: start,
                    byte_end: end,
                    start_line: line_of(start),
                    end_line: line_of(end.saturating_sub(1).max(start)),
                    heading: path_at(&headings, start).map(str::to_string),
                    tags: Default::default(),
                    page,
                }
            })
            .collect();
        Ok(chunks)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;

    /// A word-level tokenizer built in code: one token per word or punctuation run.
    pub(crate) fn word_tokenizer() -> Tokenizer {
        let vocab = [("[UNK]".to_string(), 0u32)].into_iter().collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .expect("model");
        let mut tok = Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(Whitespace {}));
        tok
    }

    fn doc(kind: DocKind, text: &str) -> Document {
        Document {
            path: "/d/x".into(),
            kind,
            text: text.into(),
            pages: Vec::new(),
            content_hash: String::new(),
        }
    }

    fn chunker(max: usize, overlap: usize) -> Chunker {
        Chunker::new(
            word_tokenizer(),
            ChunkerConfig {
                max_tokens: max,
                overlap_tokens: overlap,
            },
        )
        .expect("chunker")
    }

    fn sentences(n: usize) -> String {
        (0..n)
            .map(|i| format!("Sentence number {i} talks about topic {}.", i % 7))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn overlap_really_overlaps() {
        let text = sentences(200);
        let chunks = chunker(40, 12)
            .chunk(&doc(DocKind::Text, &text))
            .expect("chunk");
        assert!(chunks.len() > 5);
        for pair in chunks.windows(2) {
            assert!(
                pair[1].byte_start < pair[0].byte_end,
                "no overlap between {:?} and {:?}",
                pair[0],
                pair[1]
            );
        }
        let none = chunker(40, 0)
            .chunk(&doc(DocKind::Text, &text))
            .expect("chunk");
        for pair in none.windows(2) {
            assert!(pair[1].byte_start >= pair[0].byte_end);
        }
    }

    /// Hardening finding 4: a run of control characters is one token (or none) to a
    /// tokenizer, so the token budget never split it and a 15 MB file became one chunk.
    #[test]
    fn text_that_never_fills_a_token_budget_is_cut_by_bytes() {
        let text = format!(
            "{}\nend words here\n{}",
            "\u{1}".repeat(100_000),
            "é".repeat(5_000)
        );
        let c = chunker(40, 0);
        let cap = c.config().max_bytes();
        for kind in [DocKind::Text, DocKind::Markdown] {
            let chunks = c.chunk(&doc(kind, &text)).expect("chunk");
            assert!(chunks.len() >= 100_000 / cap, "{} chunks", chunks.len());
            for chunk in &chunks {
                assert!(
                    chunk.text.len() <= cap,
                    "{} bytes > {cap}",
                    chunk.text.len()
                );
                assert_eq!(&text[chunk.byte_start..chunk.byte_end], chunk.text);
            }
        }
    }

    #[test]
    fn byte_cap_prefers_whitespace_and_keeps_every_byte() {
        let text = "aaaa bbbb cccc dddd";
        let spans = cap_spans(vec![(10, text)], 8);
        assert_eq!(
            spans,
            vec![(10, "aaaa "), (15, "bbbb "), (20, "cccc "), (25, "dddd")]
        );
        let wide = "ééééé";
        let spans = cap_spans(vec![(0, wide)], 5);
        assert_eq!(spans.iter().map(|s| s.1).collect::<String>(), wide);
        assert!(spans.iter().all(|s| s.1.len() <= 5));
    }

    #[test]
    fn markdown_chunks_carry_headings_lines_and_stable_ids() {
        let text = format!(
            "# Guide\n\n{}\n\n## Install\n\n{}\n",
            sentences(30),
            sentences(30)
        );
        let c = chunker(60, 0);
        let chunks = c.chunk(&doc(DocKind::Markdown, &text)).expect("chunk");
        assert_eq!(chunks[0].heading.as_deref(), Some("Guide"));
        assert_eq!(chunks[0].start_line, 1);
        let last = chunks.last().expect("chunks");
        assert_eq!(last.heading.as_deref(), Some("Guide > Install"));
        assert_eq!(last.end_line, 7);
        assert_eq!(
            chunks,
            c.chunk(&doc(DocKind::Markdown, &text)).expect("again")
        );
    }

    #[test]
    fn pdf_pages_follow_byte_ranges() {
        let p1 = sentences(40);
        let p2 = sentences(40);
        let text = format!("{p1}\n\n{p2}");
        let mut d = doc(DocKind::Pdf, &text);
        d.pages = vec![0..p1.len(), p1.len() + 2..text.len()];
        let chunks = chunker(50, 0).chunk(&d).expect("chunk");
        assert_eq!(chunks.first().and_then(|c| c.page), Some(1));
        assert_eq!(chunks.last().and_then(|c| c.page), Some(2));
    }

    #[test]
    fn code_is_split_along_syntax() {
        let text = (0..40)
            .map(|i| format!("fn f{i}(x: u32) -> u32 {{\n    x + {i}\n}}\n"))
            .collect::<String>();
        let chunks = chunker(30, 0)
            .chunk(&doc(DocKind::Code(CodeLang::Rust), &text))
            .expect("chunk");
        assert!(chunks.len() > 1);
        assert!(
            chunks.iter().all(|c| c.text.starts_with("fn ")),
            "{chunks:#?}"
        );
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(
            Chunker::new(
                word_tokenizer(),
                ChunkerConfig {
                    max_tokens: 0,
                    overlap_tokens: 0
                }
            )
            .is_err()
        );
        assert!(
            Chunker::new(
                word_tokenizer(),
                ChunkerConfig {
                    max_tokens: 8,
                    overlap_tokens: 8
                }
            )
            .is_err()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn spans_cover_text_and_respect_budget(
            words in proptest::collection::vec("[a-z]{1,8}|\n\n|#{1,3} [a-z]{2,6}\n|[.,!?]", 0..400),
            max in 5usize..60,
            markdown in any::<bool>(),
        ) {
            let text = words.join(" ");
            let c = chunker(max, 0);
            let kind = if markdown { DocKind::Markdown } else { DocKind::Text };
            let chunks = c.chunk(&doc(kind, &text)).expect("chunk");
            let mut covered = vec![false; text.len()];
            for ch in &chunks {
                prop_assert_eq!(&text[ch.byte_start..ch.byte_end], ch.text.as_str());
                prop_assert!(c.count_tokens(&ch.text) <= max, "{} tokens > {}", c.count_tokens(&ch.text), max);
                covered[ch.byte_start..ch.byte_end].iter_mut().for_each(|b| *b = true);
            }
            for (i, b) in text.bytes().enumerate() {
                prop_assert!(covered[i] || b.is_ascii_whitespace(), "byte {} ({:?}) not covered", i, b as char);
            }
        }
    }
}
