//! Text helpers shared by parsing, chunking and the keyword analyzer.

/// True for CJK ideographs and the kana / hangul blocks that are written without spaces.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // kana
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xAC00..=0xD7AF    // hangul syllables
        | 0xF900..=0xFAFF    // compatibility ideographs
        | 0x20000..=0x2FFFF) // extensions B and later
}

/// Collapses runs of spaces and tabs, trims every line, and keeps at most one empty line
/// between paragraphs.
pub fn normalize_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank_lines = 0;
    for line in text.lines() {
        let mut cleaned = String::with_capacity(line.len());
        let mut last_space = false;
        for c in line.trim().chars() {
            let c = if c == '\u{a0}' { ' ' } else { c };
            if c == ' ' || c == '\t' {
                if !last_space {
                    cleaned.push(' ');
                }
                last_space = true;
            } else {
                cleaned.push(c);
                last_space = false;
            }
        }
        if cleaned.is_empty() {
            blank_lines += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_lines > 0 { "\n\n" } else { "\n" });
        }
        blank_lines = 0;
        out.push_str(&cleaned);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_normalized() {
        assert_eq!(
            normalize_whitespace("  a \t b  \n\n\n\n c\u{a0}\u{a0}d\n"),
            "a b\n\nc d"
        );
    }

    #[test]
    fn cjk_is_recognized() {
        assert!(is_cjk('中'));
        assert!(is_cjk('の'));
        assert!(!is_cjk('a'));
        assert!(!is_cjk('。'));
    }
}
