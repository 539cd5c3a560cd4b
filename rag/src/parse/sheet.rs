//! FAQ spreadsheets as support teams keep them: a CSV file whose header names a question column
//! and an answer column (`question` / `answer`, `q` / `a`, `问题` / `答案`, in any case and
//! order; other columns are ignored). Each row becomes a section headed by its question, so
//! retrieval finds the question's words and a citation names it.

use super::{ParseError, Section, section};

const QUESTION_NAMES: &[&str] = &["question", "questions", "q", "问题", "问"];
const ANSWER_NAMES: &[&str] = &["answer", "answers", "a", "答案", "回答", "答"];

fn column(headers: &csv::StringRecord, names: &[&str]) -> Option<usize> {
    headers.iter().position(|h| {
        let h = h.trim().trim_start_matches('\u{feff}').to_lowercase();
        names.contains(&h.as_str())
    })
}

pub(super) fn parse_faq_csv(text: &str) -> Result<(Option<String>, Vec<Section>), ParseError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| ParseError::BadSpreadsheet(e.to_string()))?
        .clone();
    let (Some(question), Some(answer)) = (
        column(&headers, QUESTION_NAMES),
        column(&headers, ANSWER_NAMES),
    ) else {
        return Err(ParseError::BadSpreadsheet(format!(
            "the first row must name a `question` and an `answer` column (found: {})",
            headers
                .iter()
                .map(|h| format!("`{}`", h.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let mut sections = Vec::new();
    for (index, record) in reader.records().enumerate() {
        // Row numbers as a spreadsheet shows them: the header is row 1.
        let row = index + 2;
        let record = record.map_err(|e| ParseError::BadSpreadsheet(format!("row {row}: {e}")))?;
        let cell = |i: usize| record.get(i).map(str::trim).unwrap_or_default();
        let (q, a) = (cell(question), cell(answer));
        match (q.is_empty(), a.is_empty()) {
            (true, true) => continue, // a blank row
            (false, false) => sections.push(section(vec![q.to_string()], a)),
            (true, false) => {
                return Err(ParseError::BadSpreadsheet(format!(
                    "row {row} has an answer but no question"
                )));
            }
            (false, true) => {
                return Err(ParseError::BadSpreadsheet(format!(
                    "row {row} has a question but no answer"
                )));
            }
        }
    }
    Ok((None, sections))
}

#[cfg(test)]
mod tests {
    use super::super::{Format, ParseError, parse_bytes};

    #[test]
    fn rows_become_sections_headed_by_their_question() {
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
        assert!(matches!(
            unterminated,
            ParseError::BadSpreadsheet(_) | ParseError::Empty
        ));
    }
}
