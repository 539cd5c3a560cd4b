//! The attention op on NVIDIA GPUs: launches the kernels of `attention.cu` (compiled to PTX by
//! the crate's build script) on candle's stream. f32 or bf16 values, head widths up to
//! [`MAX_DIM`]; the forward pass keeps the log-sum-exps and each key's last reader on the GPU
//! for the backward pass.
//!
//! The crate's second `unsafe` module (the first is `q8`): launching a kernel is `unsafe`
//! because the compiler cannot check its arguments against the kernel's signature. Each launch
//! says why its arguments fit.
#![allow(unsafe_code)]

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{DType, Layout, Shape, Storage, Tensor};

use super::Dims;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
const MODULE: &str = "kefu_attention";
/// Warps a block (`WARPS` in the kernels): query rows, or keys, a block.
const WARPS: u32 = 8;
/// Keys (forward, dq) or queries (dk, dv) a tile in shared memory (`TILE`).
const TILE: usize = 32;
/// The widest head the kernels take (`MAX_DIM`): four values a lane.
pub(super) const MAX_DIM: usize = 128;
/// Floats after each shared-memory row that lanes read side by side (`PAD`).
const PAD: usize = 4;

/// What the forward pass keeps for the backward pass, on the GPU.
pub(super) struct Kept {
    lse: CudaSlice<f32>,
    first: CudaSlice<u32>,
    last: CudaSlice<u32>,
}

/// Whether the kernels take these tensors: f32 or bf16 on a CUDA device, a head no wider than
/// [`MAX_DIM`] and a multiple of 4 wide (rows are read four floats at a time), first keys that never decrease along a row (causal masks, windows, packed
/// examples: the forward kernel's blocks read keys from their first row's first key).
pub(super) fn takes(q: &Tensor, first: &[u32], seq: usize) -> bool {
    q.device().is_cuda()
        && matches!(q.dtype(), DType::F32 | DType::BF16)
        && q.dim(3)
            .is_ok_and(|dim| dim <= MAX_DIM && dim.is_multiple_of(4))
        && seq > 0
        && first
            .chunks(seq)
            .all(|row| row.windows(2).all(|w| w[0] <= w[1]))
}

fn launch(blocks: (u32, u32), floats: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.0, blocks.1, 1),
        block_dim: (WARPS * 32, 1, 1),
        shared_mem_bytes: (floats * 4) as u32,
    }
}

fn suffix(dtype: DType) -> candle_core::Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        other => candle_core::bail!("causal attention on the GPU: f32 or bf16, not {other:?}"),
    }
}

/// A contiguous tensor's values from its first element.
fn view<'a, T: candle_core::cuda_backend::CudaDType>(
    storage: &'a CudaStorage,
    layout: &Layout,
) -> candle_core::Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(storage.as_cuda_slice::<T>()?.slice(start..end)),
        None => candle_core::bail!("causal attention on the GPU: contiguous tensors only"),
    }
}

fn sizes(d: &Dims) -> candle_core::Result<[i32; 4]> {
    let fit = |n: usize| {
        i32::try_from(n).map_err(|_| candle_core::Error::Msg("causal attention: too large".into()))
    };
    Ok([fit(d.heads)?, fit(d.kv_heads)?, fit(d.seq)?, fit(d.dim)?])
}

/// The forward pass: the output and what the backward pass needs.
pub(super) fn forward(
    first: &[u32],
    scale: f32,
    d: Dims,
    [(q, ql), (k, kl), (v, vl)]: [(&CudaStorage, &Layout); 3],
) -> candle_core::Result<(CudaStorage, Kept)> {
    match q.dtype() {
        DType::F32 => forward_as::<f32>(first, scale, d, [(q, ql), (k, kl), (v, vl)]),
        DType::BF16 => forward_as::<half::bf16>(first, scale, d, [(q, ql), (k, kl), (v, vl)]),
        other => candle_core::bail!("causal attention on the GPU: f32 or bf16, not {other:?}"),
    }
}

fn forward_as<T>(
    first: &[u32],
    scale: f32,
    d: Dims,
    [(q, ql), (k, kl), (v, vl)]: [(&CudaStorage, &Layout); 3],
) -> candle_core::Result<(CudaStorage, Kept)>
where
    T: candle_core::cuda_backend::CudaDType + candle_core::cuda_backend::cudarc::driver::DeviceRepr,
{
    let device: &CudaDevice = &q.device;
    let stream = device.cuda_stream();
    let (qv, kv, vv) = (view::<T>(q, ql)?, view::<T>(k, kl)?, view::<T>(v, vl)?);
    let first_keys = stream.clone_htod(first).w()?;
    let last_readers = stream.clone_htod(&super::last_readers(first, d.seq)).w()?;
    // SAFETY (both): every element is written by the kernel before it is read.
    let mut lse = unsafe { device.alloc::<f32>(d.batch * d.heads * d.seq)? };
    let mut out = unsafe { device.alloc::<T>(d.batch * d.heads * d.seq * d.dim)? };
    let name = format!("attention_forward_{}", suffix(q.dtype())?);
    let func = device.get_or_load_custom_func(&name, MODULE, PTX)?;
    let [heads, kv_heads, seq, dim] = sizes(&d)?;
    let floats = WARPS as usize * d.dim + TILE * (d.dim + PAD) + TILE * d.dim;
    let blocks = (
        d.seq.div_ceil(WARPS as usize) as u32,
        (d.batch * d.heads) as u32,
    );
    let mut builder = func.builder();
    builder
        .arg(&qv)
        .arg(&kv)
        .arg(&vv)
        .arg(&first_keys)
        .arg(&mut out)
        .arg(&mut lse)
        .arg(&heads)
        .arg(&kv_heads)
        .arg(&seq)
        .arg(&dim)
        .arg(&scale);
    // SAFETY: the arguments are, in order, the kernel's (`attention_forward_*` in
    // attention.cu): q, k, v, out of the sizes `d` says (checked by the op), `first` and `lse`
    // of batch × seq and batch × heads × seq; the grid covers every (row, head) once and the
    // shared memory is the size the kernel lays out.
    unsafe { builder.launch(launch(blocks, floats)) }.w()?;
    let kept = Kept {
        lse,
        first: first_keys,
        last: last_readers,
    };
    Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), kept))
}

/// The backward pass: the gradients of q, k and v.
pub(super) fn backward(
    kept: &Kept,
    scale: f32,
    d: Dims,
    [q, k, v, out, grad]: [&Tensor; 5],
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    match q.dtype() {
        DType::F32 => backward_as::<f32>(kept, scale, d, [q, k, v, out, grad]),
        DType::BF16 => backward_as::<half::bf16>(kept, scale, d, [q, k, v, out, grad]),
        other => candle_core::bail!("causal attention on the GPU: f32 or bf16, not {other:?}"),
    }
}

fn backward_as<T>(
    kept: &Kept,
    scale: f32,
    d: Dims,
    tensors: [&Tensor; 5],
) -> candle_core::Result<(Tensor, Tensor, Tensor)>
where
    T: candle_core::cuda_backend::CudaDType + candle_core::cuda_backend::cudarc::driver::DeviceRepr,
{
    let tensors = {
        let [q, k, v, out, grad] = tensors.map(|t| t.contiguous());
        [q?, k?, v?, out?, grad?]
    };
    let storages = tensors.each_ref().map(|t| t.storage_and_layout());
    let mut views = Vec::with_capacity(5);
    for (storage, layout) in &storages {
        match crate::fused::on_cuda(storage) {
            Some(storage) => views.push(view::<T>(storage, layout)?),
            None => candle_core::bail!("causal attention: the backward pass on another device"),
        }
    }
    let device: &CudaDevice = tensors[0].device().as_cuda_device()?;
    let name = suffix(tensors[0].dtype())?;
    let [heads, kv_heads, seq, dim] = sizes(&d)?;
    let (queries, keys) = (d.batch * d.heads * d.seq, d.batch * d.kv_heads * d.seq);
    // SAFETY (all three): every element is written by a kernel before it is read.
    let mut delta = unsafe { device.alloc::<f32>(queries)? };
    let mut dq = unsafe { device.alloc::<T>(queries * d.dim)? };
    let (mut dk, mut dv) = unsafe {
        (
            device.alloc::<T>(keys * d.dim)?,
            device.alloc::<T>(keys * d.dim)?,
        )
    };

    let func =
        device.get_or_load_custom_func(&format!("attention_backward_dq_{name}"), MODULE, PTX)?;
    let mut builder = func.builder();
    builder
        .arg(&views[0])
        .arg(&views[1])
        .arg(&views[2])
        .arg(&views[3])
        .arg(&views[4])
        .arg(&kept.lse)
        .arg(&kept.first)
        .arg(&mut delta)
        .arg(&mut dq)
        .arg(&heads)
        .arg(&kv_heads)
        .arg(&seq)
        .arg(&dim)
        .arg(&scale);
    let floats = 2 * WARPS as usize * d.dim + 2 * TILE * (d.dim + PAD);
    let blocks = (
        d.seq.div_ceil(WARPS as usize) as u32,
        (d.batch * d.heads) as u32,
    );
    // SAFETY: the arguments are `attention_backward_dq_*`'s in order: q, k, v, out, grad of the
    // sizes `d` says, the forward pass's lse and first keys of this call's sizes (the op keeps
    // them per call), delta and dq of batch × heads × seq (× dim); one block per WARPS query
    // rows of each (row, head); shared memory as the kernel lays it out.
    unsafe { builder.launch(launch(blocks, floats)) }.w()?;

    let func =
        device.get_or_load_custom_func(&format!("attention_backward_dkv_{name}"), MODULE, PTX)?;
    let mut builder = func.builder();
    builder
        .arg(&views[0])
        .arg(&views[1])
        .arg(&views[2])
        .arg(&views[4])
        .arg(&kept.lse)
        .arg(&delta)
        .arg(&kept.first)
        .arg(&kept.last)
        .arg(&mut dk)
        .arg(&mut dv)
        .arg(&heads)
        .arg(&kv_heads)
        .arg(&seq)
        .arg(&dim)
        .arg(&scale);
    let floats = 2 * WARPS as usize * d.dim + 2 * TILE * (d.dim + PAD) + 3 * TILE;
    let blocks = (
        d.seq.div_ceil(WARPS as usize) as u32,
        (d.batch * d.kv_heads) as u32,
    );
    // SAFETY: `attention_backward_dkv_*`'s arguments in order: q, k, v, grad, lse, delta (just
    // written, same stream), first and last keys (batch × seq), dk and dv of k's size; one
    // block per WARPS keys of each (row, key head); shared memory as the kernel lays it out.
    unsafe { builder.launch(launch(blocks, floats)) }.w()?;

    let tensor = |slice: CudaSlice<T>, shape: &Shape| {
        Tensor::from_storage(
            Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, device.clone())),
            shape.clone(),
            BackpropOp::none(),
            false,
        )
    };
    let [q, k, ..] = &tensors;
    Ok((
        tensor(dq, q.shape()),
        tensor(dk, k.shape()),
        tensor(dv, k.shape()),
    ))
}
