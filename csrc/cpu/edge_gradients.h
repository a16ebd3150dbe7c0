// The backward of vr_persistence from points on the CPU: every reported edge (u, v) with an
// upstream gradient g moves its endpoints along their difference,
//
//   gx_u += T(s * ((x_u - x_v) * m)),   gx_v -= the same,   (s, m) = tsl::edge_scale(g, ...),
//
// edge after edge in the op's order (the h0 rows, then each h1 row's birth and death edge), so
// each coordinate's sum has one fixed order. Two passes, as the CUDA kernel makes them
// (cuda/vr_backward_kernel.cuh): every edge's scale from its canonical length over all of D, then
// the scatter, whose coordinate ranges are independent and can be shared among threads. Both
// passes are vectorised per x86 level in double lanes with the scalar operations' own roundings
// (a length's eight canonical lane sums, a subtract, two products, a conversion, an add and a
// subtract per coordinate), so the builds, the thread count and the split give the same bits.
// One edge at a time in scalar double took ~2.2 us an edge at D = 2048: 0.57 ms of backward for
// one 64-point cloud, 2.5x its forward (benchmarks/README.md, "vr_persistence's backward").
#pragma once

#include <stdint.h>

#include "../core/pairwise_distance.h"
#include "distance_tiles.h"

namespace tsloss {
namespace cpu {

// An edge of the cloud with a nonzero upstream gradient g, rows u != v, and its scale (s = 0:
// it moves nothing after all, a zero-length edge).
struct LiveEdge {
  int64_t u, v;
  double g;
  tsl::EdgeScale scale;
};

// tsl::squared_distance of P edges at once, bit for bit: per edge, lane l of the eight sums
// coordinates k = l (mod 8) in increasing k, a build's lane groups side by side, the coordinates
// past the last whole eight by the scalar loop after them. P edges side by side give P times the
// independent chains: one AVX-512 vector holds all eight lanes, so an edge alone is one chain of
// dependent adds; four side by side summed float64 edges 1.1-1.4x faster (no change for float32
// edges while their conversions to double took four instructions each (widen, distance_tiles.h),
// nor with AVX2, two chains an edge already).
template <typename T, int Bytes, int P>
__attribute__((always_inline)) inline void canonical_squares_body(const T* x, int64_t dim,
                                                                  const LiveEdge* edges,
                                                                  double* squares) {
  using VD = typename Lanes<Bytes>::VD;
  constexpr int L = Lanes<Bytes>::L, G = Lanes<Bytes>::G;
  const T* xu[P];
  const T* xv[P];
  TSL_UNROLL for (int p = 0; p < P; ++p) {
    xu[p] = x + edges[p].u * dim;
    xv[p] = x + edges[p].v * dim;
  }
  VD acc[P][G];
  TSL_UNROLL for (int p = 0; p < P; ++p)
    TSL_UNROLL for (int g = 0; g < G; ++g) acc[p][g] = VD{};
  const int64_t body = dim - dim % kDistanceLanes;
  for (int64_t k = 0; k < body; k += kDistanceLanes)
    TSL_UNROLL for (int p = 0; p < P; ++p)
      TSL_UNROLL for (int g = 0; g < G; ++g) {
        VD a, b;
        load_wide<VD, L>(a, xu[p] + k + g * L);
        load_wide<VD, L>(b, xv[p] + k + g * L);
        const VD t = a - b;
        acc[p][g] += t * t;
      }
  TSL_UNROLL for (int p = 0; p < P; ++p) {
    double lanes[kDistanceLanes];
    TSL_UNROLL for (int g = 0; g < G; ++g) store(lanes + g * L, acc[p][g]);
    for (int64_t k = body; k < dim; ++k) {
      const double t = static_cast<double>(xu[p][k]) - static_cast<double>(xv[p][k]);
      lanes[k % kDistanceLanes] += t * t;
    }
    squares[p] = tsl::lane_tree(lanes);
  }
}

// Every edge's canonical square, P at a time: four chains of adds in flight in every build.
template <typename T, int Bytes>
__attribute__((always_inline)) inline void edge_squares_body(const T* x, int64_t dim,
                                                             const LiveEdge* edges,
                                                             int64_t count, double* squares) {
  constexpr int P = 4 / Lanes<Bytes>::G > 0 ? 4 / Lanes<Bytes>::G : 1;
  int64_t r = 0;
  for (; r + P <= count; r += P)
    canonical_squares_body<T, Bytes, P>(x, dim, edges + r, squares + r);
  for (; r < count; ++r) canonical_squares_body<T, Bytes, 1>(x, dim, edges + r, squares + r);
}

// Coordinates [k0, k1) of every live edge's steps, in the edges' order, into g: row r's
// coordinate k at g[r * gs + k - k0] (the gradient itself, or a task's own block of it). Vex:
// false for the baseline build, whose float32 steps are 256 bits in SSE register pairs (widen).
template <typename T, int Bytes, bool Vex = true>
__attribute__((always_inline)) inline void scatter_edges_body(const T* x, int64_t dim,
                                                              const LiveEdge* edges,
                                                              int64_t count, int64_t k0,
                                                              int64_t k1, T* g, int64_t gs) {
  using VD = typename Vec<double, Bytes>::type;
  constexpr int L = Vec<double, Bytes>::lanes;
  using VT = typename Vec<T, L * int(sizeof(T))>::type;
  const int64_t w = k1 - k0;
  for (int64_t r = 0; r < count; ++r) {
    const LiveEdge& e = edges[r];
    const T* xu = x + e.u * dim + k0;
    const T* xv = x + e.v * dim + k0;
    T* gu = g + e.u * gs;
    T* gv = g + e.v * gs;
    const double s = e.scale.s, m = e.scale.m;
    const VD sv = s - VD{}, mv = m - VD{};  // broadcasts (s - 0 is s)
    int64_t k = 0;
    for (; k + L <= w; k += L) {
      VD a, b;
      load_wide<VD, L, T, Vex>(a, xu + k);
      load_wide<VD, L, T, Vex>(b, xv + k);
      const VT step = __builtin_convertvector(sv * ((a - b) * mv), VT);
      VT p, q;
      load(p, gu + k);
      load(q, gv + k);
      p += step;
      q -= step;
      store(gu + k, p);
      store(gv + k, q);
    }
    for (; k < w; ++k) {
      const T step = static_cast<T>(
          s * ((static_cast<double>(xu[k]) - static_cast<double>(xv[k])) * m));
      gu[k] += step;
      gv[k] -= step;
    }
  }
}

#ifdef TSL_X86_LEVELS
template <typename T>
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void edge_squares_v4(
    const T* x, int64_t dim, const LiveEdge* edges, int64_t count, double* squares) {
  edge_squares_body<T, 64>(x, dim, edges, count, squares);
}
template <typename T>
__attribute__((target("avx2,fma"))) void edge_squares_v3(const T* x, int64_t dim,
                                                        const LiveEdge* edges, int64_t count,
                                                        double* squares) {
  edge_squares_body<T, 32>(x, dim, edges, count, squares);
}
template <typename T>
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void scatter_edges_v4(
    const T* x, int64_t dim, const LiveEdge* edges, int64_t count, int64_t k0, int64_t k1,
    T* g, int64_t gs) {
  scatter_edges_body<T, 64>(x, dim, edges, count, k0, k1, g, gs);
}
template <typename T>
__attribute__((target("avx2,fma"))) void scatter_edges_v3(const T* x, int64_t dim,
                                                         const LiveEdge* edges, int64_t count,
                                                         int64_t k0, int64_t k1, T* g,
                                                         int64_t gs) {
  scatter_edges_body<T, 32>(x, dim, edges, count, k0, k1, g, gs);
}
#endif

// squares[r] = tsl::squared_distance(x_u, x_v, dim) of edges[r], r < count.
template <typename T>
void edge_squares(const T* x, int64_t dim, const LiveEdge* edges, int64_t count,
                  double* squares) {
#ifdef TSL_X86_LEVELS
  if (x86_level() == 4) return edge_squares_v4<T>(x, dim, edges, count, squares);
  if (x86_level() == 3) return edge_squares_v3<T>(x, dim, edges, count, squares);
#endif
  edge_squares_body<T, 16>(x, dim, edges, count, squares);
}

// Coordinates [k0, k1) of the steps of edges[r], r < count, of one cloud x (n, dim) added into
// g (row r's coordinate k at g[r * gs + k - k0]). A thread sharing a cloud's coordinates with
// others adds into a block of its own and copies it out once: adding into its columns of the
// shared rows, two threads ran 1.6x slower than one (rows 3 KB long, at (256, 768): the lines
// near the split went back and forth between the cores).
template <typename T>
void scatter_edges(const T* x, int64_t dim, const LiveEdge* edges, int64_t count, int64_t k0,
                   int64_t k1, T* g, int64_t gs) {
#ifdef TSL_X86_LEVELS
  if (x86_level() == 4) return scatter_edges_v4<T>(x, dim, edges, count, k0, k1, g, gs);
  if (x86_level() == 3) return scatter_edges_v3<T>(x, dim, edges, count, k0, k1, g, gs);
#endif
  // Four floats a step (two SSE registers of doubles converted into one of floats): two a
  // step, through 8-byte vectors, ran 1.3x slower. Doubles two a step, as the registers hold.
  scatter_edges_body<T, sizeof(T) == 4 ? 32 : 16, false>(x, dim, edges, count, k0, k1, g, gs);
}

// edges[r].scale = tsl::edge_scale(g, x_u, x_v, dim) for r in [r0, r1), the lengths summed by
// edge_squares (independent edges: ranges may run on several threads).
template <typename T>
void edge_scales(const T* x, int64_t dim, LiveEdge* edges, int64_t r0, int64_t r1) {
  constexpr int64_t kGroup = 64;
  double squares[kGroup];
  for (int64_t r = r0; r < r1; r += kGroup) {
    const int64_t count = r1 - r < kGroup ? r1 - r : kGroup;
    edge_squares(x, dim, edges + r, count, squares);
    for (int64_t q = 0; q < count; ++q) {
      LiveEdge& e = edges[r + q];
      const T* xu = x + e.u * dim;
      const T* xv = x + e.v * dim;
      const double len = tsl::distance_from_square(squares[q], xu, xv, dim);
      e.scale = tsl::edge_scale_of_length(e.g, len, xu, xv, dim);
    }
  }
}

}  // namespace cpu
}  // namespace tsloss
