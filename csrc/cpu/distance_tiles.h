// Squared Euclidean distances of one cloud on the CPU, register-tiled and vectorised, and the
// matching backward.
//
// Torch-free, so the native tests check it against the plain double loop of
// core/pairwise_distance.h. The difference form (no Gram-matrix cancellation) is kept; speed
// comes from register tiles of point pairs that reuse every loaded vector (4 x 4 over L1-sized
// coordinate chunks for clouds of up to 256 points, 4 x 2 row blocks beyond), and from a build
// per x86 level picked at load time. float32 coordinates are widened to double in
// registers and everything is summed in double, so a float32 distance is the correctly rounded
// value in all but ~1e-9 of cases: the same matrix ripser.py builds from the same points, on
// every CPU. Only float64 sums outside [SafeRange::low, SafeRange::high], where squares may have
// under- or overflowed, need the caller's scaled recomputation.
#pragma once

#include <stdint.h>
#include <string.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "../core/x86_level.h"

namespace tsloss {
namespace cpu {

template <typename T>
struct SafeRange {  // float32 input, summed in double: no square can under- or overflow
  static constexpr double low = 0.0, high = INFINITY;
};
template <>
struct SafeRange<double> {
  static constexpr double low = 1e-290, high = 1e290;
};

// Portable vector types (GCC/Clang extensions): the compiler lowers them to the widest
// registers the clone's target has, or to pairs of narrower ones.
template <typename T, int Bytes>
struct Vec {
  typedef T type __attribute__((vector_size(Bytes)));
  static constexpr int lanes = Bytes / sizeof(T);
};

// By reference, never by value: vector values crossing a call boundary would change the ABI
// between the clones.
template <typename V>
__attribute__((always_inline)) inline void load(V& v, const void* p) {
  memcpy(&v, p, sizeof(V));
}

template <typename V>
__attribute__((always_inline)) inline double lane_sum(const V& v) {
  constexpr int n = sizeof(V) / sizeof(v[0]);
  double s = 0.0;
  for (int l = 0; l < n; ++l) s += static_cast<double>(v[l]);
  return s;
}

// Loads L coordinates as double lanes: float rows are loaded at half the width and widened
// exactly.
template <typename VD, int L, typename T>
__attribute__((always_inline)) inline void load_wide(VD& v, const T* p) {
  using VT = typename Vec<T, L * int(sizeof(T))>::type;
  VT t;
  load(t, p);
  v = __builtin_convertvector(t, VD);
}

// out[a * TJ + b] = |xi[a] - xj[b]|^2 for TI x TJ rows of length dim, in double lanes of Bytes.
// The xi rows are already double (widened once per row block); the xj rows are widened here.
template <typename T, int Bytes, int TI, int TJ>
__attribute__((always_inline)) inline void squared_distance_tile(const double* const* xi,
                                                                 const T* const* xj,
                                                                 int64_t dim, double* out) {
  using VD = typename Vec<double, Bytes>::type;
  constexpr int L = Vec<double, Bytes>::lanes;
  VD acc[TI][TJ];
  for (int a = 0; a < TI; ++a)
    for (int b = 0; b < TJ; ++b) acc[a][b] = VD{};
  const int64_t body = dim - dim % L;
  for (int64_t k = 0; k < body; k += L) {
    VD u[TI], w[TJ];
    for (int a = 0; a < TI; ++a) load(u[a], xi[a] + k);
    for (int b = 0; b < TJ; ++b) load_wide<VD, L>(w[b], xj[b] + k);
    for (int a = 0; a < TI; ++a)
      for (int b = 0; b < TJ; ++b) {
        const VD t = u[a] - w[b];
        acc[a][b] += t * t;
      }
  }
  for (int a = 0; a < TI; ++a)
    for (int b = 0; b < TJ; ++b) {
      double tail = 0.0;
      for (int64_t r = body; r < dim; ++r) {
        const double t = xi[a][r] - static_cast<double>(xj[b][r]);
        tail += t * t;
      }
      out[a * TJ + b] = lane_sum(acc[a][b]) + tail;
    }
}

// out[p] = |xa[p] - xb[p]|^2 for P separate pairs: independent accumulators, so the pairs
// inside a row block do not wait on one dependency chain each.
template <typename T, int Bytes, int P>
__attribute__((always_inline)) inline void squared_distance_pairs(const double* const* xa,
                                                                  const T* const* xb,
                                                                  int64_t dim, double* out) {
  using VD = typename Vec<double, Bytes>::type;
  constexpr int L = Vec<double, Bytes>::lanes;
  VD acc[P];
  for (int p = 0; p < P; ++p) acc[p] = VD{};
  const int64_t body = dim - dim % L;
  for (int64_t k = 0; k < body; k += L)
    for (int p = 0; p < P; ++p) {
      VD u, w;
      load(u, xa[p] + k);
      load_wide<VD, L>(w, xb[p] + k);
      const VD t = u - w;
      acc[p] += t * t;
    }
  for (int p = 0; p < P; ++p) {
    double tail = 0.0;
    for (int64_t r = body; r < dim; ++r) {
      const double t = xa[p][r] - static_cast<double>(xb[p][r]);
      tail += t * t;
    }
    out[p] = lane_sum(acc[p]) + tail;
  }
}

// Row `row` of x as double: itself for float64, else widened into buf.
template <typename T>
inline const double* wide_row(const T* row, int64_t dim, double* buf) {
  if constexpr (std::is_same<T, double>::value) {
    return row;
  } else {
    for (int64_t k = 0; k < dim; ++k) buf[k] = static_cast<double>(row[k]);
    return buf;
  }
}

// Squared distances of rows [i0, i1) of one cloud x (n, dim) to every earlier row (and to each
// other): sq[(i - i0) * n + j] for i0 <= i < i1 and j < i. `wide` is scratch for 4 * dim doubles.
template <typename T, int Bytes>
__attribute__((always_inline)) inline void lower_rows_body(const T* x, int64_t n, int64_t dim,
                                                           int64_t i0, int64_t i1, double* sq,
                                                           double* wide) {
  constexpr int TI = 4, TJ = 2;
  int64_t i = i0;
  for (; i + TI <= i1; i += TI) {
    const double* xi[TI];
    for (int a = 0; a < TI; ++a) xi[a] = wide_row(x + (i + a) * dim, dim, wide + a * dim);
    double tile[TI * TJ];
    int64_t j = 0;
    for (; j + TJ <= i; j += TJ) {
      const T* xj[TJ] = {x + j * dim, x + (j + 1) * dim};
      squared_distance_tile<T, Bytes, TI, TJ>(xi, xj, dim, tile);
      for (int a = 0; a < TI; ++a)
        for (int b = 0; b < TJ; ++b) sq[(i - i0 + a) * n + j + b] = tile[a * TJ + b];
    }
    for (; j < i; ++j) {
      const T* xj[1] = {x + j * dim};
      squared_distance_tile<T, Bytes, TI, 1>(xi, xj, dim, tile);
      for (int a = 0; a < TI; ++a) sq[(i - i0 + a) * n + j] = tile[a];
    }
    // The six pairs inside the block, side by side.
    const double* pa[6] = {xi[1], xi[2], xi[2], xi[3], xi[3], xi[3]};
    const T* pb[6] = {x + i * dim,       x + i * dim,       x + (i + 1) * dim,
                      x + i * dim,       x + (i + 1) * dim, x + (i + 2) * dim};
    double inner[6];
    squared_distance_pairs<T, Bytes, 6>(pa, pb, dim, inner);
    const int ia[6] = {1, 2, 2, 3, 3, 3}, ib[6] = {0, 0, 1, 0, 1, 2};
    for (int p = 0; p < 6; ++p) sq[(i - i0 + ia[p]) * n + i + ib[p]] = inner[p];
  }
  for (; i < i1; ++i) {
    const double* xi[1] = {wide_row(x + i * dim, dim, wide)};
    int64_t j = 0;
    double tile[4];
    for (; j + 4 <= i; j += 4) {
      const T* xj[4] = {x + j * dim, x + (j + 1) * dim, x + (j + 2) * dim, x + (j + 3) * dim};
      squared_distance_tile<T, Bytes, 1, 4>(xi, xj, dim, tile);
      for (int b = 0; b < 4; ++b) sq[(i - i0) * n + j + b] = tile[b];
    }
    for (; j < i; ++j) {
      const T* xj[1] = {x + j * dim};
      squared_distance_tile<T, Bytes, 1, 1>(xi, xj, dim, &sq[(i - i0) * n + j]);
    }
  }
}

// The whole-cloud kernel works through the coordinates in chunks of kChunk: the chunk of every
// row, widened to double, stays in L1 while all 4 x 4 tiles of row pairs run over it, and each
// tile's lane sums carry over to the next chunk in `part`. Without chunks a tile streams its
// eight full rows from L2 (128 KB at D = 2048), and that, not the FMAs, set the pace.
constexpr int64_t kChunk = 128;

// Doubles of scratch for lower_cloud_body: the chunk of n rows (padded to 4), then the carried
// lane sums of every tile (16 per off-diagonal tile, 6 per diagonal block) at the widest width.
inline int64_t lower_cloud_scratch(int64_t n) {
  const int64_t blocks = (n + 3) / 4;
  return blocks * 4 * kChunk + (16 * blocks * (blocks - 1) / 2 + 6 * blocks) * 8;
}

// Squared distances of all pairs j < i of one cloud x (n, dim), into sq[i * n + j], through
// scratch of lower_cloud_scratch(n) doubles. Rows past n and coordinates past dim are zero in the
// chunk, so they add exact zeros and every tile has full shape.
template <typename T, int Bytes>
__attribute__((always_inline)) inline void lower_cloud_body(const T* x, int64_t n, int64_t dim,
                                                            double* sq, double* scratch) {
  using VD = typename Vec<double, Bytes>::type;
  constexpr int L = Vec<double, Bytes>::lanes;
  const int64_t blocks = (n + 3) / 4;
  double* chunk = scratch;
  double* part = scratch + blocks * 4 * kChunk;
  const int64_t carried = (16 * blocks * (blocks - 1) / 2 + 6 * blocks) * L;
  for (int64_t v = 0; v < carried; ++v) part[v] = 0.0;
  const int ia[6] = {1, 2, 2, 3, 3, 3}, ib[6] = {0, 0, 1, 0, 1, 2};
  for (int64_t k0 = 0; k0 < dim; k0 += kChunk) {
    const int64_t kc = dim - k0 < kChunk ? dim - k0 : kChunk;
    const int64_t steps = (kc + L - 1) / L;
    for (int64_t r = 0; r < blocks * 4; ++r) {
      double* row = chunk + r * kChunk;
      int64_t k = 0;
      if (r < n) {
        const T* src = x + r * dim + k0;
        for (; k < kc; ++k) row[k] = static_cast<double>(src[k]);
        // The next chunk of this row, requested while the tiles run over this one.
        if (k0 + kChunk < dim)
          for (int64_t q = 0; q < kChunk; q += 64 / int64_t(sizeof(T)))
            __builtin_prefetch(src + kChunk + q);
      }
      for (; k < steps * L; ++k) row[k] = 0.0;
    }
    double* carry = part;
    for (int64_t bi = 0; bi < blocks; ++bi) {
      const double* xi = chunk + bi * 4 * kChunk;
      for (int64_t bj = 0; bj < bi; ++bj, carry += 16 * L) {
        const double* xj = chunk + bj * 4 * kChunk;
        VD acc[4][4];
        for (int a = 0; a < 4; ++a)
          for (int b = 0; b < 4; ++b) load(acc[a][b], carry + (a * 4 + b) * L);
        for (int64_t s = 0; s < steps; ++s) {
          VD u[4], w[4];
          for (int a = 0; a < 4; ++a) load(u[a], xi + a * kChunk + s * L);
          for (int b = 0; b < 4; ++b) load(w[b], xj + b * kChunk + s * L);
          for (int a = 0; a < 4; ++a)
            for (int b = 0; b < 4; ++b) {
              const VD t = u[a] - w[b];
              acc[a][b] += t * t;
            }
        }
        for (int a = 0; a < 4; ++a)
          for (int b = 0; b < 4; ++b) memcpy(carry + (a * 4 + b) * L, &acc[a][b], sizeof(VD));
      }
      // The six pairs inside the block, side by side.
      VD acc[6];
      for (int p = 0; p < 6; ++p) load(acc[p], carry + p * L);
      for (int64_t s = 0; s < steps; ++s) {
        VD u[4];
        for (int a = 0; a < 4; ++a) load(u[a], xi + a * kChunk + s * L);
        for (int p = 0; p < 6; ++p) {
          const VD t = u[ia[p]] - u[ib[p]];
          acc[p] += t * t;
        }
      }
      for (int p = 0; p < 6; ++p) memcpy(carry + p * L, &acc[p], sizeof(VD));
      carry += 6 * L;
    }
  }
  const double* carry = part;
  for (int64_t bi = 0; bi < blocks; ++bi) {
    for (int64_t bj = 0; bj < bi; ++bj, carry += 16 * L)
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) {
          VD v;
          load(v, carry + (a * 4 + b) * L);
          if (bi * 4 + a < n) sq[(bi * 4 + a) * n + bj * 4 + b] = lane_sum(v);
        }
    for (int p = 0; p < 6; ++p) {
      VD v;
      load(v, carry + p * L);
      if (bi * 4 + ia[p] < n) sq[(bi * 4 + ia[p]) * n + bi * 4 + ib[p]] = lane_sum(v);
    }
    carry += 6 * L;
  }
}

// Backward of the distances for rows [i0, i1) (at most kTileRows) of one cloud:
// gx[i] = sum_j w[i][j] (x_i - x_j), w given per row (w[(i - i0) * n + j]). The difference form
// keeps the digits a Gram-like rowsum(w) x_i - (w x)_i would cancel for clouds far from the
// origin; four rows share every loaded x_j.
constexpr int kTileRows = 4;

template <typename T, int Bytes, int VPR>
__attribute__((always_inline)) inline void distance_grad_rows_body(const T* x, int64_t n,
                                                                   int64_t dim, int64_t i0,
                                                                   int64_t i1, const T* w,
                                                                   T* gx) {
  using V = typename Vec<T, Bytes>::type;
  constexpr int L = Vec<T, Bytes>::lanes;
  constexpr int64_t C = VPR * L;  // coordinates per register tile
  const int64_t rows = i1 - i0;
  const int64_t body = dim - dim % C;
  for (int64_t k = 0; k < body; k += C) {
    V xi[kTileRows][VPR], acc[kTileRows][VPR];
    for (int a = 0; a < kTileRows; ++a)
      for (int v = 0; v < VPR; ++v) {
        load(xi[a][v], x + (i0 + (a < rows ? a : 0)) * dim + k + v * L);
        acc[a][v] = V{};
      }
    for (int64_t j = 0; j < n; ++j) {
      V xj[VPR];
      for (int v = 0; v < VPR; ++v) load(xj[v], x + j * dim + k + v * L);
      for (int a = 0; a < kTileRows; ++a) {
        const T wj = a < rows ? w[a * n + j] : T(0);
        for (int v = 0; v < VPR; ++v) acc[a][v] += wj * (xi[a][v] - xj[v]);
      }
    }
    for (int a = 0; a < rows; ++a)
      for (int v = 0; v < VPR; ++v) memcpy(gx + (i0 + a) * dim + k + v * L, &acc[a][v], sizeof(V));
  }
  for (int64_t a = 0; a < rows; ++a) {
    const T* xa = x + (i0 + a) * dim;
    for (int64_t k = body; k < dim; ++k) {
      T s = T(0);
      for (int64_t j = 0; j < n; ++j) s += w[a * n + j] * (xa[k] - x[j * dim + k]);
      gx[(i0 + a) * dim + k] = s;
    }
  }
}

#ifdef TSL_X86_LEVELS
// AVX-512 and AVX2+FMA builds of the same body (feature lists rather than x86-64-v4/v3 names,
// which older compilers lack); the baseline build below serves every other CPU.
template <typename T>
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void lower_rows_v4(
    const T* x, int64_t n, int64_t dim, int64_t i0, int64_t i1, double* sq, double* wide) {
  lower_rows_body<T, 64>(x, n, dim, i0, i1, sq, wide);
}
template <typename T>
__attribute__((target("avx2,fma"))) void lower_rows_v3(const T* x, int64_t n, int64_t dim,
                                                      int64_t i0, int64_t i1, double* sq,
                                                      double* wide) {
  lower_rows_body<T, 32>(x, n, dim, i0, i1, sq, wide);
}

template <typename T>
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void lower_cloud_v4(const T* x, int64_t n,
                                                                          int64_t dim, double* sq,
                                                                          double* scratch) {
  lower_cloud_body<T, 64>(x, n, dim, sq, scratch);
}
template <typename T>
__attribute__((target("avx2,fma"))) void lower_cloud_v3(const T* x, int64_t n, int64_t dim,
                                                       double* sq, double* scratch) {
  lower_cloud_body<T, 32>(x, n, dim, sq, scratch);
}

template <typename T>
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void grad_rows_v4(const T* x, int64_t n, int64_t dim,
                                                            int64_t i0, int64_t i1, const T* w,
                                                            T* gx) {
  distance_grad_rows_body<T, 64, 2>(x, n, dim, i0, i1, w, gx);
}
template <typename T>
__attribute__((target("avx2,fma"))) void grad_rows_v3(const T* x, int64_t n, int64_t dim,
                                                            int64_t i0, int64_t i1, const T* w,
                                                            T* gx) {
  distance_grad_rows_body<T, 32, 1>(x, n, dim, i0, i1, w, gx);
}
#endif

template <typename T>
void grad_rows_base(const T* x, int64_t n, int64_t dim, int64_t i0, int64_t i1, const T* w,
                    T* gx) {
  distance_grad_rows_body<T, 16, 1>(x, n, dim, i0, i1, w, gx);
}

template <typename T>
void lower_rows_base(const T* x, int64_t n, int64_t dim, int64_t i0, int64_t i1, double* sq,
                     double* wide) {
  lower_rows_body<T, 16>(x, n, dim, i0, i1, sq, wide);
}

template <typename T>
void lower_cloud_base(const T* x, int64_t n, int64_t dim, double* sq, double* scratch) {
  lower_cloud_body<T, 16>(x, n, dim, sq, scratch);
}

using tsl::x86_level;  // which build below to run

// The best build for this CPU.
template <typename T>
void squared_distance_lower_rows(const T* x, int64_t n, int64_t dim, int64_t i0, int64_t i1,
                                 double* sq) {
  thread_local std::vector<double> wide;
  if (!std::is_same<T, double>::value && int64_t(wide.size()) < 4 * dim) wide.resize(4 * dim);
  double* w = wide.data();
#ifdef TSL_X86_LEVELS
  if (x86_level() == 4) return lower_rows_v4<T>(x, n, dim, i0, i1, sq, w);
  if (x86_level() == 3) return lower_rows_v3<T>(x, n, dim, i0, i1, sq, w);
#endif
  lower_rows_base<T>(x, n, dim, i0, i1, sq, w);
}

// Whether a cloud takes the chunked whole-cloud kernel, into an n x n scratch; its carried sums
// grow as n^2 (2 MB at n = 256), so larger clouds go row block by row block.
inline bool whole_cloud_tiles(int64_t n) { return n <= 256; }

// Squared distances of all pairs j < i of one cloud x (n, dim): sq[i * n + j] (sq is n * n).
template <typename T>
void squared_distance_lower(const T* x, int64_t n, int64_t dim, double* sq) {
  if (!whole_cloud_tiles(n)) {
    for (int64_t i0 = 0; i0 < n; i0 += 4)
      squared_distance_lower_rows(x, n, dim, i0, i0 + 4 < n ? i0 + 4 : n, sq + i0 * n);
    return;
  }
  thread_local std::vector<double> scratch;
  if (int64_t(scratch.size()) < lower_cloud_scratch(n)) scratch.resize(lower_cloud_scratch(n));
#ifdef TSL_X86_LEVELS
  if (x86_level() == 4) return lower_cloud_v4<T>(x, n, dim, sq, scratch.data());
  if (x86_level() == 3) return lower_cloud_v3<T>(x, n, dim, sq, scratch.data());
#endif
  lower_cloud_base<T>(x, n, dim, sq, scratch.data());
}

// gx rows [i0, i1) (i1 - i0 <= kTileRows), see distance_grad_rows_body.
template <typename T>
void distance_grad_rows(const T* x, int64_t n, int64_t dim, int64_t i0, int64_t i1, const T* w,
                        T* gx) {
#ifdef TSL_X86_LEVELS
  if (x86_level() == 4) return grad_rows_v4<T>(x, n, dim, i0, i1, w, gx);
  if (x86_level() == 3) return grad_rows_v3<T>(x, n, dim, i0, i1, w, gx);
#endif
  grad_rows_base<T>(x, n, dim, i0, i1, w, gx);
}

}  // namespace cpu
}  // namespace tsloss
