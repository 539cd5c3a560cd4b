//! PDF documents (pdf-extract over lopdf), read page by page — each page a section headed
//! "Page N", so a citation names its page —, guarded against the files that would loop it or
//! overflow its stack, its panics caught: a bad upload is an error, never a hung or dead server.

use super::{ParseError, Section, section};

pub(super) fn parse_pdf(bytes: &[u8]) -> Result<(Option<String>, Vec<Section>), ParseError> {
    if !bytes.starts_with(b"%PDF") {
        return Err(ParseError::CorruptPdf("no %PDF header".into()));
    }
    // pdf-extract panics on some malformed files; a bad upload must stay an error.
    let result = std::panic::catch_unwind(|| pdf_pages(bytes));
    let pages = match result {
        Ok(Ok(pages)) => pages,
        Ok(Err(e)) => return Err(ParseError::CorruptPdf(e)),
        Err(_) => {
            return Err(ParseError::CorruptPdf(
                "the PDF structure is invalid".into(),
            ));
        }
    };
    let sections = pages
        .into_iter()
        .map(|(number, text)| section(vec![format!("Page {number}")], &text))
        .collect();
    Ok((None, sections))
}

/// The longest chain of page-tree parents a page may have.
const MAX_PAGE_TREE_DEPTH: usize = 64;

/// A PDF's text by page number, after the checks pdf-extract does not make: it follows a page's `Parent`
/// chain and form XObjects' `Do` calls without bounds, so a page that is its own parent loops
/// for ever and a form that draws itself overflows the stack (an abort no `catch_unwind`
/// catches). Pages whose parents loop are refused; the `Do` calls inside every stream that is
/// drawn as an XObject are dropped (a form inside a form is rare in text documents), so
/// drawing goes one level deep at most.
fn pdf_pages(bytes: &[u8]) -> Result<Vec<(u32, String)>, String> {
    use pdf_extract::{Document, Object, content::Content};
    let mut document = Document::load_mem(bytes).map_err(|e| e.to_string())?;
    if document.is_encrypted() {
        document
            .decrypt("")
            .map_err(|e| format!("the PDF is encrypted: {e}"))?;
    }
    for page in document.page_iter() {
        let mut seen = std::collections::HashSet::new();
        let mut current = page;
        while let Ok(parent) = document
            .get_dictionary(current)
            .and_then(|d| d.get(b"Parent"))
            .and_then(Object::as_reference)
        {
            if !seen.insert(current) || seen.len() > MAX_PAGE_TREE_DEPTH {
                return Err("the page tree loops".into());
            }
            current = parent;
        }
    }
    // Every stream some resource dictionary names as an XObject (whatever its type says).
    let mut drawn = std::collections::BTreeSet::new();
    let mut pending: Vec<&Object> = document.objects.values().collect();
    while let Some(object) = pending.pop() {
        let dictionary = match object {
            Object::Dictionary(d) => d,
            Object::Stream(s) => &s.dict,
            Object::Array(items) => {
                pending.extend(items.iter());
                continue;
            }
            _ => continue,
        };
        for (key, value) in dictionary.iter() {
            if key.as_slice() != b"XObject" {
                pending.push(value);
                continue;
            }
            let names = match value {
                Object::Reference(id) => document.get_dictionary(*id).ok(),
                Object::Dictionary(d) => Some(d),
                _ => None,
            };
            for (_, form) in names.into_iter().flat_map(|d| d.iter()) {
                if let Ok(id) = form.as_reference() {
                    drawn.insert(id);
                }
            }
        }
    }
    for id in drawn {
        let Ok(Object::Stream(stream)) = document.get_object_mut(id) else {
            continue;
        };
        let raw = stream
            .decompressed_content()
            .unwrap_or_else(|_| stream.content.clone());
        let Ok(mut content) = Content::decode(&raw) else {
            continue;
        };
        if content.operations.iter().any(|o| o.operator == "Do") {
            content.operations.retain(|o| o.operator != "Do");
            stream.set_plain_content(content.encode().map_err(|e| e.to_string())?);
        }
    }
    let mut pages = Vec::new();
    for number in document.get_pages().into_keys() {
        let mut text = String::new();
        pdf_extract::output_doc_page(
            &document,
            &mut pdf_extract::PlainTextOutput::new(&mut text),
            number,
        )
        .map_err(|e| e.to_string())?;
        pages.push((number, text));
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::super::{Format, parse_bytes};

    /// Each page is a section named after its number, so a citation names the page.
    #[test]
    fn pages_become_sections_named_after_their_number() {
        let two_pages = crate::testing::pages_pdf(&[
            "Returns take 30 days.",
            "Refunds reach the card in 5 days.",
        ]);
        let parsed = parse_bytes(&two_pages, Format::Pdf, "policy").unwrap();
        let pages: Vec<(String, String)> = parsed
            .sections
            .iter()
            .map(|s| (s.heading_path.join("/"), s.text.clone()))
            .collect();
        assert_eq!(pages.len(), 2, "{pages:?}");
        assert_eq!(pages[0].0, "Page 1");
        assert!(pages[0].1.contains("30 days"), "{pages:?}");
        assert_eq!(pages[1].0, "Page 2");
        assert!(pages[1].1.contains("5 days"), "{pages:?}");
    }

    /// PDFs that loop pdf-extract for ever (a page that is its own parent) or overflow its
    /// stack (a form that draws itself, a page whose content draws itself) are refused or read
    /// without the loop, quickly.
    #[test]
    fn hostile_pdfs_are_errors_or_text_never_a_hang() {
        use crate::testing::{one_page_pdf, pdf, stream};
        let fine = parse_bytes(&one_page_pdf("Returns take 30 days."), Format::Pdf, "x").unwrap();
        assert!(fine.sections[0].text.contains("30 days"), "{fine:?}");
        assert_eq!(fine.sections[0].heading_path, ["Page 1"]);
        let font = "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string();
        let own_parent = pdf(&[
            "<< /Type /Catalog /Pages 2 0 R >>".into(),
            "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".into(),
            "<< /Type /Page /Parent 3 0 R /Contents 4 0 R >>".into(),
            stream("", "BT (x) Tj ET"),
        ]);
        let started = std::time::Instant::now();
        let error = parse_bytes(&own_parent, Format::Pdf, "x").unwrap_err();
        assert!(error.to_string().contains("loops"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let resources = "/Resources << /Font << /F1 5 0 R >> /XObject << /X 6 0 R >> >>";
        let self_drawing_form = pdf(&[
            "<< /Type /Catalog /Pages 2 0 R >>".into(),
            "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".into(),
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R {resources} >>"
            ),
            stream("", "BT /F1 12 Tf 72 720 Td (Outside the form.) Tj ET /X Do"),
            font.clone(),
            stream(
                &format!("/Type /XObject /Subtype /Form /BBox [0 0 612 792] {resources}"),
                "BT /F1 12 Tf 72 700 Td (Inside the form.) Tj ET /X Do",
            ),
        ]);
        let drawn = parse_bytes(&self_drawing_form, Format::Pdf, "x").unwrap();
        let text = &drawn.sections[0].text;
        assert!(
            text.contains("Outside") && text.contains("Inside"),
            "{text}"
        );
        let self_drawing_page = pdf(&[
            "<< /Type /Catalog /Pages 2 0 R >>".into(),
            "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".into(),
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
             /Resources << /Font << /F1 5 0 R >> /XObject << /X 4 0 R >> >> >>"
                .into(),
            stream("", "BT /F1 12 Tf 72 720 Td (Again.) Tj ET /X Do"),
            font,
        ]);
        let _ = parse_bytes(&self_drawing_page, Format::Pdf, "x");
    }
}
