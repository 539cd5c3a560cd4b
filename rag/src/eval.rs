//! Retrieval metrics at the document level: recall@k and mean reciprocal rank.

/// Accumulates, per question, the rank (1-based) of the right document in the retrieved
/// document list, or `None` when it was not retrieved.
#[derive(Debug, Default, Clone)]
pub struct RetrievalMetrics {
    ranks: Vec<Option<usize>>,
}

impl RetrievalMetrics {
    /// Records one question: `ranked_documents` best first (repeats are ignored).
    pub fn record<T: PartialEq>(&mut self, ranked_documents: &[T], expected: &T) {
        let mut seen: Vec<&T> = Vec::new();
        for doc in ranked_documents {
            if !seen.contains(&doc) {
                seen.push(doc);
            }
        }
        self.ranks
            .push(seen.iter().position(|d| *d == expected).map(|p| p + 1));
    }

    pub fn questions(&self) -> usize {
        self.ranks.len()
    }

    pub fn recall_at(&self, k: usize) -> f64 {
        if self.ranks.is_empty() {
            return 0.0;
        }
        let hits = self
            .ranks
            .iter()
            .filter(|r| r.is_some_and(|r| r <= k))
            .count();
        hits as f64 / self.ranks.len() as f64
    }

    pub fn mrr(&self) -> f64 {
        if self.ranks.is_empty() {
            return 0.0;
        }
        let sum: f64 = self.ranks.iter().flatten().map(|&r| 1.0 / r as f64).sum();
        sum / self.ranks.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_and_mrr_by_hand() {
        let mut m = RetrievalMetrics::default();
        m.record(&["a", "a", "b", "c"], &"b"); // documents a, b, c: rank 2
        m.record(&["x", "y"], &"x"); // rank 1
        m.record(&["x", "y"], &"z"); // missed
        assert_eq!(m.questions(), 3);
        assert!((m.recall_at(1) - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.recall_at(2) - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.mrr() - (0.5 + 1.0) / 3.0).abs() < 1e-12);
    }
}
