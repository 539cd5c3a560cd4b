//! HTML documents (tl's parser): the text outside scripts and styles, headings as sections,
//! character references decoded (every named one of the standard), walked without recursion
//! and to a bounded depth, so hostile markup costs time and memory in proportion to its size.

use super::{Section, SectionBuilder, section};
use crate::text::normalize_whitespace;

/// The longest character reference name (`CounterClockwiseContourIntegral`) and a margin.
const MAX_REFERENCE: usize = 40;

/// Decodes HTML character references: every named one of the HTML standard, decimal and
/// hexadecimal ones (`&#20013;`, `&#x4e2d;`). Anything else stays as written. Linear in the
/// text: each `&` looks at most [`MAX_REFERENCE`] bytes ahead.
pub(super) fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        // A reference is short: look for its `;` in the next few bytes only, so text with
        // many `&` and no `;` decodes in linear time.
        let window = &tail.as_bytes()[..tail.len().min(MAX_REFERENCE + 1)];
        let Some(end) = window.iter().position(|&b| b == b';') else {
            out.push('&');
            rest = &tail[1..];
            continue;
        };
        let name = &tail[1..end];
        let numeric = name
            .strip_prefix("#x")
            .or_else(|| name.strip_prefix("#X"))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .or_else(|| name.strip_prefix('#').and_then(|d| d.parse().ok()))
            .and_then(char::from_u32)
            .filter(|c| *c != '\0');
        let named = || {
            crate::entities::NAMED
                .binary_search_by(|(key, _)| (*key).cmp(name))
                .ok()
                .map(|i| crate::entities::NAMED[i].1)
        };
        if let Some(c) = numeric {
            out.push(c);
            rest = &tail[end + 1..];
        } else if let Some(decoded) = named() {
            // A no-break space is a space to the chunker and the indexes.
            out.push_str(if decoded == "\u{a0}" { " " } else { decoded });
            rest = &tail[end + 1..];
        } else {
            out.push('&');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Markup nested deeper than this is skipped (no real document comes close; a hostile one
/// cannot make the walk's work or memory grow with its depth).
pub const MAX_HTML_DEPTH: usize = 256;

/// The text under `tag` (its raw text, in order), without recursion.
fn text_under(tag: &tl::HTMLTag<'_>, parser: &tl::Parser<'_>) -> String {
    let mut text = String::new();
    let mut pending: Vec<(tl::NodeHandle, usize)> = tag
        .children()
        .top()
        .as_slice()
        .iter()
        .rev()
        .map(|h| (*h, 1))
        .collect();
    while let Some((handle, depth)) = pending.pop() {
        match handle.get(parser) {
            Some(tl::Node::Raw(raw)) => text.push_str(&raw.as_utf8_str()),
            Some(tl::Node::Tag(inner)) if depth < MAX_HTML_DEPTH => {
                pending.extend(
                    inner
                        .children()
                        .top()
                        .as_slice()
                        .iter()
                        .rev()
                        .map(|h| (*h, depth + 1)),
                );
            }
            _ => {}
        }
    }
    text
}

pub(super) fn parse_html(text: &str) -> (Option<String>, Vec<Section>) {
    let Ok(dom) = tl::parse(text, tl::ParserOptions::default()) else {
        // tl accepts almost anything; if it does not, keep the text without markup.
        return (None, vec![section(Vec::new(), text)]);
    };
    let parser = dom.parser();
    let mut builder = SectionBuilder::default();
    let mut page_title = None;
    /// A node to visit (with its depth), or what to write when an element closes.
    enum Step {
        Visit(tl::NodeHandle, usize),
        Close(&'static str),
    }
    // An explicit stack, not recursion: deeply nested markup cannot overflow the thread's.
    let mut steps: Vec<Step> = dom
        .children()
        .iter()
        .rev()
        .map(|h| Step::Visit(*h, 0))
        .collect();
    while let Some(step) = steps.pop() {
        let (handle, depth) = match step {
            Step::Visit(handle, depth) => (handle, depth),
            Step::Close(text) => {
                builder.current.push_str(text);
                continue;
            }
        };
        let Some(node) = handle.get(parser) else {
            continue;
        };
        let tag = match node {
            tl::Node::Raw(raw) => {
                builder
                    .current
                    .push_str(&decode_entities(&raw.as_utf8_str()));
                continue;
            }
            tl::Node::Comment(_) => continue,
            tl::Node::Tag(tag) => tag,
        };
        if depth >= MAX_HTML_DEPTH {
            continue;
        }
        let name = tag.name().as_utf8_str().to_ascii_lowercase();
        match name.as_str() {
            "script" | "style" | "noscript" | "template" => {}
            "title" => {
                page_title = Some(normalize_whitespace(&decode_entities(&text_under(
                    tag, parser,
                ))));
            }
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                let level = usize::from(name.as_bytes()[1] - b'0');
                let text = normalize_whitespace(&decode_entities(&text_under(tag, parser)));
                builder.heading(level, text);
            }
            _ => {
                let block = matches!(
                    name.as_str(),
                    "p" | "div"
                        | "li"
                        | "tr"
                        | "pre"
                        | "blockquote"
                        | "section"
                        | "article"
                        | "table"
                        | "ul"
                        | "ol"
                        | "dd"
                        | "dt"
                        | "br"
                );
                if name == "li" {
                    builder.current.push_str("\n- ");
                }
                if block {
                    steps.push(Step::Close("\n\n"));
                } else if name == "td" || name == "th" {
                    steps.push(Step::Close(" | "));
                }
                steps.extend(
                    tag.children()
                        .top()
                        .as_slice()
                        .iter()
                        .rev()
                        .map(|h| Step::Visit(*h, depth + 1)),
                );
            }
        }
    }
    let (h1, sections) = builder.finish();
    (page_title.or(h1), sections)
}

#[cfg(test)]
mod tests {
    use super::super::{Format, parse_bytes};
    use super::*;

    #[test]
    fn every_named_reference_decodes_and_others_stay() {
        assert_eq!(
            decode_entities(
                "&eacute;t&eacute; &mdash; 5&nbsp;&euro; &hellip; &CounterClockwiseContourIntegral;"
            ),
            "été — 5 € … \u{2233}"
        );
        assert_eq!(
            decode_entities("&#20013;&#x6587; &nosuch; & &amp &#0; &#xZZ;"),
            "中文 &nosuch; & &amp &#0; &#xZZ;"
        );
        // The table is sorted, so binary search finds every name.
        assert!(
            crate::entities::NAMED
                .windows(2)
                .all(|pair| pair[0].0 < pair[1].0)
        );
        assert_eq!(crate::entities::NAMED.len(), 2125);
    }

    /// Many `&` without a `;` and markup nested far deeper than any document: both parse,
    /// quickly, without overflowing the stack (the walk is iterative and bounded).
    #[test]
    fn hostile_html_parses_in_bounded_time_and_stack() {
        let ampersands = "&".repeat(2_000_000);
        let started = std::time::Instant::now();
        assert_eq!(decode_entities(&ampersands).len(), 2_000_000);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let depth = 200_000;
        let nested = format!(
            "<p>top</p><h1>{}deep{}</h1>{}<p>inside</p>{}",
            "<b>".repeat(depth),
            "</b>".repeat(depth),
            "<div>".repeat(depth),
            "</div>".repeat(depth)
        );
        // A small stack, as a server's worker threads have: recursion would overflow it.
        let parsed = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || parse_bytes(nested.as_bytes(), Format::Html, "x"))
            .unwrap()
            .join()
            .expect("no stack overflow")
            .unwrap();
        assert_eq!(parsed.sections[0].text, "top");
        assert!(!parsed.sections.iter().any(|s| s.text.contains("inside")));
        let shallow = "<div><div><p>kept</p></div></div>";
        let doc = parse_bytes(shallow.as_bytes(), Format::Html, "x").unwrap();
        assert_eq!(doc.sections[0].text, "kept");
    }
}
