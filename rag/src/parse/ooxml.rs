//! What Office Open XML files (`.xlsx`, `.docx`) share: a zip package of XML parts, read
//! with a cap on each part's decompressed size (a zip bomb is an error), and a small linear
//! tag scanner for those parts (no nesting tracked, no recursion).

use std::io::Read;

/// The most one part may hold once decompressed.
const MAX_PART_BYTES: u64 = 64 << 20;

/// An opened package.
pub(super) struct Package<'a> {
    archive: zip::ZipArchive<std::io::Cursor<&'a [u8]>>,
}

impl<'a> Package<'a> {
    /// Opens `bytes` as a zip package; the error says why it is not one.
    pub(super) fn open(bytes: &'a [u8]) -> Result<Self, String> {
        let archive =
            zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
        Ok(Self { archive })
    }

    /// The text of part `name`; `None` when the package has no such part.
    pub(super) fn part(&mut self, name: &str) -> Result<Option<String>, String> {
        let file = match self.archive.by_name(name) {
            Ok(file) => file,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(format!("{name}: {e}")),
        };
        let mut text = String::new();
        file.take(MAX_PART_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("{name}: {e}"))?;
        if text.len() as u64 > MAX_PART_BYTES {
            return Err(format!("{name} is larger than {MAX_PART_BYTES} bytes"));
        }
        Ok(Some(text))
    }
}

pub(super) fn decode(text: &str) -> String {
    super::html::decode_entities(text)
}

/// The value of attribute `name` (namespace prefix included, as written) in a tag's attributes.
pub(super) fn attribute(attributes: &str, name: &str) -> Option<String> {
    let mut rest = attributes;
    while let Some(at) = rest.find(name) {
        let before_ok = at == 0 || rest.as_bytes()[at - 1].is_ascii_whitespace();
        let after = rest[at + name.len()..].trim_start();
        if before_ok && let Some(value) = after.strip_prefix('=') {
            let value = value.trim_start();
            let quote = value.chars().next()?;
            if quote == '"' || quote == '\'' {
                let end = value[1..].find(quote)?;
                return Some(decode(&value[1..1 + end]));
            }
        }
        rest = &rest[at + name.len()..];
    }
    None
}

/// One XML tag and the text that follows it up to the next tag.
pub(super) struct Tag<'a> {
    /// Without any namespace prefix (`x:row` is `row`), except where it is part of the name
    /// the callers ask for.
    pub(super) name: &'a str,
    pub(super) attributes: &'a str,
    pub(super) closing: bool,
    /// `<c/>`
    pub(super) empty: bool,
    pub(super) text: &'a str,
}

/// The tags of an XML text in order, comments, declarations and processing instructions
/// skipped. Linear in the text; no nesting is tracked (callers keep what state they need).
pub(super) struct Tags<'a> {
    xml: &'a str,
    at: usize,
}

impl<'a> Tags<'a> {
    pub(super) fn new(xml: &'a str) -> Self {
        Self { xml, at: 0 }
    }
}

impl<'a> Iterator for Tags<'a> {
    type Item = Tag<'a>;

    fn next(&mut self) -> Option<Tag<'a>> {
        loop {
            let start = self.at + self.xml[self.at..].find('<')?;
            let end = start + self.xml[start..].find('>')?;
            let inner = &self.xml[start + 1..end];
            let text_end = self.xml[end + 1..]
                .find('<')
                .map_or(self.xml.len(), |n| end + 1 + n);
            self.at = end + 1;
            if inner.starts_with('?') || inner.starts_with('!') {
                if inner.starts_with("!--") && !inner.ends_with("--") {
                    // A comment holding '>': skip to its real end.
                    let close = self.xml[start..].find("-->")?;
                    self.at = start + close + 3;
                }
                continue;
            }
            let closing = inner.starts_with('/');
            let inner = inner.trim_start_matches('/');
            let empty = inner.ends_with('/');
            let inner = inner.trim_end_matches('/');
            let (name, attributes) = inner
                .split_once(|c: char| c.is_ascii_whitespace())
                .unwrap_or((inner, ""));
            let name = name.rsplit(':').next().unwrap_or(name);
            return Some(Tag {
                name,
                attributes,
                closing,
                empty,
                text: &self.xml[end + 1..text_end],
            });
        }
    }
}

/// A zip package of `parts` (name, text), for the Office formats' tests.
#[cfg(test)]
pub(super) fn package(parts: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text) in parts {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .expect("an in-memory zip");
        zip.write_all(text.as_bytes()).expect("an in-memory zip");
    }
    zip.finish().expect("an in-memory zip").into_inner()
}
