//! Token sampling: repetition penalty, temperature, top-k, top-p, seeded randomness; greedy
//! when the temperature is zero.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// Sampling settings; `Default` is greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// 0 means greedy (arg-max).
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    /// 1.0 disables it; above 1 discourages tokens seen in the last `repeat_last_n`.
    pub repetition_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: 299_792_458,
        }
    }
}

impl SamplingConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidParameter(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad(format!("top_p must be in (0, 1], got {p}"));
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1".into());
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// Picks the next token from a row of logits.
#[derive(Debug)]
pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    pub fn new(config: SamplingConfig) -> Result<Self> {
        config.validate()?;
        let rng = StdRng::seed_from_u64(config.seed);
        Ok(Self { config, rng })
    }

    /// `logits` is one row over the vocabulary; `history` the tokens so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.apply_repetition_penalty(logits, history);
        if self.config.temperature <= 0.0 {
            return argmax(logits);
        }
        let inv_t = (1.0 / self.config.temperature) as f32;
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, l)| (i as u32, l * inv_t))
            .collect();
        if candidates.is_empty() {
            return argmax(logits);
        }
        // With top-k, select the k best in linear time and sort only those (a vocabulary of
        // 150k entries is sorted otherwise, every token).
        if let Some(k) = self.config.top_k
            && k < candidates.len()
        {
            candidates.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            candidates.truncate(k);
        }
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let max = candidates[0].1;
        let mut probs: Vec<f32> = candidates.iter().map(|(_, l)| (l - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(top_p) = self.config.top_p {
            let mut cumulative = 0.0f32;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                cumulative += p;
                if f64::from(cumulative) >= top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let total: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let mut draw: f32 = self.rng.random();
        for (i, p) in probs.iter().enumerate() {
            if draw < *p {
                return candidates[i].0;
            }
            draw -= p;
        }
        candidates[probs.len() - 1].0
    }

    fn apply_repetition_penalty(&self, logits: &mut [f32], history: &[u32]) {
        let penalty = self.config.repetition_penalty;
        if penalty == 1.0 {
            return;
        }
        let start = history.len().saturating_sub(self.config.repeat_last_n);
        let mut seen = std::collections::HashSet::new();
        for &token in &history[start..] {
            if !seen.insert(token) {
                continue;
            }
            if let Some(l) = logits.get_mut(token as usize) {
                *l = if *l >= 0.0 {
                    *l / penalty
                } else {
                    *l * penalty
                };
            }
        }
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, l) in logits.iter().enumerate() {
        if *l > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_arg_max() {
        let mut sampler = Sampler::new(SamplingConfig::default()).unwrap();
        assert_eq!(sampler.sample(&mut [0.1, 2.0, -1.0, 1.9], &[]), 1);
    }

    #[test]
    fn repetition_penalty_can_change_the_choice() {
        let config = SamplingConfig {
            repetition_penalty: 2.0,
            ..SamplingConfig::default()
        };
        let mut sampler = Sampler::new(config).unwrap();
        // Token 1 was just generated: 2.0 / 2 = 1.0 < 1.9.
        assert_eq!(sampler.sample(&mut [0.1, 2.0, -1.0, 1.9], &[1]), 3);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let config = SamplingConfig {
            temperature: 5.0,
            top_k: Some(1),
            ..SamplingConfig::default()
        };
        let mut sampler = Sampler::new(config).unwrap();
        for _ in 0..50 {
            assert_eq!(sampler.sample(&mut [0.0, 0.5, 0.4, 0.1], &[]), 1);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let config = SamplingConfig {
            temperature: 1.0,
            top_p: Some(0.5),
            ..SamplingConfig::default()
        };
        let mut sampler = Sampler::new(config).unwrap();
        // Token 2 alone holds ~0.84 of the mass: the nucleus at 0.5 is {2}.
        for _ in 0..50 {
            assert_eq!(sampler.sample(&mut [0.0, 0.0, 3.0, 1.0], &[]), 2);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_draws_and_another_seed_differs() {
        let draw = |seed: u64| {
            let config = SamplingConfig {
                temperature: 1.0,
                seed,
                ..SamplingConfig::default()
            };
            let mut sampler = Sampler::new(config).unwrap();
            (0..64)
                .map(|_| sampler.sample(&mut [0.0; 16], &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn bad_settings_are_refused() {
        for config in [
            SamplingConfig {
                temperature: -1.0,
                ..SamplingConfig::default()
            },
            SamplingConfig {
                top_p: Some(0.0),
                ..SamplingConfig::default()
            },
            SamplingConfig {
                top_k: Some(0),
                ..SamplingConfig::default()
            },
            SamplingConfig {
                repetition_penalty: f32::NAN,
                ..SamplingConfig::default()
            },
        ] {
            assert!(matches!(
                Sampler::new(config),
                Err(Error::InvalidParameter(_))
            ));
        }
    }
}
