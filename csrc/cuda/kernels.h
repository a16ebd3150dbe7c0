// Torch-free launchers of the CUDA Vietoris–Rips engine.
//
// Every launcher takes raw device pointers, sizes and a stream; none allocates, none
// synchronises with the host, and all are deterministic (no floating-point atomics; every sum
// runs in a fixed order). One exception, in which clouds fail rather than in any value: when
// the warp reduction's shared pool runs out, which of its clouds get -1 depends on the order
// the warps reached it (see warp_reduction below). Memory comes from the caller:
// `vr_workspace_bytes` says how much one call of `launch_vr_persistence` needs, so the torch
// glue can take it from the caching allocator.
//
// Tensors are dense and row-major; "(B, N, D) T" below means B*N*D contiguous elements of T,
// where T is float or double (the only instantiations). Index outputs are int64.
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/tsloss_terms.h"

namespace tsl {
template <typename T>
struct H1Column;  // core/h1_reduce.h
template <typename T>
struct H1Pair;  // core/h1_reduce.h
template <typename T>
struct Entry;  // core/common.h

namespace cuda {

// Fixed per-cloud capacities of the H1 reduction. A CUDA thread cannot grow its buffers, so a
// cloud whose reduction needs more reports an overflow instead (see launch_vr_persistence).
struct H1Capacity {
  int64_t heap;     // entries of the coboundary heap and of the V-column heap
  int64_t columns;  // columns (non-apparent, non-tree edges) one cloud may have; also slots
  int64_t arena;    // stored V-column entries (edge indices) over all stored columns
};

// Defaults that make overflow rare for N up to a few thousand points: a column's coboundary
// holds at most N-2 triangles before cancellation, and few edges survive the apparent-pair test.
H1Capacity default_h1_capacity(int64_t n);

// Bytes of workspace `launch_vr_persistence<T>` needs for B clouds of N points with the same
// `maxdim`, `cap` and engine flags. `elem_size` is sizeof(T) (4 or 8). The workspace must be
// 256-byte aligned (any CUDA allocator's block is).
size_t vr_workspace_bytes(int64_t B, int64_t N, int maxdim, size_t elem_size,
                          const H1Capacity& cap, bool block_topology = false,
                          bool warp_reduction = false);

// Bytes of the pool the warp reduction's clouds share: what their fixed slices would hold
// (B times the heap, V-heap and arena capacities), at least kMinWarpPoolBytes, so that one
// tie-heavy cloud of a small batch can grow far past its share.
constexpr uint64_t kMinWarpPoolBytes = uint64_t(96) << 20;
uint64_t warp_pool_bytes(int64_t B, const H1Capacity& cap, size_t elem_size);

// Largest number of clouds one launch_vr_persistence call accepts for N points: bounded so that
// every per-batch edge count fits the 32-bit offsets of the segmented sort.
int64_t vr_max_clouds_per_call(int64_t N);

// Euclidean distances, each entry the canonical one of core/pairwise_distance.h, the CPU's bit
// for bit: float64 points by the canonical sum itself (double, eight lane sums, no FMA), float32
// points by certified Gram sums, a block falling back to the canonical sum where a pair does not
// certify (pairwise_distance_kernel.cuh).
//   x:   (B, N, D) T, points
//   out: (B, N, N) T, exactly symmetric with an exact zero diagonal
//   slices_requested, slice_workspace, slice_workspace_bytes: see distance_slice_workspace_bytes
template <typename T>
cudaError_t launch_pairwise_distance(const T* x, int64_t B, int64_t N, int64_t D, T* out,
                                     cudaStream_t stream, int slices_requested = 1,
                                     void* slice_workspace = nullptr,
                                     size_t slice_workspace_bytes = 0);

// Blocks per cloud of launch_pairwise_distance_sum: lower-triangle tiles of 32 x 32 pairs.
int64_t distance_tiles(int64_t N);

// Bytes of workspace for splitting each distance tile's coordinates over several blocks (float32
// points only; 0: no split), for a batch whose tiles would leave the GPU idle (one cloud of 64
// points is 3 tiles): the split kernel sums each slice of coordinates in a block of its own,
// then, after a grid-wide barrier (a cooperative launch), adds the slices and finishes each
// tile as the one-block kernel does; the same bits (pairwise_distance_kernel.cuh). requested
// (TSLOSS_CUDA_DISTANCE_SLICES): 1 never splits, 0 picks as many slices as keep every block
// resident at once (at most one per two 64-coordinate chunks), 2..64 that many within the same
// bounds. The launchers split only with a slice workspace of at least these bytes for their own
// arguments, and fall back to the one-block kernel if the cooperative launch is refused.
size_t distance_slice_workspace_bytes(int64_t B, int64_t N, int64_t D, size_t elem_size,
                                      int requested);

// The same distances, and per block the sum of its distances over pairs i > j, for the scale of
// TSLoss without another pass: the cloud's sum is the sum of its distance_tiles(N) partials in
// order (launch_tsloss_terms does it). A non-finite distance (non-finite input, or a float32
// overflow) makes its partial non-finite; validity comes from the engine's h1_count (-2), not
// from the partials, since finite distances near the float64 limit may sum past it.
//   partial:   (B, distance_tiles(N)) double, out; nullptr: not written
//   zero_word: set to 0 by the launch (nullptr: none), for the kernel that reads the partials
//              next (launch_tsloss_terms: its blocks' completion count, in its workspace)
//   slices_requested, slice_workspace, slice_workspace_bytes: see distance_slice_workspace_bytes
template <typename T>
cudaError_t launch_pairwise_distance_sum(const T* x, int64_t B, int64_t N, int64_t D, T* out,
                                         double* partial, cudaStream_t stream,
                                         unsigned* zero_word = nullptr,
                                         int slices_requested = 1,
                                         void* slice_workspace = nullptr,
                                         size_t slice_workspace_bytes = 0);

// Symmetric matrices from the upper triangles of user distance matrices (ripser.py's and
// giotto-ph's reading).
//   in:  (B, N, N) T; only entries (i, j) with i < j are read
//   out: (B, N, N) T; out[i][j] = out[j][i] = in[min][max], zero diagonal
template <typename T>
cudaError_t launch_symmetrize_upper(const T* in, int64_t B, int64_t N, T* out,
                                    cudaStream_t stream);

// H0 and H1 persistence of B clouds from their symmetric distance matrices.
//   dist:      (B, N, N) T, symmetric, zero diagonal (e.g. from the two launchers above)
//   maxdim:    0 (H0 only; H1 outputs become padding with count 0) or 1
//   K:         rows of the H1 outputs per cloud (max_h1), >= 0
//   h0:        (B, N-1, 2) T        out: (0, death), sorted by tsl::mst_edge_before
//   h0_edges:  (B, N-1, 2) int64    out: death edge (u < v)
//   h1:        (B, K, 2) T          out: (birth, death) of the K most persistent bars
//   h1_edges:  (B, K, 4) int64      out: birth edge (j < i), death edge (u < v); padding -1
//   h1_count:  (B,) int64           out: true number of H1 bars; -1 when the cloud overflowed,
//                                   -2 (kInvalidInputCount) when a distance is NaN or +-Inf
//                                   (the H0 pass made the threshold NaN; no H1 was computed)
//   truncated: (B,) bool            out: h1_count > K, or the cloud overflowed; false at -2
//   workspace: vr_workspace_bytes(B, N, maxdim, sizeof(T), cap) bytes, device memory
//   clouds_per_warp: clouds one warp of the reduce kernel takes, 1..32; 0 picks it from B and
//                    the SM count (1 unless the batch exceeds 16 warps per SM)
//   block_topology: build the tree and the H1 columns with launch_topology (one block per
//                    cloud) instead of Prim's kernel, the flag pass and the segmented sort; same
//                    results (the native tests prove the algorithm on the host emulation), and
//                    the workspace must be sized with the same flag
//   warp_reduction:  reduce H1 with one warp per cloud (launch_reduce_warp) instead of one
//                    thread; same results. Its clouds share one pool (warp_pool_bytes) instead
//                    of fixed slices, so a cloud reports -1 only when the pool runs out (then
//                    which ones depends on the warps' order); the workspace must be sized with
//                    the same flag
//   reduce_warps:    with warp_reduction, warps per cloud: 1, 2..16 (a block of warps that
//                    commit columns in order, core/h1_reduce_block.h), or 0 (automatic:
//                    reduce_warps_per_cloud); same results
// B must not exceed vr_max_clouds_per_call(N). A cloud whose H1 reduction exceeds `cap` gets
// h1_count = -1, truncated = true and all-padding H1 rows (its H0 is still exact).
template <typename T>
cudaError_t launch_vr_persistence(const T* dist, int64_t B, int64_t N, int maxdim, int64_t K,
                                  T* h0, int64_t* h0_edges, T* h1, int64_t* h1_edges,
                                  int64_t* h1_count, bool* truncated, void* workspace,
                                  size_t workspace_bytes, const H1Capacity& cap,
                                  int clouds_per_warp, cudaStream_t stream,
                                  bool block_topology = false, bool warp_reduction = false,
                                  int reduce_warps = 1);

// Bytes of workspace launch_vr_backward<T> needs (an EdgeScale, two doubles, per reported edge).
size_t vr_backward_workspace_bytes(int64_t B, int64_t H0, int64_t K);

// Gradient of the reported bar values with respect to the input, in the CPU's summation order
// (h0 rows, then h1 rows: birth then death), so the result equals the CPU kernel's.
//   grad_h0:   (B, H0, 2) T; only column 1 (the death) carries gradient
//   grad_h1:   (B, K, 2) T
//   x:         (B, N, D) T points, or (B, N, N) T distances when `distances`
//   h0_edges:  (B, H0, 2) int64; h1_edges: (B, K, 4) int64; rows with -1 are skipped
//   grad:      like x, must be zero on entry; with distances only upper-triangle entries get
//              gradient (the entries the forward read)
//   workspace: vr_backward_workspace_bytes(B, H0, K) bytes
template <typename T>
cudaError_t launch_vr_backward(const T* grad_h0, const T* grad_h1, const T* x, int64_t B,
                               int64_t N, int64_t D, const int64_t* h0_edges, int64_t H0,
                               const int64_t* h1_edges, int64_t K, bool distances, T* grad,
                               void* workspace, cudaStream_t stream);

// ---- TSLoss (the fused op pair; core/tsloss_terms.h defines the terms) ----------------------

// Bytes of workspace the forward needs: the distance partials of launch_pairwise_distance_sum
// ((B, distance_tiles(N)) doubles, which that launch writes first into the start of this same
// workspace), five values per cloud and the terms kernel's completion count.
size_t tsloss_forward_workspace_bytes(int64_t B, int64_t N);

// Where that workspace holds the completion count: launch_pairwise_distance_sum's zero_word.
unsigned* tsloss_terms_counter(void* workspace, int64_t B, int64_t N);

// The terms of every cloud from its diagrams, then their reduction over the batch, in one kernel
// (the block that finishes last reduces).
//   x:          (B, N, D) T points (read only for N = 1, whose non-finite coordinates have no
//               distance to show in)
//   h0, h1:     (B, N-1, 2), (B, K, 2) T, from launch_vr_persistence on the same distances
//   h1_count:   (B,) int64; set to -2 (INVALID_INPUT) for a cloud with a non-finite distance
//   prev_h0/1:  (B, N-1), (B, K) T, read only when o.has_prev
//   reduction:  TsReduction
//   topo_h0/1:  (B, N-1), (B, K) T out: u and v (NaN for invalid clouds)
//   scales:     (B,) T out: the raw mean distances (tsl::raw_scale), before the clamp
//   loss, conn, red, stab, scale: () or (B,) T out (reduction)
//   workspace:  tsloss_forward_workspace_bytes(B, N) bytes, distance partials already written
//               and its completion count cleared (launch_pairwise_distance_sum, zero_word =
//               tsloss_terms_counter(workspace, B, N), earlier on the same stream)
template <typename T>
cudaError_t launch_tsloss_terms(const T* x, int64_t B, int64_t N, int64_t D, const T* h0,
                                const T* h1, int64_t K, int64_t* h1_count, const T* prev_h0,
                                const T* prev_h1, const TermOptions& o, int reduction,
                                T* topo_h0, T* topo_h1, T* scales, T* loss, T* conn, T* red,
                                T* stab, T* scale, void* workspace, cudaStream_t stream);

// Bytes of workspace launch_tsloss_backward needs: one double per reported edge and per cloud,
// and each cloud's edge incidence lists (N + 1 offsets, up to 2 (N - 1) + 4 K keys).
size_t tsloss_backward_workspace_bytes(int64_t B, int64_t N, int64_t K);

// Gradient of the loss on the points, in two kernels: the pair weights of every cloud (the bars'
// edges and the dense weight from the scale), then one pass over the pairs.
//   g_*:       upstream gradients of the five reduced outputs, () or (B,) T; nullptr: zero
//   dist, scales, topo_h0, topo_h1, h1_count, h0_edges, h1_edges: the forward's outputs
//   grad:      (B, N, D) T out (every entry written)
template <typename T>
cudaError_t launch_tsloss_backward(const T* g_loss, const T* g_conn, const T* g_red,
                                   const T* g_stab, const T* g_scale, const T* x, int64_t B,
                                   int64_t N, int64_t D, const T* dist, const T* scales,
                                   const T* topo_h0, const T* topo_h1, int64_t K,
                                   const int64_t* h1_count, const int64_t* h0_edges,
                                   const int64_t* h1_edges, const T* prev_h0, const T* prev_h1,
                                   const TermOptions& o, int reduction, T* grad,
                                   void* workspace, cudaStream_t stream);

// ---- building blocks (used by launch_vr_persistence; exposed for tests and profiling) -------

// Prim's MST, one block per cloud. Writes h0/h0_edges, the Prim parent of every vertex
// (best_parent, (B, N) int64; -1 for the root) and the enclosing radius (threshold, (B,) T;
// NaN when any distance of the cloud is NaN or +-Inf, which makes no H1 column and which
// launch_vr_persistence reports as h1_count = -2).
// mst_scratch: (B, N) MstEdge<T>-sized slots (see vr_workspace_bytes).
// clear: a counter set to 0 on the way (the warp reduction's pool; a kernel of its own would
// cost a launch), or null.
template <typename T>
cudaError_t launch_h0_mst(const T* dist, int64_t B, int64_t N, T* h0, int64_t* h0_edges,
                          int64_t* best_parent, T* threshold, void* mst_scratch,
                          cudaStream_t stream, unsigned long long* clear = nullptr);

// The per-cloud topology pass (core/topology_block.h), one block per cloud: the enclosing
// radius, Prim's tree, H0 bars in filtration order and the H1 columns in reverse filtration
// order (what launch_h0_mst, the flag and compaction kernels and the segmented sort give).
//   dist:        (B, N, N) T, symmetric, zero diagonal
//   h1:          whether to build the columns (maxdim >= 1 and N >= 3)
//   h0, h0_edges, threshold: as launch_h0_mst; best_parent: (B, N) int64 or null
//   columns:     (B, N(N-1)/2) H1Column<T>; cloud b's first counts[b] are its columns
//   counts:      (B,) int32
//   scratch:     topology_scratch_bytes(B, N, sizeof(T)) bytes (0 while Prim's state fits in
//                shared memory, N up to about 1190)
//   clear:       as launch_h0_mst
size_t topology_scratch_bytes(int64_t B, int64_t N, size_t elem_size);
template <typename T>
cudaError_t launch_topology(const T* dist, int64_t B, int64_t N, bool h1, T* h0,
                            int64_t* h0_edges, int64_t* best_parent, T* threshold,
                            H1Column<T>* columns, int32_t* counts, void* scratch,
                            size_t scratch_bytes, cudaStream_t stream,
                            unsigned long long* clear = nullptr);

// The warp reduction's global memory: one pool that every cloud's arrays take their second
// parts from (core/h1_reduce_warp.h's WarpPool; `pool_used` must be zero at the launch: the H0
// kernel before it clears it), and
// per-cloud slices of its pivot table, stored-column index, pairs and status (cloud b's part of
// each starts at b times its capacity).
template <typename T>
struct WarpReduceSlices {
  unsigned char* pool;
  uint64_t pool_bytes;
  unsigned long long* pool_used;
  int64_t* pivot_keys;
  int32_t* pivot_slots;
  int64_t pivot_capacity;  // a power of two >= 2 (slot_capacity)
  int32_t* v_start;
  int32_t* v_length;
  H1Pair<T>* pairs;
  int64_t slot_capacity;  // columns + 1; also the pair capacity
  int32_t* status;        // (B,) tsl::Status
  int64_t* num_pairs;     // (B,)
};

// The H1 reduction with one warp per cloud (core/h1_reduce_warp.h) over the columns of
// launch_topology (or of the global passes), one cloud a block; with warps_per_cloud 2..16 a
// block of that many warps per cloud (core/h1_reduce_block.h), 0 picking it from B and the SM
// count (reduce_warps_per_cloud). Same pairs either way.
template <typename T>
cudaError_t launch_reduce_warp(const T* dist, int64_t B, int64_t N, const T* threshold,
                               const H1Column<T>* columns, const int32_t* counts,
                               const WarpReduceSlices<T>& slices, cudaStream_t stream,
                               int warps_per_cloud = 1);

// The warps per cloud launch_reduce_warp runs for a batch of B clouds and a requested count
// (1: one warp; 2..16 that many; 0: automatic, about four warps a multiprocessor in all, so
// blocks while B <= 2 x the SMs' count).
int reduce_warps_per_cloud(int64_t B, int requested);

}  // namespace cuda
}  // namespace tsl
