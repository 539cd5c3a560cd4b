//! Causal grouped-query attention for training on the CPU, with its own backward pass.
//!
//! The elementary-op version materializes the `heads × seq²` scores several times over (the
//! product, the scaled and the masked scores, the probabilities) and keeps them all for the
//! backward pass, and it computes the masked half of every score matrix too. This op computes
//! each query row's scores over the keys it may read only, keeps one number per row (the
//! log-sum-exp of its scores) besides its output, and its backward recomputes the
//! probabilities a row at a time (as FlashAttention does on a GPU): memory O(heads × seq), the
//! masked half never computed.
//!
//! Which keys a query reads is given per query: keys `first[i] ..= i`, so one op serves causal
//! masks, sliding windows and several examples packed into one row (a query never reads an
//! earlier example's keys).
//!
//! On NVIDIA GPUs the same op runs as CUDA kernels (`attention.cu`, launched by `cuda`): f32 or
//! bf16 values, heads up to 128 wide.

#[cfg(feature = "cuda")]
mod cuda;

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use crate::error::Result;

/// Sizes of one call: q `(batch, heads, seq, dim)`, k and v `(batch, kv_heads, seq, dim)`.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    seq: usize,
    dim: usize,
}

impl Dims {
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// The op: its scale, which keys each query reads, and what the forward pass keeps for the
/// backward pass (the log-sum-exp of each query row's scaled scores).
struct CausalAttention {
    scale: f32,
    /// `(batch, seq)`: the first key position each query reads (the last is its own).
    first: Arc<[u32]>,
    kept: Mutex<Option<Kept>>,
}

/// What the forward pass keeps, where it ran.
#[derive(Clone)]
enum Kept {
    Cpu(Arc<Vec<f32>>),
    #[cfg(feature = "cuda")]
    Cuda(Arc<cuda::Kept>),
}

impl std::fmt::Debug for CausalAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CausalAttention")
    }
}

/// Attention of `q` `(batch, heads, seq, dim)` over `k`, `v` `(batch, kv_heads, seq, dim)`
/// (query head `h` reads key/value head `h / (heads / kv_heads)`), query `i` of batch row `b`
/// reading keys `first[b * seq + i] ..= i`: `(batch, heads, seq, dim)`, differentiable in all
/// three. `None` where the op does not run (the caller then spells it out): not f32 on the
/// CPU, nor f32 / bf16 on a CUDA device with heads up to 128 wide and first keys that never
/// decrease along a row.
pub(crate) fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    first: Arc<[u32]>,
) -> Result<Option<Tensor>> {
    let alike = |t: &Tensor| t.device().same_device(q.device()) && t.dtype() == q.dtype();
    let on_cpu = q.device().is_cpu() && q.dtype() == DType::F32;
    #[cfg(feature = "cuda")]
    let on_gpu = cuda::takes(q, &first, q.dim(2)?);
    #[cfg(not(feature = "cuda"))]
    let on_gpu = false;
    if !((on_cpu || on_gpu) && alike(k) && alike(v)) {
        return Ok(None);
    }
    let op = CausalAttention {
        scale: scale as f32,
        first,
        kept: Mutex::new(None),
    };
    Ok(Some(q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        op,
    )?))
}

fn dims(q: &Layout, k: &Layout, v: &Layout) -> candle_core::Result<Dims> {
    let (batch, heads, seq, dim) = q.shape().dims4()?;
    let (kb, kv_heads, ks, kd) = k.shape().dims4()?;
    if (kb, ks, kd) != (batch, seq, dim)
        || k.shape() != v.shape()
        || kv_heads == 0
        || !heads.is_multiple_of(kv_heads)
    {
        candle_core::bail!(
            "causal attention: q {:?} does not fit k {:?} / v {:?}",
            q.shape(),
            k.shape(),
            v.shape()
        )
    }
    Ok(Dims {
        batch,
        heads,
        kv_heads,
        seq,
        dim,
    })
}

impl CausalAttention {
    fn keep(&self, kept: Kept) {
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(kept);
    }

    fn check_first(&self, d: &Dims) -> candle_core::Result<()> {
        let fits = self.first.len() == d.batch * d.seq
            && self
                .first
                .iter()
                .enumerate()
                .all(|(at, &f)| f as usize <= at % d.seq);
        if !fits {
            candle_core::bail!("causal attention: every query must read its own key")
        }
        Ok(())
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims(ql, kl, vl)?;
        self.check_first(&d)?;
        let (q, k, v) = (
            crate::fused::contiguous_f32(q, ql)?,
            crate::fused::contiguous_f32(k, kl)?,
            crate::fused::contiguous_f32(v, vl)?,
        );
        let (out, lse) = forward(q, k, v, &self.first, self.scale, d);
        self.keep(Kept::Cpu(Arc::new(lse)));
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        ql: &Layout,
        k: &candle_core::CudaStorage,
        kl: &Layout,
        v: &candle_core::CudaStorage,
        vl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let d = dims(ql, kl, vl)?;
        self.check_first(&d)?;
        let (out, kept) = cuda::forward(&self.first, self.scale, d, [(q, ql), (k, kl), (v, vl)])?;
        self.keep(Kept::Cuda(Arc::new(kept)));
        Ok((out, ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let kept = self
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("causal attention: no forward pass".into()))?;
        let d = dims(q.layout(), k.layout(), v.layout())?;
        // One arm in a build without CUDA.
        #[cfg_attr(not(feature = "cuda"), allow(clippy::infallible_destructuring_match))]
        let lse = match kept {
            Kept::Cpu(lse) => lse,
            #[cfg(feature = "cuda")]
            Kept::Cuda(kept) => {
                let (dq, dk, dv) = cuda::backward(&kept, self.scale, d, [q, k, v, out, grad])?;
                return Ok((Some(dq), Some(dk), Some(dv)));
            }
        };
        // The inputs and output read in place (all contiguous but, perhaps, the gradient).
        let tensors = {
            let [q, k, v, out, grad] = [q, k, v, out, grad].map(|t| t.contiguous());
            [q?, k?, v?, out?, grad?]
        };
        let storages = tensors.each_ref().map(|t| t.storage_and_layout());
        let [qs, ks, vs, os, gs] =
            storages
                .each_ref()
                .map(|(storage, layout)| match crate::fused::on_cpu(storage) {
                    Some(storage) => crate::fused::contiguous_f32(storage, layout),
                    None => candle_core::bail!("causal attention: CPU tensors only"),
                });
        let inputs = [qs?, ks?, vs?, os?, gs?];
        let (dq, dk, dv) = backward(inputs, &lse, &self.first, self.scale, d);
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), q.device())?),
            Some(Tensor::from_vec(dk, k.shape(), k.device())?),
            Some(Tensor::from_vec(dv, v.shape(), v.device())?),
        ))
    }
}

/// `(out, lse)`: one task per (batch row, query head), each writing its rows of the output
/// and their log-sum-exps.
fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    first: &[u32],
    scale: f32,
    d: Dims,
) -> (Vec<f32>, Vec<f32>) {
    let (seq, dim, group) = (d.seq, d.dim, d.group());
    let block = seq * dim;
    // Each key/value head's keys transposed, `(dim, seq)`: a query's scores are then `dim`
    // contiguous multiply-adds over the keys it reads.
    let mut kt = vec![0f32; k.len()];
    for (src, dst) in k.chunks_exact(block).zip(kt.chunks_exact_mut(block)) {
        transpose(src, dst, seq, dim);
    }
    let row = block + seq;
    let mut work = vec![0f32; d.batch * d.heads * row];
    crate::q8::for_each_row(&mut work, row, |task, rows| {
        let (b, h) = (task / d.heads, task % d.heads);
        let kv = (b * d.kv_heads + h / group) * block;
        let (out, lse) = rows.split_at_mut(block);
        crate::q8::attention_forward_head(
            HeadInputs {
                q: &q[task * block..(task + 1) * block],
                kt: &kt[kv..kv + block],
                v: &v[kv..kv + block],
                first: &first[b * seq..(b + 1) * seq],
                dim,
                scale,
            },
            out,
            lse,
        );
    });
    let mut out = Vec::with_capacity(d.batch * d.heads * block);
    let mut lse = Vec::with_capacity(d.batch * d.heads * seq);
    for rows in work.chunks_exact(row) {
        out.extend_from_slice(&rows[..block]);
        lse.extend_from_slice(&rows[block..]);
    }
    (out, lse)
}

/// `(dq, dk, dv)`: one task per (batch row, key/value head), each owning its group's query
/// heads' `dq` and its own `dk`, `dv` (so no two tasks write the same value).
fn backward(
    [q, k, v, out, grad]: [&[f32]; 5],
    lse: &[f32],
    first: &[u32],
    scale: f32,
    d: Dims,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (seq, dim, group) = (d.seq, d.dim, d.group());
    let block = seq * dim;
    let row = (group + 2) * block;
    let mut work = vec![0f32; d.batch * d.kv_heads * row];
    crate::q8::for_each_row(&mut work, row, |task, rows| {
        let b = task / d.kv_heads;
        let heads = task * group * block..(task + 1) * group * block;
        let (dq, rest) = rows.split_at_mut(group * block);
        let (dk, dv) = rest.split_at_mut(block);
        let (mut kt, mut vt) = (vec![0f32; block], vec![0f32; block]);
        let (keys, values) = (
            &k[task * block..(task + 1) * block],
            &v[task * block..(task + 1) * block],
        );
        transpose(keys, &mut kt, seq, dim);
        transpose(values, &mut vt, seq, dim);
        for h in 0..group {
            let at = heads.start + h * block..heads.start + (h + 1) * block;
            let head = task * group + h;
            crate::q8::attention_backward_head(
                HeadGradInputs {
                    q: &q[at.clone()],
                    k: keys,
                    kt: &kt,
                    vt: &vt,
                    out: &out[at.clone()],
                    grad: &grad[at],
                    lse: &lse[head * seq..(head + 1) * seq],
                    first: &first[b * seq..(b + 1) * seq],
                    dim,
                    scale,
                },
                &mut dq[h * block..(h + 1) * block],
                dk,
                dv,
            );
        }
    });
    let mut dq = Vec::with_capacity(q.len());
    let mut dk = Vec::with_capacity(k.len());
    let mut dv = Vec::with_capacity(v.len());
    for rows in work.chunks_exact(row) {
        dq.extend_from_slice(&rows[..group * block]);
        dk.extend_from_slice(&rows[group * block..(group + 1) * block]);
        dv.extend_from_slice(&rows[(group + 1) * block..]);
    }
    (dq, dk, dv)
}

/// For each key, the last query of its row that reads it, given first keys that never
/// decrease: the last query whose first key is at or before it.
#[cfg(any(feature = "cuda", test))]
fn last_readers(first: &[u32], seq: usize) -> Vec<u32> {
    let mut last = vec![0u32; first.len()];
    for (firsts, lasts) in first.chunks(seq).zip(last.chunks_mut(seq)) {
        let mut reader = 0;
        for (key, last) in lasts.iter_mut().enumerate() {
            while reader + 1 < seq && firsts[reader + 1] as usize <= key {
                reader += 1;
            }
            *last = reader.max(key) as u32;
        }
    }
    last
}

/// `src` `(rows, cols)` into `dst` `(cols, rows)`.
fn transpose(src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
    for r in 0..rows {
        for c in 0..cols {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// What one query head's forward pass reads: its queries `(seq, dim)`, its key/value head's
/// keys transposed `(dim, seq)` and values `(seq, dim)`, and each query's first key.
pub(crate) struct HeadInputs<'a> {
    pub(crate) q: &'a [f32],
    pub(crate) kt: &'a [f32],
    pub(crate) v: &'a [f32],
    pub(crate) first: &'a [u32],
    pub(crate) dim: usize,
    pub(crate) scale: f32,
}

/// What one query head's backward pass reads: the forward pass's inputs (keys both ways,
/// values transposed), its output and log-sum-exps, and the output's gradient.
pub(crate) struct HeadGradInputs<'a> {
    pub(crate) q: &'a [f32],
    pub(crate) k: &'a [f32],
    pub(crate) kt: &'a [f32],
    pub(crate) vt: &'a [f32],
    pub(crate) out: &'a [f32],
    pub(crate) grad: &'a [f32],
    pub(crate) lse: &'a [f32],
    pub(crate) first: &'a [u32],
    pub(crate) dim: usize,
    pub(crate) scale: f32,
}

/// How the kernels multiply and add: one fused instruction where the CPU has FMA (the
/// wrappers compiled for AVX-512 or AVX2 + FMA), a multiply and an add elsewhere (a fused
/// multiply-add without the instruction is a slow library call). Rust never fuses `a * b + c`
/// on its own.
pub(crate) trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// `a · b + c` in one rounding (the FMA instruction).
pub(crate) struct Fused;

/// `a · b + c` in two roundings.
pub(crate) struct Separate;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

// The kernels below are plain loops, inlined into `q8.rs`'s wrappers compiled for the CPU's
// vector extensions (iterator adapters would become functions of their own, compiled without
// them).

/// One head's output rows and their log-sum-exps.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
pub(crate) fn forward_head_lanes<M: MulAdd>(x: HeadInputs, out: &mut [f32], lse: &mut [f32]) {
    let (dim, seq) = (x.dim, x.first.len());
    let mut scores = vec![0f32; seq];
    for i in 0..seq {
        let lo = x.first[i] as usize;
        let n = i + 1 - lo;
        let s = &mut scores[..n];
        scores_of::<M>(&x.q[i * dim..(i + 1) * dim], x.kt, seq, lo, x.scale, s);
        let max = max_of(s);
        let total = exp_in_place::<M>(s, max);
        lse[i] = max + total.ln();
        let inv = 1.0 / total;
        for j in 0..n {
            s[j] *= inv;
        }
        weighted_rows::<M>(s, x.v, lo, &mut out[i * dim..(i + 1) * dim]);
    }
}

/// One head's query gradients (`dq`, its own) and its share of its key/value head's
/// gradients (added to `dk`, `dv`).
#[inline(always)]
#[allow(clippy::needless_range_loop)]
pub(crate) fn backward_head_lanes<M: MulAdd>(
    x: HeadGradInputs,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (dim, seq) = (x.dim, x.first.len());
    let mut probs = vec![0f32; seq];
    let mut dots = vec![0f32; seq];
    for i in 0..seq {
        let lo = x.first[i] as usize;
        let n = i + 1 - lo;
        let row = i * dim..(i + 1) * dim;
        let (q, g, o) = (&x.q[row.clone()], &x.grad[row.clone()], &x.out[row.clone()]);
        // The probabilities again, from the scores and the row's log-sum-exp.
        let p = &mut probs[..n];
        scores_of::<M>(q, x.kt, seq, lo, x.scale, p);
        let lse = x.lse[i];
        for j in 0..n {
            p[j] = exp::<M>(p[j] - lse);
        }
        // dP = dO·Vᵀ, and dS = P ∘ (dP − rowsum(dO ∘ O)), times the scale for dQ and dK.
        let ds = &mut dots[..n];
        scores_of::<M>(g, x.vt, seq, lo, 1.0, ds);
        let mut delta = 0f32;
        for c in 0..dim {
            delta = M::mul_add(g[c], o[c], delta);
        }
        for j in 0..n {
            ds[j] = p[j] * (ds[j] - delta) * x.scale;
        }
        weighted_rows::<M>(ds, x.k, lo, &mut dq[row]);
        for j in 0..n {
            let key = lo + j;
            let (w, pj) = (ds[j], p[j]);
            let dk = &mut dk[key * dim..(key + 1) * dim];
            let dv = &mut dv[key * dim..(key + 1) * dim];
            for c in 0..dim {
                dk[c] = M::mul_add(w, q[c], dk[c]);
                dv[c] = M::mul_add(pj, g[c], dv[c]);
            }
        }
    }
}

/// Keys whose scores one pass over a query's values computes at once: four vectors of
/// partial sums kept in registers (four independent chains of multiply-adds).
const KEY_BLOCK: usize = 4 * LANES;

/// `out[j] = scale · a·m[:, lo + j]` for a transposed matrix `m` `(a.len(), seq)`: per block of
/// keys, one pass over `a` accumulating in registers.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn scores_of<M: MulAdd>(a: &[f32], m: &[f32], seq: usize, lo: usize, scale: f32, out: &mut [f32]) {
    let n = out.len();
    let whole = n / KEY_BLOCK * KEY_BLOCK;
    for start in (0..whole).step_by(KEY_BLOCK) {
        let mut acc = [0f32; KEY_BLOCK];
        for (c, &value) in a.iter().enumerate() {
            let column = &m[c * seq + lo + start..c * seq + lo + start + KEY_BLOCK];
            for j in 0..KEY_BLOCK {
                acc[j] = M::mul_add(value, column[j], acc[j]);
            }
        }
        for j in 0..KEY_BLOCK {
            out[start + j] = acc[j] * scale;
        }
    }
    let rest = &mut out[whole..];
    rest.fill(0.0);
    for (c, &value) in a.iter().enumerate() {
        let column = &m[c * seq + lo + whole..c * seq + lo + n];
        for j in 0..rest.len() {
            rest[j] = M::mul_add(value, column[j], rest[j]);
        }
    }
    for j in 0..rest.len() {
        rest[j] *= scale;
    }
}

/// `y = Σ_j w[j] · rows[j]` for `rows` `(w.len(), y.len())` read from `first`: per block of
/// `y`'s values, one pass over the rows accumulating in registers.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn weighted_rows<M: MulAdd>(w: &[f32], rows: &[f32], first: usize, y: &mut [f32]) {
    let dim = y.len();
    let whole = dim / KEY_BLOCK * KEY_BLOCK;
    for start in (0..whole).step_by(KEY_BLOCK) {
        let mut acc = [0f32; KEY_BLOCK];
        for j in 0..w.len() {
            let at = (first + j) * dim + start;
            let row = &rows[at..at + KEY_BLOCK];
            for c in 0..KEY_BLOCK {
                acc[c] = M::mul_add(w[j], row[c], acc[c]);
            }
        }
        y[start..start + KEY_BLOCK].copy_from_slice(&acc);
    }
    let rest = &mut y[whole..];
    rest.fill(0.0);
    for j in 0..w.len() {
        let at = (first + j) * dim;
        let row = &rows[at + whole..at + dim];
        for c in 0..rest.len() {
            rest[c] = M::mul_add(w[j], row[c], rest[c]);
        }
    }
}

/// `log Σ eˣ` over `row`.
#[inline(always)]
pub(crate) fn log_sum_exp_lanes<M: MulAdd>(row: &[f32]) -> f32 {
    let max = max_of(row);
    max + exp_sum::<M>(row, max).ln()
}

/// `row ← scale · softmax(row)`, in place.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
pub(crate) fn softmax_times_lanes<M: MulAdd>(row: &mut [f32], scale: f32) {
    let max = max_of(row);
    let factor = scale / exp_in_place::<M>(row, max);
    for i in 0..row.len() {
        row[i] *= factor;
    }
}

/// Lanes of the reductions below: floating-point sums only vectorize when the code itself
/// keeps one partial sum per lane.
const LANES: usize = 16;

/// The largest value of `x` (−∞ when empty).
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn max_of(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let whole = x.len() / LANES * LANES;
    for at in (0..whole).step_by(LANES) {
        for l in 0..LANES {
            lanes[l] = lanes[l].max(x[at + l]);
        }
    }
    let mut max = f32::NEG_INFINITY;
    for l in 0..LANES {
        max = max.max(lanes[l]);
    }
    for i in whole..x.len() {
        max = max.max(x[i]);
    }
    max
}

/// `Σ e^(x − shift)`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn exp_sum<M: MulAdd>(x: &[f32], shift: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let whole = x.len() / LANES * LANES;
    for at in (0..whole).step_by(LANES) {
        for l in 0..LANES {
            lanes[l] += exp::<M>(x[at + l] - shift);
        }
    }
    let mut total = 0f32;
    for l in 0..LANES {
        total += lanes[l];
    }
    for i in whole..x.len() {
        total += exp::<M>(x[i] - shift);
    }
    total
}

/// `x ← e^(x − shift)`, returning the sum.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn exp_in_place<M: MulAdd>(x: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let whole = x.len() / LANES * LANES;
    for at in (0..whole).step_by(LANES) {
        for l in 0..LANES {
            let e = exp::<M>(x[at + l] - shift);
            x[at + l] = e;
            lanes[l] += e;
        }
    }
    let mut total = 0f32;
    for l in 0..LANES {
        total += lanes[l];
    }
    for i in whole..x.len() {
        x[i] = exp::<M>(x[i] - shift);
        total += x[i];
    }
    total
}

/// `eˣ` for `x ≤ 0` within 2 ulp, in operations that vectorize (no call to `libm`): `x =
/// n·ln 2 + r`, `eʳ` by its degree-6 Taylor-style minimax polynomial on `|r| ≤ ln 2 / 2`, and
/// `2ⁿ` built in the exponent bits. Below −87 it gives about 1e-38 instead of smaller numbers.
#[inline(always)]
fn exp<M: MulAdd>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to an integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = M::mul_add(p, r, 1.398_199_9e-3);
    let p = M::mul_add(p, r, 8.333_452e-3);
    let p = M::mul_add(p, r, 4.166_579_6e-2);
    let p = M::mul_add(p, r, 1.666_666_5e-1);
    let p = M::mul_add(p, r, 5e-1);
    let e = M::mul_add(p * r, r, r) + 1.0;
    let bits = (t.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23;
    e * f32::from_bits(bits as u32)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn largest(t: &Tensor) -> f32 {
        t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    /// Values and the gradients of q, k and v against the elementary version.
    fn check(batch: usize, heads: usize, kv_heads: usize, seq: usize, dim: usize, first: Vec<u32>) {
        let device = Device::Cpu;
        let q = Var::randn(0f32, 1.0, (batch, heads, seq, dim), &device).unwrap();
        let k = Var::randn(0f32, 1.0, (batch, kv_heads, seq, dim), &device).unwrap();
        let v = Var::randn(0f32, 1.0, (batch, kv_heads, seq, dim), &device).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (batch, heads, seq, dim), &device).unwrap();
        let scale = 1.0 / (dim as f64).sqrt();
        let fused = causal_attention(&q, &k, &v, scale, first.clone().into())
            .unwrap()
            .expect("f32 on the CPU takes the fused path");
        let plain = crate::testing::reference_attention(&q, &k, &v, scale, &first);
        let diff = largest(&(&fused - &plain).unwrap());
        assert!(diff < 1e-5, "values differ by {diff}");
        let grads = |y: &Tensor| {
            let store = (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            [&q, &k, &v].map(|x| store.get(x.as_tensor()).unwrap().clone())
        };
        for (name, (a, b)) in ["q", "k", "v"]
            .iter()
            .zip(grads(&fused).iter().zip(grads(&plain).iter()))
        {
            let (diff, size) = (largest(&(a - b).unwrap()), largest(b));
            // One position: its only probability is 1 whatever q and k, so they get none.
            let moves = seq > 1 || *name == "v";
            assert!(
                (size > 0.0 || !moves) && diff < 1e-4 * size.max(1.0),
                "{name} gradients differ by {diff} (largest {size})"
            );
        }
    }

    fn causal(batch: usize, seq: usize) -> Vec<u32> {
        vec![0; batch * seq]
    }

    #[test]
    fn causal_attention_matches_the_elementary_ops_and_their_gradients() {
        // One query head per key head, grouped queries, odd lengths and widths.
        check(2, 4, 4, 9, 8, causal(2, 9));
        check(2, 6, 2, 13, 16, causal(2, 13));
        check(1, 3, 1, 1, 4, causal(1, 1));
        check(3, 9, 3, 31, 64, causal(3, 31));
        // Rows past one block of keys, and a head wider than one block of values.
        check(1, 4, 2, 150, 64, causal(1, 150));
        check(1, 2, 1, 70, 80, causal(1, 70));
    }

    #[test]
    fn windows_and_packed_examples_read_only_their_keys() {
        // A sliding window of 4.
        let window: Vec<u32> = (0..2)
            .flat_map(|_| (0..11).map(|i: u32| (i + 1).saturating_sub(4)))
            .collect();
        check(2, 4, 2, 11, 8, window);
        // Row 0 packs examples of 3, 5 and 4 positions, row 1 one of 7 and one of 5.
        let starts = |lengths: &[u32]| -> Vec<u32> {
            let mut at = 0;
            lengths
                .iter()
                .flat_map(|&n| {
                    let start = at;
                    at += n;
                    (0..n).map(move |_| start)
                })
                .collect()
        };
        let mut packed = starts(&[3, 5, 4]);
        packed.extend(starts(&[7, 5]));
        check(2, 4, 2, 12, 8, packed);
    }

    #[test]
    fn a_query_that_would_read_no_key_is_refused() {
        let device = Device::Cpu;
        let q = Tensor::zeros((1, 1, 3, 4), DType::F32, &device).unwrap();
        let err = causal_attention(&q, &q, &q, 0.5, vec![0, 2, 1].into()).unwrap_err();
        assert!(err.to_string().contains("its own key"), "{err}");
    }

    #[test]
    fn each_key_is_read_up_to_its_last_reader() {
        // A row of two examples (3 and 4 positions), a window of 2 over 5 positions.
        assert_eq!(
            last_readers(&[0, 0, 0, 3, 3, 3, 3], 7),
            [2, 2, 2, 6, 6, 6, 6]
        );
        assert_eq!(last_readers(&[0, 0, 1, 2, 3], 5), [1, 2, 3, 4, 4]);
        // Two rows.
        assert_eq!(last_readers(&[0, 0, 0, 1], 2), [1, 1, 0, 1]);
    }

    #[test]
    fn exp_agrees_with_the_library_within_two_ulp() {
        for i in 0..=20_000 {
            let x = -87.0 + 87.0 * i as f32 / 20_000.0;
            let exact = x.exp();
            for ours in [exp::<Separate>(x), exp::<Fused>(x)] {
                let ulp = (exact.to_bits() as i64 - ours.to_bits() as i64).abs();
                assert!(ulp <= 2, "exp({x}): {ours} against {exact} ({ulp} ulp)");
            }
        }
    }
}
