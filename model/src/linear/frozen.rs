//! The ops through which a frozen base matrix passes gradients to its input (never to
//! itself): candle's quantized product, Kefu's packed Q8_0 product (`crate::q8`) and a dense
//! product.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};

use crate::q8::PackedQ8;

/// `grad · W`, `W` a frozen `(out, in)` matrix in the gradient's type.
fn input_gradient(grad_res: &Tensor, weight: Tensor) -> candle_core::Result<Option<Tensor>> {
    let weight = weight.to_dtype(grad_res.dtype())?;
    Ok(Some(grad_res.broadcast_matmul(&weight)?))
}

/// `x·Wᵀ` for a frozen quantized `W` that still passes gradients to `x`, so adapters in earlier
/// layers learn through a quantized base (QLoRA). The forward pass is candle's quantized
/// product; the backward pass dequantizes this one matrix for the moment it is needed, so the
/// model as a whole stays quantized.
#[derive(Debug)]
pub(super) struct FrozenQuantizedMatMul {
    pub(super) weight: Arc<QTensor>,
}

impl CustomOp1 for FrozenQuantizedMatMul {
    fn name(&self) -> &'static str {
        "frozen-quantized-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.weight.cpu_fwd(storage, layout)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.weight.cuda_fwd(storage, layout)
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        input_gradient(grad_res, self.weight.dequantize(grad_res.device())?)
    }
}

/// `x·Wᵀ` for a packed Q8_0 `W` (`crate::q8`), on f32 activations on the CPU. Like
/// `FrozenQuantizedMatMul`, gradients pass to `x` through the dequantized matrix.
#[derive(Debug)]
pub(super) struct PackedMatMul {
    pub(super) weight: Arc<PackedQ8>,
}

impl CustomOp1 for PackedMatMul {
    fn name(&self) -> &'static str {
        "packed-q8-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = storage else {
            candle_core::bail!("packed-q8-matmul needs f32 activations")
        };
        let Some(x) = layout
            .contiguous_offsets()
            .map(|(start, end)| &x[start..end])
        else {
            candle_core::bail!("packed-q8-matmul needs contiguous activations")
        };
        let (n, k) = (self.weight.rows(), self.weight.cols());
        let mut dims = layout.dims().to_vec();
        if dims.last() != Some(&k) {
            candle_core::bail!("packed-q8-matmul: input {dims:?} does not match ({n}, {k})")
        }
        let m = x.len() / k;
        let mut y = vec![0f32; m * n];
        self.weight.matmul(x, m, &mut y);
        *dims.last_mut().expect("checked above") = n;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (rows, cols) = (self.weight.rows(), self.weight.cols());
        let weight = Tensor::from_vec(self.weight.dequantize(), (rows, cols), grad_res.device())?;
        input_gradient(grad_res, weight)
    }
}

/// `x·Wᵀ` for a frozen dense `W`: the backward pass computes the input's gradient only.
/// (candle's matmul backward also computes — and keeps until the end of the pass — a gradient
/// for the weight, broadcast over the batch: gigabytes for a frozen f32 base, and a third more
/// matrix work per step.)
#[derive(Debug)]
pub(super) struct FrozenDenseMatMul {
    /// `(out, in)`, contiguous.
    pub(super) weight: Tensor,
}

impl FrozenDenseMatMul {
    /// One backend's product of a contiguous `x` `(…, in)` with the transposed weight.
    fn product<S: BackendStorage>(
        &self,
        x: &S,
        x_layout: &Layout,
        weight: &S,
        weight_layout: &Layout,
    ) -> candle_core::Result<(S, Shape)> {
        if !x_layout.is_contiguous() || !weight_layout.is_contiguous() {
            candle_core::bail!("frozen-dense-matmul needs contiguous operands")
        }
        let (n, k) = weight_layout.shape().dims2()?;
        let mut dims = x_layout.dims().to_vec();
        if dims.last() != Some(&k) {
            candle_core::bail!("frozen-dense-matmul: input {dims:?} does not match ({n}, {k})")
        }
        let m = x_layout.shape().elem_count() / k;
        let lhs = Layout::contiguous_with_offset((m, k), x_layout.start_offset());
        let y = x.matmul(weight, (1, m, n, k), &lhs, &weight_layout.transpose(0, 1)?)?;
        *dims.last_mut().expect("checked above") = n;
        Ok((y, Shape::from(dims)))
    }

    /// The product on the backend whose storage `pick` finds the weight in.
    fn forward<S: BackendStorage>(
        &self,
        x: &S,
        x_layout: &Layout,
        pick: impl Fn(&Storage) -> Option<&S>,
    ) -> candle_core::Result<(S, Shape)> {
        let (weight, weight_layout) = self.weight.storage_and_layout();
        let Some(weight) = pick(&weight) else {
            candle_core::bail!("frozen-dense-matmul: the weight is on another device")
        };
        self.product(x, x_layout, weight, weight_layout)
    }
}

impl CustomOp1 for FrozenDenseMatMul {
    fn name(&self) -> &'static str {
        "frozen-dense-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(storage, layout, crate::fused::on_cpu)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.forward(storage, layout, crate::fused::on_cuda)
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.broadcast_matmul(&self.weight)?))
    }
}
