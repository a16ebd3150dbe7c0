// H0 by Prim's algorithm, one block per cloud (a single warp when N <= 32).
//
// Each thread owns up to kPerThread vertices and keeps their best connection in registers; a
// step relaxes against the newest tree vertex's row (coalesced) and a block-wide argmin under
// tsl::prim_better picks the next vertex. The order is strict and total, so the tree, and every
// reported edge, equals the CPU's. The bars are then placed by rank under tsl::mst_edge_before
// (each edge counts the edges before it), which needs no sort scratch and no atomics.
#include <cuda_runtime.h>

#include "../core/h0_mst.h"
#include "kernels.h"

namespace tsl {
namespace cuda {
namespace {

constexpr int kMaxThreads = 1024;
constexpr int kPerThread = (int)((kMaxPoints + kMaxThreads - 1) / kMaxThreads);
constexpr int kMaxWarps = kMaxThreads / 32;

template <typename T>
struct Candidate {
  T d;
  index_t idx;  // edge index; -1: none
  int v;        // vertex
};

template <typename T>
__device__ __forceinline__ Candidate<T> better_of(const Candidate<T>& a, const Candidate<T>& b) {
  if (b.idx < 0) return a;
  if (a.idx < 0) return b;
  return prim_better(b.d, b.idx, a.d, a.idx) ? b : a;
}

template <typename T>
__device__ __forceinline__ Candidate<T> warp_argmin(Candidate<T> c) {
  for (int off = 16; off > 0; off >>= 1) {
    Candidate<T> o;
    o.d = __shfl_down_sync(0xffffffffu, c.d, off);
    o.idx = __shfl_down_sync(0xffffffffu, c.idx, off);
    o.v = __shfl_down_sync(0xffffffffu, c.v, off);
    c = better_of(c, o);
  }
  return c;
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads) h0_mst_kernel(const T* __restrict__ dist, int64_t N, T* __restrict__ h0,
                              int64_t* __restrict__ h0_edges, int64_t* __restrict__ best_parent,
                              T* __restrict__ threshold, MstEdge<T>* __restrict__ mst_all,
                              unsigned long long* __restrict__ clear) {
  __shared__ Candidate<T> s_warp[kMaxWarps];
  __shared__ Candidate<T> s_next;
  __shared__ T s_radius[kMaxWarps];

  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (clear != nullptr && b == 0 && tid == 0) *clear = 0;
  const int nthreads = blockDim.x, nwarps = (nthreads + 31) >> 5;
  const T* d = dist + b * N * N;
  MstEdge<T>* mst = mst_all + b * N;
  const int n = (int)N;

  T best_d[kPerThread];
  index_t parent[kPerThread];
  bool in_tree[kPerThread];
#pragma unroll
  for (int s = 0; s < kPerThread; ++s) {
    best_d[s] = T(0);
    parent[s] = -1;
    in_tree[s] = (tid + s * nthreads) == 0;
  }

  // Enclosing radius min_v max_u d(u, v): column maxima equal row maxima (d is symmetric)
  // and are read coalesced across the block. A non-finite distance (NaN, or +-Inf from an
  // overflow or the user's matrix) makes it NaN, and a NaN radius makes no H1 column
  // (flag_columns_kernel keeps de <= radius): the reduction never runs on an order NaN breaks,
  // and finalize_kernel reports the cloud invalid (h1_count = kInvalidInputCount).
  {
    T r = T(0);
    bool have = false, nan = false;
#pragma unroll
    for (int s = 0; s < kPerThread; ++s) {
      const int v = tid + s * nthreads;
      if (v >= n) continue;
      T m = T(0);
      for (int u = 0; u < n; ++u) {
        const T x = d[(int64_t)u * N + v];
        m = x > m ? x : m;
        nan |= !is_finite(x);
      }
      r = (!have || m < r) ? m : r;
      have = true;
    }
    if (!have) r = T(INFINITY);  // threads without a vertex must never win the min
    for (int off = 16; off > 0; off >>= 1) {
      const T o = __shfl_down_sync(0xffffffffu, r, off);
      r = o < r ? o : r;
    }
    nan = __syncthreads_or(nan);
    if (lane == 0) s_radius[warp] = r;
    __syncthreads();
    if (tid == 0) {
      T m = s_radius[0];
      for (int w = 1; w < nwarps; ++w) m = s_radius[w] < m ? s_radius[w] : m;
      threshold[b] = n > 0 ? (nan ? T(NAN) : m) : T(0);
    }
  }

  int current = 0;
  for (int step = 0; step + 1 < n; ++step) {
    const T* row = d + (int64_t)current * N;
    Candidate<T> mine{T(0), -1, -1};
#pragma unroll
    for (int s = 0; s < kPerThread; ++s) {
      const int v = tid + s * nthreads;
      if (v >= n || in_tree[s]) continue;
      const T dv = row[v];
      const index_t iv = edge_index(current, v);
      index_t bi = parent[s] < 0 ? -1 : edge_index(parent[s], v);
      if (prim_better(dv, iv, best_d[s], bi)) {
        best_d[s] = dv;
        parent[s] = current;
        bi = iv;
      }
      mine = better_of(mine, Candidate<T>{best_d[s], bi, v});
    }
    mine = warp_argmin(mine);
    if (lane == 0) s_warp[warp] = mine;
    __syncthreads();
    if (warp == 0) {
      Candidate<T> c = lane < nwarps ? s_warp[lane] : Candidate<T>{T(0), -1, -1};
      c = warp_argmin(c);
      if (lane == 0) s_next = c;
    }
    __syncthreads();
    const Candidate<T> next = s_next;
    // The owner of the new tree vertex records the edge; slot `step` keeps Prim's order.
    if (next.v % nthreads == tid) {
      const int s = next.v / nthreads;
#pragma unroll
      for (int t = 0; t < kPerThread; ++t) {
        if (t == s) {
          in_tree[t] = true;
          const index_t p = parent[t];
          mst[step] = MstEdge<T>{next.d, p < next.v ? p : next.v, p < next.v ? next.v : p};
        }
      }
    }
    current = next.v;
  }

#pragma unroll
  for (int s = 0; s < kPerThread; ++s) {
    const int v = tid + s * nthreads;
    if (v < n) best_parent[b * N + v] = parent[s];
  }
  __syncthreads();  // mst[] complete and visible to the whole block

  const int64_t H0 = N > 0 ? N - 1 : 0;
  for (int r = tid; r < (int)H0; r += nthreads) {
    const MstEdge<T> e = mst[r];
    int64_t rank = 0;
    for (int q = 0; q < (int)H0; ++q) rank += mst_edge_before(mst[q], e) ? 1 : 0;
    T* o = h0 + (b * H0 + rank) * 2;
    o[0] = T(0);
    o[1] = e.diameter;
    int64_t* oe = h0_edges + (b * H0 + rank) * 2;
    oe[0] = e.u;
    oe[1] = e.v;
  }
}

}  // namespace

template <typename T>
cudaError_t launch_h0_mst(const T* dist, int64_t B, int64_t N, T* h0, int64_t* h0_edges,
                          int64_t* best_parent, T* threshold, void* mst_scratch,
                          cudaStream_t stream, unsigned long long* clear) {
  if (B == 0 || N == 0) return cudaSuccess;
  if (N > kMaxPoints) return cudaErrorInvalidValue;  // each thread visits kPerThread vertices
  int threads = (int)((N + 31) / 32 * 32);
  threads = threads < 32 ? 32 : (threads > kMaxThreads ? kMaxThreads : threads);
  // One block per cloud; gridDim.x allows 2^31 - 1 blocks.
  h0_mst_kernel<T><<<(unsigned)B, threads, 0, stream>>>(
      dist, N, h0, h0_edges, best_parent, threshold, static_cast<MstEdge<T>*>(mst_scratch),
      clear);
  return cudaGetLastError();
}

template cudaError_t launch_h0_mst<float>(const float*, int64_t, int64_t, float*, int64_t*,
                                          int64_t*, float*, void*, cudaStream_t,
                                          unsigned long long*);
template cudaError_t launch_h0_mst<double>(const double*, int64_t, int64_t, double*, int64_t*,
                                           int64_t*, double*, void*, cudaStream_t,
                                           unsigned long long*);

}  // namespace cuda
}  // namespace tsl
