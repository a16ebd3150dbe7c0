// Squared Euclidean distances of one cloud on the CPU, register-tiled and vectorised.
//
// Torch-free, so the native tests check it against the plain double loop of
// core/pairwise_distance.h. The difference form (no Gram-matrix cancellation) is kept; speed
// comes from tiles of 4 x 2 point pairs that reuse every loaded vector four or two times, from
// computing in the input's precision, and from a clone per x86 level picked at load time.
//
// Accuracy for float32 input: each block of 256 coordinates is summed in float (a handful
// of terms per lane), then the blocks are added in double, so the relative error stays within
// a few float32 units. Sums outside [kSafeLow, kSafeHigh], where float squares could have
// underflowed or overflowed, are recomputed in double by the caller.
#pragma once

#include <stdint.h>
#include <string.h>

#include <cmath>

namespace tsloss {
namespace cpu {

template <typename T>
struct SafeRange;
template <>
struct SafeRange<float> {
  static constexpr double low = 1e-30, high = 1e30;
};
template <>
struct SafeRange<double> {
  static constexpr double low = 0.0, high = INFINITY;
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

// Float partial sums are poured into double lanes every kBlock coordinates (a few terms per
// lane); double input accumulates in double throughout.
template <typename T>
struct Block {
  static constexpr int64_t size = 256;
};
template <>
struct Block<double> {
  static constexpr int64_t size = INT64_MAX;
};

// out[a * TJ + b] = |xi[a] - xj[b]|^2 for TI x TJ rows of length dim.
template <typename T, int Bytes, int TI, int TJ>
__attribute__((always_inline)) inline void squared_distance_tile(const T* const* xi,
                                                                 const T* const* xj,
                                                                 int64_t dim, double* out) {
  using V = typename Vec<T, Bytes>::type;
  using VD = typename Vec<double, Bytes * sizeof(double) / sizeof(T)>::type;
  constexpr int L = Vec<T, Bytes>::lanes;
  VD total[TI][TJ];
  T tail[TI][TJ];
  for (int a = 0; a < TI; ++a)
    for (int b = 0; b < TJ; ++b) total[a][b] = VD{}, tail[a][b] = T(0);
  const int64_t body = dim - dim % L;
  for (int64_t k0 = 0; k0 < body; k0 += Block<T>::size) {
    const int64_t k1 = body - k0 > Block<T>::size ? k0 + Block<T>::size : body;
    V acc[TI][TJ];
    for (int a = 0; a < TI; ++a)
      for (int b = 0; b < TJ; ++b) acc[a][b] = V{};
    for (int64_t k = k0; k < k1; k += L) {
      V u[TI], w[TJ];
      for (int a = 0; a < TI; ++a) load(u[a], xi[a] + k);
      for (int b = 0; b < TJ; ++b) load(w[b], xj[b] + k);
      for (int a = 0; a < TI; ++a)
        for (int b = 0; b < TJ; ++b) {
          const V t = u[a] - w[b];
          acc[a][b] += t * t;
        }
    }
    for (int a = 0; a < TI; ++a)
      for (int b = 0; b < TJ; ++b) total[a][b] += __builtin_convertvector(acc[a][b], VD);
  }
  for (int a = 0; a < TI; ++a)
    for (int b = 0; b < TJ; ++b) {
      for (int64_t r = body; r < dim; ++r) {
        const T t = xi[a][r] - xj[b][r];
        tail[a][b] += t * t;
      }
      out[a * TJ + b] = lane_sum(total[a][b]) + static_cast<double>(tail[a][b]);
    }
}

// Squared distances of rows [i0, i1) of one cloud x (n, dim) to every earlier row (and to each
// other): sq[(i - i0) * n + j] for i0 <= i < i1 and j < i.
template <typename T, int Bytes>
__attribute__((always_inline)) inline void lower_rows_body(const T* x, int64_t n, int64_t dim,
                                                           int64_t i0, int64_t i1, double* sq) {
  constexpr int TI = 4, TJ = 2;
  int64_t i = i0;
  for (; i + TI <= i1; i += TI) {
    const T* xi[TI] = {x + i * dim, x + (i + 1) * dim, x + (i + 2) * dim, x + (i + 3) * dim};
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
    // The pairs inside the tile.
    for (int a = 1; a < TI; ++a)
      for (int b = 0; b < a; ++b) {
        const T* pa[1] = {xi[a]};
        const T* pb[1] = {xi[b]};
        squared_distance_tile<T, Bytes, 1, 1>(pa, pb, dim, &sq[(i - i0 + a) * n + i + b]);
      }
  }
  for (; i < i1; ++i) {
    const T* xi[1] = {x + i * dim};
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

#if defined(__x86_64__) && defined(__GNUC__)
#define TSLOSS_X86_CLONES 1
// AVX-512 and AVX2+FMA builds of the same body (feature lists rather than x86-64-v4/v3 names,
// which older compilers lack); the baseline build below serves every other CPU.
template <typename T>
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void lower_rows_v4(const T* x, int64_t n,
                                                             int64_t dim, int64_t i0, int64_t i1,
                                                             double* sq) {
  lower_rows_body<T, 64>(x, n, dim, i0, i1, sq);
}
template <typename T>
__attribute__((target("avx2,fma"))) void lower_rows_v3(const T* x, int64_t n,
                                                             int64_t dim, int64_t i0, int64_t i1,
                                                             double* sq) {
  lower_rows_body<T, 32>(x, n, dim, i0, i1, sq);
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
void lower_rows_base(const T* x, int64_t n, int64_t dim, int64_t i0, int64_t i1, double* sq) {
  lower_rows_body<T, 16>(x, n, dim, i0, i1, sq);
}

// The x86-64 level of this CPU (4: AVX-512, 3: AVX2+FMA, 0: baseline), probed once.
inline int x86_level() {
#ifdef TSLOSS_X86_CLONES
  static const int level = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
                               ? 4
                               : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                                      ? 3
                                      : 0);
  return level;
#else
  return 0;
#endif
}

// The best build for this CPU.
template <typename T>
void squared_distance_lower_rows(const T* x, int64_t n, int64_t dim, int64_t i0, int64_t i1,
                                 double* sq) {
#ifdef TSLOSS_X86_CLONES
  if (x86_level() == 4) return lower_rows_v4<T>(x, n, dim, i0, i1, sq);
  if (x86_level() == 3) return lower_rows_v3<T>(x, n, dim, i0, i1, sq);
#endif
  lower_rows_base<T>(x, n, dim, i0, i1, sq);
}

// gx rows [i0, i1) (i1 - i0 <= kTileRows), see distance_grad_rows_body.
template <typename T>
void distance_grad_rows(const T* x, int64_t n, int64_t dim, int64_t i0, int64_t i1, const T* w,
                        T* gx) {
#ifdef TSLOSS_X86_CLONES
  if (x86_level() == 4) return grad_rows_v4<T>(x, n, dim, i0, i1, w, gx);
  if (x86_level() == 3) return grad_rows_v3<T>(x, n, dim, i0, i1, w, gx);
#endif
  grad_rows_base<T>(x, n, dim, i0, i1, w, gx);
}

}  // namespace cpu
}  // namespace tsloss
