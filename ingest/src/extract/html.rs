//! HTML to Markdown-like text.
//!
//! The output is meant for the Markdown splitter and heading tracker, not for people: headings
//! become `#` lines, block elements become line breaks, list items become `- item`, and
//! everything invisible (scripts, styles, `<head>`) is dropped. html5ever (through `scraper`)
//! parses the way browsers do, so unclosed tags and garbage still yield their text.

use scraper::{ElementRef, Html, Node, Selector};

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
#[cfg(test)]
pub(super) fn html_to_text(html: &str) -> String {
    doc_to_text(&Html::parse_document(html))
}

/// The page's text, or `None` when the page asks not to be indexed (`<meta name="robots"
/// content="noindex">`): mdBook marks its `print.html` (every chapter again, on one page)
/// and `toc.html` so, and a copy of every chapter would crowd the chapters out of search
/// results and citations.
pub(super) fn indexable_text(html: &str) -> Option<String> {
    let doc = Html::parse_document(html);
    let robots = Selector::parse(r#"meta[name="robots" i]"#).expect("a valid selector");
    let no_index = doc.select(&robots).any(|m| {
        m.value()
            .attr("content")
            .is_some_and(|c| c.to_ascii_lowercase().contains("noindex"))
    });
    (!no_index).then(|| doc_to_text(&doc))
}

fn doc_to_text(doc: &Html) -> String {
    let mut w = Writer::default();

    // A page's <main> is its content; what is outside (navigation, tables of contents,
    // keyboard-shortcut help, menus) is the same on every page of a site.
    let main = Selector::parse("main").expect("`main` is a valid selector");
    let main = doc.select(&main).next();

    // The page title stands in for a missing top-level heading, so the heading path of every
    // chunk still names the page.
    let h1 = Selector::parse("h1").expect("`h1` is a valid selector");
    let has_h1 = match main {
        Some(m) => m.select(&h1).next().is_some(),
        None => doc.select(&h1).next().is_some(),
    };
    if !has_h1 {
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

    let root = main.map_or(doc.tree.root(), |m| *m);
    // An explicit stack rather than recursion: pathological nesting must not overflow the stack.
    let mut stack = vec![(root, false)];
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
                if SKIPPED.contains(&name)
                    || is_chrome(el)
                    || ElementRef::wrap(node).is_some_and(is_trait_doc_copy)
                {
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
    /// Where the outermost `<pre>`'s text starts (after its opening fence).
    pre_start: usize,
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
                // A fence keeps code code: a `# comment` line in it must not become a
                // heading, nor a `---` line turn the line above into one.
                if self.pre_depth == 0 {
                    self.out.push_str("```\n");
                    self.pre_start = self.out.len();
                }
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
                if self.pre_depth == 0 {
                    if self.out[self.pre_start..].trim().is_empty() {
                        // An empty block: no fence at all.
                        self.out.truncate(self.pre_start - "```\n".len());
                    } else {
                        if !self.out.ends_with('\n') {
                            self.out.push('\n');
                        }
                        self.out.push_str("```");
                    }
                }
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

/// Page furniture inside the content that is not content: buttons ("Copy item path"),
/// heading anchors (`§`, `¶`), rustdoc's "Source" links and "Expand description" toggles,
/// and the sections in which rustdoc repeats documentation that has a page of its own
/// (methods reached through `Deref`, blanket and auto-trait implementations): indexed on
/// every type that has them, those copies would crowd out the page that defines them.
fn is_chrome(el: &scraper::node::Element) -> bool {
    const REPEATED: &[&str] = &[
        "deref-methods",
        "synthetic-implementations",
        "blanket-implementations",
    ];
    if matches!(el.name(), "button" | "rustdoc-toolbar" | "rustdoc-search") {
        return true;
    }
    if el
        .id()
        .is_some_and(|id| REPEATED.iter().any(|r| id.starts_with(r)))
    {
        return true;
    }
    el.classes().any(|c| match el.name() {
        "a" => matches!(c, "anchor" | "doc-anchor" | "src" | "headerlink"),
        "summary" => c == "hideme",
        _ => false,
    })
}

/// A rustdoc trait method as shown on an implementing type's page: the trait's summary and a
/// "Read more" link to the trait, where its docs live (`Iterator::is_sorted_by_key` is
/// repeated on every iterator's page). A type's own docs for its implementation carry no
/// such link and stay.
fn is_trait_doc_copy(details: ElementRef<'_>) -> bool {
    let el = details.value();
    if el.name() != "details" || !el.classes().any(|c| c == "method-toggle") {
        return false;
    }
    let (mut trait_impl, mut read_more) = (false, false);
    for e in details.descendants().filter_map(ElementRef::wrap) {
        match e.value().name() {
            "section" => trait_impl |= e.value().classes().any(|c| c == "trait-impl"),
            "a" => read_more |= e.text().collect::<String>().trim() == "Read more",
            _ => {}
        }
    }
    trait_impl && read_more
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
    use super::{html_to_text, indexable_text};

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
            "a\nb\n\nc\n\n```\nfn main() {\n    let x = 1;\n}\n```\n\nk | v\n1 | 2\n\nquoted"
        );
    }

    #[test]
    fn pages_that_ask_not_to_be_indexed_are_not() {
        let page = "<html><head><meta name=\"robots\" content=\"noindex\"></head><body><h1>All</h1></body></html>";
        assert_eq!(indexable_text(page), None);
        let page = "<html><head><meta name=\"ROBOTS\" content=\"NOINDEX, nofollow\"></head><body>x</body></html>";
        assert_eq!(indexable_text(page), None);
        let page = "<html><head><meta name=\"robots\" content=\"index\"></head><body><p>x</p></body></html>";
        assert_eq!(indexable_text(page).as_deref(), Some("x"));
    }

    #[test]
    fn only_main_content_without_buttons_anchors_or_repeated_sections() {
        // The shape of a rustdoc page: chrome outside <main>, a button and anchors inside,
        // and a "Methods from Deref" section copied from another page.
        let text = html_to_text(
            "<body><nav class=\"sidebar\"><a href=\"#\">Methods</a></nav>\
             <div id=\"help\"><h2>Keyboard shortcuts</h2><p>Press S</p></div><main>\
             <h1>Struct <span>IoSlice</span>&nbsp;<button id=\"copy-path\">Copy item path</button></h1>\
             <a class=\"src\" href=\"x\">Source</a>\
             <details><summary class=\"hideme\"><span>Expand description</span></summary><p>A buffer.</p></details>\
             <h2 id=\"implementations\">Implementations<a href=\"#implementations\" class=\"anchor\">§</a></h2>\
             <p>Creates one.</p>\
             <details><summary><h2 id=\"deref-methods-%5Bu8%5D\">Methods from Deref</h2></summary>\
             <div id=\"deref-methods-%5Bu8%5D-1\"><p>Sorts the slice.</p></div></details>\
             </main></body>",
        );
        assert_eq!(
            text, "# Struct IoSlice\n\nA buffer.\n\n## Implementations\n\nCreates one.",
            "{text}"
        );
    }

    #[test]
    fn trait_docs_repeated_on_an_implementing_type_are_left_to_the_trait() {
        // rustdoc's "Trait Implementations": a provided method shown with the trait's summary
        // and "Read more", beside a method the type documents itself.
        let text = html_to_text(
            "<main><h2 id=\"trait-implementations\">Trait Implementations</h2>\
             <details class=\"toggle method-toggle\" open><summary><section id=\"method.next\" \
             class=\"method trait-impl\"><h4>fn next(&amp;mut self)</h4></section></summary>\
             <div class=\"docblock\"><p>Steps by the given amount.</p></div></details>\
             <details class=\"toggle method-toggle\" open><summary><section \
             id=\"method.is_sorted_by_key\" class=\"method trait-impl\"><h4>fn is_sorted_by_key\
             </h4></section></summary><div class=\"docblock\">Checks if sorted. \
             <a href=\"trait.Iterator.html#method.is_sorted_by_key\">Read more</a></div></details></main>",
        );
        assert!(text.contains("Steps by the given amount."), "{text}");
        assert!(!text.contains("is_sorted_by_key"), "{text}");
        assert!(!text.contains("Checks if sorted"), "{text}");
    }

    #[test]
    fn code_blocks_never_make_headings() {
        // mdBook's Cargo book: a TOML comment and a setext-looking rule inside <pre>.
        let text = html_to_text(
            "<h2>Specifying dependencies</h2><pre><code class=\"language-toml\">\
             # Not a heading\n[dependencies]\nregex = \"1\"\nbar\n---\n</code></pre><p>After.</p>",
        );
        let headings: Vec<String> = crate::headings::heading_paths(&text)
            .into_iter()
            .map(|(_, path)| path)
            .collect();
        assert_eq!(headings, ["Specifying dependencies"], "{text}");
        assert!(text.contains("```\n# Not a heading\n"), "{text}");
    }

    #[test]
    fn never_more_than_one_blank_line() {
        let text = html_to_text("<p>a</p><p></p><div></div><p>\n\n</p><pre>\n\n\n</pre><p>b</p>");
        assert_eq!(text, "a\n\nb");
    }
}
