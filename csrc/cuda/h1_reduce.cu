// H1 for a whole batch in a fixed sequence of launches, and the forward driver.
//
//   1. flag_columns     one thread per edge: below the enclosing radius, not a tree edge, not
//                       the facet of an apparent pair (tsl::in_apparent_pair)?
//   2. compact_columns  one block per cloud: block scan of the flags, keeps index order
//   3. CUB segmented    stable sort by diameter, descending; index order is kept among equal
//      sort            diameters, which is exactly tsl::column_before (reverse filtration);
//                       at most kSortSegments clouds a call (no host read-back in CUB)
//   4. make_columns     (diameter, edge) -> tsl::H1Column
//   5. reduce           one thread per cloud runs tsl::reduce_h1 in its workspace slice, one
//                       cloud per warp unless the batch overfills the GPU
//   6. finalize         one block per cloud ranks pairs by tsl::h1_pair_before, writes top K
//
// With block_topology, steps 1-4 and Prim's kernel are one launch of the per-cloud topology pass
// (topology.cu, core/topology_block.h) instead; with warp_reduction, step 5 is one warp per cloud
// (h1_reduce_warp.cu, core/h1_reduce_warp.h) in the same buffers.
//
// Sizes are fixed by (B, N, cap) alone, so nothing here needs to read a count back on the host.
#include <algorithm>
#include <cuda_runtime.h>

#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_sort.cuh>

#include "../core/h0_mst.h"
#include "../core/h1_reduce.h"
#include "kernels.h"

namespace tsl {
namespace cuda {
namespace {

constexpr int kScanThreads = 256;
// Clouds per segmented sort, below CUB's partitioning threshold (build_columns_by_passes).
constexpr int64_t kSortSegments = 256;
constexpr int kScanItems = 4;

__host__ __device__ inline int64_t num_edges(int64_t N) { return N * (N - 1) / 2; }

int64_t next_pow2_i64(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// Byte offsets of every workspace part; the same computation sizes and carves the workspace.
template <typename T>
struct Layout {
  size_t best_parent = 0, threshold = 0, mst = 0, topology_scratch = 0;
  size_t flags = 0, columns = 0, keys_out = 0, vals_out = 0, counts = 0, seg_begin = 0,
         seg_end = 0, cub_temp = 0, heap = 0, vheap = 0, pivot_keys = 0, pivot_slots = 0,
         v_start = 0, v_length = 0, arena = 0, pairs = 0, status = 0, num_pairs = 0, pool = 0,
         pool_used = 0;
  uint64_t pool_bytes = 0;
  size_t cub_bytes = 0;
  size_t total = 0;
  int64_t E = 0, S = 0, P = 0;
  bool h1 = false;
  cudaError_t error = cudaSuccess;

  size_t take(size_t bytes) {
    const size_t at = total;
    total += (bytes + 255) / 256 * 256;  // keep every part 256-byte aligned, as CUB wants
    return at;
  }

  // block_topology: the one-kernel topology pass (topology.cu) replaces Prim's kernel, the
  // flags, the compaction and the segmented sort, and needs none of their buffers.
  // warp_reduction: one pool for every cloud's arrays replaces the scalar kernel's heaps and
  // arenas.
  Layout(int64_t B, int64_t N, int maxdim, const H1Capacity& cap, bool block_topology,
         bool warp_reduction) {
    best_parent = take(sizeof(index_t) * B * N);
    threshold = take(sizeof(T) * B);
    if (block_topology) {
      topology_scratch = take(topology_scratch_bytes(B, N, sizeof(T)));
      counts = take(sizeof(int32_t) * B);
    } else {
      mst = take(sizeof(MstEdge<T>) * B * N);
    }
    h1 = maxdim >= 1 && N >= 3 && B > 0;
    if (!h1) return;
    E = num_edges(N);
    S = cap.columns < E ? cap.columns : E;
    P = next_pow2_i64(2 * S + 2);
    const int64_t BE = B * E;
    if (block_topology) {
      columns = take(sizeof(H1Column<T>) * BE);
    } else {
      take_sort_parts(B, BE);
    }
    if (warp_reduction) {
      pool_bytes = warp_pool_bytes(B, cap, sizeof(T));
      pool = take(pool_bytes);
      pool_used = take(sizeof(unsigned long long));
    } else {
      heap = take(sizeof(Entry<T>) * B * cap.heap);
      vheap = take(sizeof(index_t) * B * cap.heap);
      arena = take(sizeof(index_t) * B * cap.arena);
    }
    pivot_keys = take(sizeof(index_t) * B * P);
    pivot_slots = take(sizeof(index_t) * B * P);
    v_start = take(sizeof(index_t) * B * (S + 1));
    v_length = take(sizeof(index_t) * B * (S + 1));
    pairs = take(sizeof(H1Pair<T>) * B * (S + 1));
    status = take(sizeof(int32_t) * B);
    num_pairs = take(sizeof(index_t) * B);
  }

  void take_sort_parts(int64_t B, int64_t BE) {
    flags = take(BE);
    // The sort's inputs (keys, then int32 edge indices) live inside the column buffer: they
    // are dead once sorted, and an H1Column is at least as large as a key plus a value.
    columns = take(sizeof(H1Column<T>) * BE);
    keys_out = take(sizeof(T) * BE);
    vals_out = take(sizeof(int32_t) * BE);
    counts = take(sizeof(int32_t) * B);
    seg_begin = take(sizeof(int32_t) * B);
    seg_end = take(sizeof(int32_t) * B);
    // Sized for the largest call build_columns_by_passes makes: every item, kSortSegments
    // segments (a call's items and segments never exceed these).
    error = cub::DeviceSegmentedSort::StableSortPairsDescending(
        nullptr, cub_bytes, (const T*)nullptr, (T*)nullptr, (const int32_t*)nullptr,
        (int32_t*)nullptr, (int)BE, (int)std::min<int64_t>(B, kSortSegments),
        (const int32_t*)nullptr, (const int32_t*)nullptr);
    cub_temp = take(cub_bytes);
  }
};

template <typename P>
P* part(void* base, size_t offset) {
  return reinterpret_cast<P*>(static_cast<char*>(base) + offset);
}

template <typename T>
__global__ void flag_columns_kernel(const T* __restrict__ dist, int64_t B, int64_t N,
                                    const index_t* __restrict__ best_parent,
                                    const T* __restrict__ threshold,
                                    unsigned char* __restrict__ flags) {
  const int64_t E = num_edges(N), total = B * E;
  for (int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; g < total;
       g += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = g / E, e = g % E;
    const DistanceMatrix<T> d{dist + b * N * N, N};
    index_t i, j;
    edge_vertices(e, N, &i, &j);
    const T de = d(i, j), thr = threshold[b];
    bool keep = de <= thr && !is_tree_edge(best_parent + b * N, i, j);
    if (keep) keep = !in_apparent_pair(d, i, j, de);
    flags[g] = keep ? 1 : 0;
  }
}

template <typename T>
__global__ void __launch_bounds__(kScanThreads)
    compact_columns_kernel(const T* __restrict__ dist, int64_t N,
                           const unsigned char* __restrict__ flags, T* __restrict__ keys,
                           int32_t* __restrict__ vals, int32_t* __restrict__ counts,
                           int32_t* __restrict__ seg_begin, int32_t* __restrict__ seg_end) {
  using Scan = cub::BlockScan<int, kScanThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  const int64_t b = blockIdx.x, E = num_edges(N);
  const unsigned char* f = flags + b * E;
  const T* d = dist + b * N * N;
  T* kb = keys + b * E;
  int32_t* vb = vals + b * E;
  int64_t base = 0;
  for (int64_t t0 = 0; t0 < E; t0 += kScanThreads * kScanItems) {
    const int64_t e0 = t0 + (int64_t)threadIdx.x * kScanItems;
    int keep[kScanItems], offset[kScanItems], tile_total;
#pragma unroll
    for (int k = 0; k < kScanItems; ++k) keep[k] = e0 + k < E ? f[e0 + k] : 0;
    Scan(scan_storage).ExclusiveSum(keep, offset, tile_total);
#pragma unroll
    for (int k = 0; k < kScanItems; ++k) {
      if (!keep[k]) continue;
      const int64_t e = e0 + k;
      index_t i, j;
      edge_vertices(e, N, &i, &j);
      kb[base + offset[k]] = d[i * N + j];
      vb[base + offset[k]] = (int32_t)e;
    }
    base += tile_total;
    __syncthreads();  // scan_storage is reused by the next tile
  }
  if (threadIdx.x == 0) {
    counts[b] = (int32_t)base;
    seg_begin[b] = (int32_t)(b * E);
    seg_end[b] = (int32_t)(b * E + base);
  }
}

template <typename T>
__global__ void make_columns_kernel(int64_t B, int64_t N, const T* __restrict__ keys,
                                    const int32_t* __restrict__ vals,
                                    const int32_t* __restrict__ counts,
                                    H1Column<T>* __restrict__ columns) {
  const int64_t E = num_edges(N), total = B * E;
  for (int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; g < total;
       g += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = g / E, r = g % E;
    if (r >= counts[b]) continue;
    index_t i, j;
    edge_vertices(vals[g], N, &i, &j);
    columns[g] = H1Column<T>{keys[g], i, j};
  }
}

struct ReduceBuffers {
  index_t *vheap, *pivot_keys, *pivot_slots, *v_start, *v_length, *arena, *num_pairs;
  int32_t* status;
};

// Lane l < clouds_per_warp of warp w reduces cloud w * clouds_per_warp + l; the other lanes
// idle. A cloud's reduction is long and branchy, so clouds sharing a warp serialise wherever
// their control flow differs: one cloud per warp unless the batch is large enough to fill the
// GPU's warps anyway (reduce_clouds_per_warp).
template <typename T>
__global__ void reduce_kernel(const T* __restrict__ dist, int64_t B, int64_t N,
                              const T* __restrict__ threshold,
                              const H1Column<T>* __restrict__ columns,
                              const int32_t* __restrict__ counts, H1Capacity cap, int64_t S,
                              int64_t P, Entry<T>* heap, H1Pair<T>* pairs, ReduceBuffers rb,
                              int clouds_per_warp) {
  const int lane = threadIdx.x & 31;
  if (lane >= clouds_per_warp) return;
  const int64_t warp = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
  const int64_t b = warp * clouds_per_warp + lane;
  if (b >= B) return;
  const int64_t E = num_edges(N), m = counts[b];
  if (m > S) {  // more columns than slots: the pivot table could not hold them
    rb.status[b] = kPivotTableFull;
    rb.num_pairs[b] = 0;
    return;
  }
  // The cloud's own table within its slice (m <= S: at most P), as the host engine sizes it.
  H1Workspace<T> ws{EntryHeap<T>{heap + b * cap.heap, 0, cap.heap},
                    IndexHeap{rb.vheap + b * cap.heap, 0, cap.heap},
                    PivotTable{rb.pivot_keys + b * P, rb.pivot_slots + b * P,
                               pivot_table_capacity((index_t)m), 0},
                    rb.v_start + b * (S + 1),
                    rb.v_length + b * (S + 1),
                    S + 1,
                    rb.arena + b * cap.arena,
                    cap.arena,
                    0,
                    0};
  index_t np = 0;
  const Status s = reduce_h1(DistanceMatrix<T>{dist + b * N * N, N}, columns + b * E, m,
                             threshold[b], ws, pairs + b * (S + 1), S + 1, &np);
  rb.status[b] = s;
  rb.num_pairs[b] = s == kOk ? np : 0;
}

// status / num_pairs null: no H1 was computed (maxdim 0 or N < 3): all rows are padding. A NaN
// threshold (a non-finite distance: the H0 pass made it so) reports the cloud invalid.
template <typename T>
__global__ void finalize_kernel(const T* __restrict__ dist, const T* __restrict__ threshold,
                                int64_t N, int64_t K,
                                const H1Pair<T>* __restrict__ pairs_all, int64_t pair_stride,
                                const int32_t* __restrict__ status,
                                const index_t* __restrict__ num_pairs, T* __restrict__ h1,
                                int64_t* __restrict__ h1_edges, int64_t* __restrict__ h1_count,
                                bool* __restrict__ truncated) {
  const int64_t b = blockIdx.x;
  const bool failed = status != nullptr && status[b] != kOk;
  const int64_t count = (num_pairs == nullptr || failed) ? 0 : num_pairs[b];
  const int64_t keep = count < K ? count : K;
  T* hb = h1 + b * K * 2;
  int64_t* eb = h1_edges + b * K * 4;
  for (int64_t r = keep + threadIdx.x; r < K; r += blockDim.x) {
    hb[2 * r] = hb[2 * r + 1] = T(0);
    for (int c = 0; c < 4; ++c) eb[4 * r + c] = -1;
  }
  if (count > 0) {
    const H1Pair<T>* pairs = pairs_all + b * pair_stride;
    const DistanceMatrix<T> d{dist + b * N * N, N};
    // Birth edges are distinct, so h1_pair_before is a strict total order and the ranks are a
    // permutation: every kept row is written exactly once.
    for (int64_t p = threadIdx.x; p < count; p += blockDim.x) {
      const H1Pair<T> x = pairs[p];
      int64_t rank = 0;
      for (int64_t q = 0; q < count && rank < K; ++q) rank += h1_pair_before(pairs[q], x) ? 1 : 0;
      if (rank >= K) continue;
      index_t i, j;
      edge_vertices(x.birth_edge, N, &i, &j);
      hb[2 * rank] = x.birth;
      hb[2 * rank + 1] = x.death;
      int64_t* e = eb + 4 * rank;
      e[0] = j;
      e[1] = i;
      if (x.death_triangle >= 0) {
        index_t u, v;
        death_edge(d, x.death_triangle, &u, &v);
        e[2] = u;
        e[3] = v;
      } else {
        e[2] = e[3] = -1;
      }
    }
  }
  if (threadIdx.x == 0) {
    const bool invalid = N > 0 && threshold[b] != threshold[b];
    h1_count[b] = invalid ? kInvalidInputCount : (failed ? kH1OverflowCount : count);
    truncated[b] = !invalid && (failed || count > K);
  }
}

// Clouds per warp of reduce_kernel: 1 while the batch gives at most 16 warps per SM, more (up
// to 32) beyond that, so that huge batches of tiny clouds are not spread over more warps than
// the GPU can hold.
int reduce_clouds_per_warp(int64_t B) {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      sms <= 0) {
    cudaGetLastError();  // clear the error: fall back to a typical SM count
    sms = 100;
  }
  const int64_t warps = (int64_t)sms * 16;
  const int64_t c = (B + warps - 1) / warps;
  return (int)(c < 1 ? 1 : (c > 32 ? 32 : c));
}

unsigned grid_for(int64_t total, int threads) {
  const int64_t blocks = (total + threads - 1) / threads;
  // Grid-stride loops cover the rest; a bounded grid keeps the launch cheap for huge batches.
  return (unsigned)(blocks < 65535 * 16 ? (blocks > 0 ? blocks : 1) : 65535 * 16);
}

// Columns of every cloud by the global passes: flags, compaction, segmented sort, make_columns.
template <typename T>
cudaError_t build_columns_by_passes(const Layout<T>& L, const T* dist, int64_t B, int64_t N,
                                    const index_t* best_parent, const T* threshold, void* w,
                                    cudaStream_t stream) {
  const int64_t BE = B * L.E;
  unsigned char* flags = part<unsigned char>(w, L.flags);
  H1Column<T>* columns = part<H1Column<T>>(w, L.columns);
  T* keys_in = part<T>(w, L.columns);
  int32_t* vals_in = part<int32_t>(w, L.columns + sizeof(T) * BE);
  T* keys_out = part<T>(w, L.keys_out);
  int32_t* vals_out = part<int32_t>(w, L.vals_out);
  int32_t* counts = part<int32_t>(w, L.counts);
  int32_t* seg_begin = part<int32_t>(w, L.seg_begin);
  int32_t* seg_end = part<int32_t>(w, L.seg_end);

  flag_columns_kernel<T><<<grid_for(BE, 256), 256, 0, stream>>>(dist, B, N, best_parent,
                                                                 threshold, flags);
  compact_columns_kernel<T><<<(unsigned)B, kScanThreads, 0, stream>>>(
      dist, N, flags, keys_in, vals_in, counts, seg_begin, seg_end);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  // At most kSortSegments clouds per sort: above CUB's partitioning threshold (500 segments on
  // sm_60 and later, 300 before) DeviceSegmentedSort copies its segment-group sizes to the
  // host and synchronises the stream, which would block the host on every large batch and
  // break CUDA-graph capture. Offsets stay absolute, so each call sorts its clouds in place.
  for (int64_t s0 = 0; s0 < B; s0 += kSortSegments) {
    size_t cub_bytes = L.cub_bytes;
    err = cub::DeviceSegmentedSort::StableSortPairsDescending(
        part<void>(w, L.cub_temp), cub_bytes, keys_in, keys_out, vals_in, vals_out, (int)BE,
        (int)std::min<int64_t>(B - s0, kSortSegments), seg_begin + s0, seg_end + s0, stream);
    if (err != cudaSuccess) return err;
  }

  make_columns_kernel<T><<<grid_for(BE, 256), 256, 0, stream>>>(B, N, keys_out, vals_out,
                                                                 counts, columns);
  return cudaGetLastError();
}

}  // namespace

H1Capacity default_h1_capacity(int64_t n) {
  H1Capacity c;
  // Measured with the CPU engine (which grows its buffers) on Gaussian clouds: at N = 256 the
  // banded coboundary heap peaked between 8192 and 16384 entries, the V arena between 2048 and
  // 4096, and at most 622 columns; the H200 run overflowed the old 8192-entry heaps in 2 of
  // 1024 clouds. So
  // twice the measured peaks: 128N heap entries (~0.8 MB per N = 256 cloud with its V heap).
  c.heap = n * 128 > 8192 ? n * 128 : 8192;
  c.columns = n * 8 > 4096 ? n * 8 : 4096;
  c.arena = n * 64 > 8192 ? n * 64 : 8192;
  return c;
}

size_t vr_workspace_bytes(int64_t B, int64_t N, int maxdim, size_t elem_size,
                          const H1Capacity& cap, bool block_topology, bool warp_reduction) {
  return elem_size == sizeof(float)
             ? Layout<float>(B, N, maxdim, cap, block_topology, warp_reduction).total
             : Layout<double>(B, N, maxdim, cap, block_topology, warp_reduction).total;
}

uint64_t warp_pool_bytes(int64_t B, const H1Capacity& cap, size_t elem_size) {
  // The scalar kernel's per-cloud heaps (entries and int64 V entries) and arena, as one pool.
  const uint64_t entry = elem_size == sizeof(float) ? sizeof(Entry<float>) : sizeof(Entry<double>);
  const uint64_t per_cloud =
      uint64_t(cap.heap) * (entry + sizeof(index_t)) + uint64_t(cap.arena) * sizeof(index_t);
  const uint64_t slices = uint64_t(B) * per_cloud;
  return slices > kMinWarpPoolBytes ? slices : kMinWarpPoolBytes;
}

int64_t vr_max_clouds_per_call(int64_t N) {
  const int64_t E = num_edges(N);
  const int64_t limit = E > 0 ? ((int64_t)0x7fffffff - 1) / E : ((int64_t)1 << 30);
  return limit > 0 ? limit : 1;
}

template <typename T>
cudaError_t launch_vr_persistence(const T* dist, int64_t B, int64_t N, int maxdim, int64_t K,
                                  T* h0, int64_t* h0_edges, T* h1, int64_t* h1_edges,
                                  int64_t* h1_count, bool* truncated, void* workspace,
                                  size_t workspace_bytes, const H1Capacity& cap,
                                  int clouds_per_warp, cudaStream_t stream,
                                  bool block_topology, bool warp_reduction, int reduce_warps) {
  if (B == 0) return cudaSuccess;
  if (reduce_warps < 0 || reduce_warps > 16) return cudaErrorInvalidValue;
  if (N > kMaxPoints) return cudaErrorInvalidValue;  // the kernels' per-thread shares stop there
  if (clouds_per_warp < 0 || clouds_per_warp > 32) return cudaErrorInvalidValue;
  if (B > vr_max_clouds_per_call(N)) return cudaErrorInvalidValue;
  const Layout<T> L(B, N, maxdim, cap, block_topology, warp_reduction);
  if (L.error != cudaSuccess) return L.error;
  if (workspace_bytes < L.total) return cudaErrorInvalidValue;
  void* w = workspace;
  index_t* best_parent = part<index_t>(w, L.best_parent);
  T* threshold = part<T>(w, L.threshold);
  H1Column<T>* columns = part<H1Column<T>>(w, L.columns);
  int32_t* counts = part<int32_t>(w, L.counts);
  // The warp reduction's pool counter, zeroed by the H0 kernel on the way.
  unsigned long long* pool_used =
      L.h1 && warp_reduction ? part<unsigned long long>(w, L.pool_used) : nullptr;
  cudaError_t err;
  if (block_topology) {
    err = launch_topology(dist, B, N, L.h1, h0, h0_edges, best_parent, threshold,
                          L.h1 ? columns : nullptr, counts, part<void>(w, L.topology_scratch),
                          topology_scratch_bytes(B, N, sizeof(T)), stream, pool_used);
  } else {
    err = launch_h0_mst(dist, B, N, h0, h0_edges, best_parent, threshold, part<void>(w, L.mst),
                        stream, pool_used);
  }
  if (err != cudaSuccess) return err;

  if (!L.h1) {
    finalize_kernel<T><<<(unsigned)B, 128, 0, stream>>>(dist, threshold, N, K, nullptr, 0,
                                                        nullptr, nullptr, h1, h1_edges,
                                                        h1_count, truncated);
    return cudaGetLastError();
  }

  if (!block_topology && (err = build_columns_by_passes(L, dist, B, N, best_parent, threshold,
                                                        w, stream)) != cudaSuccess)
    return err;
  ReduceBuffers rb{part<index_t>(w, L.vheap),    part<index_t>(w, L.pivot_keys),
                   part<index_t>(w, L.pivot_slots), part<index_t>(w, L.v_start),
                   part<index_t>(w, L.v_length), part<index_t>(w, L.arena),
                   part<index_t>(w, L.num_pairs), part<int32_t>(w, L.status)};
  H1Pair<T>* pairs = part<H1Pair<T>>(w, L.pairs);
  if (warp_reduction) {
    // The pivot table, stored-column index and pairs are the scalar kernel's buffers (its int64
    // index arrays reread as int32); the arrays grow from the pool.
    const WarpReduceSlices<T> g{part<unsigned char>(w, L.pool), L.pool_bytes, pool_used,
                                part<int64_t>(w, L.pivot_keys), part<int32_t>(w, L.pivot_slots),
                                L.P,                            part<int32_t>(w, L.v_start),
                                part<int32_t>(w, L.v_length),   pairs,
                                L.S + 1,                        rb.status,
                                part<int64_t>(w, L.num_pairs)};
    err = launch_reduce_warp(dist, B, N, threshold, columns, counts, g, stream, reduce_warps);
    if (err != cudaSuccess) return err;
    finalize_kernel<T><<<(unsigned)B, 128, 0, stream>>>(dist, threshold, N, K, pairs, L.S + 1,
                                                        rb.status, rb.num_pairs, h1, h1_edges,
                                                        h1_count, truncated);
    return cudaGetLastError();
  }
  // Small blocks (4 warps) spread the warps over all SMs.
  constexpr int kReduceThreads = 128;
  const int per_warp = clouds_per_warp > 0 ? clouds_per_warp : reduce_clouds_per_warp(B);
  const int64_t thread_warps = (B + per_warp - 1) / per_warp;
  reduce_kernel<T><<<(unsigned)((thread_warps * 32 + kReduceThreads - 1) / kReduceThreads),
                     kReduceThreads, 0, stream>>>(dist, B, N, threshold, columns, counts, cap,
                                                  L.S, L.P, part<Entry<T>>(w, L.heap), pairs,
                                                  rb, per_warp);
  finalize_kernel<T><<<(unsigned)B, 128, 0, stream>>>(dist, threshold, N, K, pairs, L.S + 1,
                                                      rb.status, rb.num_pairs, h1, h1_edges,
                                                      h1_count, truncated);
  return cudaGetLastError();
}

template cudaError_t launch_vr_persistence<float>(const float*, int64_t, int64_t, int, int64_t,
                                                  float*, int64_t*, float*, int64_t*, int64_t*,
                                                  bool*, void*, size_t, const H1Capacity&, int,
                                                  cudaStream_t, bool, bool, int);
template cudaError_t launch_vr_persistence<double>(const double*, int64_t, int64_t, int,
                                                   int64_t, double*, int64_t*, double*,
                                                   int64_t*, int64_t*, bool*, void*, size_t,
                                                   const H1Capacity&, int, cudaStream_t, bool,
                                                   bool, int);

}  // namespace cuda
}  // namespace tsl
