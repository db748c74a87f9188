//! Heading paths for Markdown-shaped text (Markdown files and HTML converted to Markdown).

/// For each heading in `text`, the byte offset of its line and the full heading path in
/// effect from there on (`Guide > Install > From source`). Sorted by offset.
///
/// Recognises ATX (`## Title`) and setext (`Title` underlined with `===` or `---`) headings
/// and ignores `#` lines inside fenced code blocks.
pub(crate) fn heading_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut fence: Option<&str> = None;
    let mut prev: Option<(usize, &str)> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let trimmed = line.trim_end_matches(['\n', '\r']);
        let stripped = trimmed.trim_start();
        let indent = trimmed.len() - stripped.len();
        if let Some(marker) = fence {
            if stripped.starts_with(marker) {
                fence = None;
            }
            prev = None;
            continue;
        }
        if indent < 4 && (stripped.starts_with("```") || stripped.starts_with("~~~")) {
            fence = Some(&stripped[..3]);
            prev = None;
            continue;
        }
        let mut heading = None;
        if indent < 4 {
            heading = atx(stripped).map(|(level, title)| (start, level, title.to_string()));
            if heading.is_none()
                && let Some((prev_start, prev_text)) = prev
                && let Some(level) = setext_level(stripped)
            {
                heading = Some((prev_start, level, prev_text.trim().to_string()));
            }
        }
        if let Some((at, level, title)) = heading {
            if title.is_empty() {
                prev = None;
                continue;
            }
            while stack.last().is_some_and(|(l, _)| *l >= level) {
                stack.pop();
            }
            stack.push((level, title));
            let path = stack
                .iter()
                .map(|(_, t)| t.as_str())
                .collect::<Vec<_>>()
                .join(" > ");
            out.push((at, path));
            prev = None;
        } else {
            prev = (!stripped.is_empty()).then_some((start, trimmed));
        }
    }
    out
}

fn atx(line: &str) -> Option<(usize, &str)> {
    let level = line.bytes().take_while(|&b| b == b'#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &line[level..];
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    // A closing run of `#` is decoration, not title.
    Some((level, rest.trim().trim_end_matches('#').trim_end()))
}

fn setext_level(line: &str) -> Option<usize> {
    let t = line.trim_end();
    if t.len() >= 2 && t.bytes().all(|b| b == b'=') {
        Some(1)
    } else if t.len() >= 2 && t.bytes().all(|b| b == b'-') {
        Some(2)
    } else {
        None
    }
}

/// The heading path in effect at `offset`, given the output of [`heading_paths`].
pub(crate) fn path_at(headings: &[(usize, String)], offset: usize) -> Option<&str> {
    let idx = headings.partition_point(|(at, _)| *at <= offset);
    idx.checked_sub(1).map(|i| headings[i].1.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nests_and_pops_levels_and_skips_code_fences() {
        let text = "# Guide\nintro\n## Install\n```sh\n# not a heading\n```\n### From source\nx\n## Use\nTitle\n=====\nend\n";
        let h = heading_paths(text);
        let paths: Vec<&str> = h.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "Guide",
                "Guide > Install",
                "Guide > Install > From source",
                "Guide > Use",
                "Title"
            ]
        );
        assert_eq!(path_at(&h, 0), Some("Guide"));
        assert_eq!(
            path_at(&h, text.find("# not").expect("in")),
            Some("Guide > Install")
        );
        assert_eq!(path_at(&h, text.find("end").expect("in")), Some("Title"));
        assert_eq!(path_at(&heading_paths("no headings"), 3), None);
        assert!(heading_paths("#hashtag\n").is_empty());
    }
}
