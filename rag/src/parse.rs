//! Parsing Markdown, HTML, plain text, PDF and FAQ spreadsheets (CSV, XLSX) into titled
//! sections with heading paths, with the document's language (zh / en) detected.

use std::path::Path;

use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};
use serde::{Deserialize, Serialize};

use crate::text::{is_cjk, normalize_whitespace};

mod docx;
mod html;
mod ooxml;
mod pdf;
mod sheet;

/// Files larger than this are refused (a knowledge-base document, not a data dump).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    En,
    Zh,
}

impl Language {
    pub fn as_str(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Zh => "zh",
        }
    }

    /// Chinese when ideographs make up at least a tenth of the letters; English otherwise.
    pub fn detect(text: &str) -> Self {
        let (mut cjk, mut letters) = (0usize, 0usize);
        for c in text.chars() {
            if is_cjk(c) {
                cjk += 1;
                letters += 1;
            } else if c.is_alphabetic() {
                letters += 1;
            }
        }
        if letters > 0 && cjk * 10 >= letters {
            Language::Zh
        } else {
            Language::En
        }
    }
}

/// A run of text under one heading path (`["Chapter 1. Definitions", "1.2. What is Debian?"]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub heading_path: Vec<String>,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedDocument {
    pub title: String,
    pub language: Language,
    pub sections: Vec<Section>,
}

impl ParsedDocument {
    pub fn char_count(&self) -> usize {
        self.sections.iter().map(|s| s.text.chars().count()).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{0}: no such file")]
    NotFound(String),
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error(
        "unsupported file type `{0}` (supported: .md, .markdown, .html, .htm, .txt, .pdf, \
         .csv, .xlsx, .docx)"
    )]
    Unsupported(String),
    #[error("the file is empty (no text after parsing)")]
    Empty,
    #[error("the file is {bytes} bytes; the limit is {limit}")]
    TooLarge { bytes: u64, limit: u64 },
    #[error("the file looks binary (a NUL byte at offset {offset}), not text")]
    Binary { offset: usize },
    #[error("the file is not valid UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("the PDF cannot be read: {0}")]
    CorruptPdf(String),
    #[error("the FAQ spreadsheet cannot be read: {0}")]
    BadSpreadsheet(String),
    #[error("the Word document cannot be read: {0}")]
    BadWordDocument(String),
}

/// The formats Kefu reads, by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Markdown,
    Html,
    Text,
    Pdf,
    /// A FAQ spreadsheet: question and answer columns.
    Csv,
    /// The same as an Excel workbook (its first worksheet).
    Xlsx,
    /// A Word document: paragraphs under their headings.
    Docx,
}

impl Format {
    pub fn of(path: &Path) -> Result<Self, ParseError> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        Ok(match ext.as_str() {
            "md" | "markdown" => Format::Markdown,
            "html" | "htm" => Format::Html,
            "txt" | "text" => Format::Text,
            "pdf" => Format::Pdf,
            "csv" => Format::Csv,
            "xlsx" => Format::Xlsx,
            "docx" => Format::Docx,
            _ => {
                return Err(ParseError::Unsupported(if ext.is_empty() {
                    "(no extension)".into()
                } else {
                    format!(".{ext}")
                }));
            }
        })
    }
}

/// Reads and parses one file.
pub fn parse_file(path: &Path) -> Result<ParsedDocument, ParseError> {
    let format = Format::of(path)?;
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ParseError::NotFound(shown.clone()),
        _ => ParseError::Io {
            path: shown.clone(),
            message: e.to_string(),
        },
    })?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(ParseError::TooLarge {
            bytes: meta.len(),
            limit: MAX_FILE_BYTES,
        });
    }
    let bytes = std::fs::read(path).map_err(|e| ParseError::Io {
        path: shown,
        message: e.to_string(),
    })?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_bytes(&bytes, format, &stem)
}

/// Parses the bytes of a document; `fallback_title` is used when the document names none.
pub fn parse_bytes(
    bytes: &[u8],
    format: Format,
    fallback_title: &str,
) -> Result<ParsedDocument, ParseError> {
    let (title, sections) = match format {
        Format::Pdf => pdf::parse_pdf(bytes)?,
        Format::Xlsx => sheet::parse_faq_xlsx(bytes)?,
        Format::Docx => docx::parse_docx(bytes)?,
        _ => {
            let text = as_text(bytes)?;
            match format {
                Format::Markdown => parse_markdown(text),
                Format::Html => html::parse_html(text),
                Format::Csv => sheet::parse_faq_csv(text)?,
                _ => (None, vec![section(Vec::new(), text)]),
            }
        }
    };
    let sections: Vec<Section> = sections
        .into_iter()
        .filter(|s| !s.text.is_empty())
        .collect();
    if sections.is_empty() {
        return Err(ParseError::Empty);
    }
    let title = title
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| fallback_title.to_string());
    let sample: String = sections.iter().map(|s| s.text.as_str()).collect();
    Ok(ParsedDocument {
        language: Language::detect(&sample),
        title,
        sections,
    })
}

fn as_text(bytes: &[u8]) -> Result<&str, ParseError> {
    if let Some(offset) = bytes.iter().take(64 * 1024).position(|&b| b == 0) {
        return Err(ParseError::Binary { offset });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| ParseError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

fn section(heading_path: Vec<String>, text: &str) -> Section {
    Section {
        heading_path,
        text: normalize_whitespace(text),
    }
}

/// Keeps a stack of headings by level; text goes to the section of the innermost heading.
#[derive(Default)]
struct SectionBuilder {
    headings: Vec<(usize, String)>,
    current: String,
    sections: Vec<Section>,
    title: Option<String>,
}

impl SectionBuilder {
    fn heading(&mut self, level: usize, text: String) {
        self.flush();
        if level == 1 && self.title.is_none() {
            self.title = Some(text.clone());
        }
        self.headings.retain(|(l, _)| *l < level);
        self.headings.push((level, text));
    }

    fn flush(&mut self) {
        let path = self.headings.iter().map(|(_, h)| h.clone()).collect();
        let text = std::mem::take(&mut self.current);
        if !text.trim().is_empty() {
            self.sections.push(section(path, &text));
        }
    }

    fn finish(mut self) -> (Option<String>, Vec<Section>) {
        self.flush();
        (self.title, self.sections)
    }
}

fn heading_level(level: HeadingLevel) -> usize {
    match level {
        HeadingLevel::H1 => 1,
        HeadingLevel::H2 => 2,
        HeadingLevel::H3 => 3,
        HeadingLevel::H4 => 4,
        HeadingLevel::H5 => 5,
        HeadingLevel::H6 => 6,
    }
}

fn parse_markdown(text: &str) -> (Option<String>, Vec<Section>) {
    let mut builder = SectionBuilder::default();
    let mut heading: Option<(usize, String)> = None;
    for event in Parser::new(text) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                heading = Some((heading_level(level), String::new()))
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some((level, text)) = heading.take() {
                    builder.heading(level, normalize_whitespace(&text));
                }
            }
            Event::Text(t) | Event::Code(t) => match &mut heading {
                Some((_, h)) => h.push_str(&t),
                None => builder.current.push_str(&t),
            },
            Event::SoftBreak => builder.current.push(' '),
            Event::HardBreak => builder.current.push('\n'),
            Event::Start(Tag::Item) => builder.current.push_str("\n- "),
            Event::End(TagEnd::Paragraph | TagEnd::CodeBlock | TagEnd::List(_))
            | Event::End(TagEnd::Item | TagEnd::BlockQuote(_) | TagEnd::TableRow) => {
                builder.current.push_str("\n\n")
            }
            Event::End(TagEnd::TableCell) => builder.current.push_str(" | "),
            // Markup is dropped; a placeholder that only looks like a tag (`<foo>_<Version>.deb`
            // in a FAQ) is text the reader needs.
            Event::InlineHtml(h) | Event::Html(h) => {
                let kept = html_as_text(&h);
                match &mut heading {
                    Some((_, text)) => text.push_str(kept),
                    None => builder.current.push_str(kept),
                }
            }
            _ => {}
        }
    }
    builder.finish()
}

/// Element names an author writes inside Markdown.
const HTML_ELEMENTS: &[&str] = &[
    "a",
    "abbr",
    "address",
    "article",
    "aside",
    "audio",
    "b",
    "blockquote",
    "body",
    "br",
    "button",
    "caption",
    "center",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "del",
    "details",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "embed",
    "figcaption",
    "figure",
    "font",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "head",
    "header",
    "hr",
    "html",
    "i",
    "iframe",
    "img",
    "input",
    "ins",
    "kbd",
    "label",
    "li",
    "link",
    "main",
    "mark",
    "meta",
    "nav",
    "noscript",
    "object",
    "ol",
    "p",
    "picture",
    "pre",
    "q",
    "s",
    "samp",
    "script",
    "section",
    "select",
    "small",
    "source",
    "span",
    "strike",
    "strong",
    "style",
    "sub",
    "summary",
    "sup",
    "svg",
    "table",
    "tbody",
    "td",
    "template",
    "textarea",
    "tfoot",
    "th",
    "thead",
    "title",
    "tr",
    "tt",
    "u",
    "ul",
    "var",
    "video",
    "wbr",
];

/// What raw HTML in Markdown leaves in the text: markup (an element of HTML, a comment, a
/// declaration) nothing — a line break a newline —, text in angle brackets itself.
fn html_as_text(html: &str) -> &str {
    let Some(rest) = html.trim_start().strip_prefix('<') else {
        return "";
    };
    if rest.starts_with('!') || rest.starts_with('?') {
        return "";
    }
    let name: String = rest
        .trim_start_matches('/')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let name = name.to_ascii_lowercase();
    if name == "br" {
        "\n"
    } else if HTML_ELEMENTS.contains(&name.as_str()) || name.contains('-') {
        ""
    } else {
        html
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_keeps_title_and_heading_paths() {
        let doc = parse_bytes(
            b"# Guide\n\nIntro text.\n\n## Install\n\nRun   `apt`.\n\n### Offline\n\n- one\n- two\n\n## Remove\n\nBye.",
            Format::Markdown,
            "fallback",
        )
        .unwrap();
        assert_eq!(doc.title, "Guide");
        assert_eq!(doc.language, Language::En);
        let paths: Vec<Vec<String>> = doc
            .sections
            .iter()
            .map(|s| s.heading_path.clone())
            .collect();
        assert_eq!(
            paths,
            vec![
                vec!["Guide".to_string()],
                vec!["Guide".into(), "Install".into()],
                vec!["Guide".into(), "Install".into(), "Offline".into()],
                vec!["Guide".into(), "Remove".into()],
            ]
        );
        assert_eq!(doc.sections[1].text, "Run apt.");
        assert!(doc.sections[2].text.contains("- one"));
    }

    #[test]
    fn markdown_keeps_placeholders_in_angle_brackets_and_drops_markup() {
        let doc = parse_bytes(
            b"# Names

Files are named <foo>_<VersionNumber>-<DebianRevisionNumber>.deb               here.

Some <b>bold</b> text<br>and <!-- a comment --> more.",
            Format::Markdown,
            "x",
        )
        .unwrap();
        let text = &doc.sections[0].text;
        assert!(
            text.contains("<foo>_<VersionNumber>-<DebianRevisionNumber>.deb"),
            "{text}"
        );
        assert!(text.contains("Some bold text\nand"), "{text}");
        assert!(!text.contains("<b>") && !text.contains("comment"), "{text}");
    }

    #[test]
    fn html_drops_scripts_decodes_entities_and_keeps_headings() {
        let html = "<html><head><title>FAQ &amp; help</title><style>p{}</style></head><body>\
            <h1>Help</h1><p>Fish &amp; chips &#x4e2d;</p><script>alert(1)</script>\
            <h2>退款</h2><p>退款需要三到五天。</p></body></html>";
        let doc = parse_bytes(html.as_bytes(), Format::Html, "x").unwrap();
        assert_eq!(doc.title, "FAQ & help");
        assert_eq!(doc.sections[0].text, "Fish & chips 中");
        assert_eq!(doc.sections[1].heading_path, vec!["Help", "退款"]);
        assert!(!doc.sections.iter().any(|s| s.text.contains("alert")));
    }

    #[test]
    fn language_is_detected_per_document() {
        assert_eq!(
            Language::detect("如何重置密码？请登录 account 页面。"),
            Language::Zh
        );
        assert_eq!(
            Language::detect("How do I reset my password? 谢谢"),
            Language::En
        );
    }

    #[test]
    fn bad_files_are_clear_errors() {
        assert!(matches!(
            parse_bytes(b"", Format::Text, "x"),
            Err(ParseError::Empty)
        ));
        assert!(matches!(
            parse_bytes(b"  \n\n \t", Format::Markdown, "x"),
            Err(ParseError::Empty)
        ));
        assert!(matches!(
            parse_bytes(b"\x7fELF\x02\x01\x01\x00\x00", Format::Markdown, "x"),
            Err(ParseError::Binary { offset: 7 })
        ));
        assert!(matches!(
            parse_bytes(b"caf\xe9 au lait", Format::Text, "x"),
            Err(ParseError::NotUtf8 { offset: 3 })
        ));
        assert!(matches!(
            parse_bytes(b"%PDF-1.4\n garbage that is no pdf", Format::Pdf, "x"),
            Err(ParseError::CorruptPdf(_))
        ));
        assert!(matches!(
            parse_bytes(b"hello", Format::Pdf, "x"),
            Err(ParseError::CorruptPdf(_))
        ));
        assert!(matches!(
            Format::of(Path::new("slides.pptx")),
            Err(ParseError::Unsupported(ext)) if ext == ".pptx"
        ));
        assert!(matches!(
            parse_file(Path::new("/no/such/file.md")),
            Err(ParseError::NotFound(_))
        ));
    }
}
