//! `kefu eval`: retrieval against the documents that answer each question (`retrieval`),
//! answers against reference answers through the server's own answer pipeline (`answers`), and
//! the scorer alone on answers got elsewhere (`score`).

pub mod answers;
pub mod retrieval;
pub mod score;

/// A question file's text; an unreadable or non-UTF-8 file is an error naming it.
pub(crate) fn read_text(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid UTF-8 (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// The stored document a `source_doc` names: the one whose path ends with it.
pub(crate) fn matching_path<'a>(paths: &'a [String], source_doc: &str) -> Option<&'a str> {
    let suffix = format!("/{}", source_doc.trim_start_matches("./"));
    paths
        .iter()
        .find(|p| p.ends_with(&suffix) || p.as_str() == source_doc)
        .map(String::as_str)
}

/// A progress bar over `len` questions on standard error.
pub(crate) fn progress(len: usize, message: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:12} [{bar:30}] {pos}/{len} questions, {elapsed} (about {eta} left) {prefix}",
        )
        .expect("progress template is valid")
        .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_docs_match_by_path_suffix() {
        let paths = vec![
            "/data/kb/en/debian-faq/ftparchives.md".to_string(),
            "/data/kb/zh/debian-faq/ftparchives.md".to_string(),
        ];
        assert_eq!(
            matching_path(&paths, "kb/zh/debian-faq/ftparchives.md"),
            Some("/data/kb/zh/debian-faq/ftparchives.md")
        );
        assert_eq!(matching_path(&paths, "archives.md"), None);
        assert_eq!(matching_path(&paths, "kb/en/other.md"), None);
    }
}
