// vr_persistence's backward kernel (launched from backward.cu), in a header of its own so that
// csrc/native_tests/test_cuda_host.cpp runs this very code on the host, each CUDA thread a fiber
// (native_tests/cuda_host.h), against the CPU op's (cpu/edge_gradients.h). It includes no CUDA
// header: nvcc provides the intrinsics, the host test a shim of them.
//
// One block per cloud and no atomics: with points, every edge's scale g/|x_u - x_v| is computed
// in parallel, then each thread owns one coordinate k and adds the edges' contributions to
// grad[:, k] in the CPU's order (h0 rows, then h1 birth/death), so the float sums are the CPU's
// bit for bit. With distances an entry may be hit by several edges; one thread per cloud adds
// them in that same order (there are only N-1+2K of them).
#pragma once

#include <stdint.h>

#include "../core/edge_incidence.h"
#include "../core/pairwise_distance.h"

namespace tsl {
namespace cuda {
namespace vr_backward {

constexpr int kThreads = 256;

// Reported edge r of a cloud (h0 rows first, then per h1 row its birth and death edge), read
// through edge_endpoints as the CPU op and the TSLoss kernels read them.
struct EdgeRef {
  int64_t u, v;
  int64_t gi;  // flat index of its gradient in grad_h0 (gi >= 0) or grad_h1 (-1 - gi)
};

__device__ __forceinline__ EdgeRef edge_ref(int64_t b, int64_t r, const int64_t* h0_edges,
                                            int64_t H0, const int64_t* h1_edges, int64_t K) {
  const int64_t q = r < H0 ? -1 : (r - H0) / 2;  // the h1 row, for an h1 edge
  const int side = r < H0 ? 0 : int((r - H0) % 2);
  const EdgeEnds p =
      edge_endpoints(r < H0 ? r : H0 + q, side, H0, h0_edges + b * H0 * 2, h1_edges + b * K * 4);
  return EdgeRef{p.u, p.v, r < H0 ? (b * H0 + r) * 2 + 1 : -1 - ((b * K + q) * 2 + side)};
}

// An edge the gradient flows through: both endpoints points of the cloud (a negative one marks a
// padding row; one >= N, which the CPU op refuses, would index outside it) and distinct.
__device__ __forceinline__ bool live_edge(const EdgeRef& e, int64_t N) {
  return e.u >= 0 && e.v >= 0 && e.u < N && e.v < N && e.u != e.v;
}

template <typename T>
__device__ __forceinline__ T edge_grad(const EdgeRef& e, const T* g0, const T* g1) {
  return e.gi >= 0 ? g0[e.gi] : g1[-1 - e.gi];
}

template <typename T>
__global__ void vr_backward_kernel(const T* __restrict__ g0, const T* __restrict__ g1,
                                   const T* __restrict__ x, int64_t N, int64_t D,
                                   const int64_t* __restrict__ h0_edges, int64_t H0,
                                   const int64_t* __restrict__ h1_edges, int64_t K,
                                   bool distances, T* __restrict__ grad,
                                   tsl::EdgeScale* __restrict__ scale_all) {
  const int64_t b = blockIdx.x;
  const int64_t R = H0 + 2 * K;
  if (distances) {
    if (threadIdx.x != 0) return;
    T* gb = grad + b * N * N;
    for (int64_t r = 0; r < R; ++r) {
      const EdgeRef e = edge_ref(b, r, h0_edges, H0, h1_edges, K);
      const T g = edge_grad(e, g0, g1);
      if (g == T(0) || !live_edge(e, N)) continue;
      const int64_t hi = e.u > e.v ? e.u : e.v, lo = e.u > e.v ? e.v : e.u;
      gb[lo * N + hi] += g;
    }
    return;
  }
  const T* xb = x + b * N * D;
  T* gb = grad + b * N * D;
  tsl::EdgeScale* scale = scale_all + b * R;
  for (int64_t r = threadIdx.x; r < R; r += blockDim.x) {
    const EdgeRef e = edge_ref(b, r, h0_edges, H0, h1_edges, K);
    const T g = edge_grad(e, g0, g1);
    tsl::EdgeScale s{0.0, 1.0};  // s = 0: the edge contributes nothing (same skips as the CPU)
    if (g != T(0) && live_edge(e, N)) {
      const T* xu = xb + e.u * D;
      const T* xv = xb + e.v * D;
      // The canonical order (eight lane sums, a fixed tree), as the CPU's edge_scales: a single
      // running sum rounds differently from D = 4 on.
      s = tsl::edge_scale((double)g, xu, xv, D);
    }
    scale[r] = s;
  }
  __syncthreads();
  for (int64_t k = threadIdx.x; k < D; k += blockDim.x) {
    for (int64_t r = 0; r < R; ++r) {
      const tsl::EdgeScale s = scale[r];
      if (s.s == 0.0) continue;
      const EdgeRef e = edge_ref(b, r, h0_edges, H0, h1_edges, K);
      // __dmul_rn: for T = double the cast is a no-op and nvcc would fuse the product into
      // the += below (one rounding instead of the CPU's two).
      const double diff = __dmul_rn((double)xb[e.u * D + k] - (double)xb[e.v * D + k], s.m);
      const T step = (T)__dmul_rn(s.s, diff);
      gb[e.u * D + k] += step;
      gb[e.v * D + k] -= step;
    }
  }
}

}  // namespace vr_backward
}  // namespace cuda
}  // namespace tsl
