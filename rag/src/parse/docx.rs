//! Word documents (`.docx`): the paragraphs of `word/document.xml` in order, tables' cells
//! included, each paragraph's text runs joined (tabs and breaks kept as whitespace, deleted
//! text left out). A paragraph whose style is a heading — by the style's name (`heading 1`…,
//! `Title`, in any language Word writes the id in) or its outline level — opens a section, so
//! citations name the heading as they do for Markdown. The title is the document's own
//! (`docProps/core.xml`), else its `Title` paragraph, else the file's name.

use std::collections::HashMap;

use super::ooxml::{Package, Tags, attribute, decode};
use super::{ParseError, Section, SectionBuilder};

fn bad(message: impl Into<String>) -> ParseError {
    ParseError::BadWordDocument(message.into())
}

pub(super) fn parse_docx(bytes: &[u8]) -> Result<(Option<String>, Vec<Section>), ParseError> {
    let mut package =
        Package::open(bytes).map_err(|e| bad(format!("not a Word document (.docx): {e}")))?;
    let document = package
        .part("word/document.xml")
        .map_err(bad)?
        .ok_or_else(|| bad("the package has no word/document.xml (not a Word document)"))?;
    let levels = match package.part("word/styles.xml").map_err(bad)? {
        Some(xml) => heading_styles(&xml),
        None => HashMap::new(),
    };
    let core_title = package
        .part("docProps/core.xml")
        .map_err(bad)?
        .and_then(|xml| document_title(&xml));
    let (title, sections) = sections(&document, &levels);
    Ok((core_title.or(title), sections))
}

/// The heading level of each paragraph style that is a heading: `Title` is 1, `heading N` is
/// N + 1 (below the title), or the style's outline level + 2.
fn heading_styles(xml: &str) -> HashMap<String, usize> {
    let mut levels = HashMap::new();
    let mut style: Option<String> = None;
    for tag in Tags::new(xml) {
        match (tag.name, tag.closing) {
            ("style", false) => style = attribute(tag.attributes, "w:styleId"),
            ("style", true) => style = None,
            ("name", false) => {
                let (Some(id), Some(name)) = (&style, attribute(tag.attributes, "w:val")) else {
                    continue;
                };
                if let Some(level) = level_of_name(&name) {
                    levels.insert(id.clone(), level);
                }
            }
            ("outlineLvl", false) => {
                let (Some(id), Some(level)) = (&style, attribute(tag.attributes, "w:val")) else {
                    continue;
                };
                if let Ok(level) = level.parse::<usize>()
                    && level < 9
                {
                    levels.entry(id.clone()).or_insert(level + 2);
                }
            }
            _ => {}
        }
    }
    levels
}

/// `Title` → 1, `heading 2` → 3; other names are not headings.
fn level_of_name(name: &str) -> Option<usize> {
    let name = name.trim().to_lowercase();
    if name == "title" {
        return Some(1);
    }
    let number = name.strip_prefix("heading")?.trim();
    number
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=9).contains(n))
        .map(|n| n + 1)
}

/// `<dc:title>` of the core properties, when it says something.
fn document_title(xml: &str) -> Option<String> {
    Tags::new(xml)
        .find(|t| t.name == "title" && !t.closing && !t.empty)
        .map(|t| decode(t.text).trim().to_string())
        .filter(|t| !t.is_empty())
}

/// The body's paragraphs as sections under their headings.
fn sections(xml: &str, levels: &HashMap<String, usize>) -> (Option<String>, Vec<Section>) {
    let mut builder = SectionBuilder::default();
    let mut paragraph = String::new();
    let mut level: Option<usize> = None;
    for tag in Tags::new(xml) {
        match (tag.name, tag.closing) {
            ("p", false) if !tag.empty => {
                paragraph.clear();
                level = None;
            }
            ("pStyle", false) => {
                level = attribute(tag.attributes, "w:val").and_then(|id| levels.get(&id).copied());
            }
            ("outlineLvl", false) => {
                if let Some(n) =
                    attribute(tag.attributes, "w:val").and_then(|v| v.parse::<usize>().ok())
                    && n < 9
                {
                    level = level.or(Some(n + 2));
                }
            }
            // A run's text (`<w:delText>` and `<w:instrText>`, deleted text and field codes,
            // are other tags and never shown).
            ("t", false) if !tag.empty => paragraph.push_str(&decode(tag.text)),
            ("tab", false) => paragraph.push('\t'),
            ("br" | "cr", false) => paragraph.push('\n'),
            ("p", true) => {
                let text = paragraph.trim();
                match level {
                    Some(level) if !text.is_empty() => builder
                        .heading(level, text.split_whitespace().collect::<Vec<_>>().join(" ")),
                    _ => {
                        builder.current.push_str(&paragraph);
                        builder.current.push_str("\n\n");
                    }
                }
                paragraph.clear();
                level = None;
            }
            _ => {}
        }
    }
    let (first_heading, sections) = builder.finish();
    (first_heading, sections)
}

#[cfg(test)]
mod tests {
    use super::super::{Format, ParseError, parse_bytes};

    use super::super::ooxml::package as word_document;

    fn paragraph(style: Option<&str>, runs: &str) -> String {
        let style = style.map_or(String::new(), |s| {
            format!("<w:pPr><w:pStyle w:val=\"{s}\"/></w:pPr>")
        });
        format!("<w:p>{style}{runs}</w:p>")
    }

    fn run(text: &str) -> String {
        format!("<w:r><w:t xml:space=\"preserve\">{text}</w:t></w:r>")
    }

    const STYLES: &str = r#"<?xml version="1.0"?><w:styles xmlns:w="x">
        <w:style w:type="paragraph" w:styleId="Title"><w:name w:val="Title"/></w:style>
        <w:style w:type="paragraph" w:styleId="Heading1"><w:name w:val="heading 1"/></w:style>
        <w:style w:type="paragraph" w:styleId="2"><w:name w:val="heading 2"/></w:style>
        <w:style w:type="paragraph" w:styleId="Custom"><w:name w:val="My heading"/>
          <w:pPr><w:outlineLvl w:val="0"/></w:pPr></w:style>
        <w:style w:type="paragraph" w:styleId="Normal"><w:name w:val="Normal"/></w:style>
        </w:styles>"#;

    #[test]
    fn paragraphs_become_sections_under_their_headings() {
        let body = [
            paragraph(Some("Title"), &run("Returns &amp; refunds")),
            paragraph(None, &run("How returns work at the shop.")),
            paragraph(Some("Heading1"), &run("Time limits")),
            paragraph(
                Some("Normal"),
                &format!(
                    "{}<w:r><w:tab/></w:r>{}<w:r><w:delText>not this</w:delText></w:r>",
                    run("Within 30 days,"),
                    run("with the receipt.")
                ),
            ),
            paragraph(Some("2"), &run("Sale items")),
            format!(
                "<w:tbl><w:tr><w:tc>{}</w:tc><w:tc>{}</w:tc></w:tr></w:tbl>",
                paragraph(None, &run("Clearance")),
                paragraph(None, &run("final sale"))
            ),
            paragraph(Some("Custom"), &run("退货")),
            paragraph(None, &run("七天无理由退货。")),
            "<w:p/>".to_string(),
        ]
        .concat();
        let document = format!(
            "<?xml version=\"1.0\"?><w:document xmlns:w=\"x\"><w:body>{body}</w:body></w:document>"
        );
        let bytes = word_document(&[
            ("word/document.xml", &document),
            ("word/styles.xml", STYLES),
        ]);
        let parsed = parse_bytes(&bytes, Format::Docx, "fallback").unwrap();
        assert_eq!(parsed.title, "Returns & refunds");
        let sections: Vec<(Vec<String>, String)> = parsed
            .sections
            .iter()
            .map(|s| (s.heading_path.clone(), s.text.clone()))
            .collect();
        let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            sections,
            vec![
                (
                    path(&["Returns & refunds"]),
                    "How returns work at the shop.".to_string()
                ),
                (
                    path(&["Returns & refunds", "Time limits"]),
                    "Within 30 days, with the receipt.".to_string()
                ),
                (
                    path(&["Returns & refunds", "Time limits", "Sale items"]),
                    "Clearance\n\nfinal sale".to_string()
                ),
                (
                    path(&["Returns & refunds", "退货"]),
                    "七天无理由退货。".to_string()
                ),
            ]
        );
    }

    /// A document written by python-docx (`tests/fixtures/make_guide_docx.py`): its default
    /// template's heading styles, bold runs, a table.
    #[test]
    fn a_word_document_is_read_under_its_headings() {
        let bytes = include_bytes!("../../tests/fixtures/guide.docx");
        let parsed = parse_bytes(bytes, Format::Docx, "guide").unwrap();
        assert_eq!(parsed.title, "Shop guide");
        let sections: Vec<(String, &str)> = parsed
            .sections
            .iter()
            .map(|s| (s.heading_path.join(" > "), s.text.as_str()))
            .collect();
        assert_eq!(
            sections,
            vec![
                (
                    "Returns".to_string(),
                    "Parcels can be returned within 30 days of delivery, with the receipt & the box."
                ),
                (
                    "Returns > Damaged parcels".to_string(),
                    "Report damage within 48 hours and keep the packaging."
                ),
                (
                    "Shipping".to_string(),
                    "Switzerland\n\nfour to six working days\n\nGermany\n\ntwo working days"
                ),
                ("退货".to_string(), "三十天内凭收据退货。"),
            ]
        );
    }

    #[test]
    fn the_core_title_wins_and_bad_documents_are_clear_errors() {
        let document = format!(
            "<w:document><w:body>{}</w:body></w:document>",
            paragraph(None, &run("Only text."))
        );
        let bytes = word_document(&[
            ("word/document.xml", &document),
            (
                "docProps/core.xml",
                "<cp:coreProperties><dc:title>Shop guide</dc:title></cp:coreProperties>",
            ),
        ]);
        let parsed = parse_bytes(&bytes, Format::Docx, "fallback").unwrap();
        assert_eq!(parsed.title, "Shop guide");
        assert_eq!(parsed.sections[0].text, "Only text.");

        // Not a zip; a zip without the document part; a document without text.
        for (bytes, expected) in [
            (b"PK\x03\x04 not really".to_vec(), "not a Word document"),
            (
                word_document(&[("xl/workbook.xml", "<workbook/>")]),
                "no word/document.xml",
            ),
        ] {
            let error = parse_bytes(&bytes, Format::Docx, "x").unwrap_err();
            assert!(matches!(error, ParseError::BadWordDocument(_)), "{error:?}");
            assert!(error.to_string().contains(expected), "{error}");
        }
        let empty = word_document(&[(
            "word/document.xml",
            "<w:document><w:body><w:p/></w:body></w:document>",
        )]);
        assert!(matches!(
            parse_bytes(&empty, Format::Docx, "x"),
            Err(ParseError::Empty)
        ));
    }
}
