//! The prefix cache: the keys and values of token sequences already run through the model,
//! kept so that a new prompt that starts the same way (the same instructions and passages,
//! the conversation so far) runs only what follows through the model.
//!
//! A cache belongs to one loaded model — a server keeps one per model version, so a hot-swap
//! never hands a new version the old one's state. It is bounded in bytes and forgets the least
//! recently used sequence first; a sequence that extends a stored one replaces it. Stored
//! tensors are private copies: a running sequence's cache is written in place as it grows, so
//! sharing its storage would let later tokens overwrite what was stored.

use std::sync::Mutex;

use candle_core::Tensor;

use crate::config::Config;
use crate::decoder::KvCache;
use crate::error::Result;

/// What a cache has done so far, and what it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    pub lookups: u64,
    pub hits: u64,
    /// Positions taken from the cache instead of being run through the model.
    pub reused_tokens: u64,
    pub evictions: u64,
    /// Stored sequences and their bytes now.
    pub entries: usize,
    pub bytes: usize,
}

/// Stored key/value states by the token ids that produced them (see the module comment).
#[derive(Debug)]
pub struct PrefixCache {
    capacity_bytes: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: Vec<Entry>,
    clock: u64,
    stats: PrefixStats,
}

#[derive(Debug)]
struct Entry {
    tokens: Vec<u32>,
    /// Keys and values per layer, `(1, kv_heads, tokens, head_dim)`, private copies.
    layers: Vec<(Tensor, Tensor)>,
    bytes: usize,
    last_used: u64,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    /// A cache holding at most `capacity_bytes` of key/value state (0: stores nothing).
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity_bytes,
            state: Mutex::new(State::default()),
        }
    }

    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    pub fn stats(&self) -> PrefixStats {
        let state = self.lock();
        PrefixStats {
            entries: state.entries.len(),
            bytes: state.entries.iter().map(|e| e.bytes).sum(),
            ..state.stats
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while the lock was held leaves entries that are still whole (each is replaced
        // or removed in one step), so the cache stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh cache for `prompt` holding the longest stored prefix of it, and that prefix's
    /// length (0: nothing stored matched). The whole prompt is never taken: its last token is
    /// left for the model to run, since its logits start the reply.
    pub fn lookup(&self, config: &Config, prompt: &[u32]) -> Result<(KvCache, usize)> {
        let mut cache = KvCache::new(config);
        let usable = prompt.len().saturating_sub(1);
        let found = {
            let mut state = self.lock();
            state.stats.lookups += 1;
            state.clock += 1;
            let clock = state.clock;
            let best = state
                .entries
                .iter_mut()
                .map(|e| (common_prefix(&e.tokens, prompt).min(usable), e))
                .filter(|(n, _)| *n > 0)
                .max_by_key(|(n, _)| *n);
            match best {
                Some((n, entry)) => {
                    entry.last_used = clock;
                    let layers = entry.layers.clone(); // handles; the data is immutable
                    state.stats.hits += 1;
                    state.stats.reused_tokens += n as u64;
                    Some((n, layers))
                }
                None => None,
            }
        };
        let Some((n, layers)) = found else {
            return Ok((cache, 0));
        };
        if layers.len() != cache.layers.len() {
            return Ok((cache, 0)); // another model's shape: never the case within one server
        }
        for ((k, v), layer) in layers.iter().zip(cache.layers.iter_mut()) {
            layer.append(
                &k.narrow(2, 0, n)?.force_contiguous()?,
                &v.narrow(2, 0, n)?.force_contiguous()?,
            )?;
        }
        Ok((cache, n))
    }

    /// Stores the state after `tokens`: the first `tokens.len()` positions of `cache`.
    pub fn insert(&self, tokens: &[u32], cache: &KvCache) -> Result<()> {
        let n = tokens.len().min(cache.len());
        if n == 0 || self.capacity_bytes == 0 {
            return Ok(());
        }
        let tokens = &tokens[..n];
        {
            // Already held whole (by this sequence or one that extends it): nothing to copy.
            let mut state = self.lock();
            state.clock += 1;
            let clock = state.clock;
            if let Some(entry) = state
                .entries
                .iter_mut()
                .find(|e| e.tokens.len() >= n && e.tokens[..n] == *tokens)
            {
                entry.last_used = clock;
                return Ok(());
            }
        }
        let mut layers = Vec::with_capacity(cache.layers.len());
        let mut bytes = 0;
        for layer in &cache.layers {
            let (Some(k), Some(v)) = (layer.k()?, layer.v()?) else {
                return Ok(());
            };
            let k = k.narrow(2, 0, n)?.force_contiguous()?;
            let v = v.narrow(2, 0, n)?.force_contiguous()?;
            bytes += (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes();
            layers.push((k, v));
        }
        if bytes > self.capacity_bytes {
            return Ok(()); // larger than the whole cache: not kept
        }
        let mut state = self.lock();
        state.clock += 1;
        let last_used = state.clock;
        // A stored sequence that this one extends is now redundant.
        state
            .entries
            .retain(|e| !(e.tokens.len() <= n && tokens[..e.tokens.len()] == *e.tokens));
        let mut held: usize = state.entries.iter().map(|e| e.bytes).sum();
        while held + bytes > self.capacity_bytes && !state.entries.is_empty() {
            let oldest = state
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
                .unwrap_or(0);
            held -= state.entries.swap_remove(oldest).bytes;
            state.stats.evictions += 1;
        }
        state.entries.push(Entry {
            tokens: tokens.to_vec(),
            layers,
            bytes,
            last_used,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn common_prefix_counts_equal_leading_tokens() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[5], &[1]), 0);
    }
}
