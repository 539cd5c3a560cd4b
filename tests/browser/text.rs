//! Comparing what the widget shows with what the server stored.

/// The text a reader sees of a Markdown answer: without heading and list markers.
pub(crate) fn plain(markdown: &str) -> String {
    let lines = markdown.lines().map(|line| {
        let line = line.trim_start().trim_start_matches('#').trim_start();
        if let Some(rest) = line
            .strip_prefix(['-', '*', '+'])
            .filter(|r| r.starts_with(' '))
        {
            return rest;
        }
        let digits = line.chars().take_while(char::is_ascii_digit).count();
        match line[digits..].strip_prefix(['.', ')']) {
            Some(rest) if digits > 0 && rest.starts_with(' ') => rest,
            _ => line,
        }
    });
    lines.collect::<Vec<_>>().join(" ")
}

/// The words of a text, punctuation and markup left out.
pub(crate) fn words(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
