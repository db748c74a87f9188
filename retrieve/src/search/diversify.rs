//! Making the top k say more: dropping chunks that repeat a better one, and optional maximal
//! marginal relevance (MMR).

use std::collections::{HashMap, HashSet};

use crate::store::StoredChunk;

/// Word-set Jaccard similarity above which two chunks count as near-duplicates.
const NEAR_DUPLICATE: f64 = 0.8;
/// Distinct words a chunk needs before it can be a near-duplicate of another file's chunk:
/// short chunks (a heading, a one-line table row) share most words by chance.
const CROSS_FILE_MIN_WORDS: usize = 20;

/// A candidate with its fused score and stored chunk, best first.
pub(crate) struct Candidate {
    pub score: f32,
    pub stored: StoredChunk,
}

/// FNV-1a over the lowercased characters of `word`: collapse compares words by these 64-bit
/// hashes (sorted, deduplicated) instead of sets of owned strings, which cost a third of a
/// 100k-chunk search in allocation and SipHash.
fn word_hash(word: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in word.chars().flat_map(char::to_lowercase) {
        h ^= u64::from(c);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The chunk's distinct words as sorted hashes.
fn words(text: &str) -> Vec<u64> {
    let mut w: Vec<u64> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(word_hash)
        .collect();
    w.sort_unstable();
    w.dedup();
    w
}

/// A hash of the text with case and whitespace runs normalised (exact copies share it).
fn normalised_hash(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for word in text.split_whitespace() {
        h = (h ^ word_hash(word)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Jaccard similarity of two sorted, deduplicated word-hash lists.
fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    let (mut i, mut j, mut shared) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                shared += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - shared;
    if union == 0 {
        return 1.0;
    }
    shared as f64 / union as f64
}

/// Drops every candidate that overlaps a better-ranked chunk of the same file (byte spans
/// intersect, as neighbouring chunks do by the splitter's overlap), nearly repeats one
/// (word-set Jaccard ≥ 0.8: in the same file, or in another when both have 20 words or
/// more, as rustdoc repeats a method's docs on every type that derefs to or implements it),
/// or has the same text as any better one (a copied file). Order is kept, and it stops once
/// `limit` chunks are kept: a candidate's fate depends only on those kept before it.
pub(crate) fn collapse(candidates: Vec<Candidate>, limit: usize) -> Vec<Candidate> {
    let mut kept: Vec<Candidate> = Vec::with_capacity(candidates.len().min(limit));
    let mut kept_words: Vec<Vec<u64>> = Vec::new();
    let mut texts: HashSet<u64> = HashSet::new();
    let mut by_file: HashMap<String, Vec<usize>> = HashMap::new();
    for c in candidates {
        if kept.len() >= limit {
            break;
        }
        let chunk = &c.stored.chunk;
        let text = normalised_hash(&chunk.text);
        if texts.contains(&text) {
            continue;
        }
        let w = words(&chunk.text);
        let same_file = by_file.get(&chunk.path).map(Vec::as_slice).unwrap_or(&[]);
        let repeats = same_file.iter().any(|&i| {
            let other = &kept[i].stored.chunk;
            (chunk.byte_start < other.byte_end && other.byte_start < chunk.byte_end)
                || jaccard(&w, &kept_words[i]) >= NEAR_DUPLICATE
        });
        let copies_another_file = w.len() >= CROSS_FILE_MIN_WORDS
            && kept.iter().zip(&kept_words).any(|(k, kw)| {
                k.stored.chunk.path != chunk.path
                    && kw.len() >= CROSS_FILE_MIN_WORDS
                    && jaccard(&w, kw) >= NEAR_DUPLICATE
            });
        if repeats || copies_another_file {
            continue;
        }
        texts.insert(text);
        by_file
            .entry(chunk.path.clone())
            .or_default()
            .push(kept.len());
        kept_words.push(w);
        kept.push(c);
    }
    kept
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na.sqrt() * nb.sqrt())
}

/// Greedy MMR: repeatedly takes the candidate maximising
/// `λ · relevance − (1 − λ) · max cosine to those already taken`, where relevance is the
/// fused score min-max normalised over the candidates. `λ = 1` keeps the ranking as is.
/// Candidates without a vector are treated as dissimilar to everything.
pub(crate) fn mmr(mut candidates: Vec<Candidate>, lambda: f32, k: usize) -> Vec<Candidate> {
    let (lo, hi) = candidates
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), c| {
            (lo.min(c.score), hi.max(c.score))
        });
    let relevance = |s: f32| {
        if hi - lo > f32::EPSILON {
            (s - lo) / (hi - lo)
        } else {
            1.0
        }
    };
    let mut chosen: Vec<Candidate> = Vec::with_capacity(k.min(candidates.len()));
    while chosen.len() < k && !candidates.is_empty() {
        let mut best = (0, f32::NEG_INFINITY);
        for (i, c) in candidates.iter().enumerate() {
            let redundancy = match &c.stored.vector {
                Some(v) => chosen
                    .iter()
                    .filter_map(|s| s.stored.vector.as_deref())
                    .map(|u| cosine(v, u))
                    .fold(0.0f32, f32::max),
                None => 0.0,
            };
            let value = lambda * relevance(c.score) - (1.0 - lambda) * redundancy;
            if value > best.1 {
                best = (i, value);
            }
        }
        chosen.push(candidates.remove(best.0));
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use lore_ingest::{Chunk, ChunkId, DocKind};

    fn cand(
        path: &str,
        span: (usize, usize),
        text: &str,
        score: f32,
        v: Option<Vec<f32>>,
    ) -> Candidate {
        Candidate {
            score,
            stored: StoredChunk {
                chunk: Chunk {
                    id: ChunkId::derive(path, &(span.0..span.1), text),
                    path: path.into(),
                    kind: DocKind::Text,
                    text: text.into(),
                    byte_start: span.0,
                    byte_end: span.1,
                    start_line: 1,
                    end_line: 1,
                    heading: None,
                    page: None,
                    tags: Default::default(),
                },
                vector: v,
            },
        }
    }

    fn texts(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.stored.chunk.text.as_str()).collect()
    }

    #[test]
    fn overlapping_near_duplicate_and_copied_chunks_collapse_into_the_best() {
        let kept = collapse(
            vec![
                cand("a.md", (0, 100), "alpha beta gamma", 1.0, None),
                cand("a.md", (80, 200), "gamma delta", 0.9, None),
                cand("a.md", (300, 400), "Alpha  beta gamma", 0.8, None),
                cand("b.md", (0, 100), "alpha beta   GAMMA", 0.7, None),
                cand("a.md", (500, 600), "something else entirely", 0.6, None),
                cand("b.md", (200, 300), "gamma delta", 0.5, None),
            ],
            usize::MAX,
        );
        assert_eq!(
            texts(&kept),
            ["alpha beta gamma", "something else entirely", "gamma delta"]
        );
    }

    #[test]
    fn another_files_near_copy_of_a_long_chunk_collapses_but_short_ones_stay() {
        let doc: Vec<String> = (0..30).map(|i| format!("word{i}")).collect();
        let defining = doc.join(" ");
        // rustdoc's copy on another type's page: the same docs and a few words of its own.
        let copy = format!("{defining} on IoSlice");
        let other: String = (0..30).map(|i| format!("other{i} ")).collect();
        let kept = collapse(
            vec![
                cand("slice.html", (0, 100), &defining, 1.0, None),
                cand("io_slice.html", (0, 100), &copy, 0.9, None),
                cand("notes.md", (0, 100), &other, 0.8, None),
                // Short chunks may share most words by chance: kept.
                cand("a.md", (0, 10), "see also the manual", 0.7, None),
                cand("b.md", (0, 10), "see the manual also here", 0.6, None),
            ],
            usize::MAX,
        );
        assert_eq!(
            texts(&kept),
            [
                defining.as_str(),
                other.as_str(),
                "see also the manual",
                "see the manual also here"
            ]
        );
    }

    #[test]
    fn collapse_stops_at_its_limit_with_the_same_leaders() {
        let c = || {
            vec![
                cand("a.md", (0, 100), "alpha beta gamma", 1.0, None),
                cand("a.md", (50, 150), "beta gamma delta", 0.9, None),
                cand("b.md", (0, 100), "epsilon zeta", 0.8, None),
                cand("c.md", (0, 100), "eta theta", 0.7, None),
            ]
        };
        let all = collapse(c(), usize::MAX);
        assert_eq!(
            texts(&all),
            ["alpha beta gamma", "epsilon zeta", "eta theta"]
        );
        assert_eq!(texts(&collapse(c(), 2)), texts(&all[..2]));
    }

    #[test]
    fn word_hashes_ignore_case_and_count_distinct_words() {
        assert_eq!(words("Alpha, alpha BETA"), words("beta alpha"));
        assert_eq!(jaccard(&words("a b c d"), &words("a b c e")), 3.0 / 5.0);
        assert_eq!(normalised_hash("A  b\nC"), normalised_hash("a b c"));
        assert_ne!(normalised_hash("a b c"), normalised_hash("a bc"));
    }

    #[test]
    fn mmr_prefers_a_dissimilar_runner_up() {
        let c = || {
            vec![
                cand("a.md", (0, 1), "first", 1.0, Some(vec![1.0, 0.0])),
                cand(
                    "b.md",
                    (0, 1),
                    "same direction",
                    0.95,
                    Some(vec![0.99, 0.14]),
                ),
                cand("c.md", (0, 1), "other direction", 0.9, Some(vec![0.0, 1.0])),
            ]
        };
        assert_eq!(texts(&mmr(c(), 0.5, 2)), ["first", "other direction"]);
        assert_eq!(texts(&mmr(c(), 1.0, 2)), ["first", "same direction"]);
    }
}
