//! candle's fused RMSNorm, RoPE and softmax kernels for training. candle ships them without a
//! backward pass, so training used to spell each one out in elementary ops — a dozen kernels
//! and as many saved intermediates per call (the softmax's alone are several f32 copies of the
//! attention scores). Here the fused kernel computes the forward value and a custom op records
//! it with a hand-written backward: one saved output per call, a few kernels back.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Shape, Storage, Tensor};

use crate::error::Result;

pub(crate) mod attention;

type Backward = dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync;

/// An op whose forward value was computed already (by a fused kernel, without a graph) and
/// whose backward is `backward(input, output, output_grad)`.
struct Recorded {
    value: Mutex<Option<Tensor>>,
    backward: Box<Backward>,
}

impl std::fmt::Debug for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recorded")
    }
}

impl Recorded {
    /// Hands the value over once (the op's output owns a copy; the original is freed).
    fn take<S: BackendStorage>(
        &self,
        pick: impl Fn(&Storage) -> Option<&S>,
    ) -> candle_core::Result<(S, Shape)> {
        let value = self
            .value
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| candle_core::Error::Msg("a recorded op ran twice".into()))?;
        let (storage, layout) = value.storage_and_layout();
        let Some(storage) = pick(&storage) else {
            candle_core::bail!("recorded op: the value is on another device")
        };
        Ok((storage.try_clone(layout)?, layout.shape().clone()))
    }
}

/// A tensor's storage if it lives on the CPU (for custom ops that read other tensors).
pub(crate) fn on_cpu(storage: &Storage) -> Option<&CpuStorage> {
    match storage {
        Storage::Cpu(s) => Some(s),
        _ => None,
    }
}

/// The values of a contiguous f32 CPU storage under `layout` (an error for anything else).
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("f32 tensors only")
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("contiguous tensors only"),
    }
}

/// A tensor's storage if it lives on a CUDA GPU.
#[cfg(feature = "cuda")]
pub(crate) fn on_cuda(storage: &Storage) -> Option<&candle_core::CudaStorage> {
    match storage {
        Storage::Cuda(s) => Some(s),
        _ => None,
    }
}

impl CustomOp1 for Recorded {
    fn name(&self) -> &'static str {
        "recorded"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.take(on_cpu)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.take(on_cuda)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some((self.backward)(arg, res, grad)?))
    }
}

/// `input` → `value` (computed from `input` already, by a fused kernel or in chunks) with
/// `backward(input, output, output_grad)` for gradients.
pub(crate) fn record(
    input: &Tensor,
    value: Tensor,
    backward: impl Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    let value = value.contiguous()?;
    Ok(input.apply_op1(Recorded {
        value: Mutex::new(Some(value)),
        backward: Box::new(backward),
    })?)
}

/// Float work of a backward pass: f32 for half types, as the fused kernels accumulate.
fn wide(t: &Tensor) -> candle_core::Result<Tensor> {
    match t.dtype() {
        DType::BF16 | DType::F16 => t.to_dtype(DType::F32),
        _ => Ok(t.clone()),
    }
}

/// `x / rms(x) · weight` over the last axis, differentiable in `x` (the weight is frozen).
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    let value = candle_nn::ops::rms_norm(&x.detach().contiguous()?, weight, eps)?;
    let weight = weight.clone();
    record(x, value, move |x, _, grad| {
        let dtype = x.dtype();
        let x = wide(x)?;
        let width = x.dim(D::Minus1)? as f64;
        let r = ((x.sqr()?.sum_keepdim(D::Minus1)? / width)? + eps as f64)?
            .sqrt()?
            .recip()?;
        let normed = x.broadcast_mul(&r)?;
        let g = wide(grad)?.broadcast_mul(&wide(&weight)?)?;
        let dot = ((&g * &normed)?.sum_keepdim(D::Minus1)? / width)?;
        g.broadcast_sub(&normed.broadcast_mul(&dot)?)?
            .broadcast_mul(&r)?
            .to_dtype(dtype)
    })
}

/// Softmax over the last axis, differentiable.
pub(crate) fn softmax(x: &Tensor) -> Result<Tensor> {
    let value = candle_nn::ops::softmax_last_dim(&x.detach().contiguous()?)?;
    record(x, value, |_, p, grad| {
        let dtype = p.dtype();
        let (p, g) = (wide(p)?, wide(grad)?);
        let dot = (&g * &p)?.sum_keepdim(D::Minus1)?;
        (p * g.broadcast_sub(&dot)?)?.to_dtype(dtype)
    })
}

/// Rotary positions (half-split) of a contiguous `(batch, heads, seq, head_dim)` tensor,
/// differentiable: the backward pass is the inverse rotation, the same kernel with `−sin`.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, neg_sin: &Tensor) -> Result<Tensor> {
    let value = candle_nn::rotary_emb::rope(&x.detach(), cos, sin)?;
    let (cos, neg_sin) = (cos.clone(), neg_sin.clone());
    record(x, value, move |_, _, grad| {
        candle_nn::rotary_emb::rope(&grad.contiguous()?, &cos, &neg_sin)
    })
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;

    /// The fused op's value and input gradient against candle's elementary-op versions.
    fn check(
        fused: impl Fn(&Tensor) -> Result<Tensor>,
        reference: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
        shape: &[usize],
    ) {
        let device = Device::Cpu;
        let x = Var::randn(0f32, 1.0, shape, &device).unwrap();
        let weights = Tensor::randn(0f32, 1.0, shape, &device).unwrap();
        let loss = |y: Tensor| (y * &weights).unwrap().sum_all().unwrap();
        let largest =
            |t: &Tensor| -> f32 { t.abs().unwrap().max_all().unwrap().to_scalar().unwrap() };
        let gradient = |y: Tensor| {
            loss(y)
                .backward()
                .unwrap()
                .get(x.as_tensor())
                .unwrap()
                .clone()
        };
        let a = fused(x.as_tensor()).unwrap();
        let b = reference(x.as_tensor()).unwrap();
        let diff = largest(&(&a - &b).unwrap());
        assert!(diff < 1e-5, "values differ by {diff}");
        let (ga, gb) = (gradient(a), gradient(b));
        let diff = largest(&(&ga - &gb).unwrap());
        let scale = largest(&gb);
        assert!(
            scale > 0.0 && diff < 1e-4 * scale.max(1.0),
            "gradients differ by {diff}"
        );
    }

    #[test]
    fn fused_training_ops_match_the_elementary_ones_and_their_gradients() {
        let weight = Tensor::randn(0f32, 1.0, 24, &Device::Cpu).unwrap();
        check(
            |x| rms_norm(x, &weight, 1e-5),
            |x| candle_nn::ops::rms_norm_slow(x, &weight, 1e-5),
            &[2, 5, 24],
        );
        check(
            softmax,
            |x| candle_nn::ops::softmax(x, D::Minus1),
            &[2, 3, 5, 7],
        );
        let angle = Tensor::randn(0f32, 1.0, (5, 4), &Device::Cpu).unwrap();
        let (cos, sin) = (angle.cos().unwrap(), angle.sin().unwrap());
        let neg_sin = sin.neg().unwrap();
        check(
            |x| rope(x, &cos, &sin, &neg_sin),
            |x| candle_nn::rotary_emb::rope_slow(x, &cos, &sin),
            &[2, 3, 5, 8],
        );
    }
}
