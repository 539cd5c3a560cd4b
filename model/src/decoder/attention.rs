//! Attention: rotary positions, the KV cache, causal and sliding-window masks, and grouped-query
//! attention over the cache.

use std::sync::Arc;

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};

use super::RmsNorm;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::linear::{Mode, ProjectionGroup};

#[derive(Debug, Clone)]
pub(super) struct Rope {
    /// `1 / (scale · θ^(2i/d))` for each pair of a head's values.
    inv_freq: Vec<f32>,
    /// cos / sin of the first [`Rope::TABLE`] positions (fewer when the context is shorter);
    /// later positions are computed when asked for: a 32,768-position table of Gemma 3's
    /// 256-wide heads would be 17 MB per table, per base.
    cos: Tensor,
    sin: Tensor,
    dtype: DType,
}

impl Rope {
    /// Positions whose angles are computed once.
    const TABLE: usize = 4096;

    /// Angles for base `theta`, positions divided by `scale` (linear RoPE scaling).
    pub(super) fn new(
        config: &Config,
        theta: f64,
        scale: f64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let head_dim = config.head_dim();
        let inv_freq: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| (1.0 / (scale * theta.powf(i as f64 / head_dim as f64))) as f32)
            .collect();
        let positions = config.max_position_embeddings.min(Self::TABLE);
        let (cos, sin) = Self::angles(&inv_freq, 0, positions, device, dtype)?;
        Ok(Self {
            inv_freq,
            cos,
            sin,
            dtype,
        })
    }

    /// cos and sin of positions `first..first + count`, `(count, head_dim / 2)`.
    fn angles(
        inv_freq: &[f32],
        first: usize,
        count: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        Self::angles_of(inv_freq, first..first + count, device, dtype)
    }

    /// cos and sin of each of `positions`, `(positions, head_dim / 2)`.
    fn angles_of(
        inv_freq: &[f32],
        positions: impl ExactSizeIterator<Item = usize>,
        device: &Device,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        let count = positions.len();
        let angles: Vec<f32> = positions
            .flat_map(|p| inv_freq.iter().map(move |f| p as f32 * f))
            .collect();
        let angles = Tensor::from_vec(angles, (count, inv_freq.len()), device)?;
        Ok((
            angles.cos()?.to_dtype(dtype)?,
            angles.sin()?.to_dtype(dtype)?,
        ))
    }

    /// Rotates queries and keys of shape `(batch, heads, seq, head_dim)` (half-split, Hugging
    /// Face layout) with one set of angles; packed examples (`packed`) take each token's
    /// position in its own example.
    fn apply(
        &self,
        q: &Tensor,
        k: &Tensor,
        offset: usize,
        packed: Option<&Packed>,
        mode: Mode,
    ) -> Result<(Tensor, Tensor)> {
        let (batch, _, seq_len, _) = q.dims4()?;
        let (cos, sin) = if let Some(packed) = packed {
            let (cos, sin) = if packed.span <= self.cos.dim(0)? {
                (
                    self.cos.index_select(&packed.positions, 0)?,
                    self.sin.index_select(&packed.positions, 0)?,
                )
            } else {
                let positions = packed.positions.to_vec1::<u32>()?;
                let positions = positions.iter().map(|&p| p as usize);
                Self::angles_of(&self.inv_freq, positions, q.device(), self.dtype)?
            };
            let shape = (batch, seq_len, self.inv_freq.len());
            (cos.reshape(shape)?, sin.reshape(shape)?)
        } else if offset + seq_len <= self.cos.dim(0)? {
            (
                self.cos.narrow(0, offset, seq_len)?,
                self.sin.narrow(0, offset, seq_len)?,
            )
        } else {
            Self::angles(&self.inv_freq, offset, seq_len, q.device(), self.dtype)?
        };
        // `−sin`: the inverse rotation, for the backward pass.
        let neg_sin = match mode {
            Mode::Inference => None,
            Mode::Training => Some(sin.neg()?),
        };
        let rotate = |x: &Tensor| -> Result<Tensor> {
            let x = x.contiguous()?;
            Ok(match &neg_sin {
                None => candle_nn::rotary_emb::rope(&x, &cos, &sin)?,
                Some(neg_sin) => crate::fused::rope(&x, &cos, &sin, neg_sin)?,
            })
        };
        Ok((rotate(q)?, rotate(k)?))
    }
}

/// Keys and values of past positions, one pair per layer, for one batch of sequences.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<candle_nn::kv_cache::KvCache>,
}

impl KvCache {
    /// Room grows in steps of this many positions.
    const GROWTH: usize = 256;

    pub fn new(config: &Config) -> Self {
        Self {
            layers: (0..config.num_hidden_layers)
                .map(|_| candle_nn::kv_cache::KvCache::new(2, Self::GROWTH))
                .collect(),
        }
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.current_seq_len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| l.reset());
    }
}

#[derive(Debug, Clone)]
pub(super) struct Attention {
    /// q, k, v (in that order)
    pub(super) qkv: ProjectionGroup,
    pub(super) o_proj: ProjectionGroup,
    /// Per-head RMS norms of queries and keys, before RoPE (qwen3, gemma3).
    pub(super) q_norm: Option<RmsNorm>,
    pub(super) k_norm: Option<RmsNorm>,
    pub(super) num_heads: usize,
    pub(super) num_kv_heads: usize,
    pub(super) head_dim: usize,
    /// The positions this layer's queries see: all of them, or the last `n` (sliding window).
    pub(super) window: Option<usize>,
    pub(super) rope: Rope,
    /// Multiplies the scores: `1/√head_dim` or the model's own.
    pub(super) scale: f64,
}

impl Attention {
    pub(super) fn forward(
        &self,
        x: &Tensor,
        masks: &Masks,
        offset: usize,
        cache: Option<&mut candle_nn::kv_cache::KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let [q, k, v] = self.project(x, mode)?;
        let y = match &masks.packed {
            Some(packed) => self.attend_packed(&q, &k, &v, packed, mode)?,
            None => {
                let mask = masks.get(self.window);
                self.attend(&q, &k, &v, mask, offset, cache, mode)?
            }
        };
        self.o_proj.forward_one(&y, mode)
    }

    /// Several sequences, one new position each (`x`: `(batch, 1, hidden)`): the projections
    /// run once for the whole batch; each sequence attends over its own cache at its own
    /// position.
    pub(super) fn forward_batch(
        &self,
        x: &Tensor,
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> Result<Tensor> {
        let mode = Mode::Inference;
        let [q, k, v] = self.project(x, mode)?;
        let mut ys = Vec::with_capacity(caches.len());
        for (b, cache) in caches.iter_mut().enumerate() {
            let cache = &mut cache.layers[layer];
            let offset = cache.current_seq_len();
            ys.push(self.attend(
                &q.narrow(0, b, 1)?,
                &k.narrow(0, b, 1)?,
                &v.narrow(0, b, 1)?,
                None,
                offset,
                Some(cache),
                mode,
            )?);
        }
        self.o_proj.forward_one(&Tensor::cat(&ys, 0)?, mode)
    }

    /// q, k, v of `x` `(batch, seq, hidden)`, each `(batch, seq, heads * head_dim)`.
    pub(super) fn project(&self, x: &Tensor, mode: Mode) -> Result<[Tensor; 3]> {
        self.qkv
            .forward(x, mode)?
            .try_into()
            .map_err(|_| Error::InvalidConfig("attention needs q, k and v".into()))
    }

    /// The first key each query of packed rows of `seq` reads: its example's start, or its
    /// window's start if later.
    fn first_keys(&self, packed: &Packed, seq: usize) -> Arc<[u32]> {
        packed
            .starts
            .iter()
            .enumerate()
            .map(|(at, &start)| {
                let window = self.window.map_or(0, |w| (at % seq + 1).saturating_sub(w));
                (start as usize).max(window) as u32
            })
            .collect()
    }

    /// Attention within each packed example (no cache; every training pass): the fused op
    /// where it runs, else the scores masked outside each query's keys.
    fn attend_packed(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        packed: &Packed,
        mode: Mode,
    ) -> Result<Tensor> {
        let seq_len = q.dim(1)?;
        let first = self.first_keys(packed, seq_len);
        let (q, k, v) = self.heads(q, k, v, 0, Some(packed), None, mode)?;
        if let Some(y) = self.fused(&q, &k, &v, first.clone())? {
            return Ok(y);
        }
        let mask = packed.mask(self.window, &first, seq_len, q.device(), q.dtype())?;
        self.scores_times_values(&q, &k, &v, Some(&mask), mode)
    }

    /// The fused training op on `(batch, heads, seq, head_dim)` heads, `(batch, seq, heads *
    /// head_dim)` out; `None` where it does not run (not f32 on the CPU).
    fn fused(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        first: Arc<[u32]>,
    ) -> Result<Option<Tensor>> {
        let Some(y) = crate::fused::attention::causal_attention(q, k, v, self.scale, first)? else {
            return Ok(None);
        };
        let (batch, _, seq_len, _) = q.dims4()?;
        Ok(Some(y.transpose(1, 2)?.reshape((
            batch,
            seq_len,
            self.num_heads * self.head_dim,
        ))?))
    }

    /// Attention of projected q, k, v (rotary positions from `offset`, keys and values
    /// appended to `cache`), before the output projection: `(batch, seq, heads * head_dim)`.
    /// Without a mask (one position) a sliding-window layer reads only the window's keys.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
        cache: Option<&mut candle_nn::kv_cache::KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (batch, seq_len, _) = q.dims3()?;
        let (q, k, v) = self.heads(q, k, v, offset, None, cache, mode)?;
        let (k, v) = match self.window {
            Some(window) if mask.is_none() && k.dim(2)? > window => {
                let start = k.dim(2)? - window;
                (k.narrow(2, start, window)?, v.narrow(2, start, window)?)
            }
            _ => (k, v),
        };
        if mode == Mode::Inference
            && seq_len == 1
            && batch == 1
            && let Some(y) = attend_one(&q, &k, &v, self.scale)?
        {
            return Ok(y);
        }
        self.scores_times_values(&q, &k, &v, mask, mode)
    }

    /// Queries, keys and values as heads, `(batch, heads, seq, head_dim)`: per-head norms,
    /// rotary positions (from `offset`, or each packed example's own), keys and values
    /// appended to `cache` (then the whole cache's).
    #[allow(clippy::too_many_arguments)]
    fn heads(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        offset: usize,
        packed: Option<&Packed>,
        cache: Option<&mut candle_nn::kv_cache::KvCache>,
        mode: Mode,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (batch, seq_len, _) = q.dims3()?;
        let split = |t: &Tensor, heads: usize, norm: Option<&RmsNorm>| -> Result<Tensor> {
            let t = t.reshape((batch, seq_len, heads, self.head_dim))?;
            let t = match norm {
                Some(norm) => norm.forward(&t, mode)?,
                None => t,
            };
            Ok(t.transpose(1, 2)?)
        };
        let q = split(q, self.num_heads, self.q_norm.as_ref())?;
        let k = split(k, self.num_kv_heads, self.k_norm.as_ref())?;
        let v = split(v, self.num_kv_heads, None)?.contiguous()?;
        let (q, k) = self.rope.apply(&q, &k, offset, packed, mode)?;
        Ok(match cache {
            Some(cache) => {
                let (k, v) = cache.append(&k, &v)?;
                (q, k, v)
            }
            None => (q, k, v),
        })
    }

    /// `softmax(scale · q·kᵀ + mask) · v` through candle's ops, `(batch, seq, heads *
    /// head_dim)`.
    fn scores_times_values(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (batch, _, seq_len, _) = q.dims4()?;
        let kv_len = k.dim(2)?;
        // Grouped-query attention without copying keys: the query heads that share a key/value
        // head are stacked along the sequence axis, so one batched matmul serves the group.
        let group = self.num_heads / self.num_kv_heads;
        let q =
            q.contiguous()?
                .reshape((batch, self.num_kv_heads, group * seq_len, self.head_dim))?;
        let scores = (q.matmul(&k.t()?)? * self.scale)?;
        let scores = scores.reshape((batch, self.num_heads, seq_len, kv_len))?;
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let probs = match mode {
            Mode::Inference => candle_nn::ops::softmax_last_dim(&scores)?,
            Mode::Training => crate::fused::softmax(&scores)?,
        };
        let probs = probs.reshape((batch, self.num_kv_heads, group * seq_len, kv_len))?;
        let y = probs.matmul(&v.contiguous()?)?;
        Ok(y.reshape((batch, self.num_heads, seq_len, self.head_dim))?
            .transpose(1, 2)?
            .reshape((batch, seq_len, self.num_heads * self.head_dim))?)
    }
}

/// One new position of one sequence (`q`: `(1, heads, 1, head_dim)`) against its cached keys
/// and values (`(1, kv_heads, len, head_dim)`, views into the cache's buffers): scores, softmax
/// and the weighted sum of values per head, read in place — no copy of the cache, no matrix
/// product launched per step. `None` when the tensors are not f32 on the CPU (the general path
/// then runs). Heads are shared among candle's threads.
fn attend_one(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    if !q.device().is_cpu() || q.dtype() != DType::F32 || k.dtype() != DType::F32 {
        return Ok(None);
    }
    let (_, heads, _, head_dim) = q.dims4()?;
    let (_, kv_heads, len, _) = k.dims4()?;
    let query = q.flatten_all()?.to_vec1::<f32>()?;
    let (k_storage, k_layout) = k.storage_and_layout();
    let (v_storage, v_layout) = v.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(keys)), Storage::Cpu(CpuStorage::F32(values))) =
        (&*k_storage, &*v_storage)
    else {
        return Ok(None);
    };
    let (ks, vs) = (k_layout.stride(), v_layout.stride());
    if ks[3] != 1 || vs[3] != 1 {
        return Ok(None);
    }
    let (k0, v0) = (k_layout.start_offset(), v_layout.start_offset());
    let group = heads / kv_heads;
    let scale = scale as f32;
    let mut out = vec![0f32; heads * head_dim];
    crate::q8::for_each_row(&mut out, head_dim, |h, y| {
        let kv = h / group;
        let (k_at, v_at) = (k0 + kv * ks[1], v0 + kv * vs[1]);
        crate::q8::attend_head(
            &query[h * head_dim..(h + 1) * head_dim],
            (&keys[k_at..], ks[2]),
            (&values[v_at..], vs[2]),
            len,
            scale,
            y,
        );
    });
    Ok(Some(Tensor::from_vec(
        out,
        (1, 1, heads * head_dim),
        q.device(),
    )?))
}

/// The additive masks of one pass: causal for global layers, causal within the window for
/// sliding-window layers. `None` when the pass feeds one position (nothing to hide).
#[derive(Debug, Clone, Default)]
pub(super) struct Masks {
    causal: Option<Tensor>,
    sliding: Option<(usize, Tensor)>,
    /// Several examples per row (training): each token's example and position in it.
    pub(super) packed: Option<Packed>,
}

/// Additive masks by sliding window (`None`: causal).
type WindowMasks = Vec<(Option<usize>, Tensor)>;

/// Examples packed into rows: per token of `(batch, seq)`, where its example starts in the row
/// (the first key it may read) and its position within the example (its rotary angle).
#[derive(Debug, Clone)]
pub(super) struct Packed {
    starts: Arc<[u32]>,
    /// `(batch · seq,)` u32 on the model's device: rows of the rotary tables to read.
    positions: Tensor,
    /// One more than the largest position.
    span: usize,
    /// Additive masks `(batch, 1, seq, seq)` by window, built once per pass where the fused
    /// attention does not run (a GPU).
    masks: Arc<std::sync::Mutex<WindowMasks>>,
}

impl Packed {
    /// Rows of `seq` tokens holding examples of `lengths[b]` tokens each, in order; what is
    /// left of a row after its examples is one more example (padding).
    pub(super) fn new(lengths: &[Vec<usize>], seq: usize, device: &Device) -> Result<Self> {
        let mut starts = Vec::with_capacity(lengths.len() * seq);
        let mut positions = Vec::with_capacity(lengths.len() * seq);
        for row in lengths {
            let used: usize = row.iter().sum();
            if used > seq || row.contains(&0) {
                return Err(Error::InvalidParameter(format!(
                    "examples of {row:?} tokens do not pack into a row of {seq}"
                )));
            }
            let mut start = 0;
            for &n in row.iter().chain(std::iter::once(&(seq - used))) {
                starts.extend(std::iter::repeat_n(start as u32, n));
                positions.extend(0..n as u32);
                start += n;
            }
        }
        let span = positions.iter().max().map_or(0, |&p| p as usize + 1);
        Ok(Self {
            starts: starts.into(),
            positions: Tensor::new(positions, device)?,
            span,
            masks: Default::default(),
        })
    }

    /// The additive mask that hides from each query the keys before `first` (its example's
    /// start or its window's) and after itself; the same for every layer of a window size.
    fn mask(
        &self,
        window: Option<usize>,
        first: &[u32],
        seq: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor> {
        let mut masks = self.masks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, mask)) = masks.iter().find(|(w, _)| *w == window) {
            return Ok(mask.clone());
        }
        let batch = first.len() / seq;
        let values: Vec<f32> = (0..batch * seq)
            .flat_map(|at| {
                let (i, lo) = (at % seq, first[at] as usize);
                (0..seq).map(move |j| {
                    if j < lo || j > i {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(values, (batch, 1, seq, seq), device)?.to_dtype(dtype)?;
        masks.push((window, mask.clone()));
        Ok(mask)
    }
}

impl Masks {
    /// Masks for `seq_len` new positions after `offset` cached ones; `window` is the sliding
    /// window of the model's local layers, if it has any.
    pub(super) fn new(
        seq_len: usize,
        offset: usize,
        window: Option<usize>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        if seq_len <= 1 {
            return Ok(Self::default());
        }
        let build = |window: Option<usize>| -> Result<Tensor> {
            let kv_len = offset + seq_len;
            let mask: Vec<f32> = (0..seq_len)
                .flat_map(|i| {
                    let position = offset + i;
                    (0..kv_len).map(move |j| {
                        let hidden = j > position || window.is_some_and(|w| position - j >= w);
                        if hidden { f32::NEG_INFINITY } else { 0.0 }
                    })
                })
                .collect();
            Ok(Tensor::from_vec(mask, (seq_len, kv_len), device)?.to_dtype(dtype)?)
        };
        Ok(Self {
            causal: Some(build(None)?),
            sliding: match window {
                Some(w) => Some((w, build(Some(w))?)),
                None => None,
            },
            packed: None,
        })
    }

    /// Packed rows: the masks follow from each token's example (see [`Packed`]).
    pub(super) fn packed(packed: Packed) -> Self {
        Self {
            packed: Some(packed),
            ..Self::default()
        }
    }

    fn get(&self, window: Option<usize>) -> Option<&Tensor> {
        match (window, &self.sliding) {
            (Some(w), Some((size, mask))) if w == *size => Some(mask),
            _ => self.causal.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Positions past the table are computed as the table computes them: a rotation is the
    /// same whether its angles come from the table or were computed on the spot.
    #[test]
    fn angles_past_the_table_continue_it_bit_for_bit() {
        let inv_freq: Vec<f32> = (0..32)
            .map(|i| 1.0 / 10_000f32.powf(i as f32 / 32.0))
            .collect();
        let device = Device::Cpu;
        let (cos, sin) = Rope::angles(&inv_freq, 0, Rope::TABLE, &device, DType::F32).unwrap();
        let rope = Rope {
            inv_freq: inv_freq.clone(),
            cos,
            sin,
            dtype: DType::F32,
        };
        // A sequence that runs past the table: each position rotated as one at a time would be.
        let x = Tensor::randn(0f32, 1.0, (1, 2, 8, 64), &device).unwrap();
        let (whole, _) = rope
            .apply(&x, &x, Rope::TABLE - 4, None, Mode::Inference)
            .unwrap();
        for i in 0..8 {
            let x = x.narrow(2, i, 1).unwrap();
            let (one, _) = rope
                .apply(&x, &x, Rope::TABLE - 4 + i, None, Mode::Inference)
                .unwrap();
            let diff = (whole.narrow(2, i, 1).unwrap() - one)
                .unwrap()
                .abs()
                .unwrap();
            assert_eq!(
                diff.max_all().unwrap().to_scalar::<f32>().unwrap(),
                0.0,
                "position {i}"
            );
        }
    }
}
