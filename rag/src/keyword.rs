//! BM25 keyword index. English is split into lower-cased words (stop words dropped, a light
//! plural / suffix folding); Chinese, which has no spaces, into overlapping character bigrams
//! (plus the single characters of one-character runs).

use std::collections::HashMap;

use crate::text::is_cjk;

const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how",
    "i", "if", "in", "is", "it", "its", "me", "my", "of", "on", "or", "so", "that", "the", "there",
    "this", "to", "was", "what", "when", "where", "which", "who", "why", "will", "with", "you",
    "your",
];

/// Folds common English suffixes so "packages" finds "package" and "installing" "install".
fn fold(word: &str) -> String {
    for suffix in ["ing", "ed", "s"] {
        if let Some(stem) = word.strip_suffix(suffix)
            && stem.len() >= 3
            && !(suffix == "s" && stem.ends_with('s'))
        {
            return stem.to_string();
        }
    }
    word.to_string()
}

/// The terms of a text, in order (repeats kept).
pub fn analyze(text: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut word = String::new();
    let mut cjk_run: Vec<char> = Vec::new();
    let flush_word = |word: &mut String, terms: &mut Vec<String>| {
        if !word.is_empty() {
            let lower = word.to_lowercase();
            if !STOP_WORDS.contains(&lower.as_str()) {
                terms.push(fold(&lower));
            }
            word.clear();
        }
    };
    let flush_cjk = |run: &mut Vec<char>, terms: &mut Vec<String>| {
        match run.len() {
            0 => {}
            1 => terms.push(run[0].to_string()),
            _ => terms.extend(run.windows(2).map(|w| w.iter().collect::<String>())),
        }
        run.clear();
    };
    for c in text.chars() {
        if is_cjk(c) {
            flush_word(&mut word, &mut terms);
            cjk_run.push(c);
        } else if c.is_alphanumeric() {
            flush_cjk(&mut cjk_run, &mut terms);
            word.push(c);
        } else {
            flush_word(&mut word, &mut terms);
            flush_cjk(&mut cjk_run, &mut terms);
        }
    }
    flush_word(&mut word, &mut terms);
    flush_cjk(&mut cjk_run, &mut terms);
    terms
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bm25Config {
    pub k1: f32,
    pub b: f32,
}

impl Default for Bm25Config {
    fn default() -> Self {
        Self { k1: 1.2, b: 0.75 }
    }
}

/// An in-memory inverted index over numbered entries (chunks).
#[derive(Debug, Default, Clone)]
pub struct KeywordIndex {
    postings: HashMap<String, Vec<(u32, u32)>>,
    lengths: Vec<u32>,
    total_length: u64,
    config: Option<Bm25Config>,
}

impl KeywordIndex {
    pub fn new(config: Bm25Config) -> Self {
        Self {
            config: Some(config),
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Adds an entry; its id is its position (0, 1, 2, ...).
    pub fn add(&mut self, text: &str) -> u32 {
        let id = self.lengths.len() as u32;
        let terms = analyze(text);
        let mut counts: HashMap<String, u32> = HashMap::new();
        for term in &terms {
            *counts.entry(term.clone()).or_default() += 1;
        }
        for (term, tf) in counts {
            self.postings.entry(term).or_default().push((id, tf));
        }
        self.lengths.push(terms.len() as u32);
        self.total_length += terms.len() as u64;
        id
    }

    /// The `k` best entries for `query`, best first, with their BM25 scores.
    pub fn search(&self, query: &str, k: usize) -> Vec<(u32, f32)> {
        let Bm25Config { k1, b } = self.config.unwrap_or_default();
        let n = self.lengths.len() as f32;
        if n == 0.0 {
            return Vec::new();
        }
        let average = self.total_length as f32 / n;
        let mut terms = analyze(query);
        terms.sort();
        terms.dedup();
        let mut scores: HashMap<u32, f32> = HashMap::new();
        for term in terms {
            let Some(postings) = self.postings.get(&term) else {
                continue;
            };
            let df = postings.len() as f32;
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
            for &(id, tf) in postings {
                let tf = tf as f32;
                let length = self.lengths[id as usize] as f32;
                let norm = tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * length / average));
                *scores.entry(id).or_default() += idf * norm;
            }
        }
        let mut ranked: Vec<(u32, f32)> = scores.into_iter().collect();
        ranked.sort_by(|a, c| c.1.total_cmp(&a.1).then(a.0.cmp(&c.0)));
        ranked.truncate(k);
        ranked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyzer_handles_english_and_chinese() {
        assert_eq!(
            analyze("How do I install packages?"),
            vec!["install", "package"]
        );
        assert_eq!(
            analyze("重置密码 a中b"),
            vec!["重置", "置密", "密码", "中", "b"]
        );
    }

    #[test]
    fn bm25_prefers_the_matching_and_rarer_term() {
        let mut index = KeywordIndex::new(Bm25Config::default());
        index.add("Debian packages are installed with apt.");
        index.add("The weather is nice today and the sun shines.");
        index.add("如何重置密码：打开设置页面。");
        assert_eq!(index.search("install a package", 3)[0].0, 0);
        assert_eq!(index.search("忘记密码怎么办", 3)[0].0, 2);
        assert!(index.search("quantum chromodynamics", 3).is_empty());
    }
}
