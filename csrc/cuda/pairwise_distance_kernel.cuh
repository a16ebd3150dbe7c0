// The batched pairwise distance kernel (launched from pairwise_distance.cu), in a header of its
// own so that csrc/native_tests/test_cuda_host.cpp runs this very code on the host: each CUDA
// thread a fiber (native_tests/cuda_host.h), bit for bit against the canonical distances. It
// includes no CUDA header but cooperative_groups for the split kernel, which only nvcc compiles:
// nvcc provides the intrinsics, the host test a shim of them.
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
// before computing this one, so the loads fly during the arithmetic; 124 (sm_80) and 128
// (sm_90) registers, no spills (one 512-thread block per SM, as before). One cloud of 64 points
// is still 3 blocks on 132 SMs: the split kernel below spreads each tile's coordinates over
// several blocks (TSLOSS_CUDA_DISTANCE_SLICES).
//
// Each pair is computed once and written to both triangles, so the matrix is exactly
// symmetric. The epilogue adds the block's distances (a per-block partial, in a fixed order: no
// atomics) for the scale of TSLoss. A non-finite distance makes that partial non-finite, but
// validity is not read from it (finite distances near the float64 limit may sum past it): the
// engine's h1_count of -2 is the invalid-input flag (set in h1_reduce.cu, read in
// tsloss_kernels.cuh).
#pragma once

#include <stdint.h>

#include "../core/common.h"
#include "../core/pairwise_distance.h"

#ifdef __CUDACC__
#include <cooperative_groups.h>
#endif

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
                                           int64_t k_end, int64_t i0, int64_t j0, int64_t k,
                                           int row, const T* centre_src, Staged<T>& st) {
  const bool in = k < k_end;
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
__device__ __forceinline__ void store_chunk(const Staged<T>& st, int64_t N, int64_t k_end,
                                            int64_t i0, int64_t j0, int64_t k, int row, int c,
                                            double (*xi)[kStride], double (*xj)[kStride],
                                            double (*centre_rows)[kChunk]) {
  if (Gram) centre_rows[row][c] = (double)st.centre_row;
  __syncthreads();
  double ck = 0.0;
  if (Gram) {  // tsl::certify_centre of coordinate k, from the rows the block loaded
    double sum = 0.0;
    for (int r = 0; r < certify_centre_count(N); ++r) sum = __dadd_rn(sum, centre_rows[r][c]);
    ck = k < k_end ? (double)certify_centre_of_sum(sum, N) : 0.0;
  }
  const bool in = k < k_end;
#pragma unroll
  for (int m = 0; m < kPerThread; ++m) {
    const int r = row + kPass * m;
    xi[r][c] = (in && i0 + r < N) ? __dsub_rn((double)st.i[m], ck) : 0.0;
    xj[r][c] = (in && j0 + r < N) ? __dsub_rn((double)st.j[m], ck) : 0.0;
  }
  __syncthreads();
}

// One block's tile sums over the coordinates [k_begin, k_end) (k_begin a multiple of kChunk),
// complete in every lane of each group of eight: Gram, the products and both rows' squared
// norms of the points less the centre (tsl::certify_centre, as the CPU's); else the canonical
// sums, which only the whole range [0, D) gives. acc, nu, nv: zeroed here. The chunk loop is
// pipelined by one: each thread loads chunk n + 1 into registers before computing chunk n from
// shared memory, where the first kernel loaded, then computed, with the whole block waiting on
// the loads (~5 us of each 64-coordinate chunk at one block per SM on the H200, a reading of its
// 0.33 ms per cloud).
template <typename T, bool Gram>
__device__ __forceinline__ void tile_sums(const T* __restrict__ xb, int64_t N, int64_t D,
                                          int64_t k_begin, int64_t k_end, int64_t i0,
                                          int64_t j0, int ti, int tj, int lane,
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
  load_chunk<T, Gram>(xb, N, D, k_end, i0, j0, k_begin + cs, row, centre_src, st);
  store_chunk<T, Gram>(st, N, k_end, i0, j0, k_begin + cs, row, cs, xi, xj, centre_rows);
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kChunk) {
    const bool more = k0 + kChunk < k_end;
    if (more)
      load_chunk<T, Gram>(xb, N, D, k_end, i0, j0, k0 + kChunk + cs, row, centre_src, st);
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
      store_chunk<T, Gram>(st, N, k_end, i0, j0, k0 + kChunk + cs, row, cs, xi, xj,
                           centre_rows);
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

// A block's shared memory: the two row blocks of its tile as staged, the centre's rows, and the
// warps' sums of the epilogue.
struct TileShared {
  double xi[kBlockRows][kStride];
  double xj[kBlockRows][kStride];
  double centre_rows[kPass][kChunk];
  double warp_sums[kThreads / 32];
};

// Where a thread works in tile `tile`: the tile's first rows (i0, j0), the thread, its lane of
// eight and its register tile's rows (ti, tj) within the tile.
struct TilePlace {
  int64_t i0, j0;
  int tid, lane, ti, tj;
};
__device__ __forceinline__ TilePlace place_in(int64_t tile) {
  int64_t bi, bj;
  tile_of(tile, &bi, &bj);
  TilePlace p;
  p.i0 = bi * kBlockRows;
  p.j0 = bj * kBlockRows;
  p.tid = threadIdx.x;
  p.lane = p.tid % kLanes;
  const int group = p.tid / kLanes;
  p.ti = (group / (kBlockRows / kReg)) * kReg;
  p.tj = (group % (kBlockRows / kReg)) * kReg;
  return p;
}

template <typename T, bool Gram>
__device__ __forceinline__ void tile_sums(const T* __restrict__ xb, int64_t N, int64_t D,
                                          int64_t k_begin, int64_t k_end, const TilePlace& p,
                                          TileShared& sh, double (&acc)[kReg][kReg],
                                          double (&nu)[kReg], double (&nv)[kReg]) {
  tile_sums<T, Gram>(xb, N, D, k_begin, k_end, p.i0, p.j0, p.ti, p.tj, p.lane, p.tid, sh.xi,
                     sh.xj, sh.centre_rows, acc, nu, nv);
}

// From a tile's sums over all D coordinates to its distances. Gram: each lane certifies the
// pairs it writes; where any pair of the block fails, the block sums its whole tile again
// canonically (duplicates, far clusters, non-finite points: one pass more, rather than a thread
// summing its pairs alone while its warp waits). Then each pair is written to both triangles
// of ob (the cloud's (N, N) output), and the block's sum of distances over its pairs i > j to
// *partial_slot (nullptr: none) in a fixed order. Lane l of a group reads only its pairs l and
// l + 8 of acc, and the nu and nv they take.
template <typename T, bool Gram>
__device__ __forceinline__ void finish_tile(const T* __restrict__ xb, int64_t N, int64_t D,
                                            const TilePlace& p, TileShared& sh,
                                            double (&acc)[kReg][kReg], double (&nu)[kReg],
                                            double (&nv)[kReg], T* __restrict__ ob,
                                            double* partial_slot) {
  if (Gram) {
    int fail = 0;
#pragma unroll
    for (int e = 0; e < kReg * kReg; ++e) {
      const int a = e / kReg, q = e % kReg;
      const int64_t i = p.i0 + p.ti + a, j = p.j0 + p.tj + q;
      if (e % kLanes != p.lane || i >= N || j >= i) continue;
      double s;
      if (certify_float_square(__dadd_rn(nu[a], nv[q]), acc[a][q], D, &s))
        acc[a][q] = s;
      else
        fail = 1;
    }
    if (__syncthreads_or(fail) != 0) tile_sums<T, false>(xb, N, D, 0, D, p, sh, acc, nu, nv);
  }

  double local = 0.0;
#pragma unroll
  for (int e = 0; e < kReg * kReg; ++e) {
    if (e % kLanes != p.lane) continue;
    const int a = e / kReg, q = e % kReg;
    const int64_t i = p.i0 + p.ti + a, j = p.j0 + p.tj + q;
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
  if (partial_slot == nullptr) return;
  for (int off = 16; off > 0; off >>= 1)
    local = __dadd_rn(local, __shfl_down_sync(0xffffffffu, local, off));
  if (p.tid % 32 == 0) sh.warp_sums[p.tid / 32] = local;
  __syncthreads();
  if (p.tid == 0) {
    double s = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) s = __dadd_rn(s, sh.warp_sums[w]);
    *partial_slot = s;
  }
}

// Gram: the certified route (float32 only), else the canonical sums. zero_word (or nullptr): a
// word block (0, 0) sets to 0, the completion count of the kernel that reads the partials next
// on this stream (tsloss_terms_kernel), which would otherwise need a launch of its own to clear.
// Grid: (tiles, B).
template <typename T, bool Gram>
__global__ void __launch_bounds__(kThreads)
    pairwise_distance_kernel(const T* __restrict__ x, int64_t N, int64_t D, T* __restrict__ out,
                             double* __restrict__ partial, int64_t tiles,
                             unsigned* __restrict__ zero_word) {
  if (zero_word != nullptr && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0)
    *zero_word = 0u;
  __shared__ TileShared sh;
  const int64_t b = blockIdx.y;
  const TilePlace p = place_in(blockIdx.x);
  const T* xb = x + b * N * D;
  double acc[kReg][kReg], nu[kReg], nv[kReg];
  tile_sums<T, Gram>(xb, N, D, 0, D, p, sh, acc, nu, nv);
  finish_tile<T, Gram>(xb, N, D, p, sh, acc, nu, nv, out + b * N * N,
                       partial ? partial + b * tiles + blockIdx.x : nullptr);
}

// ---- The certified route with each tile's coordinates split over `slices` blocks -------------
// For batches whose tiles leave most of the GPU idle: one cloud of 64 points is 3 blocks, each
// summing 4,096 coordinates alone (the H100 took 0.175 ms for it, 64 clouds 0.50 ms). The
// Gram sums may be added in any order (certify_float_square's bound holds for every order), so
// block (tile * slices + s, b) sums the coordinates [s * per_slice, (s + 1) * per_slice) of its
// tile into the workspace; after a grid-wide barrier the tile's slice-0 block adds the slices
// in slice order and finishes the tile as the one-block kernel does (certification, the
// canonical fallback over all D, the writes and the partial), so every output is the one-block
// kernel's bit for bit. The device kernel is the two phases with cooperative_groups' grid sync
// between them (a cooperative launch, which the launcher sizes to fit the GPU at once); the
// host test (native_tests/test_cuda_host.cpp) launches the phases one after the other.

// Slices of whole chunks for `want` slices of `chunks` (want >= 1): each slice per_chunks chunks,
// the last one possibly shorter, none empty. The launcher's plan and the host test share it.
struct SliceCut {
  int slices;
  int64_t per_chunks;
};
__host__ __device__ inline SliceCut cut_slices(int64_t chunks, int64_t want) {
  const int64_t per = (chunks + want - 1) / want;
  return SliceCut{int((chunks + per - 1) / per), per};
}

// Values a block writes per slice: each of the 64 register tiles' 16 Gram sums and 4 + 4 norms.
constexpr int kSliceGroupValues = kReg * kReg + 2 * kReg;  // 24
constexpr int64_t kSliceValues = int64_t(kGroups) * kSliceGroupValues;

// The first phase: this block's slice sums into ws ((B, tiles, slices, kSliceValues) doubles).
// Lane l of a group writes Gram sums l and l + 8 and norm l (nu 0-3, then nv 0-3): a group's
// lanes hold the same sums after the lane tree. Compile-time indices keep acc in registers.
template <typename T>
__device__ __forceinline__ void distance_slice_sums(const T* __restrict__ x, int64_t N,
                                                    int64_t D, int64_t tiles, int slices,
                                                    int64_t per_slice, double* ws,
                                                    TileShared& sh, unsigned* zero_word) {
  if (zero_word != nullptr && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0)
    *zero_word = 0u;
  const int64_t b = blockIdx.y, tile = blockIdx.x / slices, s = blockIdx.x % slices;
  const TilePlace p = place_in(tile);
  const int64_t k_begin = s * per_slice;
  const int64_t k_end = k_begin + per_slice < D ? k_begin + per_slice : D;
  double acc[kReg][kReg], nu[kReg], nv[kReg];
  tile_sums<T, true>(x + b * N * D, N, D, k_begin, k_end, p, sh, acc, nu, nv);
  double* out = ws + ((b * tiles + tile) * slices + s) * kSliceValues +
                (p.tid / kLanes) * kSliceGroupValues;
#pragma unroll
  for (int e = 0; e < kReg * kReg; ++e)
    if (e % kLanes == p.lane) out[e] = acc[e / kReg][e % kReg];
#pragma unroll
  for (int a = 0; a < kReg; ++a) {
    if (p.lane == a) out[kReg * kReg + a] = nu[a];
    if (p.lane == kReg + a) out[kReg * kReg + kReg + a] = nv[a];
  }
}

// The second phase, after every block's first: blocks of slice 0 add their tile's slices in
// slice order (lane l the Gram sums finish_tile reads, l and l + 8, and all eight norms) and
// finish it; the others return. ws is not __restrict__: other blocks wrote it earlier in the
// same kernel, so its loads must not take the non-coherent read-only path (ld.global.nc).
template <typename T>
__device__ __forceinline__ void distance_finish_slices(const T* __restrict__ x, int64_t N,
                                                       int64_t D, T* __restrict__ out,
                                                       double* __restrict__ partial,
                                                       int64_t tiles, int slices,
                                                       const double* ws, TileShared& sh) {
  if (blockIdx.x % slices != 0) return;
  const int64_t b = blockIdx.y, tile = blockIdx.x / slices;
  const TilePlace p = place_in(tile);
  double acc[kReg][kReg], nu[kReg], nv[kReg];
#pragma unroll
  for (int a = 0; a < kReg; ++a) {
    nu[a] = nv[a] = 0.0;
#pragma unroll
    for (int q = 0; q < kReg; ++q) acc[a][q] = 0.0;
  }
  const double* in = ws + (b * tiles + tile) * slices * kSliceValues +
                     (p.tid / kLanes) * kSliceGroupValues;
  for (int s = 0; s < slices; ++s, in += kSliceValues) {
#pragma unroll
    for (int e = 0; e < kReg * kReg; ++e)
      if (e % kLanes == p.lane) acc[e / kReg][e % kReg] = __dadd_rn(acc[e / kReg][e % kReg], in[e]);
    // Every norm, in every lane: a lane-dependent choice of them made ptxas index nv at run
    // time, in local memory (32 bytes of stack).
#pragma unroll
    for (int a = 0; a < kReg; ++a) {
      nu[a] = __dadd_rn(nu[a], in[kReg * kReg + a]);
      nv[a] = __dadd_rn(nv[a], in[kReg * kReg + kReg + a]);
    }
  }
  const T* xb = x + b * N * D;
  finish_tile<T, true>(xb, N, D, p, sh, acc, nu, nv, out + b * N * N,
                       partial ? partial + b * tiles + tile : nullptr);
}

#ifdef __CUDACC__
// Grid: (tiles * slices, B), launched cooperatively (every block resident at once).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    pairwise_distance_split_kernel(const T* __restrict__ x, int64_t N, int64_t D,
                                   T* __restrict__ out, double* __restrict__ partial,
                                   int64_t tiles, int slices, int64_t per_slice,
                                   double* ws, unsigned* __restrict__ zero_word) {
  __shared__ TileShared sh;
  distance_slice_sums<T>(x, N, D, tiles, slices, per_slice, ws, sh, zero_word);
  cooperative_groups::this_grid().sync();
  distance_finish_slices<T>(x, N, D, out, partial, tiles, slices, ws, sh);
}
#endif

template <typename T>
__global__ void symmetrize_upper_kernel(const T* __restrict__ in, int64_t B, int64_t N,
                                        T* __restrict__ out) {
  const int64_t total = B * N * N;
  for (int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; g < total;
       g += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = g / (N * N), r = g % (N * N), i = r / N, j = r % N;
    const int64_t hi = i > j ? i : j, lo = i > j ? j : i;
    out[g] = i == j ? T(0) : in[(b * N + lo) * N + hi] + T(0);  // -0 as +0, as the CPU reads it
  }
}

}  // namespace distance_kernel
}  // namespace cuda
}  // namespace tsl
