//! The log-probability of each target token under the model, for training, without the
//! logits of the whole batch ever existing at once: the forward pass runs the output
//! projection over a chunk of positions at a time and keeps one number per position; the
//! backward pass recomputes each chunk's logits and turns them straight into the hidden states'
//! gradient. (Logits of 8k positions over a 152k vocabulary are 5 GB in f32; a chunk here is
//! about 256 MB, whatever the batch.)

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor};

use crate::error::Result;
use crate::linear::{Mode, ProjectionGroup};

/// Positions per chunk: about 64 M logits (256 MB of f32).
pub(crate) fn chunk_positions(vocab: usize) -> usize {
    (64 * 1024 * 1024 / vocab.max(1)).max(16)
}

/// `hidden (N, H) → log p(target_n)`, `(N,)` f32. The values are computed before the op is
/// applied (`values`, detached); the op hands them on and owns the backward pass.
#[derive(Debug)]
pub(crate) struct TargetLogprobs {
    /// The output projection as the model computes it (forward, chunk by chunk).
    pub head: ProjectionGroup,
    /// The same projection, dense `(vocab, H)`, in the hidden states' type (backward).
    pub weight: Tensor,
    /// `(N,)` u32.
    pub targets: Tensor,
    /// `(N,)` f32, contiguous.
    pub values: Tensor,
    pub chunk: usize,
}

impl TargetLogprobs {
    fn values<S: BackendStorage>(
        &self,
        pick: impl Fn(&Storage) -> Option<&S>,
    ) -> candle_core::Result<(S, Shape)> {
        let (storage, layout) = self.values.storage_and_layout();
        let Some(storage) = pick(&storage) else {
            candle_core::bail!("target-logprobs: the values are on another device")
        };
        Ok((storage.try_clone(layout)?, layout.shape().clone()))
    }
}

impl CustomOp1 for TargetLogprobs {
    fn name(&self) -> &'static str {
        "target-logprobs"
    }

    fn cpu_fwd(
        &self,
        _storage: &CpuStorage,
        _layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.values(|s| match s {
            Storage::Cpu(s) => Some(s),
            _ => None,
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _storage: &candle_core::CudaStorage,
        _layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.values(|s| match s {
            Storage::Cuda(s) => Some(s),
            _ => None,
        })
    }

    /// `∂ log p(t) / ∂ logits = onehot(t) − softmax(logits)`, then back through the projection.
    fn bwd(
        &self,
        hidden: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let n = hidden.dim(0)?;
        let vocab = self.weight.dim(0)?;
        let ids = Tensor::arange(0u32, vocab as u32, hidden.device())?.unsqueeze(0)?;
        let mut parts = Vec::with_capacity(n.div_ceil(self.chunk));
        for start in (0..n).step_by(self.chunk) {
            let len = self.chunk.min(n - start);
            let logits = logits(&self.head, &hidden.narrow(0, start, len)?)
                .map_err(candle_core::Error::wrap)?;
            let probs = candle_nn::ops::softmax_last_dim(&logits)?;
            let onehot = self
                .targets
                .narrow(0, start, len)?
                .unsqueeze(1)?
                .broadcast_eq(&ids)?
                .to_dtype(DType::F32)?;
            let g = grad.narrow(0, start, len)?.unsqueeze(1)?;
            let grad_logits = (onehot - probs)?.broadcast_mul(&g)?;
            parts.push(grad_logits.to_dtype(hidden.dtype())?.matmul(&self.weight)?);
        }
        Ok(Some(Tensor::cat(&parts, 0)?))
    }
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
        let lse = logits.log_sum_exp(1)?;
        let picked = logits
            .gather(&targets.narrow(0, start, len)?.unsqueeze(1)?, 1)?
            .squeeze(1)?;
        parts.push((picked - lse)?);
    }
    Ok(Tensor::cat(&parts, 0)?.contiguous()?)
}
