//! Turning a dense and a lexical ranking into one.
//!
//! Both functions are pure and work on ranked lists (best first) of candidates, so they are
//! tested here on hand-made lists and shared by every store.

use std::collections::HashMap;

use lore_ingest::ChunkId;
use serde::Serialize;

use crate::store::ScoredId;

/// How hybrid search combines its two rankings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Fusion {
    /// Reciprocal rank fusion: `Σ 1 / (k + rank)` over the lists a chunk appears in.
    Rrf { k: f32 },
    /// A convex combination of min-max normalised scores:
    /// `w · dense + (1 − w) · lexical`, a chunk missing from a list scoring 0 there.
    ///
    /// RRF with the usual k = 60 flattens each list (rank 1 earns 1/61, rank 10
    /// 1/70), so a chunk both retrievers rank middling beats one the stronger retriever is
    /// sure of; on lore's benchmarks that made hybrid worse than dense alone. The convex
    /// combination keeps each retriever's confidence (the gap between its top scores), and
    /// weighting dense at 0.75 reflects that it is the stronger retriever on paraphrased
    /// questions. README, "Retrieval quality", has the figures.
    Weighted { dense_weight: f32 },
    /// The default. For prose queries, dense cosine similarity as it is plus BM25 divided by
    /// this query's best BM25 score: `w · cos + (1 − w) · bm25 / max bm25`. For a query that
    /// names code (see [`looks_like_code`]), `weighted` fusion with `code_dense_weight`.
    ///
    /// Cosine is already on a fixed scale, and keeping it so keeps the embedding model's own
    /// uncertainty: when every candidate scores about 0.5, min-max stretches a 0.01 gap to
    /// the full 0–1 range and outvotes a BM25 hit that stands out. And small embedding
    /// models read identifiers (`--locked`, `Cargo.toml`, `RangeInclusive`) as noise where
    /// BM25 matches them exactly, so a query that names one leans on BM25. Of the settings
    /// swept, this is the one where hybrid is at or above both single modes on each of
    /// lore's four sets (README, "Retrieval quality").
    Scaled {
        dense_weight: f32,
        code_dense_weight: f32,
    },
    /// Distribution-based score fusion (as Qdrant's DBSF): each list's scores are normalised
    /// by its own spread, `(s − (μ − 3σ)) / 6σ` clipped to 0–1, then combined as
    /// `w · dense + (1 − w) · lexical`. Unlike min-max, a list's best hit scores near 1 only
    /// when it stands out from the rest of that list, so the retriever that is sure of its
    /// answer for this query leads, whichever it is.
    Dbsf { dense_weight: f32 },
}

/// The RRF constant when RRF is chosen, from Cormack, Clarke & Büttcher (SIGIR 2009).
pub const DEFAULT_RRF_K: f32 = 60.0;
/// The dense share of `weighted` and `dbsf` fusion.
pub const DEFAULT_DENSE_WEIGHT: f32 = 0.75;
/// The dense share of the default (`scaled`) fusion for prose queries.
pub const DEFAULT_SCALED_DENSE_WEIGHT: f32 = 0.85;
/// The dense share of the default fusion for a query that names code.
pub const DEFAULT_CODE_DENSE_WEIGHT: f32 = 0.2;

impl Default for Fusion {
    fn default() -> Self {
        Fusion::Scaled {
            dense_weight: DEFAULT_SCALED_DENSE_WEIGHT,
            code_dense_weight: DEFAULT_CODE_DENSE_WEIGHT,
        }
    }
}

impl std::fmt::Display for Fusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fusion::Rrf { k } => write!(f, "RRF k={k}"),
            Fusion::Weighted { dense_weight } => write!(f, "weighted, dense weight {dense_weight}"),
            Fusion::Dbsf { dense_weight } => write!(f, "DBSF, dense weight {dense_weight}"),
            Fusion::Scaled {
                dense_weight,
                code_dense_weight,
            } => write!(
                f,
                "scaled, dense weight {dense_weight} ({code_dense_weight} for code)"
            ),
        }
    }
}

/// Whether `query` names code: a `code span`, a path (`std::mem`), a flag (`--locked`), an
/// attribute (`#[derive`), a macro (`env!`), a file or dotted name (`Cargo.toml`), or an
/// identifier in snake_case or camelCase. Abbreviations such as "e.g." do not count.
pub fn looks_like_code(query: &str) -> bool {
    if query.contains('`') || query.contains("::") || query.contains("#[") {
        return true;
    }
    query.split_whitespace().any(|raw| {
        let token =
            raw.trim_matches(|c: char| matches!(c, '?' | ',' | ';' | ':' | '"' | '\'' | '(' | ')'));
        let token = token.strip_suffix('.').unwrap_or(token);
        let flag = token
            .strip_prefix("--")
            .is_some_and(|rest| rest.starts_with(char::is_alphanumeric));
        let macro_name = token.strip_suffix('!').is_some_and(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        });
        let chars: Vec<char> = token.chars().collect();
        // "e.g", "U.S": single letters between dots.
        let abbreviation = token.split('.').all(|part| part.chars().count() <= 1);
        let joined = chars.windows(3).any(|w| {
            matches!(w[1], '.' | '_' | '/' | '=')
                && w[0].is_alphanumeric()
                && w[2].is_alphanumeric()
        });
        let camel = chars
            .windows(2)
            .any(|w| w[0].is_lowercase() && w[1].is_uppercase());
        flag || macro_name || (joined && !abbreviation) || camel
    })
}

/// A candidate after fusion, with where it stood in each input (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct Fused {
    pub id: ChunkId,
    pub path: String,
    pub score: f32,
    pub dense_rank: Option<usize>,
    pub lexical_rank: Option<usize>,
}

/// Fuses two rankings. Ties are broken by the better best rank, then by id, so the order is
/// deterministic. With `by_file`, candidates are files: a file's entries in both lists merge
/// (its representative chunk is the first one seen, dense list first).
///
/// `query` only matters to [`Fusion::Scaled`], which weighs a query that names code toward BM25.
pub fn fuse(
    dense: &[ScoredId],
    lexical: &[ScoredId],
    fusion: Fusion,
    by_file: bool,
    query: &str,
) -> Vec<Fused> {
    let mut by_id: HashMap<&str, Fused> = HashMap::with_capacity(dense.len() + lexical.len());
    // A code query under `scaled` fusion is fused as `weighted` with the code share.
    let fusion = match fusion {
        Fusion::Scaled {
            code_dense_weight, ..
        } if looks_like_code(query) => Fusion::Weighted {
            dense_weight: code_dense_weight,
        },
        other => other,
    };
    let (dense_norm, lexical_norm) = match fusion {
        Fusion::Scaled { .. } => (as_is(), by_best(lexical)),
        Fusion::Dbsf { .. } => (normaliser(dense, true), normaliser(lexical, true)),
        _ => (normaliser(dense, false), normaliser(lexical, false)),
    };
    for (list, is_dense) in [(dense, true), (lexical, false)] {
        for (i, hit) in list.iter().enumerate() {
            let rank = i + 1;
            let contribution = match fusion {
                Fusion::Rrf { k } => 1.0 / (k + rank as f32),
                Fusion::Weighted { dense_weight }
                | Fusion::Dbsf { dense_weight }
                | Fusion::Scaled { dense_weight, .. } => {
                    if is_dense {
                        dense_weight * dense_norm(hit.score)
                    } else {
                        (1.0 - dense_weight) * lexical_norm(hit.score)
                    }
                }
            };
            let key = if by_file {
                hit.path.as_str()
            } else {
                hit.id.as_str()
            };
            let entry = by_id.entry(key).or_insert_with(|| Fused {
                id: hit.id.clone(),
                path: hit.path.clone(),
                score: 0.0,
                dense_rank: None,
                lexical_rank: None,
            });
            entry.score += contribution;
            let slot = if is_dense {
                &mut entry.dense_rank
            } else {
                &mut entry.lexical_rank
            };
            slot.get_or_insert(rank);
        }
    }
    let mut fused: Vec<Fused> = by_id.into_values().collect();
    fused.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| best_rank(a).cmp(&best_rank(b)))
            .then_with(|| a.id.cmp(&b.id))
    });
    fused
}

fn best_rank(f: &Fused) -> usize {
    f.dense_rank
        .into_iter()
        .chain(f.lexical_rank)
        .min()
        .unwrap_or(usize::MAX)
}

/// Scores kept as they are (cosine similarity, clamped at 0).
fn as_is() -> Box<dyn Fn(f32) -> f32> {
    Box::new(|s| s.max(0.0))
}

/// Scores divided by the list's best (BM25 scores are positive).
fn by_best(list: &[ScoredId]) -> Box<dyn Fn(f32) -> f32> {
    let best = list.iter().map(|h| h.score).fold(0.0f32, f32::max);
    Box::new(move |s| if best > 0.0 { s / best } else { 0.0 })
}

/// Normalisation over one list's scores: min-max (a list of equal scores maps to 1), or with
/// `dbsf` the distribution-based one, `(s − (μ − 3σ)) / 6σ` clipped to 0–1.
fn normaliser(list: &[ScoredId], dbsf: bool) -> Box<dyn Fn(f32) -> f32> {
    if dbsf && list.len() > 1 {
        let n = list.len() as f32;
        let mean = list.iter().map(|h| h.score).sum::<f32>() / n;
        let var = list.iter().map(|h| (h.score - mean).powi(2)).sum::<f32>() / n;
        let sd = var.sqrt();
        if sd > f32::EPSILON {
            let low = mean - 3.0 * sd;
            return Box::new(move |s| ((s - low) / (6.0 * sd)).clamp(0.0, 1.0));
        }
    }
    let (min, max) = list
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), h| {
            (lo.min(h.score), hi.max(h.score))
        });
    let span = max - min;
    Box::new(move |s| {
        if span > f32::EPSILON {
            (s - min) / span
        } else {
            1.0
        }
    })
}

/// A single ranking presented as fused output (dense-only or lexical-only search).
pub fn single(list: &[ScoredId], is_dense: bool) -> Vec<Fused> {
    list.iter()
        .enumerate()
        .map(|(i, h)| Fused {
            id: h.id.clone(),
            path: h.path.clone(),
            score: h.score,
            dense_rank: is_dense.then_some(i + 1),
            lexical_rank: (!is_dense).then_some(i + 1),
        })
        .collect()
}

/// Keeps only each file's best-ranked chunk, preserving order (document-level ranking).
pub fn first_per_file(list: Vec<ScoredId>) -> Vec<ScoredId> {
    let mut seen = std::collections::HashSet::new();
    list.into_iter()
        .filter(|h| seen.insert(h.path.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(ids: &[(&str, f32)]) -> Vec<ScoredId> {
        ids.iter()
            .map(|(id, score)| ScoredId {
                id: ChunkId(id.to_string()),
                path: format!("{id}.md"),
                score: *score,
            })
            .collect()
    }

    fn order(f: &[Fused]) -> Vec<&str> {
        f.iter().map(|x| x.id.as_str()).collect()
    }

    #[test]
    fn rrf_rewards_agreement_and_uses_ranks_not_scores() {
        let dense = list(&[("a", 0.9), ("b", 0.8), ("c", 0.7)]);
        let lexical = list(&[("c", 40.0), ("b", 3.0), ("d", 1.0)]);
        let fused = fuse(&dense, &lexical, Fusion::Rrf { k: 60.0 }, false, "");
        // b: 1/62 + 1/62; c: 1/63 + 1/61; a: 1/61; d: 1/63.
        assert_eq!(order(&fused), ["c", "b", "a", "d"]);
        let c = &fused[0];
        assert!((c.score - (1.0 / 63.0 + 1.0 / 61.0)).abs() < 1e-7);
        assert_eq!((c.dense_rank, c.lexical_rank), (Some(3), Some(1)));
    }

    #[test]
    fn weighted_fusion_normalises_each_list() {
        let dense = list(&[("a", 0.9), ("b", 0.5)]);
        let lexical = list(&[("b", 12.0), ("a", 2.0)]);
        let f = fuse(
            &dense,
            &lexical,
            Fusion::Weighted { dense_weight: 0.7 },
            false,
            "",
        );
        // a: 0.7·1 + 0.3·0 = 0.7; b: 0.7·0 + 0.3·1 = 0.3.
        assert_eq!(order(&f), ["a", "b"]);
        assert!((f[0].score - 0.7).abs() < 1e-6 && (f[1].score - 0.3).abs() < 1e-6);
        let f = fuse(
            &dense,
            &lexical,
            Fusion::Weighted { dense_weight: 0.2 },
            false,
            "",
        );
        assert_eq!(order(&f), ["b", "a"]);
    }

    #[test]
    fn scaled_fusion_keeps_cosine_and_leans_on_bm25_for_code() {
        // Dense is unsure (0.50 vs 0.49); BM25 is sure of b. Min-max would make a's 0.01
        // lead worth as much as b's BM25 lead; cosine as it is does not.
        let dense = list(&[("a", 0.50), ("b", 0.49)]);
        let lexical = list(&[("b", 20.0), ("a", 4.0)]);
        let scaled = Fusion::default();
        let f = fuse(&dense, &lexical, scaled, false, "what does it do");
        assert_eq!(order(&f), ["b", "a"]);
        // b: 0.85·0.49 + 0.15·1.
        assert!((f[0].score - (0.85 * 0.49 + 0.15)).abs() < 1e-6);
        let minmax = Fusion::Weighted { dense_weight: 0.75 };
        assert_eq!(
            order(&fuse(&dense, &lexical, minmax, false, "what does it do")),
            ["a", "b"]
        );
        // Where dense is sure and BM25 is not, prose follows dense and code follows BM25.
        let dense = list(&[("a", 0.9), ("b", 0.3)]);
        let lexical = list(&[("b", 10.0), ("a", 5.0)]);
        assert_eq!(
            order(&fuse(&dense, &lexical, scaled, false, "how")),
            ["a", "b"]
        );
        assert_eq!(
            order(&fuse(
                &dense,
                &lexical,
                scaled,
                false,
                "what does `--locked` do"
            )),
            ["b", "a"]
        );
    }

    #[test]
    fn code_in_a_query_is_recognised() {
        for code in [
            "what does `cargo build` do",
            "Which flag is --locked for?",
            "is std::mem::swap safe",
            "#[derive(Debug)] on enums",
            "what does env! return",
            "Which edition does cargo assume when Cargo.toml doesn't say?",
            "Which std type is RangeInclusive",
            "set opt_level in a profile",
            "a..=b or a/b",
        ] {
            assert!(looks_like_code(code), "{code}");
        }
        for prose in [
            "In which state was Abraham Lincoln born?",
            "How do I stop a dependency, e.g. serde, from enabling features?",
            "What did the U.S. Congress pass in 1862?",
            "Who wrote it -- and when?",
            "version 1.2 or later",
        ] {
            assert!(!looks_like_code(prose), "{prose}");
        }
    }

    #[test]
    fn ties_break_deterministically() {
        let dense = list(&[("x", 1.0)]);
        let lexical = list(&[("y", 1.0)]);
        for _ in 0..5 {
            assert_eq!(
                order(&fuse(&dense, &lexical, Fusion::Rrf { k: 60.0 }, false, "")),
                ["x", "y"]
            );
        }
    }

    #[test]
    fn by_file_merges_a_files_chunks_across_lists() {
        let dense = list(&[("a", 0.9), ("b", 0.8)]);
        let mut lexical = list(&[("c", 5.0)]);
        lexical[0].path = "a.md".into();
        let f = fuse(&dense, &lexical, Fusion::Rrf { k: 60.0 }, true, "");
        assert_eq!(order(&f), ["a", "b"]);
        assert_eq!((f[0].dense_rank, f[0].lexical_rank), (Some(1), Some(1)));
    }

    #[test]
    fn first_per_file_keeps_the_best_chunk_of_each_file() {
        let mut l = list(&[("a", 3.0), ("b", 2.0), ("c", 1.0)]);
        l[2].path = "a.md".into();
        assert_eq!(
            first_per_file(l)
                .iter()
                .map(|h| h.id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
    }
}
