//! Projections. A `ProjectionGroup` holds the projections that read the same input (q, k, v;
//! gate, up) with their frozen base weights stacked, so one matrix product computes them all;
//! each projection keeps its own bias and LoRA adapter. Also here: the choice of kernel (Kefu's
//! packed Q8_0, `crate::q8`; the zero-column padding that unlocks candle's fast kernels on other
//! VNNI CPUs) and the ops that pass gradients through a quantized base.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{D, DType, Device, Module, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::q8::PackedQ8;

mod frozen;
use frozen::{FrozenDenseMatMul, FrozenQuantizedMatMul, PackedMatMul};

/// Whether a forward pass only computes (inference) or records what gradients need
/// (training: frozen matrices pass gradients to their input only, and the fused RMSNorm, RoPE
/// and softmax kernels carry the backward passes of `crate::fused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Inference,
    Training,
}

/// One weight matrix as stored: quantized blocks or a dense tensor.
#[derive(Debug, Clone)]
pub enum Weight {
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Weight {
    pub fn dims(&self) -> &[usize] {
        match self {
            Weight::Quantized(q) => q.shape().dims(),
            Weight::Dense(t) => t.dims(),
        }
    }

    /// The weight as a dense f32 tensor on `device`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        Ok(match self {
            Weight::Quantized(q) => q.dequantize(device)?,
            Weight::Dense(t) => t.to_dtype(DType::F32)?.to_device(device)?,
        })
    }
}

/// A low-rank adapter on one projection: `y = x·Wᵀ + scale·(dropout(x)·Aᵀ)·Bᵀ`,
/// `scale = α / r`. Only the adapter path is scaled, and only its input sees dropout (in
/// training; inference never drops).
#[derive(Debug, Clone)]
pub struct Lora {
    /// `(rank, in_features)`
    pub a: Tensor,
    /// `(out_features, rank)`
    pub b: Tensor,
    pub scale: f64,
    pub dropout: Option<LoraDropout>,
}

/// Dropout on an adapter's input: each value is zeroed with probability `p` and the rest are
/// scaled by `1 / (1 − p)`. The masks come from one seeded generator shared by every adapter
/// of a model, so a run that reseeds it per step draws the same masks when resumed.
#[derive(Debug, Clone)]
pub struct LoraDropout {
    pub p: f32,
    pub rng: Arc<Mutex<StdRng>>,
}

impl LoraDropout {
    pub fn new(p: f32, seed: u64) -> Self {
        Self {
            p,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
        }
    }

    /// Restarts the masks from `seed` (a trainer calls this at every step).
    pub fn reseed(&self, seed: u64) {
        *self.rng.lock().unwrap_or_else(|e| e.into_inner()) = StdRng::seed_from_u64(seed);
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let keep = 1.0 - self.p;
        let scaled = 1.0 / keep;
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            (0..x.elem_count())
                .map(|_| {
                    if rng.random::<f32>() < keep {
                        scaled
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * mask)?)
    }
}

/// What belongs to one projection besides its base weight: bias and adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    bias: Option<Tensor>,
    pub lora: Option<Lora>,
    out_features: usize,
    in_features: usize,
}

impl Linear {
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Adds the bias and the adapter path to this projection's base output `y`.
    fn finish(&self, mut y: Tensor, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(bias)?;
        }
        if let Some(lora) = &self.lora {
            let dropped;
            let x = match (&lora.dropout, mode) {
                (Some(dropout), Mode::Training) if dropout.p > 0.0 => {
                    dropped = dropout.apply(x)?;
                    &dropped
                }
                _ => x,
            };
            // The adapter keeps f32 master weights; it computes in the activations' type
            // (a no-op on the CPU), and the cast passes gradients back in f32.
            let down = x.broadcast_matmul(&lora.a.to_dtype(x.dtype())?.t()?)?;
            let up = down.broadcast_matmul(&lora.b.to_dtype(x.dtype())?.t()?)?;
            y = (y + (up * lora.scale)?)?;
        }
        Ok(y)
    }
}

/// candle's fastest CPU kernels (repacked tiles with VNNI dot products) take Q8_0 rows whose
/// length is a multiple of this and a row count that is a multiple of 16.
const FAST_ROW_MULTIPLE: usize = 256;
const FAST_ROW_COUNT_MULTIPLE: usize = 16;

fn cpu_has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
            || std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Appends zero columns to every row of a quantized matrix. An all-zero block decodes to zeros
/// in every GGML block type, so rows are padded by inserting zero bytes: exact.
fn pad_rows(tensor: &QTensor, padded_in: usize) -> Result<QTensor> {
    let (rows, cols) = tensor.shape().dims2()?;
    let dtype = tensor.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let padded_row_bytes = padded_in / dtype.block_size() * dtype.type_size();
    let data = tensor.data()?;
    let mut out = vec![0u8; rows * padded_row_bytes];
    for (src, dst) in data
        .chunks_exact(row_bytes)
        .zip(out.chunks_exact_mut(padded_row_bytes))
    {
        dst[..row_bytes].copy_from_slice(src);
    }
    let storage = QStorage::from_data(Cow::Owned(out), &tensor.device(), dtype)?;
    Ok(QTensor::new(storage, (rows, padded_in))?)
}

/// Stacks the rows of quantized matrices of one block type: their bytes, one after another.
fn stack_quantized(parts: &[&Arc<QTensor>]) -> Result<QTensor> {
    let first = parts[0];
    let (_, cols) = first.shape().dims2()?;
    let mut rows = 0;
    let mut bytes = Vec::new();
    for part in parts {
        rows += part.shape().dims2()?.0;
        bytes.extend_from_slice(&part.data()?);
    }
    let storage = QStorage::from_data(Cow::Owned(bytes), &first.device(), first.dtype())?;
    Ok(QTensor::new(storage, (rows, cols))?)
}

/// A stored base matrix: Kefu's packed Q8_0 (`crate::q8`, on CPUs with AVX-512 VNNI) or
/// whatever candle computes with.
#[derive(Debug, Clone)]
enum Matrix {
    Packed(Arc<PackedQ8>),
    Candle(QMatMul),
}

/// One stored matrix serving the projections `parts` (rows stacked in that order).
#[derive(Debug, Clone)]
struct Stack {
    weight: Matrix,
    /// Row length as stored (more than the input's when padded for the fast kernels).
    stored_in: usize,
    parts: Range<usize>,
}

/// Projections that read the same input.
#[derive(Debug, Clone)]
pub(crate) struct ProjectionGroup {
    stacks: Vec<Stack>,
    parts: Vec<Linear>,
    in_features: usize,
}

impl ProjectionGroup {
    /// Builds a group from `(weight, bias)` pairs of equal input size. Neighbours of the same
    /// block type (or both dense) share one stored matrix; `fast_kernels` pads Q8_0 rows for
    /// candle's repacked kernels where the CPU has VNNI.
    pub(crate) fn new(weights: Vec<(Weight, Option<Tensor>)>, fast_kernels: bool) -> Result<Self> {
        let mut parts = Vec::with_capacity(weights.len());
        let mut in_features = None;
        for (weight, bias) in &weights {
            let (out_f, in_f) = match weight.dims() {
                [o, i] => (*o, *i),
                dims => {
                    return Err(Error::InvalidConfig(format!(
                        "a projection must be 2-D, got {dims:?}"
                    )));
                }
            };
            if *in_features.get_or_insert(in_f) != in_f {
                return Err(Error::InvalidConfig(
                    "projections of one group must read inputs of one size".into(),
                ));
            }
            parts.push(Linear {
                bias: bias.clone(),
                lora: None,
                out_features: out_f,
                in_features: in_f,
            });
        }
        let in_features = in_features.ok_or_else(|| {
            Error::InvalidConfig("a projection group needs at least one weight".into())
        })?;
        // Only block-quantized matrices are stacked: their products are row-independent, so a
        // stack computes bit for bit what separate matrices would. Dense products (including
        // F32 / F16 / BF16 GGUF tensors, which candle computes densely) may sum in another order
        // when the matrix grows, and gain little from stacking.
        let stackable = |a: &Weight, b: &Weight| match (a, b) {
            (Weight::Quantized(x), Weight::Quantized(y)) => {
                x.dtype() == y.dtype() && x.dtype().block_size() > 1
            }
            _ => false,
        };
        let mut stacks = Vec::new();
        let mut first = 0;
        while first < weights.len() {
            let mut end = first + 1;
            while end < weights.len() && stackable(&weights[first].0, &weights[end].0) {
                end += 1;
            }
            let members: Vec<&Weight> = weights[first..end].iter().map(|(w, _)| w).collect();
            stacks.push(Self::stack(
                &members,
                first..end,
                in_features,
                fast_kernels,
            )?);
            first = end;
        }
        Ok(Self {
            stacks,
            parts,
            in_features,
        })
    }

    /// A group of one projection over an already packed matrix (no bias).
    pub(crate) fn from_packed(packed: Arc<PackedQ8>) -> Self {
        let (rows, cols) = (packed.rows(), packed.cols());
        Self {
            stacks: vec![Stack {
                weight: Matrix::Packed(packed),
                stored_in: cols,
                parts: 0..1,
            }],
            parts: vec![Linear {
                bias: None,
                lora: None,
                out_features: rows,
                in_features: cols,
            }],
            in_features: cols,
        }
    }

    fn stack(
        members: &[&Weight],
        parts: Range<usize>,
        in_features: usize,
        fast_kernels: bool,
    ) -> Result<Stack> {
        let (weight, stored_in) = match members[0] {
            Weight::Quantized(_) => {
                let quantized: Vec<&Arc<QTensor>> = members
                    .iter()
                    .filter_map(|w| match w {
                        Weight::Quantized(q) => Some(q),
                        Weight::Dense(_) => None,
                    })
                    .collect();
                let stacked = if quantized.len() == 1 {
                    quantized[0].clone()
                } else {
                    Arc::new(stack_quantized(&quantized)?)
                };
                let rows = stacked.shape().dims2()?.0;
                let packable = fast_kernels
                    && stacked.dtype() == GgmlDType::Q8_0
                    && stacked.device().is_cpu()
                    && crate::q8::available();
                if packable
                    && let Some(packed) = PackedQ8::pack(&stacked.data()?, rows, in_features)
                {
                    return Ok(Stack {
                        weight: Matrix::Packed(Arc::new(packed)),
                        stored_in: in_features,
                        parts,
                    });
                }
                let pad = fast_kernels
                    && stacked.dtype() == GgmlDType::Q8_0
                    && stacked.device().is_cpu()
                    && !in_features.is_multiple_of(FAST_ROW_MULTIPLE)
                    && rows.is_multiple_of(FAST_ROW_COUNT_MULTIPLE)
                    && cpu_has_vnni();
                if pad {
                    let padded_in = in_features.next_multiple_of(FAST_ROW_MULTIPLE);
                    let padded = pad_rows(&stacked, padded_in)?;
                    (Matrix::Candle(QMatMul::from_qtensor(padded)?), padded_in)
                } else {
                    (Matrix::Candle(QMatMul::from_arc(stacked)?), in_features)
                }
            }
            // Dense matrices are never stacked: each is its own stack, kept in the type and on
            // the device it came in (the decoder's compute type).
            Weight::Dense(dense) => (
                Matrix::Candle(QMatMul::Tensor(dense.contiguous()?)),
                in_features,
            ),
        };
        Ok(Stack {
            weight,
            stored_in,
            parts,
        })
    }

    /// The packed matrix of a group stored as one packed stack (the output projection whose
    /// table the token embeddings then share).
    pub(crate) fn packed(&self) -> Option<Arc<PackedQ8>> {
        match self.stacks.as_slice() {
            [
                Stack {
                    weight: Matrix::Packed(p),
                    ..
                },
            ] => Some(p.clone()),
            _ => None,
        }
    }

    pub(crate) fn part_mut(&mut self, index: usize) -> Option<&mut Linear> {
        self.parts.get_mut(index)
    }

    pub(crate) fn parts(&self) -> &[Linear] {
        &self.parts
    }

    /// The base weight of projection `index` as a dense `(out, in)` tensor.
    pub(crate) fn base_weight(&self, index: usize) -> Result<Tensor> {
        let stack = self
            .stacks
            .iter()
            .find(|s| s.parts.contains(&index))
            .ok_or_else(|| Error::InvalidConfig(format!("no projection {index}")))?;
        let dense = match &stack.weight {
            Matrix::Packed(p) => {
                Tensor::from_vec(p.dequantize(), (p.rows(), p.cols()), &Device::Cpu)?
            }
            Matrix::Candle(QMatMul::QTensor(q)) => q.dequantize(&q.device())?,
            Matrix::Candle(QMatMul::Tensor(t)) => t.clone(),
            Matrix::Candle(QMatMul::TensorF16(t)) => t.to_dtype(DType::F32)?,
        };
        let offset: usize = (stack.parts.start..index)
            .map(|p| self.parts[p].out_features)
            .sum();
        Ok(dense
            .narrow(0, offset, self.parts[index].out_features)?
            .narrow(1, 0, self.in_features)?)
    }

    /// Every projection's output, in order.
    pub(crate) fn forward(&self, x: &Tensor, mode: Mode) -> Result<Vec<Tensor>> {
        let mut padded: Option<Tensor> = None;
        let mut outputs = Vec::with_capacity(self.parts.len());
        for stack in &self.stacks {
            let input = if stack.stored_in > self.in_features {
                if padded.is_none() {
                    let extra = stack.stored_in - self.in_features;
                    padded = Some(x.pad_with_zeros(D::Minus1, 0, extra)?);
                }
                padded.as_ref().expect("padded above")
            } else {
                x
            };
            let y = match (&stack.weight, mode) {
                (Matrix::Packed(weight), _) => input.contiguous()?.apply_op1(PackedMatMul {
                    weight: weight.clone(),
                })?,
                (Matrix::Candle(QMatMul::QTensor(weight)), Mode::Training) => {
                    input.contiguous()?.apply_op1(FrozenQuantizedMatMul {
                        weight: weight.clone(),
                    })?
                }
                (Matrix::Candle(QMatMul::Tensor(weight)), Mode::Training) => {
                    input.contiguous()?.apply_op1(FrozenDenseMatMul {
                        weight: weight.clone(),
                    })?
                }
                (Matrix::Candle(weight), _) => weight.forward(input)?,
            };
            if stack.parts.len() == 1 {
                outputs.push(self.parts[stack.parts.start].finish(y, x, mode)?);
                continue;
            }
            let mut offset = 0;
            for part in &self.parts[stack.parts.clone()] {
                let piece = y.narrow(D::Minus1, offset, part.out_features)?;
                offset += part.out_features;
                outputs.push(part.finish(piece, x, mode)?);
            }
        }
        Ok(outputs)
    }

    /// The output of a group of one projection.
    pub(crate) fn forward_one(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(self
            .forward(x, mode)?
            .into_iter()
            .next()
            .expect("a group has at least one projection"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    fn quantized(rows: usize, cols: usize, dtype: GgmlDType) -> (Weight, Tensor) {
        let w = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let dense = q.dequantize(&Device::Cpu).unwrap();
        (Weight::Quantized(Arc::new(q)), dense)
    }

    #[test]
    fn a_frozen_quantized_matmul_passes_the_dense_gradient_to_its_input() {
        let device = Device::Cpu;
        let (weight, dense) = quantized(48, 64, GgmlDType::Q8_0);
        let group = ProjectionGroup::new(vec![(weight, None)], true).unwrap();
        let x = candle_core::Var::randn(0f32, 1.0, (2, 3, 64), &device).unwrap();
        let r = Tensor::randn(0f32, 1.0, (2, 3, 48), &device).unwrap();
        let y = group.forward_one(x.as_tensor(), Mode::Training).unwrap();
        // The forward value is the quantized matmul's.
        let inference = group.forward_one(x.as_tensor(), Mode::Inference).unwrap();
        assert_eq!(max_diff(&y, &inference), 0.0);
        let loss = (y * &r).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let got = grads.get(x.as_tensor()).unwrap();
        // d(sum(r ⊙ x·Wᵀ))/dx = r·W, with W as dequantized.
        let expected = r.broadcast_matmul(&dense).unwrap();
        assert!(max_diff(got, &expected) < 1e-4);
    }

    #[test]
    fn adapter_dropout_acts_in_training_only_and_repeats_after_a_reseed() {
        let device = Device::Cpu;
        let (weight, _) = quantized(16, 64, GgmlDType::Q8_0);
        let mut group = ProjectionGroup::new(vec![(weight, None)], false).unwrap();
        let dropout = LoraDropout::new(0.5, 7);
        group.part_mut(0).unwrap().lora = Some(Lora {
            a: Tensor::randn(0f32, 1.0, (4, 64), &device).unwrap(),
            b: Tensor::randn(0f32, 1.0, (16, 4), &device).unwrap(),
            scale: 2.0,
            dropout: Some(dropout.clone()),
        });
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64), &device).unwrap();
        let first = group.forward_one(&x, Mode::Inference).unwrap();
        let second = group.forward_one(&x, Mode::Inference).unwrap();
        assert_eq!(max_diff(&first, &second), 0.0, "inference never drops");
        dropout.reseed(11);
        let trained = group.forward_one(&x, Mode::Training).unwrap();
        assert!(max_diff(&trained, &first) > 1e-3, "training drops");
        let other = group.forward_one(&x, Mode::Training).unwrap();
        assert!(
            max_diff(&trained, &other) > 1e-3,
            "each pass draws a fresh mask"
        );
        dropout.reseed(11);
        let again = group.forward_one(&x, Mode::Training).unwrap();
        assert_eq!(
            max_diff(&trained, &again),
            0.0,
            "a reseed repeats the masks"
        );
    }

    #[test]
    fn packed_q8_0_stacks_compute_the_kernels_product_and_pass_gradients() {
        if !crate::q8::available() {
            eprintln!("skipped: no AVX-512 VNNI here, so Q8_0 is never packed");
            return;
        }
        let device = Device::Cpu;
        // q, k, v of SmolLM2's shape class: 576 is not a multiple of 256 (no padding needed).
        let parts: Vec<(Weight, Tensor)> = [64, 32, 32]
            .into_iter()
            .map(|rows| quantized(rows, 576, GgmlDType::Q8_0))
            .collect();
        let group =
            ProjectionGroup::new(parts.iter().map(|(w, _)| (w.clone(), None)).collect(), true)
                .unwrap();
        let Matrix::Packed(packed) = &group.stacks[0].weight else {
            panic!("Q8_0 is packed where the CPU has AVX-512 VNNI")
        };
        assert_eq!(
            group.stacks.len(),
            1,
            "the three projections share one packed stack"
        );
        assert_eq!((packed.rows(), packed.cols()), (128, 576));
        for (i, (_, dense)) in parts.iter().enumerate() {
            assert_eq!(max_diff(&group.base_weight(i).unwrap(), dense), 0.0);
        }
        let x = candle_core::Var::randn(0f32, 1.0, (2, 3, 576), &device).unwrap();
        let ys = group.forward(x.as_tensor(), Mode::Training).unwrap();
        let flat = x
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let expected = crate::q8::reference_matmul(packed, &flat, 6);
        let got = Tensor::cat(&ys, D::Minus1).unwrap();
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got, expected, "the kernels' bits");
        let r: Vec<Tensor> = ys
            .iter()
            .map(|y| Tensor::randn(0f32, 1.0, y.shape(), &device).unwrap())
            .collect();
        let mut loss = Tensor::zeros((), DType::F32, &device).unwrap();
        for (y, r) in ys.iter().zip(&r) {
            loss = (loss + (y * r).unwrap().sum_all().unwrap()).unwrap();
        }
        let grads = loss.backward().unwrap();
        let mut expected = Tensor::zeros((2, 3, 576), DType::F32, &device).unwrap();
        for ((_, dense), r) in parts.iter().zip(&r) {
            expected = (expected + r.broadcast_matmul(dense).unwrap()).unwrap();
        }
        assert!(max_diff(grads.get(x.as_tensor()).unwrap(), &expected) < 1e-4);
    }

    #[test]
    fn a_frozen_dense_matmul_passes_the_input_gradient_only() {
        let device = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (48, 64), &device).unwrap();
        let group = ProjectionGroup::new(vec![(Weight::Dense(w.clone()), None)], false).unwrap();
        let x = candle_core::Var::randn(0f32, 1.0, (2, 3, 64), &device).unwrap();
        let r = Tensor::randn(0f32, 1.0, (2, 3, 48), &device).unwrap();
        let y = group.forward_one(x.as_tensor(), Mode::Training).unwrap();
        let inference = group.forward_one(x.as_tensor(), Mode::Inference).unwrap();
        assert!(max_diff(&y, &inference) < 1e-5);
        let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let expected = r.broadcast_matmul(&w).unwrap();
        assert!(max_diff(grads.get(x.as_tensor()).unwrap(), &expected) < 1e-4);
        let Matrix::Candle(QMatMul::Tensor(stored)) = &group.stacks[0].weight else {
            panic!("a dense weight stays dense")
        };
        assert!(
            grads.get(stored).is_none(),
            "no gradient for the frozen weight"
        );
    }

    #[test]
    fn every_block_type_stacks_exactly() {
        for dtype in [
            GgmlDType::F32,
            GgmlDType::F16,
            GgmlDType::BF16,
            GgmlDType::Q4_1,
            GgmlDType::Q6K,
        ] {
            let (a, a_dense) = quantized(32, 256, dtype);
            let (b, b_dense) = quantized(16, 256, dtype);
            let group = ProjectionGroup::new(vec![(a, None), (b, None)], false).unwrap();
            let expected_stacks = if dtype.block_size() > 1 { 1 } else { 2 };
            assert_eq!(group.stacks.len(), expected_stacks, "{dtype:?}");
            assert_eq!(
                max_diff(&group.base_weight(0).unwrap(), &a_dense),
                0.0,
                "{dtype:?}"
            );
            assert_eq!(
                max_diff(&group.base_weight(1).unwrap(), &b_dense),
                0.0,
                "{dtype:?}"
            );
        }
    }

    #[test]
    fn stacked_projections_equal_separate_ones_and_keep_their_own_weights() {
        let x = Tensor::randn(0f32, 1.0, (1, 5, 96), &Device::Cpu).unwrap();
        for fast in [false, true] {
            // q and k share a block type and are stacked; v is another type; then a dense one.
            let (q, q_dense) = quantized(96, 96, GgmlDType::Q8_0);
            let (k, k_dense) = quantized(32, 96, GgmlDType::Q8_0);
            let (v, v_dense) = quantized(32, 96, GgmlDType::Q4_0);
            let extra_dense = Tensor::randn(0f32, 1.0, (16, 96), &Device::Cpu).unwrap();
            let bias = Tensor::randn(0f32, 1.0, 32, &Device::Cpu).unwrap();
            let weights = vec![
                (q.clone(), None),
                (k.clone(), Some(bias.clone())),
                (v.clone(), None),
                (Weight::Dense(extra_dense.clone()), None),
            ];
            let group = ProjectionGroup::new(weights, fast).unwrap();
            assert_eq!(group.stacks.len(), 3, "q+k, v, dense");
            assert_eq!(group.stacks[0].parts, 0..2);
            let outputs = group.forward(&x, Mode::Inference).unwrap();
            let single = |w: Weight, b: Option<Tensor>| {
                ProjectionGroup::new(vec![(w, b)], fast)
                    .unwrap()
                    .forward_one(&x, Mode::Inference)
                    .unwrap()
            };
            assert_eq!(max_diff(&outputs[0], &single(q, None)), 0.0);
            assert_eq!(max_diff(&outputs[1], &single(k, Some(bias))), 0.0);
            assert_eq!(max_diff(&outputs[2], &single(v, None)), 0.0);
            let extra = x.broadcast_matmul(&extra_dense.t().unwrap()).unwrap();
            assert!(max_diff(&outputs[3], &extra) < 1e-4);
            for (i, dense) in [q_dense, k_dense, v_dense, extra_dense].iter().enumerate() {
                assert_eq!(
                    max_diff(&group.base_weight(i).unwrap(), dense),
                    0.0,
                    "weight {i}"
                );
            }
        }
    }
}
