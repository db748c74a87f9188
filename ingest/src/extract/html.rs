//! HTML to Markdown-like text.
//!
//! The output is meant for the Markdown splitter and heading tracker, not for people: headings
//! become `#` lines, block elements become line breaks, list items become `- item`, and
//! everything invisible (scripts, styles, `<head>`) is dropped. html5ever (through `scraper`)
//! parses the way browsers do, so unclosed tags and garbage still yield their text.

use scraper::{Html, Node, Selector};

/// Elements whose content is never visible text.
const SKIPPED: &[&str] = &[
    "script", "style", "noscript", "template", "svg", "head", "iframe", "object", "canvas",
];

/// Elements that start and end a paragraph-like block: a blank line on either side.
const PARAGRAPHS: &[&str] = &[
    "p",
    "pre",
    "blockquote",
    "table",
    "figure",
    "hr",
    "address",
    "details",
    "fieldset",
];

/// Elements that only need to start on their own line.
const LINES: &[&str] = &[
    "div",
    "section",
    "article",
    "header",
    "footer",
    "nav",
    "main",
    "aside",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "tr",
    "caption",
    "figcaption",
    "summary",
    "form",
    "legend",
    "body",
];

/// Converts an HTML document to Markdown-like text. Never fails: the worst input yields an
/// empty string, which the caller reports as empty.
pub(super) fn html_to_text(html: &str) -> String {
    let doc = Html::parse_document(html);
    let mut w = Writer::default();

    // The page title stands in for a missing top-level heading, so the heading path of every
    // chunk still names the page.
    let h1 = Selector::parse("h1").expect("`h1` is a valid selector");
    if doc.select(&h1).next().is_none() {
        let title = Selector::parse("title").expect("`title` is a valid selector");
        if let Some(t) = doc.select(&title).next() {
            let text = t.text().collect::<String>();
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if !text.is_empty() {
                w.out.push_str("# ");
                w.out.push_str(&text);
                w.blank_line();
            }
        }
    }

    // An explicit stack rather than recursion: pathological nesting must not overflow the stack.
    let mut stack = vec![(doc.tree.root(), false)];
    while let Some((node, closing)) = stack.pop() {
        if closing {
            if let Node::Element(el) = node.value() {
                w.close(el.name());
            }
            continue;
        }
        match node.value() {
            Node::Text(text) => w.text(text),
            Node::Element(el) => {
                let name = el.name();
                if SKIPPED.contains(&name) {
                    continue;
                }
                w.open(name);
                stack.push((node, true));
                let children: Vec<_> = node.children().collect();
                stack.extend(children.into_iter().rev().map(|c| (c, false)));
            }
            Node::Document | Node::Fragment => {
                let children: Vec<_> = node.children().collect();
                stack.extend(children.into_iter().rev().map(|c| (c, false)));
            }
            _ => {}
        }
    }
    w.finish()
}

#[derive(Default)]
struct Writer {
    out: String,
    /// Whitespace seen since the last visible character; emitted lazily so that lines never
    /// start or end with a space.
    pending_space: bool,
    pre_depth: usize,
    list_depth: usize,
    /// Inside a heading every block break becomes a space: a heading must stay on one line.
    in_heading: bool,
    /// Where the current heading's text starts, to drop headings with no text.
    heading_start: usize,
    /// Whether the current table row has had a cell yet.
    row_has_cell: bool,
}

impl Writer {
    fn at_line_start(&self) -> bool {
        self.out.is_empty() || self.out.ends_with('\n')
    }

    fn line_break(&mut self) {
        self.pending_space = false;
        if self.in_heading {
            self.pending_space = true;
        } else if !self.at_line_start() {
            self.out.push('\n');
        }
    }

    fn blank_line(&mut self) {
        self.line_break();
        if !self.in_heading && !self.out.is_empty() && !self.out.ends_with("\n\n") {
            self.out.push('\n');
        }
    }

    fn text(&mut self, text: &str) {
        if self.pre_depth > 0 {
            self.out.push_str(text);
            return;
        }
        for c in text.chars() {
            if c.is_whitespace() {
                self.pending_space = true;
                continue;
            }
            if self.pending_space && !self.at_line_start() && !self.out.ends_with(' ') {
                self.out.push(' ');
            }
            self.pending_space = false;
            self.out.push(c);
        }
    }

    fn open(&mut self, name: &str) {
        if let Some(level) = heading_level(name) {
            if self.in_heading {
                return;
            }
            self.blank_line();
            self.out.push_str(&"#".repeat(level));
            self.out.push(' ');
            self.in_heading = true;
            self.heading_start = self.out.len();
            return;
        }
        match name {
            "br" => {
                if self.in_heading {
                    self.pending_space = true;
                } else if !self.out.is_empty() && !self.out.ends_with("\n\n") {
                    self.pending_space = false;
                    self.out.push('\n');
                }
            }
            "li" => {
                self.line_break();
                if !self.in_heading {
                    let indent = self.list_depth.saturating_sub(1) * 2;
                    self.out.extend(std::iter::repeat_n(' ', indent));
                    self.out.push_str("- ");
                }
            }
            "ul" | "ol" => {
                self.list_depth += 1;
                self.line_break();
            }
            "tr" => {
                self.row_has_cell = false;
                self.line_break();
            }
            "td" | "th" => {
                if self.row_has_cell && !self.at_line_start() {
                    self.out.push_str(" | ");
                    self.pending_space = false;
                }
                self.row_has_cell = true;
            }
            "pre" => {
                self.blank_line();
                self.pre_depth += 1;
            }
            _ if PARAGRAPHS.contains(&name) => self.blank_line(),
            _ if LINES.contains(&name) => self.line_break(),
            _ => {}
        }
    }

    fn close(&mut self, name: &str) {
        if heading_level(name).is_some() {
            if !self.in_heading {
                return;
            }
            self.in_heading = false;
            self.pending_space = false;
            if self.out.len() == self.heading_start {
                // A heading with no text: drop its `# ` prefix.
                let trimmed = self.out.trim_end_matches(['#', ' ']).len();
                self.out.truncate(trimmed);
            }
            self.blank_line();
            return;
        }
        match name {
            "ul" | "ol" => {
                self.list_depth = self.list_depth.saturating_sub(1);
                self.line_break();
            }
            "pre" => {
                self.pre_depth = self.pre_depth.saturating_sub(1);
                self.blank_line();
            }
            "li" => self.line_break(),
            _ if PARAGRAPHS.contains(&name) => self.blank_line(),
            _ if LINES.contains(&name) => self.line_break(),
            _ => {}
        }
    }

    /// Trims the ends, strips trailing spaces from lines and keeps at most one blank line in
    /// a row (preformatted text can bring its own).
    fn finish(self) -> String {
        let mut out = String::with_capacity(self.out.len());
        let mut blank_run = 0;
        for line in self.out.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                blank_run += 1;
                if blank_run > 1 || out.is_empty() {
                    continue;
                }
            } else {
                blank_run = 0;
            }
            out.push_str(line);
            out.push('\n');
        }
        let end = out.trim_end().len();
        out.truncate(end);
        out
    }
}

fn heading_level(name: &str) -> Option<usize> {
    match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::html_to_text;

    #[test]
    fn headings_become_markdown_lines() {
        let text = html_to_text(
            "<html><body><h1>Guide</h1><p>Intro  text\n here.</p>\
             <h2>Install <em>it</em></h2><p>Run it.</p><h6>Deep</h6></body></html>",
        );
        assert_eq!(
            text,
            "# Guide\n\nIntro text here.\n\n## Install it\n\nRun it.\n\n###### Deep"
        );
    }

    #[test]
    fn script_style_and_head_are_dropped() {
        let text = html_to_text(
            "<html><head><title>T</title><style>p{color:red}</style><script>var x=1;</script>\
             </head><body><h1>Real</h1><script>alert('no')</script><noscript>enable js</noscript>\
             <p>Visible</p><svg><text>vector</text></svg><template><p>tpl</p></template></body></html>",
        );
        assert_eq!(text, "# Real\n\nVisible");
    }

    #[test]
    fn title_is_used_only_without_h1() {
        let text = html_to_text(
            "<html><head><title> My\n Page </title></head><body><h2>Part</h2>x</body></html>",
        );
        assert_eq!(text, "# My Page\n\n## Part\n\nx");
        let text = html_to_text("<title>T</title><h1>Own</h1>");
        assert_eq!(text, "# Own");
    }

    #[test]
    fn entities_are_decoded() {
        let text = html_to_text("<p>a &amp; b &lt;c&gt; &eacute;t&eacute; &#x263A;&nbsp;!</p>");
        assert_eq!(text, "a & b <c> été ☺ !");
    }

    #[test]
    fn malformed_html_still_yields_text() {
        let text = html_to_text("<div><p>one<p>two<b>bold</i> <h2>Head<ul><li>x</div></span>>>&&<");
        assert!(text.contains("one\n\ntwo"), "{text:?}");
        assert!(text.contains("bold"), "{text:?}");
        assert!(text.contains("## Head"), "{text:?}");
        assert!(text.contains(">>&&<"), "{text:?}");
        // A lone `</` at the end is a tag html5ever gives up on; the rest is text.
        assert_eq!(html_to_text("<<<>>></</"), "<<<>>>");
        assert_eq!(html_to_text(""), "");
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        let html = format!(
            "{}deep{}",
            "<div><span>".repeat(20_000),
            "</span></div>".repeat(5)
        );
        assert_eq!(html_to_text(&html), "deep");
    }

    #[test]
    fn nested_lists_are_indented_items() {
        let text = html_to_text(
            "<p>Steps:</p><ul><li>First</li><li>Second<ul><li>Inner <b>a</b></li>\
             <li>Inner b</li></ul></li><li>Third</li></ul><ol><li>One</li></ol>",
        );
        assert_eq!(
            text,
            "Steps:\n\n- First\n- Second\n  - Inner a\n  - Inner b\n- Third\n- One"
        );
    }

    #[test]
    fn breaks_pre_and_tables() {
        let text = html_to_text(
            "<p>a<br>b<br><br><br>c</p><pre>fn main() {\n    let x = 1;\n}</pre>\
             <table><tr><th>k</th><th>v</th></tr><tr><td>1</td><td>2</td></tr></table>\
             <blockquote>quoted</blockquote>",
        );
        assert_eq!(
            text,
            "a\nb\n\nc\n\nfn main() {\n    let x = 1;\n}\n\nk | v\n1 | 2\n\nquoted"
        );
    }

    #[test]
    fn never_more_than_one_blank_line() {
        let text = html_to_text("<p>a</p><p></p><div></div><p>\n\n</p><pre>\n\n\n</pre><p>b</p>");
        assert_eq!(text, "a\n\nb");
    }
}
