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

fn normalised(text: &str) -> String {
    text.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

fn words(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn jaccard(a: &HashSet<String>, b: &HashSet<String>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

/// Drops every candidate that overlaps a better-ranked chunk of the same file (byte spans
/// intersect, as neighbouring chunks do by the splitter's overlap), nearly repeats one
/// (word-set Jaccard ≥ 0.8: in the same file, or in another when both have 20 words or
/// more, as rustdoc repeats a method's docs on every type that derefs to or implements it),
/// or has the same text as any better one (a copied file). Order is kept.
pub(crate) fn collapse(candidates: Vec<Candidate>) -> Vec<Candidate> {
    let mut kept: Vec<Candidate> = Vec::with_capacity(candidates.len());
    let mut kept_words: Vec<HashSet<String>> = Vec::new();
    let mut texts: HashSet<String> = HashSet::new();
    let mut by_file: HashMap<String, Vec<usize>> = HashMap::new();
    for c in candidates {
        let chunk = &c.stored.chunk;
        let text = normalised(&chunk.text);
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
        let kept = collapse(vec![
            cand("a.md", (0, 100), "alpha beta gamma", 1.0, None),
            cand("a.md", (80, 200), "gamma delta", 0.9, None),
            cand("a.md", (300, 400), "Alpha  beta gamma", 0.8, None),
            cand("b.md", (0, 100), "alpha beta   GAMMA", 0.7, None),
            cand("a.md", (500, 600), "something else entirely", 0.6, None),
            cand("b.md", (200, 300), "gamma delta", 0.5, None),
        ]);
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
        let kept = collapse(vec![
            cand("slice.html", (0, 100), &defining, 1.0, None),
            cand("io_slice.html", (0, 100), &copy, 0.9, None),
            cand("notes.md", (0, 100), &other, 0.8, None),
            // Short chunks may share most words by chance: kept.
            cand("a.md", (0, 10), "see also the manual", 0.7, None),
            cand("b.md", (0, 10), "see the manual also here", 0.6, None),
        ]);
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
