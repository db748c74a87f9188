//! Whether an answer stands on the passages it was given: the retrieval-confidence gate that
//! declines before the model runs, the recognition of an answer that itself declines, and the
//! per-sentence support check that flags what no passage says.
//!
//! All of it is cheap and local (word overlap, no model), so it runs on every answer. The
//! thresholds were measured on the QA set in `tests/data/qa/` (README, "Answer quality"):
//! they are defaults, and every caller can set its own.

use std::collections::HashSet;

use serde::Serialize;

/// What lore answers when the knowledge base has nothing on a question.
pub const ABSTENTION: &str = "The knowledge base does not say.";

/// Below this cosine similarity between the question and its best passage (MiniLM-L6, the
/// default embedding model), the passages are taken not to hold the answer and the model is
/// not asked. Measured on `tests/data/qa/cargo-reference.jsonl` (README): chosen so that no
/// answerable question falls below it, while the unanswerable questions that look least like
/// anything in the books do.
pub const DEFAULT_MIN_DENSE: f32 = 0.30;

/// A sentence whose content words are less than this share found in its passages (or the
/// question) is flagged as unsupported.
pub const DEFAULT_MIN_SENTENCE_SUPPORT: f32 = 0.5;

/// How a sentence of an answer stands on the passages.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SentenceSupport {
    pub text: String,
    /// Share of the content words the sentence adds to the question that the passages it
    /// was checked against hold (1 when it adds none).
    pub support: f32,
    pub supported: bool,
}

/// How an answer as a whole stands on the passages.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Support {
    /// Share of the content words the answer adds to the question that its passages hold,
    /// 0–1 (1 for an answer that adds none).
    pub score: f32,
    pub sentences: Vec<SentenceSupport>,
    /// Content words the answer adds to the question. 0: the answer only restates what
    /// was asked, and so states nothing.
    pub added_words: usize,
}

impl Support {
    /// The sentences no passage supports.
    pub fn unsupported(&self) -> impl Iterator<Item = &SentenceSupport> {
        self.sentences.iter().filter(|s| !s.supported)
    }
}

/// True when `answer` says that the passages (or the knowledge base) do not hold the answer,
/// in any of the ways a model phrases it. Only the opening counts: an answer that explains
/// a point and then adds "the passages do not mention X" still answers.
pub fn declines(answer: &str) -> bool {
    const PHRASES: &[&str] = &[
        "does not say",
        "doesn't say",
        "do not say",
        "don't say",
        "does not contain",
        "do not contain",
        "doesn't contain",
        "don't contain",
        "does not mention",
        "do not mention",
        "doesn't mention",
        "don't mention",
        "does not provide",
        "do not provide",
        "doesn't provide",
        "don't provide",
        "does not specify",
        "do not specify",
        "not mentioned",
        "not specified",
        "not stated",
        "no information",
        "not enough information",
        "not provided in",
        "i don't know",
        "i do not know",
        "i cannot answer",
        "i can't answer",
        "cannot be answered",
        "unable to answer",
        "has nothing on",
        "nothing about",
    ];
    let opening: String = first_sentences(answer, 1).to_lowercase().replace('’', "'");
    PHRASES.iter().any(|p| opening.contains(p))
}

/// The first `n` sentences of `text`.
fn first_sentences(text: &str, n: usize) -> &str {
    let mut seen = 0;
    for (i, c) in text.char_indices() {
        if matches!(c, '.' | '!' | '?' | '\n') && is_boundary(text, i) {
            seen += 1;
            if seen == n {
                return &text[..i + c.len_utf8()];
            }
        }
    }
    text
}

/// A sentence ends at `.`, `!` or `?` followed by whitespace or the end (so `1.5`, `e.g.x`
/// and `Cargo.toml` do not end one), and at a line break.
fn is_boundary(text: &str, at: usize) -> bool {
    let c = text[at..].chars().next().unwrap_or(' ');
    if c == '\n' {
        return true;
    }
    text[at + c.len_utf8()..]
        .chars()
        .next()
        .is_none_or(char::is_whitespace)
}

/// `text` split into sentences, trimmed, empty ones dropped.
pub fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if matches!(c, '.' | '!' | '?' | '\n') && is_boundary(text, i) {
            out.push(text[start..i + c.len_utf8()].trim());
            start = i + c.len_utf8();
        }
    }
    out.push(text[start..].trim());
    // A lone citation marker ("[1].") is not a sentence.
    out.retain(|s| {
        let mut depth = 0;
        s.chars().any(|c| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => {}
            }
            depth == 0 && c.is_alphanumeric()
        })
    });
    out
}

/// Words too common to show that a sentence comes from a passage.
const COMMON: &[&str] = &[
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been",
    "but", "by", "can", "could", "did", "do", "does", "each", "for", "from", "had", "has", "have",
    "he", "her", "his", "how", "i", "if", "in", "into", "is", "it", "its", "may", "more", "must",
    "no", "not", "of", "on", "one", "only", "or", "other", "passage", "passages", "should", "so",
    "some", "such", "than", "that", "the", "their", "them", "then", "there", "these", "they",
    "this", "those", "to", "use", "used", "using", "was", "we", "were", "what", "when", "where",
    "which", "while", "who", "will", "with", "would", "you", "your",
];

/// Content words of `text`, normalised: lowercased, and cut to their first six characters,
/// a crude stem that lets "dependencies" meet "dependency" and "compiled" meet "compiler".
fn content_words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !COMMON.contains(&w.as_str()))
        // Citation markers `[3]` leave bare numbers below 100 behind; they are not content.
        .filter(|w| !(w.len() <= 2 && w.chars().all(|c| c.is_ascii_digit())))
        .map(|w| w.chars().take(6).collect())
        .collect()
}

/// The passage numbers a sentence cites (`[2]`, `[1, 3]`).
fn cited_numbers(sentence: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rest = sentence;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        out.extend(
            after[..close]
                .split(',')
                .filter_map(|p| p.trim().parse::<usize>().ok()),
        );
        rest = &after[close + 1..];
    }
    out
}

/// Checks each sentence of `answer` against the passages (numbered from 1, as in the
/// prompt): a sentence that cites passages is checked against those, one that cites none
/// against all of them. Only the words a sentence adds to the question are scored: restating
/// what was asked invents nothing, but it must not dilute one invented term either (six
/// restated words and one made-up command name once passed as 86% supported).
pub fn support(answer: &str, question: &str, passages: &[&str], min_sentence: f32) -> Support {
    let passage_words: Vec<HashSet<String>> = passages
        .iter()
        .map(|p| content_words(p).into_iter().collect())
        .collect();
    let asked: HashSet<String> = content_words(question).into_iter().collect();
    let mut sentences = Vec::new();
    let (mut found_total, mut words_total) = (0usize, 0usize);
    for sentence in self::sentences(answer) {
        let cited: Vec<usize> = cited_numbers(sentence)
            .into_iter()
            .filter(|n| (1..=passages.len()).contains(n))
            .collect();
        let against: Vec<&HashSet<String>> = if cited.is_empty() {
            passage_words.iter().collect()
        } else {
            cited.iter().map(|n| &passage_words[n - 1]).collect()
        };
        let added: Vec<String> = content_words(sentence)
            .into_iter()
            .filter(|w| !asked.contains(w))
            .collect();
        let found = added
            .iter()
            .filter(|w| against.iter().any(|p| p.contains(*w)))
            .count();
        let share = if added.is_empty() {
            1.0
        } else {
            found as f32 / added.len() as f32
        };
        found_total += found;
        words_total += added.len();
        sentences.push(SentenceSupport {
            text: sentence.to_string(),
            support: share,
            supported: share >= min_sentence,
        });
    }
    let score = if words_total == 0 {
        1.0
    } else {
        found_total as f32 / words_total as f32
    };
    Support {
        score,
        sentences,
        added_words: words_total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declining_answers_are_recognised_by_their_opening() {
        assert!(declines(ABSTENTION));
        assert!(declines(
            "The passages do not mention the price of a crates.io account."
        ));
        assert!(declines("I don’t know."));
        assert!(declines(
            "There is no information about that in the passages [1]."
        ));
        assert!(!declines("Cargo reads `Cargo.lock` [1]."));
        // A caveat after the answer does not make it a refusal.
        assert!(!declines(
            "Use `--locked` [2]. The passages do not say whether it works offline."
        ));
    }

    #[test]
    fn sentences_end_at_stops_followed_by_space_not_inside_names() {
        assert_eq!(
            sentences("Edit Cargo.toml, version 1.5. Then run it! Done"),
            ["Edit Cargo.toml, version 1.5.", "Then run it!", "Done"]
        );
        assert_eq!(sentences("  [1]. "), Vec::<&str>::new());
    }

    #[test]
    fn restated_question_words_neither_count_nor_dilute() {
        let passages = ["Run cargo login to save your API token in the credentials file."];
        let question = "Which command saves my crates.io API token?";
        // Six words from the question and two invented ones: flagged on the invented ones.
        let invented = "The command that saves my crates.io API token is xyzzy frobnicate.";
        let s = support(invented, question, &passages, 0.5);
        assert_eq!(s.added_words, 2);
        assert!(!s.sentences[0].supported, "{s:?}");
        // The question said back adds nothing: supported, but it states nothing either.
        let echo = "The command saves my crates.io API token.";
        let s = support(echo, question, &passages, 0.5);
        assert_eq!(s.added_words, 0, "{s:?}");
        let answer = "Run cargo login [1].";
        let s = support(answer, question, &passages, 0.5);
        assert!(s.added_words > 0 && s.sentences[0].supported, "{s:?}");
    }

    #[test]
    fn invented_sentences_are_flagged_and_supported_ones_pass() {
        let passages = [
            "Lincoln was born in Hodgenville, Kentucky, in 1809.",
            "He was assassinated in 1865 by John Wilkes Booth.",
        ];
        let s = support(
            "Lincoln was born in Kentucky [1]. His grandfather John Hartshorq farmed turnips in Ohio.",
            "In which state was Lincoln born?",
            &passages,
            DEFAULT_MIN_SENTENCE_SUPPORT,
        );
        assert_eq!(s.sentences.len(), 2);
        assert!(s.sentences[0].supported, "{s:?}");
        assert!(!s.sentences[1].supported, "{s:?}");
        assert!(s.score > 0.2 && s.score < 0.8, "{s:?}");
        assert_eq!(s.unsupported().count(), 1);
    }

    #[test]
    fn a_sentence_citing_a_passage_is_checked_against_that_passage_only() {
        let passages = ["Booth shot him in 1865.", "He was born in Kentucky."];
        let wrong = support(
            "Booth shot him in 1865 [2].",
            "Who?",
            &passages,
            DEFAULT_MIN_SENTENCE_SUPPORT,
        );
        assert!(!wrong.sentences[0].supported, "{wrong:?}");
        let right = support(
            "Booth shot him in 1865 [1].",
            "Who?",
            &passages,
            DEFAULT_MIN_SENTENCE_SUPPORT,
        );
        assert!(right.sentences[0].supported, "{right:?}");
        // Restating the question is not invention; an empty answer has nothing to flag.
        let restated = support("Kentucky.", "Was he born in Kentucky?", &[], 0.5);
        assert_eq!(restated.score, 1.0);
        assert_eq!(support("", "q", &passages, 0.5).score, 1.0);
    }
}
