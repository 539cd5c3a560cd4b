//! Kefu's own Q8_0 matrix products for x86-64 CPUs with AVX-512 VNNI: the one module of the
//! model crate that uses `unsafe` (SIMD intrinsics and writes of disjoint output columns from
//! several threads). It also compiles the training kernels of `fused/attention.rs` (safe
//! loops) for the CPU's vector extensions, chosen at run time (`vector_kernel!`).
//!
//! A Q8_0 matrix is packed once, at load time, into tiles of 16 rows × one 32-value block
//! (`Tile`: each weight stored + 128 as an unsigned byte, four consecutive values of a row side
//! by side, so one `vpdpbusd` multiplies 16 rows by four activations) and the original blocks
//! are dropped: one copy of the weights, no zero padding of rows. Activations are quantized per
//! row to 32-value blocks with an `f32` scale — the same granularity as the weights, so a
//! product is the exact integer dot product of each block pair times the two scales.
//!
//! Every row of the output is computed by the same sequence of operations whatever the number
//! of rows in the batch, so one token at a time, a chunk and a whole prompt give the same bits,
//! and `reference_matmul` (plain Rust, no `unsafe`) gives the same bits too (tested below).

#![allow(unsafe_code)]

use half::f16;

use crate::fused::attention::{
    Fused, HeadGradInputs, HeadInputs, Separate, backward_head_lanes, forward_head_lanes,
    log_sum_exp_lanes, softmax_times_lanes,
};

/// Rows of a tile (one 512-bit register of `i32` lanes).
const TILE_ROWS: usize = 16;
/// Values of a block.
const BLOCK: usize = 32;
/// Bytes of one GGML Q8_0 block: an `f16` scale and 32 signed bytes.
const Q8_0_BYTES: usize = 2 + BLOCK;
/// Activation rows that share one pass over a weight tile in the kernel.
const MAX_ROWS_AT_ONCE: usize = 4;
/// Rows of the batch one unit of parallel work covers (the weight tile stays in cache for them).
const ROWS_PER_UNIT: usize = 16;

/// 16 rows of one 32-value block: `qs[(group * 16 + row) * 4 + j]` is value `4 * group + j` of
/// row `row`, plus 128.
#[derive(Clone, Copy)]
#[repr(C)]
struct Tile {
    qs: [u8; BLOCK * TILE_ROWS],
    d: [f16; TILE_ROWS],
}

/// One activation block: 32 values as signed bytes, their scale, and 128 × their sum (what the
/// weights' +128 offset adds to an integer dot product).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct ActBlock {
    qs: [i8; BLOCK],
    d: f32,
    offset: f32,
}

/// A Q8_0 matrix `(rows, cols)` packed for the kernels.
pub struct PackedQ8 {
    rows: usize,
    cols: usize,
    /// `[row tile][block]`.
    tiles: Vec<Tile>,
}

impl std::fmt::Debug for PackedQ8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedQ8({}, {})", self.rows, self.cols)
    }
}

/// Whether this CPU runs the kernels.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl PackedQ8 {
    /// Packs GGML Q8_0 bytes of a `(rows, cols)` matrix; `None` when the sizes do not match.
    pub fn pack(bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        if cols == 0
            || !cols.is_multiple_of(BLOCK)
            || bytes.len() != rows * cols / BLOCK * Q8_0_BYTES
        {
            return None;
        }
        let row_bytes = cols / BLOCK * Q8_0_BYTES;
        Self::pack_with(rows, cols, |first, out| {
            out.copy_from_slice(&bytes[first * row_bytes..first * row_bytes + out.len()]);
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap_or_else(|never| match never {})
    }

    /// Packs a `(rows, cols)` Q8_0 matrix whose GGML bytes `read(first_row, out)` fills a tile
    /// of rows at a time (`out` holds whole rows from `first_row` on): the matrix is never
    /// whole in memory beside its packed copy (a 262,144-row embedding table read from a
    /// file is 178 MB). `Ok(None)` when the sizes cannot be packed.
    pub fn pack_with<E>(
        rows: usize,
        cols: usize,
        mut read: impl FnMut(usize, &mut [u8]) -> Result<(), E>,
    ) -> Result<Option<Self>, E> {
        if rows == 0 || cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Ok(None);
        }
        let blocks = cols / BLOCK;
        let row_bytes = blocks * Q8_0_BYTES;
        let row_tiles = rows.div_ceil(TILE_ROWS);
        let empty = Tile {
            qs: [128; BLOCK * TILE_ROWS],
            d: [f16::ZERO; TILE_ROWS],
        };
        let mut tiles = vec![empty; row_tiles * blocks];
        let mut buffer = vec![0u8; TILE_ROWS * row_bytes];
        for tile_row in 0..row_tiles {
            let first = tile_row * TILE_ROWS;
            let count = TILE_ROWS.min(rows - first);
            let chunk = &mut buffer[..count * row_bytes];
            read(first, chunk)?;
            for (lane, row_bytes) in chunk.chunks_exact(row_bytes).enumerate() {
                for (b, block) in row_bytes.chunks_exact(Q8_0_BYTES).enumerate() {
                    let tile = &mut tiles[tile_row * blocks + b];
                    tile.d[lane] = f16::from_le_bytes([block[0], block[1]]);
                    for (i, &q) in block[2..].iter().enumerate() {
                        let (group, j) = (i / 4, i % 4);
                        tile.qs[(group * TILE_ROWS + lane) * 4 + j] = (q as i8 as i16 + 128) as u8;
                    }
                }
            }
        }
        Ok(Some(Self { rows, cols, tiles }))
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn blocks(&self) -> usize {
        self.cols / BLOCK
    }

    /// Row `row`, dequantized into `out` (`cols` values).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let blocks = self.blocks();
        let (tile_row, lane) = (row / TILE_ROWS, row % TILE_ROWS);
        for (b, values) in out.chunks_exact_mut(BLOCK).enumerate().take(blocks) {
            let tile = &self.tiles[tile_row * blocks + b];
            let d = tile.d[lane].to_f32();
            for (i, v) in values.iter_mut().enumerate() {
                let q = tile.qs[((i / 4) * TILE_ROWS + lane) * 4 + i % 4] as i16 - 128;
                *v = q as f32 * d;
            }
        }
    }

    /// The whole matrix, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for (row, values) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(row, values);
        }
        out
    }

    /// `out = x · Wᵀ` for `x` of `m` rows of `cols` values; `out` has `m` rows of `rows` values.
    /// Runs on candle's CPU thread pool. Needs `available()`.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        assert!(available(), "PackedQ8::matmul needs AVX-512 VNNI");
        assert_eq!(x.len(), m * self.cols);
        assert_eq!(out.len(), m * self.rows);
        let acts = quantize_rows(x, m, self.cols);
        let row_tiles = self.rows.div_ceil(TILE_ROWS);
        let row_groups = m.div_ceil(ROWS_PER_UNIT);
        let out_ptr = out.as_mut_ptr() as usize;
        candle_core::utils::barrier_pool().execute_chunked(row_tiles * row_groups, |units| {
            for unit in units {
                let (tile_row, group) = (unit / row_groups, unit % row_groups);
                let first = group * ROWS_PER_UNIT;
                let last = (first + ROWS_PER_UNIT).min(m);
                // SAFETY: `available()` was checked above; each unit writes only the columns
                // of its own row tile in the rows of its own group, so no two units (and so no
                // two threads) write the same output value, and every index stays inside `out`
                // (`m × rows`, asserted above) and `acts` (`m × blocks`).
                unsafe { self.unit(&acts, tile_row, first..last, out_ptr as *mut f32) };
            }
        });
    }

    /// One tile row against batch rows `rows`, written into `out` (`m × self.rows`).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn unit(
        &self,
        acts: &[ActBlock],
        tile_row: usize,
        rows: std::ops::Range<usize>,
        out: *mut f32,
    ) {
        let blocks = self.blocks();
        let tiles = &self.tiles[tile_row * blocks..(tile_row + 1) * blocks];
        let columns = (self.rows - tile_row * TILE_ROWS).min(TILE_ROWS);
        let mut first = rows.start;
        while first < rows.end {
            let count = (rows.end - first).min(MAX_ROWS_AT_ONCE);
            let mut sums = [[0f32; TILE_ROWS]; MAX_ROWS_AT_ONCE];
            let act = |i: usize| &acts[(first + i) * blocks..(first + i + 1) * blocks];
            // SAFETY: the caller checked the CPU features; the kernels read `tiles` and the
            // activation rows inside their bounds and write `sums`.
            unsafe {
                match count {
                    1 => kernel::<1>(tiles, [act(0)], &mut sums),
                    2 => kernel::<2>(tiles, [act(0), act(1)], &mut sums),
                    3 => kernel::<3>(tiles, [act(0), act(1), act(2)], &mut sums),
                    _ => kernel::<4>(tiles, [act(0), act(1), act(2), act(3)], &mut sums),
                }
            }
            for (i, sum) in sums.iter().enumerate().take(count) {
                // SAFETY: row `first + i` < m and columns `tile_row * 16 ..` + `columns` <=
                // `self.rows`, so the destination lies inside `out` (`m × self.rows`), in the
                // part only this unit writes.
                unsafe {
                    let dst = out.add((first + i) * self.rows + tile_row * TILE_ROWS);
                    std::ptr::copy_nonoverlapping(sum.as_ptr(), dst, columns);
                }
            }
            first += count;
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn unit(&self, _: &[ActBlock], _: usize, _: std::ops::Range<usize>, _: *mut f32) {
        unreachable!("available() is false off x86-64")
    }
}

/// `R` activation rows against one tile row: `sums[i][lane]` = row `i` · weight row `lane`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn kernel<const R: usize>(
    tiles: &[Tile],
    acts: [&[ActBlock]; R],
    sums: &mut [[f32; TILE_ROWS]; MAX_ROWS_AT_ONCE],
) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); R];
    for (b, tile) in tiles.iter().enumerate() {
        // Two integer accumulators a row (even and odd groups of four values) halve the
        // dependency chain of `vpdpbusd` when only one row is computed (decoding).
        let mut even = [_mm512_setzero_si512(); R];
        let mut odd = [_mm512_setzero_si512(); R];
        for pair in 0..4 {
            // SAFETY: `qs` holds 8 groups of 64 bytes; `pair * 128 + 64 + 64` <= 512.
            let (w0, w1) = unsafe {
                let base = tile.qs.as_ptr().add(pair * 128);
                (
                    _mm512_loadu_si512(base.cast()),
                    _mm512_loadu_si512(base.add(64).cast()),
                )
            };
            for i in 0..R {
                let q = acts[i][b].qs.as_ptr();
                // SAFETY: `qs` holds 32 bytes; `pair * 8 + 4 + 4` <= 32.
                let (x0, x1) = unsafe {
                    (
                        std::ptr::read_unaligned(q.add(pair * 8).cast::<i32>()),
                        std::ptr::read_unaligned(q.add(pair * 8 + 4).cast::<i32>()),
                    )
                };
                even[i] = _mm512_dpbusd_epi32(even[i], w0, _mm512_set1_epi32(x0));
                odd[i] = _mm512_dpbusd_epi32(odd[i], w1, _mm512_set1_epi32(x1));
            }
        }
        // SAFETY: `d` holds 16 f16 values, 32 bytes.
        let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(tile.d.as_ptr().cast()) });
        for i in 0..R {
            let block = &acts[i][b];
            // Σ (w + 128)·x − 128·Σ x = Σ w·x, exact in f32 (|Σ| < 2²⁴).
            let dot = _mm512_sub_ps(
                _mm512_cvtepi32_ps(_mm512_add_epi32(even[i], odd[i])),
                _mm512_set1_ps(block.offset),
            );
            acc[i] = _mm512_fmadd_ps(dot, _mm512_mul_ps(dw, _mm512_set1_ps(block.d)), acc[i]);
        }
    }
    for i in 0..R {
        // SAFETY: `sums[i]` holds 16 f32 values.
        unsafe { _mm512_storeu_ps(sums[i].as_mut_ptr(), acc[i]) };
    }
}

/// Defines `$name` as `$lanes` (a safe, `#[inline(always)]` loop generic over
/// [`MulAdd`](crate::fused::attention::MulAdd)) compiled for AVX-512, else AVX2 + FMA, where
/// the CPU has them (with fused multiply-adds), else as plain code.
macro_rules! vector_kernel {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $lanes:ident;) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $lanes::<Fused>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $lanes::<Fused>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the feature `avx512` is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $lanes::<Separate>($($arg),*)
        }
    };
}

vector_kernel! {
    /// `log Σ eˣ` over `row` (the training loss's rows).
    fn log_sum_exp(row: &[f32]) -> f32 = log_sum_exp_lanes;
}

vector_kernel! {
    /// `row ← scale · softmax(row)` in place.
    fn softmax_times(row: &mut [f32], scale: f32) = softmax_times_lanes;
}

vector_kernel! {
    /// [`crate::fused::attention`]'s forward kernel for one head.
    fn attention_forward_head(x: HeadInputs, out: &mut [f32], lse: &mut [f32]) = forward_head_lanes;
}

vector_kernel! {
    /// [`crate::fused::attention`]'s backward kernel for one head.
    fn attention_backward_head(x: HeadGradInputs, dq: &mut [f32], dk: &mut [f32], dv: &mut [f32])
        = backward_head_lanes;
}

/// One attention head for one query: `y = softmax(scale · q·Kᵀ) · V` over `len` positions,
/// key `j` at `keys[j * key_stride..][..q.len()]`, value `j` likewise in `values` (views into
/// a cache, read in place). Compiled for AVX-512 where the CPU has it.
pub(crate) fn attend_head(
    q: &[f32],
    (keys, key_stride): (&[f32], usize),
    (values, value_stride): (&[f32], usize),
    len: usize,
    scale: f32,
    y: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature the function is compiled for.
        return unsafe {
            attend_head_wide(q, (keys, key_stride), (values, value_stride), len, scale, y)
        };
    }
    attend_head_lanes(q, (keys, key_stride), (values, value_stride), len, scale, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attend_head_wide(
    q: &[f32],
    keys: (&[f32], usize),
    values: (&[f32], usize),
    len: usize,
    scale: f32,
    y: &mut [f32],
) {
    attend_head_lanes(q, keys, values, len, scale, y)
}

#[inline(always)]
fn attend_head_lanes(
    q: &[f32],
    (keys, key_stride): (&[f32], usize),
    (values, value_stride): (&[f32], usize),
    len: usize,
    scale: f32,
    y: &mut [f32],
) {
    let dim = q.len();
    // Plain loops: iterator adapters become functions of their own, compiled without the
    // caller's target features.
    let mut scores = vec![0f32; len];
    let mut max = f32::NEG_INFINITY;
    for (j, s) in scores.iter_mut().enumerate() {
        *s = dot_lanes(q, &keys[j * key_stride..j * key_stride + dim]) * scale;
        max = max.max(*s);
    }
    let mut total = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    y.fill(0.0);
    for (j, p) in scores.iter().enumerate() {
        let weight = p / total;
        let value = &values[j * value_stride..j * value_stride + dim];
        for (y, v) in y.iter_mut().zip(value) {
            *y += weight * v;
        }
    }
}

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    for (x, y) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    let mut total = 0f32;
    for lane in lanes {
        total += lane;
    }
    for i in a.len() / 16 * 16..a.len() {
        total += a[i] * b[i];
    }
    total
}

/// Calls `f(i, row)` for every `row_len`-long row `i` of `out`, the rows shared among candle's
/// CPU threads (each row handed to one call).
pub(crate) fn for_each_row<T: Send>(
    out: &mut [T],
    row_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    assert!(row_len > 0 && out.len().is_multiple_of(row_len));
    let rows = out.len() / row_len;
    let out_ptr = out.as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(rows, |range| {
        for i in range {
            // SAFETY: `execute_chunked` hands each index in `0..rows` to exactly one call, so
            // row `i` (inside `out`, since `i < rows`) is borrowed mutably once at a time.
            let row = unsafe {
                std::slice::from_raw_parts_mut((out_ptr as *mut T).add(i * row_len), row_len)
            };
            f(i, row);
        }
    });
}

/// Quantizes `m` rows of `cols` values to 32-value blocks (in parallel for a batch).
fn quantize_rows(x: &[f32], m: usize, cols: usize) -> Vec<ActBlock> {
    let blocks = cols / BLOCK;
    let mut out = vec![ActBlock::default(); m * blocks];
    if m < 8 {
        for (row, dst) in x.chunks_exact(cols).zip(out.chunks_exact_mut(blocks)) {
            quantize_row(row, dst);
        }
        return out;
    }
    for_each_row(&mut out, blocks, |row, dst| {
        quantize_row(&x[row * cols..(row + 1) * cols], dst)
    });
    out
}

/// One row: each block scaled so its largest magnitude is 127 (GGML's Q8_0 rule, with an `f32`
/// scale), rounded half away from zero.
fn quantize_row(x: &[f32], out: &mut [ActBlock]) {
    for (values, block) in x.chunks_exact(BLOCK).zip(out.iter_mut()) {
        let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let inverse = if d == 0.0 { 0.0 } else { 1.0 / d };
        let mut sum = 0i32;
        for (q, &v) in block.qs.iter_mut().zip(values) {
            *q = (v * inverse).round() as i8;
            sum += *q as i32;
        }
        block.d = d;
        block.offset = (128 * sum) as f32;
    }
}

/// What `PackedQ8::matmul` computes, in plain Rust: the kernels' arithmetic one value at a time,
/// in the same order (for tests, and as the specification).
pub fn reference_matmul(weight: &PackedQ8, x: &[f32], m: usize) -> Vec<f32> {
    let blocks = weight.blocks();
    let acts = quantize_rows(x, m, weight.cols);
    let mut out = vec![0.0; m * weight.rows];
    for i in 0..m {
        for row in 0..weight.rows {
            let (tile_row, lane) = (row / TILE_ROWS, row % TILE_ROWS);
            let mut acc = 0f32;
            for b in 0..blocks {
                let tile = &weight.tiles[tile_row * blocks + b];
                let act = &acts[i * blocks + b];
                let dot: i32 = (0..BLOCK)
                    .map(|v| {
                        let w = tile.qs[((v / 4) * TILE_ROWS + lane) * 4 + v % 4] as i32 - 128;
                        w * act.qs[v] as i32
                    })
                    .sum();
                acc = (dot as f32).mul_add(tile.d[lane].to_f32() * act.d, acc);
            }
            out[i * weight.rows + row] = acc;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn q8_0(rows: usize, cols: usize, seed: u64) -> QTensor {
        let w = Tensor::from_vec(random(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap();
        QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()
    }

    fn packed(q: &QTensor) -> PackedQ8 {
        let (rows, cols) = q.shape().dims2().unwrap();
        PackedQ8::pack(&q.data().unwrap(), rows, cols).unwrap()
    }

    #[test]
    fn packing_keeps_every_weight() {
        // 37 rows: the last tile is partly empty.
        let q = q8_0(37, 96, 1);
        let expected = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap();
        let p = packed(&q);
        assert_eq!(p.dequantize(), expected.to_vec1::<f32>().unwrap());
        assert!(PackedQ8::pack(&q.data().unwrap(), 36, 96).is_none());
        assert!(PackedQ8::pack(&[], 0, 96).is_none());
        assert!(PackedQ8::pack(&q.data().unwrap(), 37, 100).is_none());
        // Read a tile of rows at a time (as from a file): the same tiles; a read error stops it.
        let bytes = q.data().unwrap();
        let row_bytes = 96 / BLOCK * Q8_0_BYTES;
        let mut asked = Vec::new();
        let read = PackedQ8::pack_with(37, 96, |first, out: &mut [u8]| {
            asked.push((first, out.len() / row_bytes));
            out.copy_from_slice(&bytes[first * row_bytes..][..out.len()]);
            Ok::<_, String>(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(asked, [(0, 16), (16, 16), (32, 5)]);
        assert_eq!(read.dequantize(), p.dequantize());
        let failed = PackedQ8::pack_with(37, 96, |_, _| Err("disk gone".to_string()));
        assert_eq!(failed.unwrap_err(), "disk gone");
    }

    #[test]
    fn kernels_equal_the_reference_bit_for_bit_at_every_batch_size() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI (the kernels are never used here)");
            return;
        }
        for (rows, cols) in [(16, 32), (37, 96), (48, 576), (160, 896)] {
            let p = packed(&q8_0(rows, cols, rows as u64));
            for m in [1, 2, 3, 4, 5, 17, 33] {
                let x = random(m * cols, (m * 7 + cols) as u64);
                let mut out = vec![0.0; m * rows];
                p.matmul(&x, m, &mut out);
                assert_eq!(out, reference_matmul(&p, &x, m), "{rows}×{cols}, m = {m}");
                // Row by row gives the same bits as the batch.
                for i in 0..m {
                    let mut one = vec![0.0; rows];
                    p.matmul(&x[i * cols..(i + 1) * cols], 1, &mut one);
                    assert_eq!(one, out[i * rows..(i + 1) * rows]);
                }
            }
        }
    }

    #[test]
    fn products_are_as_close_to_the_dense_product_as_candles_q8_0_product() {
        use candle_core::Module;
        use candle_core::quantized::QMatMul;

        // 576 columns: not a multiple of 256, so candle takes its reference Q8_0 path
        // (activations quantized to 32-value blocks with an f16 scale).
        let (rows, cols, m) = (64, 576, 3);
        let q = q8_0(rows, cols, 9);
        let p = packed(&q);
        let x = random(m * cols, 10);
        let xs = Tensor::from_vec(x.clone(), (m, cols), &Device::Cpu).unwrap();
        let dense = q.dequantize(&Device::Cpu).unwrap();
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let exact = flat(xs.matmul(&dense.t().unwrap()).unwrap());
        let candle = flat(QMatMul::from_qtensor(q).unwrap().forward(&xs).unwrap());
        let ours = reference_matmul(&p, &x, m);
        let worst = |got: &[f32]| {
            exact
                .iter()
                .zip(got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        let (ours, candle) = (worst(&ours), worst(&candle));
        assert!(ours <= candle * 1.05 + 1e-4, "ours {ours}, candle {candle}");
    }
}
