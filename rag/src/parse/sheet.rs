//! FAQ spreadsheets as support teams keep them: a CSV file or an Excel workbook (`.xlsx`, its
//! first worksheet) whose header row names a question column and an answer column (`question` /
//! `answer`, `q` / `a`, `问题` / `答案`, in any case and order; other columns are ignored). Each
//! row becomes a section headed by its question, so retrieval finds the question's words and a
//! citation names it.

use super::ooxml::{Package, Tags, attribute, decode};
use super::{ParseError, Section, section};

const QUESTION_NAMES: &[&str] = &["question", "questions", "q", "问题", "问"];
const ANSWER_NAMES: &[&str] = &["answer", "answers", "a", "答案", "回答", "答"];

fn bad(message: impl Into<String>) -> ParseError {
    ParseError::BadSpreadsheet(message.into())
}

fn column(headers: &[String], names: &[&str]) -> Option<usize> {
    headers.iter().position(|h| {
        let h = h.trim().trim_start_matches('\u{feff}').to_lowercase();
        names.contains(&h.as_str())
    })
}

/// Rows (numbered as a spreadsheet shows them) with a header first: a section per filled row.
fn faq_sections(
    rows: Vec<(usize, Vec<String>)>,
) -> Result<(Option<String>, Vec<Section>), ParseError> {
    let mut rows = rows
        .into_iter()
        .filter(|(_, cells)| cells.iter().any(|c| !c.trim().is_empty()));
    let Some((_, headers)) = rows.next() else {
        return Err(ParseError::Empty);
    };
    let (Some(question), Some(answer)) = (
        column(&headers, QUESTION_NAMES),
        column(&headers, ANSWER_NAMES),
    ) else {
        return Err(bad(format!(
            "the first row must name a `question` and an `answer` column (found: {})",
            headers
                .iter()
                .map(|h| format!("`{}`", h.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let mut sections = Vec::new();
    for (row, cells) in rows {
        let cell = |i: usize| cells.get(i).map(|c| c.trim()).unwrap_or_default();
        let (q, a) = (cell(question), cell(answer));
        match (q.is_empty(), a.is_empty()) {
            (true, true) => continue, // other columns only
            (false, false) => sections.push(section(vec![q.to_string()], a)),
            (true, false) => return Err(bad(format!("row {row} has an answer but no question"))),
            (false, true) => return Err(bad(format!("row {row} has a question but no answer"))),
        }
    }
    Ok((None, sections))
}

pub(super) fn parse_faq_csv(text: &str) -> Result<(Option<String>, Vec<Section>), ParseError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(false)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let row = index + 1;
        let record = record.map_err(|e| bad(format!("row {row}: {e}")))?;
        rows.push((row, record.iter().map(str::to_string).collect()));
    }
    faq_sections(rows)
}

pub(super) fn parse_faq_xlsx(bytes: &[u8]) -> Result<(Option<String>, Vec<Section>), ParseError> {
    let mut package =
        Package::open(bytes).map_err(|e| bad(format!("not an Excel workbook (.xlsx): {e}")))?;
    let mut part = |name: &str| package.part(name).map_err(bad);
    let shared = match part("xl/sharedStrings.xml")? {
        Some(xml) => shared_strings(&xml),
        None => Vec::new(),
    };
    let sheet = first_sheet_path(&mut part)?;
    let xml = part(&sheet)?.ok_or_else(|| bad(format!("the workbook has no {sheet}")))?;
    faq_sections(sheet_rows(&xml, &shared)?)
}

/// The first worksheet's part, through the workbook and its relationships.
fn first_sheet_path(
    part: &mut impl FnMut(&str) -> Result<Option<String>, ParseError>,
) -> Result<String, ParseError> {
    let fallback = "xl/worksheets/sheet1.xml".to_string();
    let (Some(workbook), Some(relations)) = (
        part("xl/workbook.xml")?,
        part("xl/_rels/workbook.xml.rels")?,
    ) else {
        return Ok(fallback);
    };
    let Some(id) = Tags::new(&workbook)
        .find(|t| t.name == "sheet" && !t.closing)
        .and_then(|t| attribute(t.attributes, "r:id"))
    else {
        return Ok(fallback);
    };
    let target = Tags::new(&relations)
        .filter(|t| t.name == "Relationship")
        .find(|t| attribute(t.attributes, "Id").as_deref() == Some(id.as_str()))
        .and_then(|t| attribute(t.attributes, "Target"));
    Ok(match target {
        Some(target) if target.starts_with('/') => target.trim_start_matches('/').to_string(),
        Some(target) => format!("xl/{target}"),
        None => fallback,
    })
}

/// The shared-string table: each `<si>`'s text runs joined (phonetic runs left out).
fn shared_strings(xml: &str) -> Vec<String> {
    let mut strings = Vec::new();
    let mut current = String::new();
    let mut phonetic = false;
    for tag in Tags::new(xml) {
        match (tag.name, tag.closing) {
            ("si", false) => current.clear(),
            ("si", true) => strings.push(std::mem::take(&mut current)),
            ("rPh", closing) => phonetic = !closing && !tag.empty,
            ("t", false) if !phonetic && !tag.empty => current.push_str(&decode(tag.text)),
            _ => {}
        }
    }
    strings
}

/// Rows of a worksheet: each cell's value as text at its column.
fn sheet_rows(xml: &str, shared: &[String]) -> Result<Vec<(usize, Vec<String>)>, ParseError> {
    let mut rows: Vec<(usize, Vec<String>)> = Vec::new();
    // The cell being read: its column, its type, its value so far.
    let mut cell: Option<(usize, String, String)> = None;
    for tag in Tags::new(xml) {
        match (tag.name, tag.closing) {
            ("row", false) => {
                let number = attribute(tag.attributes, "r")
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(rows.last().map_or(1, |(n, _)| n + 1));
                rows.push((number, Vec::new()));
            }
            ("c", false) => {
                let row = rows
                    .last_mut()
                    .ok_or_else(|| bad("a cell outside any row"))?;
                let column = attribute(tag.attributes, "r")
                    .and_then(|r| column_of(&r))
                    .unwrap_or(row.1.len());
                let kind = attribute(tag.attributes, "t").unwrap_or_default();
                cell = Some((column, kind, String::new()));
                if tag.empty {
                    cell = None;
                }
            }
            ("v" | "t", false) if !tag.empty => {
                if let Some((_, _, value)) = cell.as_mut() {
                    value.push_str(&decode(tag.text));
                }
            }
            ("c", true) => {
                let Some((column, kind, value)) = cell.take() else {
                    continue;
                };
                let text = if kind == "s" {
                    let index: usize = value
                        .trim()
                        .parse()
                        .map_err(|_| bad(format!("a shared-string index `{value}`")))?;
                    shared
                        .get(index)
                        .cloned()
                        .ok_or_else(|| bad(format!("shared string {index} does not exist")))?
                } else {
                    value
                };
                let row = &mut rows
                    .last_mut()
                    .ok_or_else(|| bad("a cell outside any row"))?
                    .1;
                if column >= 16_384 {
                    return Err(bad("a cell beyond Excel's last column"));
                }
                if row.len() <= column {
                    row.resize(column + 1, String::new());
                }
                row[column] = text;
            }
            _ => {}
        }
    }
    Ok(rows)
}

/// The zero-based column of a cell reference such as `B7` or `AA12`.
fn column_of(reference: &str) -> Option<usize> {
    let letters: String = reference
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect();
    if letters.is_empty() || letters.len() > 3 {
        return None;
    }
    letters
        .chars()
        .try_fold(0usize, |n, c| {
            Some(n * 26 + (c.to_ascii_uppercase() as usize - 'A' as usize + 1))
        })
        .map(|n| n - 1)
}

#[cfg(test)]
mod tests {
    use super::super::{Format, ParseError, parse_bytes};

    #[test]
    fn csv_rows_become_sections_headed_by_their_question() {
        let csv = "\u{feff}ID,Answer,Question\n\
                   1,\"Within 30 days, with the receipt.\",How long do I have to return an item?\n\
                   2,\"Yes.\nIt is free over 50 EUR.\",Is shipping free?\n\
                   ,,\n";
        let parsed = parse_bytes(csv.as_bytes(), Format::Csv, "faq").unwrap();
        assert_eq!(parsed.title, "faq");
        assert_eq!(parsed.sections.len(), 2);
        assert_eq!(
            parsed.sections[0].heading_path,
            ["How long do I have to return an item?"]
        );
        assert_eq!(parsed.sections[0].text, "Within 30 days, with the receipt.");
        assert_eq!(parsed.sections[1].text, "Yes.\nIt is free over 50 EUR.");
        let zh = "问题,答案\n怎么退货？,三十天内凭收据退货。\n";
        let parsed = parse_bytes(zh.as_bytes(), Format::Csv, "常见问题").unwrap();
        assert_eq!(parsed.sections[0].heading_path, ["怎么退货？"]);
        assert_eq!(parsed.language.as_str(), "zh");
    }

    #[test]
    fn a_spreadsheet_without_its_columns_or_with_half_rows_is_an_error() {
        let error = |text: &str| parse_bytes(text.as_bytes(), Format::Csv, "x").unwrap_err();
        let no_columns = error("name,price\nshoe,10\n");
        assert!(
            no_columns
                .to_string()
                .contains("`question` and an `answer`")
                && no_columns.to_string().contains("`price`"),
            "{no_columns}"
        );
        let half = error("question,answer\nHow?,Like this.\nWhy?,\n");
        assert!(half.to_string().contains("row 3"), "{half}");
        let orphan = error("question,answer\n,Because.\n");
        assert!(orphan.to_string().contains("row 2"), "{orphan}");
        assert!(matches!(error("question,answer\n"), ParseError::Empty));
        let unterminated = error("question,answer\n\"How?,never closed\n");
        assert!(
            matches!(unterminated, ParseError::BadSpreadsheet(_)),
            "{unterminated}"
        );
    }

    /// A workbook written by openpyxl (inline strings, numbers, a blank row, a second sheet;
    /// `tests/fixtures/make_faq_xlsx.py`).
    #[test]
    fn an_excel_workbook_s_first_sheet_is_read() {
        let bytes = include_bytes!("../../tests/fixtures/faq.xlsx");
        let parsed = parse_bytes(bytes, Format::Xlsx, "faq").unwrap();
        let rows: Vec<(String, String)> = parsed
            .sections
            .iter()
            .map(|s| (s.heading_path.join("/"), s.text.clone()))
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "How long do I have to return an item?".to_string(),
                    "Thirty days from delivery, with the receipt & the box.".to_string()
                ),
                (
                    "Do you ship to Switzerland?".into(),
                    "Yes, in four to six working days.".into()
                ),
                ("怎么退货？".into(), "三十天内凭收据退货。".into()),
                ("Can I pay by invoice?".into(), "14".into()),
            ]
        );
    }

    use super::super::ooxml::package as workbook;

    #[test]
    fn shared_strings_and_bad_workbooks() {
        let shared = "<sst><si><t>Question</t></si><si><t>Answer</t></si>\
                      <si><r><rPr><b/></rPr><t>Where </t></r><r><t xml:space=\"preserve\">is it?</t></r>\
                      <rPh><t>ignored</t></rPh></si><si><t>In &lt;Lyon&gt;.</t></si></sst>";
        let sheet = "<worksheet><sheetData><row r=\"1\"><c r=\"B1\" t=\"s\"><v>0</v></c>\
                     <c r=\"C1\" t=\"s\"><v>1</v></c></row><row r=\"3\"><c r=\"A3\"/>\
                     <c r=\"B3\" t=\"s\"><v>2</v></c><c r=\"C3\" t=\"s\"><v>3</v></c></row>\
                     </sheetData></worksheet>";
        let book = workbook(&[
            (
                "xl/workbook.xml",
                "<workbook><sheets><sheet name=\"FAQ\" sheetId=\"1\" r:id=\"rId7\"/></sheets></workbook>",
            ),
            (
                "xl/_rels/workbook.xml.rels",
                "<Relationships><Relationship Id=\"rId7\" Type=\"x\" Target=\"worksheets/faq.xml\"/></Relationships>",
            ),
            ("xl/sharedStrings.xml", shared),
            ("xl/worksheets/faq.xml", sheet),
        ]);
        let parsed = parse_bytes(&book, Format::Xlsx, "faq").unwrap();
        assert_eq!(parsed.sections[0].heading_path, ["Where is it?"]);
        assert_eq!(parsed.sections[0].text, "In <Lyon>.");

        let error = |bytes: &[u8]| {
            parse_bytes(bytes, Format::Xlsx, "x")
                .unwrap_err()
                .to_string()
        };
        assert!(error(b"question,answer\n").contains("not an Excel workbook"));
        assert!(error(&workbook(&[("other.xml", "<a/>")])).contains("sheet1.xml"));
        let dangling = sheet.replace("<v>3</v>", "<v>99</v>");
        let message = error(&workbook(&[
            ("xl/sharedStrings.xml", shared),
            ("xl/worksheets/sheet1.xml", &dangling),
        ]));
        assert!(message.contains("shared string 99"), "{message}");
        let half = sheet.replace("<c r=\"C3\" t=\"s\"><v>3</v></c>", "");
        let message = error(&workbook(&[
            ("xl/sharedStrings.xml", shared),
            ("xl/worksheets/sheet1.xml", &half),
        ]));
        assert!(
            message.contains("row 3 has a question but no answer"),
            "{message}"
        );
    }

    #[test]
    fn cell_references_name_their_column() {
        assert_eq!(super::column_of("A1"), Some(0));
        assert_eq!(super::column_of("Z9"), Some(25));
        assert_eq!(super::column_of("AA12"), Some(26));
        assert_eq!(super::column_of("XFD1"), Some(16_383));
        assert_eq!(super::column_of("12"), None);
    }
}
