// Causal grouped-query attention for training on NVIDIA GPUs, with its own backward pass: the
// CUDA half of `attention.rs` (which says what the op computes). Compiled to PTX by the model
// crate's build script in a CUDA build; loaded and launched by `attention/cuda.rs`.
//
// Layouts (all contiguous): q, out, dq `(batch, heads, seq, dim)`; k, v, dk, dv `(batch,
// kv_heads, seq, dim)`; lse, delta `(batch, heads, seq)` f32; first, last `(batch, seq)`: query
// i reads keys first[i] ..= i, key j is read by queries up to last[j]. Values are f32 or bf16;
// every sum is f32.
//
// Each block has WARPS warps. Forward and dq: a warp per query row, the block's rows sharing
// tiles of TILE keys in shared memory; a lane scores one key of a tile, then every lane adds
// the tile's weighted rows to the `dim / 32` output values it owns. dk and dv: a warp per key,
// sharing tiles of TILE queries, over every query head of the key's group, so no two warps
// write one value (no atomics). Rows in shared memory that lanes read side by side (a row a
// lane) are padded to `dim + 4` floats, so each quarter-warp's 16-byte loads hit distinct banks;
// `dim` is a multiple of 4 (the host checks), so rows are read four floats at a time.

#include <cuda_bf16.h>
#include <math_constants.h>
#include <stdint.h>

#define WARPS 8
#define TILE 32
#define MAX_DIM 128
#define PER_LANE (MAX_DIM / 32)
#define PAD 4

__device__ __forceinline__ float load(const float *p) { return *p; }
__device__ __forceinline__ float load(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store(float *p, float x) { *p = x; }
__device__ __forceinline__ void store(__nv_bfloat16 *p, float x) { *p = __float2bfloat16(x); }

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// `rows` rows of `src` (row stride `dim`) from row `start` into shared memory at `stride`
// floats a row; rows at or past `end` (exclusive) are zeros.
template <typename T>
__device__ __forceinline__ void load_rows(float *dst, int stride, const T *src, int start,
                                          int end, int rows, int dim) {
  for (int at = threadIdx.x; at < rows * dim; at += blockDim.x) {
    int r = at / dim, c = at % dim;
    int row = start + r;
    dst[r * stride + c] = row < end ? load(src + (size_t)row * dim + c) : 0.0f;
  }
}

// a · b over `dim` floats (a multiple of 4; both 16-byte aligned), four at a time.
__device__ __forceinline__ float dot(const float *a, const float *b, int dim) {
  const float4 *a4 = reinterpret_cast<const float4 *>(a);
  const float4 *b4 = reinterpret_cast<const float4 *>(b);
  float s0 = 0.0f, s1 = 0.0f;
  for (int c = 0; c < dim / 4; ++c) {
    const float4 x = a4[c], y = b4[c];
    s0 = fmaf(x.x, y.x, s0);
    s1 = fmaf(x.y, y.y, s1);
    s0 = fmaf(x.z, y.z, s0);
    s1 = fmaf(x.w, y.w, s1);
  }
  return s0 + s1;
}

// Where a forward or dq block is: its (row, head) `bh`, key/value head `kv` (both counted
// across the batch), and this warp's query row `i` (WARPS rows a block from `i0`; `active`
// when inside the sequence).
struct QueryRows {
  int bh, warp, lane, i0, i, last_row;
  size_t kv;
  bool active;
  const uint32_t *firsts;
  __device__ QueryRows(int heads, int kv_heads, int seq, const uint32_t *first) {
    bh = blockIdx.y;
    const int b = bh / heads, h = bh % heads;
    kv = (size_t)b * kv_heads + h / (heads / kv_heads);
    warp = threadIdx.x / 32;
    lane = threadIdx.x % 32;
    i0 = blockIdx.x * WARPS;
    i = i0 + warp;
    active = i < seq;
    last_row = min(seq, i0 + WARPS) - 1;
    firsts = first + (size_t)b * seq;
  }
};

// out and lse. Grid: (ceil(seq / WARPS), batch * heads).
// Shared: WARPS * dim (queries) + TILE * (dim + PAD) (keys) + TILE * dim (values) floats.
template <typename T>
__device__ void forward(const T *q, const T *k, const T *v, const uint32_t *first, T *out,
                        float *lse, int heads, int kv_heads, int seq, int dim, float scale) {
  extern __shared__ float4 shared4[];
  float *shared = reinterpret_cast<float *>(shared4);
  float *qs = shared;
  float *ks = qs + WARPS * dim;
  float *vs = ks + TILE * (dim + PAD);
  const QueryRows at(heads, kv_heads, seq, first);
  const int warp = at.warp, lane = at.lane, i0 = at.i0, i = at.i, last_row = at.last_row;
  const int bh = at.bh;
  const bool active = at.active;
  const uint32_t *firsts = at.firsts;
  const T *keys = k + at.kv * seq * dim, *values = v + at.kv * seq * dim;

  load_rows(qs, dim, q + (size_t)bh * seq * dim, i0, seq, WARPS, dim);
  const int from = active ? (int)firsts[i] : 0;
  float m = -CUDART_INF_F, l = 0.0f, acc[PER_LANE] = {0.0f};
  // The block's rows read keys from its first row's first key (first keys never decrease
  // within a row; the host checks) to its last row.
  for (int start = firsts[i0]; start <= last_row; start += TILE) {
    __syncthreads();
    load_rows(ks, dim + PAD, keys, start, last_row + 1, TILE, dim);
    load_rows(vs, dim, values, start, last_row + 1, TILE, dim);
    __syncthreads();
    if (!active) continue;
    const int j = start + lane;
    const bool reads = j >= from && j <= i;
    const float s = reads ? scale * dot(qs + warp * dim, ks + lane * (dim + PAD), dim)
                          : -CUDART_INF_F;
    const float top = warp_max(s);
    if (top == -CUDART_INF_F) continue;
    const float m_new = fmaxf(m, top);
    const float shrink = expf(m - m_new);
    const float p = reads ? expf(s - m_new) : 0.0f;
    l = l * shrink + warp_sum(p);
#pragma unroll
    for (int c = 0; c < PER_LANE; ++c) acc[c] *= shrink;
    for (int r = 0; r < TILE; ++r) {
      const float pr = __shfl_sync(0xffffffffu, p, r);
#pragma unroll
      for (int c = 0; c < PER_LANE; ++c) {
        const int d = lane + 32 * c;
        if (d < dim) acc[c] = fmaf(pr, vs[r * dim + d], acc[c]);
      }
    }
    m = m_new;
  }
  if (!active) return;
  const size_t row = (size_t)bh * seq + i;
#pragma unroll
  for (int c = 0; c < PER_LANE; ++c) {
    const int d = lane + 32 * c;
    if (d < dim) store(out + row * dim + d, acc[c] / l);
  }
  if (lane == 0) lse[row] = m + logf(l);
}

// dq, and delta (each query row's sum of out · grad, which dk / dv read too).
// Grid: (ceil(seq / WARPS), batch * heads).
// Shared: 2 * WARPS * dim (queries, gradients) + 2 * TILE * (dim + PAD) (keys, values) floats.
template <typename T>
__device__ void backward_dq(const T *q, const T *k, const T *v, const T *out, const T *grad,
                            const float *lse, const uint32_t *first, float *delta, T *dq,
                            int heads, int kv_heads, int seq, int dim, float scale) {
  extern __shared__ float4 shared4[];
  float *shared = reinterpret_cast<float *>(shared4);
  float *qs = shared;
  float *gs = qs + WARPS * dim;
  float *ks = gs + WARPS * dim;
  float *vs = ks + TILE * (dim + PAD);
  const QueryRows at(heads, kv_heads, seq, first);
  const int warp = at.warp, lane = at.lane, i0 = at.i0, i = at.i, last_row = at.last_row;
  const int bh = at.bh;
  const bool active = at.active;
  const uint32_t *firsts = at.firsts;
  const T *keys = k + at.kv * seq * dim, *values = v + at.kv * seq * dim;
  const size_t row = (size_t)bh * seq + i;

  load_rows(qs, dim, q + (size_t)bh * seq * dim, i0, seq, WARPS, dim);
  load_rows(gs, dim, grad + (size_t)bh * seq * dim, i0, seq, WARPS, dim);
  float dl = 0.0f, lse_i = 0.0f;
  if (active) {
    float partial = 0.0f;
    for (int d = lane; d < dim; d += 32) partial += load(out + row * dim + d) * load(grad + row * dim + d);
    dl = warp_sum(partial);
    lse_i = lse[row];
    if (lane == 0) delta[row] = dl;
  }
  const int from = active ? (int)firsts[i] : 0;
  float acc[PER_LANE] = {0.0f};
  for (int start = firsts[i0]; start <= last_row; start += TILE) {
    __syncthreads();
    load_rows(ks, dim + PAD, keys, start, last_row + 1, TILE, dim);
    load_rows(vs, dim + PAD, values, start, last_row + 1, TILE, dim);
    __syncthreads();
    if (!active) continue;
    const int j = start + lane;
    float ds = 0.0f;
    if (j >= from && j <= i) {
      const float p = expf(scale * dot(qs + warp * dim, ks + lane * (dim + PAD), dim) - lse_i);
      const float dp = dot(gs + warp * dim, vs + lane * (dim + PAD), dim);
      ds = p * (dp - dl);
    }
    for (int r = 0; r < TILE; ++r) {
      const float dsr = __shfl_sync(0xffffffffu, ds, r);
#pragma unroll
      for (int c = 0; c < PER_LANE; ++c) {
        const int d = lane + 32 * c;
        if (d < dim) acc[c] = fmaf(dsr, ks[r * (dim + PAD) + d], acc[c]);
      }
    }
  }
  if (!active) return;
#pragma unroll
  for (int c = 0; c < PER_LANE; ++c) {
    const int d = lane + 32 * c;
    if (d < dim) store(dq + row * dim + d, scale * acc[c]);
  }
}

// dk and dv. Grid: (ceil(seq / WARPS), batch * kv_heads).
// Shared: 2 * WARPS * dim (keys, values) + 2 * TILE * (dim + PAD) (queries, gradients)
// + 2 * TILE floats (lse, delta) + TILE first keys.
template <typename T>
__device__ void backward_dkv(const T *q, const T *k, const T *v, const T *grad, const float *lse,
                             const float *delta, const uint32_t *first, const uint32_t *last,
                             T *dk, T *dv, int heads, int kv_heads, int seq, int dim,
                             float scale) {
  extern __shared__ float4 shared4[];
  float *shared = reinterpret_cast<float *>(shared4);
  float *ks = shared;
  float *vs = ks + WARPS * dim;
  float *qs = vs + WARPS * dim;
  float *gs = qs + TILE * (dim + PAD);
  float *lses = gs + TILE * (dim + PAD);
  float *deltas = lses + TILE;
  uint32_t *firsts_s = (uint32_t *)(deltas + TILE);
  const int bkv = blockIdx.y, b = bkv / kv_heads, kvh = bkv % kv_heads;
  const int group = heads / kv_heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int j0 = blockIdx.x * WARPS, j = j0 + warp;
  const bool active = j < seq;
  const uint32_t *firsts = first + (size_t)b * seq, *lasts = last + (size_t)b * seq;
  // The last query that reads any of the block's keys.
  int end = 0;
  for (int at = j0; at < min(seq, j0 + WARPS); ++at) end = max(end, (int)lasts[at]);

  load_rows(ks, dim, k + (size_t)bkv * seq * dim, j0, seq, WARPS, dim);
  load_rows(vs, dim, v + (size_t)bkv * seq * dim, j0, seq, WARPS, dim);
  float dk_acc[PER_LANE] = {0.0f}, dv_acc[PER_LANE] = {0.0f};
  for (int g = 0; g < group; ++g) {
    const int bh = b * heads + kvh * group + g;
    const T *queries = q + (size_t)bh * seq * dim, *grads = grad + (size_t)bh * seq * dim;
    for (int start = j0; start <= end; start += TILE) {
      __syncthreads();
      load_rows(qs, dim + PAD, queries, start, end + 1, TILE, dim);
      load_rows(gs, dim + PAD, grads, start, end + 1, TILE, dim);
      if (threadIdx.x < TILE) {
        const int i = start + threadIdx.x;
        const bool in = i <= end;
        lses[threadIdx.x] = in ? lse[(size_t)bh * seq + i] : 0.0f;
        deltas[threadIdx.x] = in ? delta[(size_t)bh * seq + i] : 0.0f;
        firsts_s[threadIdx.x] = in ? firsts[i] : 0xffffffffu;
      }
      __syncthreads();
      if (!active) continue;
      const int i = start + lane;
      float p = 0.0f, ds = 0.0f;
      if (i <= end && i >= j && firsts_s[lane] <= (uint32_t)j) {
        p = expf(scale * dot(qs + lane * (dim + PAD), ks + warp * dim, dim) - lses[lane]);
        const float dp = dot(gs + lane * (dim + PAD), vs + warp * dim, dim);
        ds = p * (dp - deltas[lane]);
      }
      for (int r = 0; r < TILE; ++r) {
        const float pr = __shfl_sync(0xffffffffu, p, r);
        const float dsr = __shfl_sync(0xffffffffu, ds, r);
#pragma unroll
        for (int c = 0; c < PER_LANE; ++c) {
          const int d = lane + 32 * c;
          if (d < dim) {
            dv_acc[c] = fmaf(pr, gs[r * (dim + PAD) + d], dv_acc[c]);
            dk_acc[c] = fmaf(dsr, qs[r * (dim + PAD) + d], dk_acc[c]);
          }
        }
      }
    }
  }
  if (!active) return;
  const size_t row = (size_t)bkv * seq + j;
#pragma unroll
  for (int c = 0; c < PER_LANE; ++c) {
    const int d = lane + 32 * c;
    if (d < dim) {
      store(dk + row * dim + d, scale * dk_acc[c]);
      store(dv + row * dim + d, dv_acc[c]);
    }
  }
}

#define INSTANTIATE(NAME, T)                                                                   \
  extern "C" __global__ void attention_forward_##NAME(                                         \
      const T *q, const T *k, const T *v, const uint32_t *first, T *out, float *lse, int heads, \
      int kv_heads, int seq, int dim, float scale) {                                           \
    forward(q, k, v, first, out, lse, heads, kv_heads, seq, dim, scale);                       \
  }                                                                                            \
  extern "C" __global__ void attention_backward_dq_##NAME(                                     \
      const T *q, const T *k, const T *v, const T *out, const T *grad, const float *lse,       \
      const uint32_t *first, float *delta, T *dq, int heads, int kv_heads, int seq, int dim,   \
      float scale) {                                                                           \
    backward_dq(q, k, v, out, grad, lse, first, delta, dq, heads, kv_heads, seq, dim, scale);  \
  }                                                                                            \
  extern "C" __global__ void attention_backward_dkv_##NAME(                                    \
      const T *q, const T *k, const T *v, const T *grad, const float *lse, const float *delta, \
      const uint32_t *first, const uint32_t *last, T *dk, T *dv, int heads, int kv_heads,      \
      int seq, int dim, float scale) {                                                         \
    backward_dkv(q, k, v, grad, lse, delta, first, last, dk, dv, heads, kv_heads, seq, dim,    \
                 scale);                                                                       \
  }

INSTANTIATE(f32, float)
INSTANTIATE(bf16, __nv_bfloat16)
