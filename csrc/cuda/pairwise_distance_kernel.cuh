// The batched pairwise distance kernel (launched from pairwise_distance.cu), in a header of its
// own so that csrc/native_tests/test_cuda_host.cpp runs this very code on the host: each CUDA
// thread a fiber (native_tests/cuda_host.h), bit for bit against the canonical distances. It
// includes no CUDA header: nvcc provides the intrinsics, the host test a shim of them.
//
// Batched pairwise distances: lower-triangle tiles of 32 x 32 pairs, each thread holding a 4 x 4
// register tile of pairs for one of eight lanes.
//
// Every entry is the canonical distance of core/pairwise_distance.h, the CPU's bit for bit (the
// diagrams are compared exactly across devices). float64 points take the canonical sum itself:
// lane l (one thread of eight) sums the coordinates k = l (mod 8) in increasing k, each step a
// rounded difference, product and add (__dsub_rn, __dmul_rn, __dadd_rn; an FMA would round once
// where a CPU without FMA rounds twice), and the eight lanes meet by shuffles in the fixed tree
// ((0+1)+(2+3))+((4+5)+(6+7)).
//
// float32 points take the certified route the CPU takes (certified_squares_lower in
// cpu/distance_tiles.h): Gram sums of the points less a float32 centre (the CPU's: a mean of
// eight rows), one FMA per pair and coordinate in double where the canonical sum needs three
// operations, and the norms alongside. tsl::certify_float_square accepts a pair only where its
// rounding bound proves that the float32 square root of any double near the Gram value, the
// canonical sum included, is one float; a block with any other pair (duplicates, far clusters,
// a float32 step inside the interval, non-finite points) sums its tile again canonically. The Gram
// form's cancellation for close points is what the bound catches, not an error. At
// (64, 4096, 64) the canonical order is ~1.6e9 double operations, ~94 us at the H200's 17 T
// double operations per second (its 34 TFLOP/s counts an FMA as two): more than issue 19's
// 90 us budget before any memory traffic; the Gram route, norms included, needs half of them
// (24 FMAs per 16 pairs and coordinate of a register tile, against 48 operations). Measured on
// the H200 (2026-12-04, benchmarks/README.md), before the pipelining below: 1.11 ms there,
// 0.33 ms for one cloud, ~5 % of that rate. Then each 64-coordinate chunk waited for two rounds
// of loads (the centre's eight rows, then the tiles) with the whole block at a barrier, at one
// 512-thread block per SM (128 registers): ~5 us a chunk, where its arithmetic is ~0.8 us. Now
// each thread loads the next chunk into registers (nine values, the centre's row among them)
// before computing this one, so the loads fly during the arithmetic; 126 (sm_80) and 122
// (sm_90) registers, no spills (one 512-thread block per SM, as before). Not measured on a GPU
// yet; one cloud of 64 points is still 3 blocks on 132 SMs (splitting a cloud's coordinates over
// blocks is the next step: the Gram sums may be added in any order).
//
// Each pair is computed once and written to both triangles, so the matrix is exactly
// symmetric. The epilogue adds the block's distances (a per-block partial, in a fixed order: no
// atomics) for the scale of TSLoss. A non-finite distance makes that partial non-finite, but
// validity is not read from it (finite distances near the float64 limit may sum past it): the
// engine's h1_count of -2 is the invalid-input flag (tsloss.cu).
#pragma once

#include <stdint.h>

#include "../core/common.h"
#include "../core/pairwise_distance.h"

namespace tsl {
namespace cuda {
namespace distance_kernel {

constexpr int kBlockRows = 32;                 // a block computes a 32 x 32 tile of pairs
constexpr int kReg = 4;                        // each thread a 4 x 4 register tile
constexpr int kLanes = kDistanceLanes;         // threads per register tile, one lane each
constexpr int kGroups = (kBlockRows / kReg) * (kBlockRows / kReg);  // 64 register tiles
constexpr int kThreads = kGroups * kLanes;     // 512
constexpr int kChunk = 64;                     // coordinates staged per round (8 per lane)
constexpr int kStride = kChunk + 1;            // padded rows: fewer shared-memory bank conflicts

// Tile t of the lower triangle of nt x nt tiles: (bi, bj) with bi >= bj, row-major.
__device__ __forceinline__ void tile_of(int64_t t, int64_t* bi, int64_t* bj) {
  int64_t r = (int64_t)((sqrt(8.0 * (double)t + 1.0) - 1.0) * 0.5);
  while (r * (r + 1) / 2 > t) --r;
  while ((r + 1) * (r + 2) / 2 <= t) ++r;
  *bi = r;
  *bj = t - r * (r + 1) / 2;
}

template <typename T>
__device__ __forceinline__ T finish_distance(double s, const T* xi, const T* xj, int64_t D) {
  // float64 sums outside the safe range may have under- or overflowed: recomputed with scaling,
  // as the CPU does (float32 inputs summed in double cannot).
  return (T)distance_from_square(s, xi, xj, D);
}

// What one thread stages of a chunk: coordinate k0 + c (c = tid % kChunk) of rows
// row + kPass * m (m < kPerThread) of the i and j tiles, and on the certified route row `row` of
// the centre's eight. Loaded a chunk ahead, so that the loads fly while the block computes.
constexpr int kPass = kThreads / kChunk;          // rows staged per pass: 8
constexpr int kPerThread = kBlockRows / kPass;    // rows each thread stages per tile: 4
static_assert(kPass == 8, "one staging pass covers the centre's eight rows");
template <typename T>
struct Staged {
  T i[kPerThread], j[kPerThread], centre_row;
};

// centre_src: this thread's row of the centre's eight (nullptr: none), found once per tile by
// the caller: its index is an int64 division, which the compiler may not hoist out of the
// chunk loop from under the condition that guards it.
template <typename T, bool Gram>
__device__ __forceinline__ void load_chunk(const T* __restrict__ xb, int64_t N, int64_t D,
                                           int64_t i0, int64_t j0, int64_t k, int row,
                                           const T* centre_src, Staged<T>& st) {
  const bool in = k < D;
  // One address a tile, stepped by kPass rows: eight live row pointers spilled on sm_80.
  const T* pi = xb + (i0 + row) * D + k;
  const T* pj = xb + (j0 + row) * D + k;
  const int64_t step = kPass * D;
#pragma unroll
  for (int m = 0; m < kPerThread; ++m) {
    st.i[m] = (in && i0 + row + kPass * m < N) ? pi[m * step] : T(0);
    st.j[m] = (in && j0 + row + kPass * m < N) ? pj[m * step] : T(0);
  }
  if (Gram) st.centre_row = (in && centre_src != nullptr) ? centre_src[k] : T(0);
}

// Writes a loaded chunk to shared memory, widened exactly (Gram: less the centre, a rounded
// double difference, as the bound requires: a float32 one would not do); rows past N and
// coordinates past D are zeros, which add exact zeros to every lane. Starts and ends with a
// barrier of its own (readers of the previous chunk, then of this one). centre_rows: the
// kPass x kChunk doubles the centre's rows pass through.
template <typename T, bool Gram>
__device__ __forceinline__ void store_chunk(const Staged<T>& st, int64_t N, int64_t D,
                                            int64_t i0, int64_t j0, int64_t k, int row, int c,
                                            double (*xi)[kStride], double (*xj)[kStride],
                                            double (*centre_rows)[kChunk]) {
  if (Gram) centre_rows[row][c] = (double)st.centre_row;
  __syncthreads();
  double ck = 0.0;
  if (Gram) {  // tsl::certify_centre of coordinate k, from the rows the block loaded
    double sum = 0.0;
    for (int r = 0; r < certify_centre_count(N); ++r) sum = __dadd_rn(sum, centre_rows[r][c]);
    ck = k < D ? (double)certify_centre_of_sum(sum, N) : 0.0;
  }
  const bool in = k < D;
#pragma unroll
  for (int m = 0; m < kPerThread; ++m) {
    const int r = row + kPass * m;
    xi[r][c] = (in && i0 + r < N) ? __dsub_rn((double)st.i[m], ck) : 0.0;
    xj[r][c] = (in && j0 + r < N) ? __dsub_rn((double)st.j[m], ck) : 0.0;
  }
  __syncthreads();
}

// One block's tile sums, complete in every lane of each group of eight: Gram, the products and
// both rows' squared norms of the points less the centre (tsl::certify_centre, as the CPU's);
// else the canonical sums. acc, nu, nv: zeroed here. The chunk loop is pipelined by one: each
// thread loads chunk n + 1 into registers before computing chunk n from shared memory, where
// the first kernel loaded, then computed, with the whole block waiting on the loads (~5 us of
// each 64-coordinate chunk at one block per SM on the H200, a reading of its 0.33 ms per cloud).
template <typename T, bool Gram>
__device__ __forceinline__ void tile_sums(const T* __restrict__ xb, int64_t N, int64_t D,
                                          int64_t i0, int64_t j0, int ti, int tj, int lane,
                                          int tid, double (*xi)[kStride], double (*xj)[kStride],
                                          double (*centre_rows)[kChunk],
                                          double (&acc)[kReg][kReg], double (&nu)[kReg],
                                          double (&nv)[kReg]) {
#pragma unroll
  for (int a = 0; a < kReg; ++a) {
    nu[a] = nv[a] = 0.0;
#pragma unroll
    for (int c = 0; c < kReg; ++c) acc[a][c] = 0.0;
  }
  const int row = tid / kChunk, cs = tid % kChunk;
  const T* centre_src =
      Gram && row < certify_centre_count(N) ? xb + certify_centre_row(row, N) * D : nullptr;
  Staged<T> st;
  load_chunk<T, Gram>(xb, N, D, i0, j0, cs, row, centre_src, st);
  store_chunk<T, Gram>(st, N, D, i0, j0, cs, row, cs, xi, xj, centre_rows);
  for (int64_t k0 = 0; k0 < D; k0 += kChunk) {
    const bool more = k0 + kChunk < D;
    if (more) load_chunk<T, Gram>(xb, N, D, i0, j0, k0 + kChunk + cs, row, centre_src, st);
#pragma unroll(sizeof(T) == 8 ? 2 : 1)  // 2 spills the float32 kernel (ptxas, sm_90)
    for (int c = lane; c < kChunk; c += kLanes) {
      double u[kReg], v[kReg];
#pragma unroll
      for (int a = 0; a < kReg; ++a) u[a] = xi[ti + a][c];
#pragma unroll
      for (int a = 0; a < kReg; ++a) v[a] = xj[tj + a][c];
      if (Gram) {
#pragma unroll
        for (int a = 0; a < kReg; ++a) {
          nu[a] = __fma_rn(u[a], u[a], nu[a]);
          nv[a] = __fma_rn(v[a], v[a], nv[a]);
#pragma unroll
          for (int q = 0; q < kReg; ++q) acc[a][q] = __fma_rn(u[a], v[q], acc[a][q]);
        }
      } else {
#pragma unroll
        for (int a = 0; a < kReg; ++a)
#pragma unroll
          for (int q = 0; q < kReg; ++q) {
            const double t = __dsub_rn(u[a], v[q]);
            acc[a][q] = __dadd_rn(acc[a][q], __dmul_rn(t, t));
          }
      }
    }
    if (more)
      store_chunk<T, Gram>(st, N, D, i0, j0, k0 + kChunk + cs, row, cs, xi, xj, centre_rows);
  }
  // The lane tree: xor 1, then 2, then 4, the canonical one (IEEE addition is commutative, so
  // every lane of the group ends with the same sum); the Gram sums may take any order.
#pragma unroll
  for (int off = 1; off < kLanes; off <<= 1)
#pragma unroll
    for (int a = 0; a < kReg; ++a) {
      if (Gram) {
        nu[a] = __dadd_rn(nu[a], __shfl_xor_sync(0xffffffffu, nu[a], off));
        nv[a] = __dadd_rn(nv[a], __shfl_xor_sync(0xffffffffu, nv[a], off));
      }
#pragma unroll
      for (int q = 0; q < kReg; ++q)
        acc[a][q] = __dadd_rn(acc[a][q], __shfl_xor_sync(0xffffffffu, acc[a][q], off));
    }
}

// Gram: the certified route (float32 only), else the canonical sums. zero_word (or nullptr): a
// word block (0, 0) sets to 0, the completion count of the kernel that reads the partials next
// on this stream (tsloss_terms_kernel), which would otherwise need a launch of its own to clear.
template <typename T, bool Gram>
__global__ void __launch_bounds__(kThreads)
    pairwise_distance_kernel(const T* __restrict__ x, int64_t N, int64_t D, T* __restrict__ out,
                             double* __restrict__ partial, int64_t tiles,
                             unsigned* __restrict__ zero_word) {
  if (zero_word != nullptr && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0)
    *zero_word = 0u;
  __shared__ double xi[kBlockRows][kStride];
  __shared__ double xj[kBlockRows][kStride];
  __shared__ double centre_rows[kPass][kChunk];
  __shared__ double warp_sums[kThreads / 32];
  const int64_t b = blockIdx.y;
  int64_t bi, bj;
  tile_of(blockIdx.x, &bi, &bj);
  const int64_t i0 = bi * kBlockRows, j0 = bj * kBlockRows;
  const int tid = threadIdx.x, lane = tid % kLanes, group = tid / kLanes;
  const int ti = (group / (kBlockRows / kReg)) * kReg, tj = (group % (kBlockRows / kReg)) * kReg;
  const T* xb = x + b * N * D;

  double acc[kReg][kReg], nu[kReg], nv[kReg];
  bool canonical = !Gram;
  if (Gram) {
    tile_sums<T, true>(xb, N, D, i0, j0, ti, tj, lane, tid, xi, xj, centre_rows, acc, nu, nv);
    // Each lane certifies the pairs it writes (below); where any pair of the block fails, the
    // block sums its whole tile again canonically (duplicates, far clusters, non-finite points:
    // one pass more, rather than a thread summing its pairs alone while its warp waits).
    int fail = 0;
#pragma unroll
    for (int e = 0; e < kReg * kReg; ++e) {
      const int a = e / kReg, q = e % kReg;
      const int64_t i = i0 + ti + a, j = j0 + tj + q;
      if (e % kLanes != lane || i >= N || j >= i) continue;
      double s;
      if (certify_float_square(__dadd_rn(nu[a], nv[q]), acc[a][q], D, &s))
        acc[a][q] = s;
      else
        fail = 1;
    }
    canonical = __syncthreads_or(fail) != 0;
  }
  if (canonical)
    tile_sums<T, false>(xb, N, D, i0, j0, ti, tj, lane, tid, xi, xj, centre_rows, acc,
                       nu, nv);

  // Lane l of the group writes pairs l and l + 8 of its 16; the block's sum of distances over
  // its pairs i > j goes to partial[b * tiles + tile] in a fixed order.
  double local = 0.0;
  T* ob = out + b * N * N;
#pragma unroll
  for (int e = 0; e < kReg * kReg; ++e) {
    if (e % kLanes != lane) continue;
    const int a = e / kReg, q = e % kReg;
    const int64_t i = i0 + ti + a, j = j0 + tj + q;
    if (i >= N || j >= N || j > i) continue;
    if (i == j) {
      ob[i * N + i] = T(0);
      continue;
    }
    const T d = finish_distance<T>(acc[a][q], xb + i * D, xb + j * D, D);
    ob[i * N + j] = d;
    ob[j * N + i] = d;
    local = __dadd_rn(local, (double)d);
  }
  if (partial == nullptr) return;
  for (int off = 16; off > 0; off >>= 1)
    local = __dadd_rn(local, __shfl_down_sync(0xffffffffu, local, off));
  if (tid % 32 == 0) warp_sums[tid / 32] = local;
  __syncthreads();
  if (tid == 0) {
    double s = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) s = __dadd_rn(s, warp_sums[w]);
    partial[b * tiles + blockIdx.x] = s;
  }
}

template <typename T>
__global__ void symmetrize_upper_kernel(const T* __restrict__ in, int64_t B, int64_t N,
                                        T* __restrict__ out) {
  const int64_t total = B * N * N;
  for (int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; g < total;
       g += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = g / (N * N), r = g % (N * N), i = r / N, j = r % N;
    const int64_t hi = i > j ? i : j, lo = i > j ? j : i;
    out[g] = i == j ? T(0) : in[(b * N + lo) * N + hi];
  }
}

}  // namespace distance_kernel
}  // namespace cuda
}  // namespace tsl
