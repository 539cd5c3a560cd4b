//! Reciprocal-rank fusion: `score(d) = Σ weight_i / (k + rank_i(d))` over the ranked lists.

use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusionConfig {
    /// Larger k flattens the advantage of the first ranks (60 in the original paper).
    pub k: f64,
}

impl Default for FusionConfig {
    fn default() -> Self {
        Self { k: 60.0 }
    }
}

/// Fuses ranked lists (best first), each with a weight; ties keep first-seen order.
pub fn reciprocal_rank_fusion<T: Clone + Eq + Hash>(
    lists: &[(&[T], f64)],
    config: FusionConfig,
) -> Vec<(T, f64)> {
    let mut scores: HashMap<T, (f64, usize)> = HashMap::new();
    let mut order = 0;
    for (list, weight) in lists {
        for (rank, item) in list.iter().enumerate() {
            let entry = scores.entry(item.clone()).or_insert_with(|| {
                order += 1;
                (0.0, order)
            });
            entry.0 += weight / (config.k + rank as f64 + 1.0);
        }
    }
    let mut fused: Vec<(T, f64, usize)> = scores.into_iter().map(|(t, (s, o))| (t, s, o)).collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
    fused.into_iter().map(|(t, s, _)| (t, s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_beats_a_single_first_place() {
        let dense = ["a", "b", "c"];
        let keyword = ["b", "d", "a"];
        let fused = reciprocal_rank_fusion(
            &[(&dense[..], 1.0), (&keyword[..], 1.0)],
            FusionConfig::default(),
        );
        let ids: Vec<&str> = fused.iter().map(|(t, _)| *t).collect();
        assert_eq!(ids, vec!["b", "a", "d", "c"]);
        // 1/61 + 1/63 for a; 1/62 + 1/61 for b.
        assert!((fused[0].1 - (1.0 / 62.0 + 1.0 / 61.0)).abs() < 1e-12);
    }

    #[test]
    fn weights_shift_the_order() {
        let dense = ["a", "b"];
        let keyword = ["b", "a"];
        let fused = reciprocal_rank_fusion(
            &[(&dense[..], 2.0), (&keyword[..], 1.0)],
            FusionConfig { k: 1.0 },
        );
        assert_eq!(fused[0].0, "a");
    }
}
