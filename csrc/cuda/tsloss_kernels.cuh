// The fused TSLoss ops' CUDA kernels (launched from tsloss.cu), in a header of their own so
// that csrc/native_tests/test_cuda_host.cpp runs this very code on the host, each CUDA thread a
// fiber (native_tests/cuda_host.h). It includes no CUDA header: nvcc provides the intrinsics,
// the host test a shim of them.
//
// CUDA kernels of the fused TSLoss ops: the terms of every cloud from its diagrams (one block per
// cloud) and their reduction over the batch by the block that finishes last, and the backward
// (the pair weights of every cloud, then one pass over the pairs). The per-element arithmetic is
// core/tsloss_terms.h, the code the CPU op runs. Sums run in fixed orders (block trees of fixed
// shape; the batch in cloud order, whichever block does it; the one atomic only elects that
// block), so results do not change from run to run; nothing synchronises with the host, and the
// kernels keep no state between calls (CUDA-graph capturable).
#pragma once

#include <stdint.h>

#include "../core/common.h"
#include "../core/edge_incidence.h"
#include "../core/tsloss_terms.h"

namespace tsl {
namespace cuda {
namespace tsloss_kernel {

constexpr int kTermThreads = 256;
// Edges of a cloud whose sides the edge-weight kernel stages at a time (4 KB).
constexpr int kIncidenceChunk = 512;

// Sums v over the block in a fixed tree (the same for every launch); every thread gets the sum.
__device__ inline double block_sum(double v, double* scratch) {
  for (int off = 16; off > 0; off >>= 1) v = __dadd_rn(v, __shfl_down_sync(0xffffffffu, v, off));
  const int warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  __syncthreads();  // scratch may still be read by a previous call
  if (threadIdx.x % 32 == 0) scratch[warp] = v;
  __syncthreads();
  double s = 0.0;
  for (int w = 0; w < warps; ++w) s = __dadd_rn(s, scratch[w]);
  return s;
}

// out[m] (m = loss, connectivity, redundancy, stability, scale) reduced over the B clouds'
// per_cloud values in cloud order; with kReduceNone, B values each. Run by one block.
template <typename T>
__device__ void reduce_batch(const volatile double* per_cloud, int64_t B, int reduction, T* loss,
                             T* conn, T* red, T* stab, T* scale) {
  T* outs[5] = {loss, conn, red, stab, scale};
  if (reduction == kReduceNone) {
    for (int64_t e = threadIdx.x; e < 5 * B; e += blockDim.x)
      outs[e / B][e % B] = (T)per_cloud[(e % B) * 5 + e / B];
    return;
  }
  if (threadIdx.x >= 5) return;
  double s = 0.0;
  for (int64_t b = 0; b < B; ++b) s = __dadd_rn(s, per_cloud[b * 5 + threadIdx.x]);
  outs[threadIdx.x][0] = (T)(reduction == kReduceMean ? s / (double)B : s);
}

// One block per cloud (B blocks): the cloud's terms into per_cloud, then, in the block that
// finishes last, the batch's reduction (reduce_batch). A kernel of its own for the reduction
// cost a launch, and TSLoss forward+backward has a budget of eight with torch's seed fill of the
// backward among them. *done counts the finished blocks and must be 0 at launch
// (launch_pairwise_distance_sum clears it). Each block's thread 0 writes its values, fences and
// takes a ticket; the block with ticket B - 1 fences again and reads every cloud's values
// (volatile: not from a stale cache line).
template <typename T>
__global__ void __launch_bounds__(kTermThreads)
    tsloss_terms_kernel(const T* __restrict__ x, int64_t N, int64_t D,
                        const double* __restrict__ partial, int64_t tiles,
                        const T* __restrict__ h0, const T* __restrict__ h1, int64_t K,
                        int64_t* __restrict__ h1_count, const T* __restrict__ prev_h0,
                        const T* __restrict__ prev_h1, TermOptions o, T* __restrict__ topo_h0,
                        T* __restrict__ topo_h1, T* __restrict__ scales,
                        double* __restrict__ per_cloud, int reduction, T* loss, T* conn, T* red,
                        T* stab, T* scale, unsigned* done) {
  __shared__ double scratch[kTermThreads / 32];
  __shared__ T s_scale, s_raw;
  __shared__ bool s_bad, s_last;
  __shared__ int64_t s_rows;
  const int64_t b = blockIdx.x;
  const int64_t H0 = N > 0 ? N - 1 : 0;
  if (threadIdx.x == 0) {
    double sum = 0.0;
    for (int64_t t = 0; t < tiles; ++t) sum = __dadd_rn(sum, partial[b * tiles + t]);
    // A non-finite distance: the engine (launch_vr_persistence, run before on these distances)
    // counted it -2. Not a non-finite sum: finite distances near the float64 limit may sum
    // past it, and the CPU takes such a cloud (its diagrams are valid; raw_scale makes its
    // scale NaN).
    bool bad = h1_count[b] == kInvalidInputCount;
    // A lone point has no distance to carry a non-finite coordinate.
    if (N == 1)
      for (int64_t k = 0; k < D; ++k) bad |= !isfinite((double)x[b * D + k]);
    bool passes;
    s_raw = raw_scale<T>(sum, N);
    s_scale = clamp_scale<T>(s_raw, o.normalize, &passes);
    s_bad = bad;
    // Serial, as the host's: K is at most a few thousand rows, read once.
    s_rows = o.has_prev ? stability_rows(prev_h1 + b * K, K,
                                         bad ? (int64_t)kInvalidInputCount : h1_count[b])
                        : 0;
  }
  __syncthreads();
  const T s = s_scale;
  const bool bad = s_bad;
  const int64_t count = bad ? kInvalidInputCount : h1_count[b];  // as vr_persistence marks it
  // An invalid cloud is marked as vr_persistence marks it: NaN H0 deaths, no trusted H1 bar
  // (count -2), so its loss is NaN wherever it has an H0 bar; the composition agrees.
  const T nan = (T)NAN;
  double c = 0.0, s0 = 0.0, r = 0.0, s1 = 0.0;
  for (int64_t i = threadIdx.x; i < H0; i += blockDim.x) {
    const T u = bad ? nan : h0_unit(h0[(b * H0 + i) * 2 + 1], s);
    topo_h0[b * H0 + i] = u;
    c += conn_value((double)u, o);
    if (o.has_prev) {
      const double t = (double)u - (double)prev_h0[b * H0 + i];
      s0 += t * t;
    }
  }
  for (int64_t q = threadIdx.x; q < K; q += blockDim.x) {
    const T v = h1_unit(h1[(b * K + q) * 2], h1[(b * K + q) * 2 + 1], s, q, count);
    topo_h1[b * K + q] = v;
    if (q < count) r += red_value((double)v, o);
    if (o.has_prev) {
      const double t = (double)v - (double)prev_h1[b * K + q];
      s1 += t * t;
    }
  }
  c = block_sum(c, scratch);
  s0 = block_sum(s0, scratch);
  r = block_sum(r, scratch);
  s1 = block_sum(s1, scratch);
  if (threadIdx.x == 0) {
    const double t_conn = H0 > 0 ? c / (double)H0 : 0.0;
    const double t_red = redundancy_of(r, count);
    const double h0_part = H0 > 0 ? s0 / (double)H0 : 0.0;
    const double h1_part = s_rows > 0 ? s1 / (double)s_rows : 0.0;
    const double t_stab = stability_of(h0_part, h1_part, count, o.has_prev);
    scales[b] = s_raw;  // for the backward, which clamps it again
    // A non-finite previous (the CPU raises, naming it): the stability term and the loss are
    // NaN or Inf; marked on the device, as an invalid input is, since a host check would
    // synchronise. The backward then gives the cloud no gradient, as any invalid cloud. Not for
    // a NaN scale (a float64 distance sum past the range, raw_scale): every term is NaN there
    // anyway, and the CPU keeps the cloud's count. Read from the sums, not the term: an
    // overflowed cloud's stability is NaN for want of its H1, and it keeps kH1OverflowCount
    // unless its previous is non-finite too.
    if (bad || (o.has_prev && !isfinite(h0_part + h1_part) && isfinite((double)s)))
      h1_count[b] = kInvalidInputCount;
    double* v = per_cloud + b * 5;
    v[0] = loss_of(t_conn, t_red, t_stab, o);
    v[1] = t_conn;
    v[2] = t_red;
    v[3] = t_stab;
    v[4] = (double)s;
    __threadfence();
    s_last = atomicAdd(done, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  reduce_batch<T>(per_cloud, (int64_t)gridDim.x, reduction, loss, conn, red, stab, scale);
}

// Per cloud: the weight of each reported edge (H0 rows, then H1 rows; the birth edge takes
// minus the bar's weight), the dense weight of every pair from the scale, and each point's
// incidences among the edges (core/edge_incidence.h): offsets (N + 1) into keys, per cloud.
template <typename T>
__global__ void __launch_bounds__(kTermThreads)
    tsloss_edge_weights_kernel(const T* g_loss, const T* g_conn, const T* g_red,
                               const T* g_stab, const T* g_scale, int64_t B, int64_t N,
                               const T* __restrict__ scales, const T* __restrict__ topo_h0,
                               const T* __restrict__ topo_h1, int64_t K,
                               const int64_t* __restrict__ h1_count,
                               const T* __restrict__ prev_h0, const T* __restrict__ prev_h1,
                               TermOptions o, int reduction, double* __restrict__ edge_w,
                               double* __restrict__ dense, const int64_t* __restrict__ h0_edges,
                               const int64_t* __restrict__ h1_edges,
                               int64_t* __restrict__ offsets, int64_t* __restrict__ keys) {
  __shared__ double scratch[kTermThreads / 32];
  const int64_t b = blockIdx.x;
  const int64_t H0 = N > 0 ? N - 1 : 0, E = H0 + K;
  const double a = reduced_grad(g_loss, b, B, reduction);
  const CloudCoefficients k = known_coefficients(
      {a * o.w_conn + reduced_grad(g_conn, b, B, reduction),
       a * o.w_red + reduced_grad(g_red, b, B, reduction),
       a * o.w_stab + reduced_grad(g_stab, b, B, reduction), reduced_grad(g_scale, b, B, reduction)},
      h1_count[b]);
  bool passes;  // the clamp passes the gradient unless the raw mean fell below it
  const double s = (double)clamp_scale<T>(scales[b], o.normalize, &passes);
  const int64_t count = h1_count[b];
  if (count == kInvalidInputCount) {
    // An invalid cloud (NaN loss) gets no gradient, as the reference composition, which masks
    // its bars with torch.where, gives it; its tree was built on a NaN or Inf matrix.
    for (int64_t r = threadIdx.x; r < E; r += blockDim.x) edge_w[b * E + r] = 0.0;
    for (int64_t r = threadIdx.x; r <= N; r += blockDim.x) offsets[b * (N + 1) + r] = 0;
    if (threadIdx.x == 0) dense[b] = 0.0;
    return;
  }
  __shared__ int64_t s_rows;  // every thread of the block reaches this (the return above is
                              // the whole block's)
  if (threadIdx.x == 0) s_rows = o.has_prev ? stability_rows(prev_h1 + b * K, K, count) : 0;
  __syncthreads();
  const int64_t rows = s_rows;
  double ds = 0.0;
  for (int64_t r = threadIdx.x; r < H0; r += blockDim.x)
    edge_w[b * E + r] = h0_death_grad(topo_h0[b * H0 + r], o.has_prev ? prev_h0[b * H0 + r] : T(0),
                                      H0, s, o, k, &ds);
  for (int64_t q = threadIdx.x; q < K; q += blockDim.x)
    edge_w[b * E + H0 + q] = h1_pers_grad(topo_h1[b * K + q],
                                          o.has_prev ? prev_h1[b * K + q] : T(0), q, count, rows,
                                          s, o, k, &ds);
  ds = block_sum(ds, scratch);
  if (threadIdx.x == 0)
    dense[b] = dense_pair_weight(__dadd_rn(ds, k.scale), N, passes);
  // The incidence lists, from the weights just written (block_sum's barriers order them), in
  // point_incidences' order: the cloud's sides of edges are staged kIncidenceChunk edges at a
  // time in shared memory, each as its packed endpoints or -1 where it gives no term; each
  // thread counts its points' keys in them, the counts become offsets (a scan in shared memory),
  // and a second pass writes the keys. Each thread had scanned every edge from global memory,
  // one dependent round trip per edge (about 0.1 ms per cloud at N = 64 on an H100).
  const double* w = edge_w + b * E;
  const int64_t* e0 = h0_edges + b * H0 * 2;
  const int64_t* e1 = h1_edges + b * K * 4;
  int64_t* off = offsets + b * (N + 1);
  int64_t* kb = keys + b * incidence_capacity(N, K);
  __shared__ int32_t s_pos[kMaxPoints + 1];           // counts, then offsets, then cursors
  __shared__ int32_t s_ends[2 * kIncidenceChunk];     // u << 16 | v, or -1: per (edge, side)
  for (int64_t i = threadIdx.x; i <= N; i += blockDim.x) s_pos[i] = 0;
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1) {
      __syncthreads();
      if (threadIdx.x == 0)
        for (int64_t i = 0; i < N; ++i) s_pos[i + 1] += s_pos[i];
      __syncthreads();
      for (int64_t i = threadIdx.x; i <= N; i += blockDim.x) off[i] = s_pos[i];
    }
    for (int64_t c0 = 0; c0 < E; c0 += kIncidenceChunk) {
      const int64_t ne = E - c0 < kIncidenceChunk ? E - c0 : kIncidenceChunk;
      __syncthreads();  // the previous chunk's readers are done (and s_pos is set)
      for (int64_t t = threadIdx.x; t < 2 * ne; t += blockDim.x) {
        const int64_t e = c0 + t / 2;
        const int side = int(t & 1);
        int32_t v = -1;
        if (side < edge_sides(e, H0) && w[e] != 0.0) {
          const EdgeEnds p = edge_endpoints(e, side, H0, e0, e1);
          if (p.u >= 0 && p.v >= 0 && p.u < N && p.v < N && p.u != p.v)  // edge_touches
            v = int32_t(p.u << 16 | p.v);
        }
        s_ends[t] = v;
      }
      __syncthreads();
      for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
        int32_t n = 0;
        int32_t at = pass == 1 ? s_pos[i] : 0;
        for (int64_t t = 0; t < 2 * ne; ++t) {
          const int32_t v = s_ends[t];
          if (v < 0 || ((v >> 16) != i && (v & 0xffff) != i)) continue;
          if (pass == 0) ++n;
          else kb[at++] = 2 * (c0 + t / 2) + (t & 1);
        }
        if (pass == 0) s_pos[i + 1] += n;
        else s_pos[i] = at;
      }
    }
  }
}

constexpr int kGradRows = 8;     // thread rows per block
constexpr int kGradCols = 32;    // thread columns per block (a warp reads them coalesced)
constexpr int kGradRowTile = 4;  // rows of x per thread, kGradRows apart
constexpr int kGradColTile = 2;  // coordinates per thread, kGradCols apart
constexpr int kGradBlockRows = kGradRows * kGradRowTile;  // rows of x per block
constexpr int kGradBlockCols = kGradCols * kGradColTile;  // coordinates per block
constexpr int kGradJ = 64;       // pair weights staged per round (16 KB)

// gx_i = sum_j W_ij (x_i - x_j): the dense weight over d_ij for every pair, then each reported
// edge touching row i. Each thread holds a tile of kGradRowTile rows by kGradColTile
// coordinates: per j it reads kGradColTile values of x_j (coalesced along the coordinates) and
// kGradRowTile staged weights for kGradRowTile x kGradColTile terms. One output per thread read
// both for each term and spent more of its issue on loads, conversions and addresses than on
// its three float64 operations (1.27 ms at (64, 4096, 64) on an H100, ncu: the integer pipe the
// busiest). Each output still adds its terms in the same order, so the tile changes no bit.
// The dense sum runs over (x_i - x_j) / d_ij and takes the cloud's dense weight once at the end,
// and an edge's term is its weight times (x_i - x_j) / d: weights over distances (~1/s^2 for a
// cloud of scale s) leave double's range for float64 prompts past 1e+-150, unit vectors do not.
// The dense term multiplies by a staged 1 / d_ij (a division per pair and coordinate would cost
// the loop most of its speed); a subnormal float64 d, whose reciprocal overflows, is staged as
// -1 / (d * 2^64) and its difference scaled by 2^64 (exact): no Inf times a zero difference.
template <typename T>
__global__ void __launch_bounds__(kGradRows * kGradCols)
    tsloss_grad_kernel(const T* __restrict__ x, int64_t N, int64_t D, const T* __restrict__ dist,
                       const double* __restrict__ dense, const double* __restrict__ edge_w,
                       const int64_t* __restrict__ h0_edges, const int64_t* __restrict__ h1_edges,
                       int64_t K, const int64_t* __restrict__ offsets,
                       const int64_t* __restrict__ keys, T* __restrict__ grad) {
  constexpr int RI = kGradRowTile, RK = kGradColTile;
  __shared__ double w[kGradBlockRows][kGradJ];
  const int64_t b = blockIdx.z;
  const int row = threadIdx.x / kGradCols, col = threadIdx.x % kGradCols;
  const int64_t i0 = (int64_t)blockIdx.y * kGradBlockRows + row;  // rows i0 + kGradRows q
  const int64_t k0 = (int64_t)blockIdx.x * kGradBlockCols + col;  // coordinates k0 + kGradCols c
  const int64_t H0 = N > 0 ? N - 1 : 0, E = H0 + K;
  const T* xb = x + b * N * D;
  const T* db = dist + b * N * N;
  const double wd = dense[b];
  bool in_k[RK];
  double xi[RI][RK], acc[RI][RK];
#pragma unroll
  for (int c = 0; c < RK; ++c) in_k[c] = k0 + kGradCols * c < D;
#pragma unroll
  for (int q = 0; q < RI; ++q) {
    const int64_t i = i0 + kGradRows * q;
#pragma unroll
    for (int c = 0; c < RK; ++c) {
      xi[q][c] = i < N && in_k[c] ? (double)xb[i * D + k0 + kGradCols * c] : 0.0;
      acc[q][c] = 0.0;
    }
  }
  if (wd != 0.0) {
    for (int64_t j0 = 0; j0 < N; j0 += kGradJ) {
      __syncthreads();
      for (int e = threadIdx.x; e < kGradBlockRows * kGradJ; e += blockDim.x) {
        const int r = e / kGradJ, jj = e % kGradJ;
        const int64_t ii = (int64_t)blockIdx.y * kGradBlockRows + r, j = j0 + jj;
        double v = 0.0;
        if (ii < N && j < N && j != ii) {
          const double d = (double)db[ii * N + j];
          if (d >= 0x1p-1022) v = 1.0 / d;
          else if (d > 0.0) v = -1.0 / __dmul_rn(d, 0x1p64);
        }
        w[r][jj] = v;
      }
      __syncthreads();
      const int jn = int(N - j0 < kGradJ ? N - j0 : kGradJ);
      const T* xj = xb + j0 * D + k0;
      for (int jj = 0; jj < jn; ++jj, xj += D) {
        double xv[RK];
#pragma unroll
        for (int c = 0; c < RK; ++c) xv[c] = in_k[c] ? (double)xj[kGradCols * c] : 0.0;
#pragma unroll
        for (int q = 0; q < RI; ++q) {
          const double r = w[row + kGradRows * q][jj];
#pragma unroll
          for (int c = 0; c < RK; ++c) {
            const double t = __dsub_rn(xi[q][c], xv[c]);
            if constexpr (sizeof(T) == 8)  // a float32 distance is never below 2^-149 > 2^-1022
              acc[q][c] = __dadd_rn(
                  acc[q][c], r < 0.0 ? __dmul_rn(-r, __dmul_rn(t, 0x1p64)) : __dmul_rn(r, t));
            else
              acc[q][c] = __dadd_rn(acc[q][c], __dmul_rn(r, t));
          }
        }
      }
    }
#pragma unroll
    for (int q = 0; q < RI; ++q)
#pragma unroll
      for (int c = 0; c < RK; ++c) acc[q][c] = __dmul_rn(wd, acc[q][c]);
  }
  // The bars' edges that touch row i (H0 deaths, then per H1 bar birth and death), in the
  // order of the CPU: row i's incidence list, keys 2e + side (core/edge_incidence.h).
  const int64_t* kb = keys + b * incidence_capacity(N, K);
#pragma unroll
  for (int q = 0; q < RI; ++q) {
    const int64_t i = i0 + kGradRows * q;
    if (i >= N) continue;
    const int64_t end = offsets[b * (N + 1) + i + 1];
    for (int64_t p = offsets[b * (N + 1) + i]; p < end; ++p) {
      const int64_t e = kb[p] >> 1;
      const int side = (int)(kb[p] & 1);
      const EdgeEnds ends =
          edge_endpoints(e, side, H0, h0_edges + b * H0 * 2, h1_edges + b * K * 4);
      const int64_t other = ends.u == i ? ends.v : ends.u;
      const double d = (double)db[i * N + other];
      if (!(d > 0.0)) continue;
      const double g = edge_w[b * E + e];
      const double ge = e >= H0 && side == 0 ? -g : g;
#pragma unroll
      for (int c = 0; c < RK; ++c) {
        if (!in_k[c]) continue;
        const double xo = (double)xb[other * D + k0 + kGradCols * c];
        acc[q][c] = __dadd_rn(acc[q][c], __dmul_rn(ge, __ddiv_rn(__dsub_rn(xi[q][c], xo), d)));
      }
    }
#pragma unroll
    for (int c = 0; c < RK; ++c)
      if (in_k[c]) grad[b * N * D + i * D + k0 + kGradCols * c] = (T)acc[q][c];
  }
}

}  // namespace tsloss_kernel
}  // namespace cuda
}  // namespace tsl
