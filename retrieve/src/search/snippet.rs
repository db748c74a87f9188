//! A short excerpt of a hit with the query's terms located, for human output.

use std::collections::HashSet;
use std::ops::Range;

use serde::Serialize;

/// An excerpt of a chunk and the byte ranges in it that matched query terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snippet {
    pub text: String,
    pub highlights: Vec<Range<usize>>,
}

impl Snippet {
    /// The excerpt with each highlight wrapped in `open` … `close`.
    pub fn marked(&self, open: &str, close: &str) -> String {
        let mut out = String::with_capacity(self.text.len() + self.highlights.len() * 8);
        let mut at = 0;
        for h in &self.highlights {
            out.push_str(&self.text[at..h.start]);
            out.push_str(open);
            out.push_str(&self.text[h.clone()]);
            out.push_str(close);
            at = h.end;
        }
        out.push_str(&self.text[at..]);
        out
    }
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Picks the window of about `max_bytes` of `text` holding the most matched terms, with
/// whitespace collapsed and `…` where it was cut.
///
/// `tokens` are `text`'s analyzed terms with byte ranges; `query_terms` the query's terms
/// analyzed the same way (so "founded" in a query marks "founding" in the text).
pub fn snippet(
    text: &str,
    tokens: &[(String, Range<usize>)],
    query_terms: &HashSet<String>,
    max_bytes: usize,
) -> Snippet {
    let hits: Vec<&Range<usize>> = tokens
        .iter()
        .filter(|(t, _)| query_terms.contains(t))
        .map(|(_, r)| r)
        .collect();
    // The window start that covers the most hits: slide over hit positions.
    let mut best = (0usize, 0usize);
    for (i, h) in hits.iter().enumerate() {
        let covered = hits[i..]
            .iter()
            .take_while(|r| r.end <= h.start + max_bytes)
            .count();
        if covered > best.1 {
            best = (h.start, covered);
        }
    }
    // Start a little before the first hit, for context.
    let start = floor_boundary(text, best.0.saturating_sub(max_bytes / 6));
    let start = if start == 0 {
        0
    } else {
        text[start..]
            .find(char::is_whitespace)
            .map_or(start, |i| start + i + 1)
            .min(best.0.max(start))
    };
    let mut end = ceil_boundary(text, (start + max_bytes).min(text.len()));
    if end < text.len()
        && let Some(space) = text[start..end].rfind(char::is_whitespace)
        && space > max_bytes / 2
    {
        // Cut between words, not inside one.
        end = start + space;
    }
    let mut out = String::new();
    let mut highlights = Vec::new();
    if start > 0 {
        out.push_str("… ");
    }
    // Copy the window collapsing whitespace runs, shifting highlight ranges along.
    // Starts "in a space" so leading whitespace is dropped.
    let mut in_space = true;
    let mut pending: Vec<&Range<usize>> = hits
        .iter()
        .copied()
        .filter(|r| r.start >= start && r.end <= end)
        .collect();
    pending.reverse();
    let mut open_at: Option<usize> = None;
    for (i, c) in text[start..end].char_indices() {
        let at = start + i;
        if let Some(r) = pending.last()
            && r.start == at
        {
            open_at = Some(out.len());
        }
        if c.is_whitespace() {
            if !in_space && open_at.is_none() {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
        if let Some(r) = pending.last()
            && r.end == at + c.len_utf8()
        {
            if let Some(o) = open_at.take() {
                highlights.push(o..out.len());
            }
            pending.pop();
        }
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    highlights.retain(|h| h.end <= out.len());
    if end < text.len() {
        out.push_str(" …");
    }
    Snippet {
        text: out,
        highlights,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Vec<(String, Range<usize>)> {
        let mut out = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
            match (c.is_alphanumeric(), start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    out.push((text[s..i].to_lowercase(), s..i));
                    start = None;
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn marks_matched_terms_in_the_densest_window() {
        let text =
            "Intro words here.\n\nThe   castle was built in 1254.  Later the castle burned. End.";
        let terms: HashSet<String> = ["castle", "1254"].map(String::from).into();
        let s = snippet(text, &tokens(text), &terms, 60);
        assert_eq!(
            s.marked("[", "]"),
            "… The [castle] was built in [1254]. Later the [castle] burned. …"
        );
    }

    #[test]
    fn short_text_without_hits_is_returned_whole() {
        let text = "nothing to see";
        let s = snippet(text, &tokens(text), &HashSet::new(), 100);
        assert_eq!(s.marked("[", "]"), "nothing to see");
        assert!(s.highlights.is_empty());
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        let text = "ééééé ".repeat(40) + "Zürich";
        let terms: HashSet<String> = ["zürich"].map(String::from).into();
        let s = snippet(&text, &tokens(&text), &terms, 30);
        assert!(
            s.marked("[", "]").contains("[Zürich]"),
            "{}",
            s.marked("[", "]")
        );
    }
}
