//! The log-probability of each target token under the model, for training, without the
//! logits of the whole batch ever existing at once: the forward pass runs the output
//! projection over a chunk of positions at a time and keeps one number per position; the
//! backward pass recomputes each chunk's logits and turns them straight into the hidden states'
//! gradient. (Logits of 8k positions over a 152k vocabulary are 5 GB in f32; a chunk here is
//! about 256 MB, whatever the batch.) On the CPU (f32) both passes work on each chunk's logits
//! in place, rows shared among candle's threads: the log-sum-exp read off them forward, the
//! gradient written over them backward — no softmax, one-hot or difference the size of the
//! chunk beside them.

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Tensor};

use crate::error::Result;
use crate::linear::{Mode, ProjectionGroup};

/// Positions per chunk: about 64 M logits (256 MB of f32).
pub(crate) fn chunk_positions(vocab: usize) -> usize {
    (64 * 1024 * 1024 / vocab.max(1)).max(16)
}

/// `hidden (N, H) → log p(target_n)`, `(N,)` f32, differentiable in `hidden`: `values` were
/// computed already (detached, [`target_values`]); the backward pass recomputes each chunk's
/// logits through `head` and goes back through `weight`, the same projection dense `(vocab, H)`
/// in the hidden states' type. `∂ log p(t) / ∂ logits = onehot(t) − softmax(logits)`.
pub(crate) fn target_logprobs(
    hidden: &Tensor,
    values: Tensor,
    head: ProjectionGroup,
    weight: Tensor,
    targets: Tensor,
    chunk: usize,
) -> Result<Tensor> {
    crate::fused::record(hidden, values, move |hidden, _, grad| {
        let n = hidden.dim(0)?;
        let vocab = weight.dim(0)?;
        let ids = Tensor::arange(0u32, vocab as u32, hidden.device())?.unsqueeze(0)?;
        let mut parts = Vec::with_capacity(n.div_ceil(chunk));
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let logits =
                logits(&head, &hidden.narrow(0, start, len)?).map_err(candle_core::Error::wrap)?;
            if logits.device().is_cpu() {
                logits.inplace_op1(&LogitsGrad {
                    targets: targets.narrow(0, start, len)?.to_vec1()?,
                    grads: grad
                        .narrow(0, start, len)?
                        .to_dtype(DType::F32)?
                        .to_vec1()?,
                })?;
                parts.push(logits.to_dtype(hidden.dtype())?.matmul(&weight)?);
                continue;
            }
            let probs = candle_nn::ops::softmax_last_dim(&logits)?;
            let onehot = targets
                .narrow(0, start, len)?
                .unsqueeze(1)?
                .broadcast_eq(&ids)?
                .to_dtype(DType::F32)?;
            let g = grad.narrow(0, start, len)?.unsqueeze(1)?;
            let grad_logits = (onehot - probs)?.broadcast_mul(&g)?;
            parts.push(grad_logits.to_dtype(hidden.dtype())?.matmul(&weight)?);
        }
        Tensor::cat(&parts, 0)
    })
}

/// f32 logits of `(n, H)` hidden states through the model's own output projection (the same
/// kernels inference uses, so forward values and backward recomputation agree).
fn logits(head: &ProjectionGroup, hidden: &Tensor) -> Result<Tensor> {
    Ok(head
        .forward_one(&hidden.detach(), Mode::Inference)?
        .to_dtype(DType::F32)?)
}

/// The detached values `log p(target)` of `(N, H)` hidden states, chunk by chunk.
pub(crate) fn target_values(
    head: &ProjectionGroup,
    hidden: &Tensor,
    targets: &Tensor,
    chunk: usize,
) -> Result<Tensor> {
    let n = hidden.dim(0)?;
    let hidden = hidden.detach();
    let mut parts = Vec::with_capacity(n.div_ceil(chunk));
    for start in (0..n).step_by(chunk) {
        let len = chunk.min(n - start);
        let logits = logits(head, &hidden.narrow(0, start, len)?)?;
        let targets = targets.narrow(0, start, len)?;
        if let Some(values) = picked_in_place(&logits, &targets.to_vec1()?)? {
            parts.push(Tensor::from_vec(values, len, logits.device())?);
            continue;
        }
        let lse = logits.log_sum_exp(1)?;
        let picked = logits.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
        parts.push((picked - lse)?);
    }
    Ok(Tensor::cat(&parts, 0)?.contiguous()?)
}

/// `log softmax(row)[target]` of each row of f32 CPU `logits` `(n, vocab)`, read in place;
/// `None` elsewhere.
fn picked_in_place(logits: &Tensor, targets: &[u32]) -> Result<Option<Vec<f32>>> {
    let (storage, layout) = logits.storage_and_layout();
    let Some(storage) = crate::fused::on_cpu(&storage) else {
        return Ok(None);
    };
    let data = crate::fused::contiguous_f32(storage, layout)?;
    let (n, vocab) = layout.shape().dims2()?;
    check_targets(targets, n, vocab)?;
    let mut out = vec![0f32; n];
    crate::q8::for_each_row(&mut out, 1, |r, value| {
        let row = &data[r * vocab..(r + 1) * vocab];
        value[0] = row[targets[r] as usize] - crate::q8::log_sum_exp(row);
    });
    Ok(Some(out))
}

/// Turns each row of f32 logits into `g · (onehot(target) − softmax(row))`, in place: the
/// gradient of `g · log p(target)` with respect to the logits.
struct LogitsGrad {
    targets: Vec<u32>,
    grads: Vec<f32>,
}

impl InplaceOp1 for LogitsGrad {
    fn name(&self) -> &'static str {
        "logits-grad"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("logits-grad: f32 logits only")
        };
        let Some((begin, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("logits-grad: contiguous logits only")
        };
        let (n, vocab) = layout.shape().dims2()?;
        check_targets(&self.targets, n, vocab)?;
        if self.grads.len() != n {
            candle_core::bail!("logits-grad: {n} rows, {} gradients", self.grads.len())
        }
        crate::q8::for_each_row(&mut data[begin..end], vocab, |r, row| {
            crate::q8::softmax_times(row, -self.grads[r]);
            row[self.targets[r] as usize] += self.grads[r];
        });
        Ok(())
    }
}

/// One target per row of `(rows, vocab)` logits, each inside the vocabulary.
fn check_targets(targets: &[u32], rows: usize, vocab: usize) -> candle_core::Result<()> {
    if targets.len() != rows {
        candle_core::bail!("{rows} rows of logits, {} targets", targets.len())
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("target {t} outside a vocabulary of {vocab}")
    }
    Ok(())
}
