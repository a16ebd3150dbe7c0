// Euclidean distance between two points by the difference form, accumulated in double, in one
// fixed order of operations that every kernel reproduces bit for bit: the CPU builds for each
// x86 level, the CUDA kernels, any batch layout, thread count or split of the work.
//
// The Gram form |x|^2 + |y|^2 - 2 x.y cancels catastrophically for close points (in float32 it
// loses ~1e-3, enough to change diagrams); the difference form has no cancellation.
//
// The canonical order: kDistanceLanes = 8 partial sums, lane l summing the coordinates
// k = l (mod 8) in increasing k; each step rounds t = x_k - y_k, then t * t, then the add (never
// an FMA, which a CPU without FMA cannot reproduce); then the lanes are added as
// ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)). Eight lanes are one AVX-512 register, two
// AVX2 registers or four SSE2 registers of doubles, so every x86 build keeps its full width; a
// missing coordinate (past the dimension, or a padding row) is an exact zero and changes nothing.
// On the host this relies on -ffp-contract=off (setup.py, CMakeLists.txt); on the device the
// _rn intrinsics forbid the contraction.
#pragma once

#include <math.h>

#include "common.h"

namespace tsl {

constexpr int kDistanceLanes = 8;

TSL_HD double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

TSL_HD double add_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// The lanes' fixed final sum.
TSL_HD double lane_tree(const double* s) {
  return add_rn(add_rn(add_rn(s[0], s[1]), add_rn(s[2], s[3])),
                add_rn(add_rn(s[4], s[5]), add_rn(s[6], s[7])));
}

// The reference every kernel must equal bit for bit.
template <typename T>
TSL_HD double squared_distance(const T* x, const T* y, index_t dim) {
  double s[kDistanceLanes] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  for (index_t k = 0; k < dim; ++k) {
    const double t = (double)x[k] - (double)y[k];
    s[k % kDistanceLanes] = add_rn(s[k % kDistanceLanes], mul_rn(t, t));
  }
  return lane_tree(s);
}

// |x - y| scaled by the largest coordinate difference first (as hypot does for two
// coordinates): exact where the plain sum of squares would under- or overflow float64. With a
// power-of-two `scale`, |x - y| * scale, rounded once where |x - y| alone would be subnormal.
template <typename T>
TSL_HD double scaled_distance(const T* x, const T* y, index_t dim, double scale = 1.0) {
  double m = 0.0;
  for (index_t k = 0; k < dim; ++k) {
    const double t = fabs((double)x[k] - (double)y[k]);
    m = t > m ? t : m;
  }
  if (m == 0.0) return 0.0;  // duplicates: nothing to scale
  // A difference past the float64 range (finite points near +-1.8e308) puts the distance past
  // it too: +Inf, which every caller flags, where scaling by it would give a NaN.
  if (!is_finite(m)) return m;
  double s = 0.0;
  for (index_t k = 0; k < dim; ++k) {
    const double t = ((double)x[k] - (double)y[k]) / m;
    s = add_rn(s, mul_rn(t, t));  // nvcc would fuse s += t * t
  }
  return (m * scale) * sqrt(s);
}

// float64 squares outside [kSafeSquareLow, kSafeSquareHigh] may have under- or overflowed;
// float32 points summed in double cannot.
constexpr double kSafeSquareLow = 1e-290, kSafeSquareHigh = 1e290;

// |x - y| from its canonical square s: sqrt(s), or the scaled distance where s may have under-
// or overflowed (float64 points). The one rule of the forward (CPU and CUDA) and the backward.
template <typename T>
TSL_HD double distance_from_square(double s, const T* x, const T* y, index_t dim) {
  if (sizeof(T) == 8 && !(s >= kSafeSquareLow && s <= kSafeSquareHigh) && s == s)
    return scaled_distance(x, y, dim);
  return sqrt(s);
}

// |x - y| as the forward computes it: the backward's edge lengths must not fall to 0 or Inf
// where the forward's value did not.
template <typename T>
TSL_HD double point_distance(const T* x, const T* y, index_t dim) {
  return distance_from_square(squared_distance(x, y, dim), x, y, dim);
}

// What a reported edge's gradient g puts on its endpoints' coordinate differences:
// step_k = s * (diff_k * m), g times d|x_u - x_v| / dx_u. Normally (s, m) = (g / len, 1).
// Where len is subnormal or g / len leaves the normal range (float64 edges shorter than
// ~2.2e-308, or a g far from 1 on a very short or long edge), lengths and differences are
// scaled by a power of two m bringing len near 1: the length is recomputed from the scaled
// differences, since a subnormal len has lost its precision. The step stays finite for every
// |g| < 2^973 ~ 1.5e292, and nonzero for a normal g (a subnormal g over an edge past 2^1023 may
// round to 0). m is a normal double (flushed-subnormal modes read it as itself), 2^-1022 to
// 2^1023, so a subnormal len scales to len * m >= 2^-51 and a huge one to len * m < 4.
// Zero-length edges get nothing (s = 0): the forward's value has no direction there.
struct EdgeScale {
  double s, m;
};
// The same from the edge's length len = point_distance(x, y, dim), however it was summed.
template <typename T>
TSL_HD EdgeScale edge_scale_of_length(double g, double len, const T* x, const T* y, index_t dim) {
  if (len == 0.0 || g == 0.0) return {0.0, 1.0};
  const double s = g / len;
  if (len >= 0x1p-1022 && fabs(s) >= 0x1p-1022 && fabs(s) <= 0x1p1023) return {s, 1.0};
  int e = ilogb(len);
  e = e < -1023 ? -1023 : (e > 1022 ? 1022 : e);  // m = 2^-e: a finite, normal double
  const double m = ldexp(1.0, -e);
  return {g / scaled_distance(x, y, dim, m), m};
}
template <typename T>
TSL_HD EdgeScale edge_scale(double g, const T* x, const T* y, index_t dim) {
  return edge_scale_of_length(g, point_distance(x, y, dim), x, y, dim);
}

// A Gram-form square of two float32 points proved to give their canonical float32 distance, or
// not: nn = |y_i|^2 + |y_j|^2 and g = y_i . y_j summed in double in any order, with or without
// FMA, y = fl(x - c) rounded in double (a float32 difference breaks the bound: the native
// test catches it) for any float32 centre c, over dim coordinates. On true, (float)sqrt(*s)
// is bit for bit (float)sqrt(squared_distance(x_i, x_j, dim)); on false the caller sums
// canonically. With u = 2^-53, S the exact square, n the computed norms and a = nn - 2g:
//   |a - |y_i - y_j|^2| <= 2 gamma_D (n_i + n_j) + u (n_i + n_j) + u |a|   (sums, final ops)
//   | |y_i - y_j|^2 - S | <= u (S + 2 (n_i + n_j))                          (rounded y)
//   |c - S| <= (D + 3) u S        (the canonical sum: rounded difference, square, adds)
// so |a - c| <= (2D + 3) u (n_i + n_j) + (D + 5) u |a| to first order, and
// e = 4 (D + 3) u (nn + |a|) bounds it with room for the second-order terms and the rounding of
// e (no product of float32 values, or of their differences, under- or overflows a double).
// c is a double, so c >= a - e gives c >= fl(a - e), and likewise above. sqrt and the cast to
// float are monotone: where (float)sqrt(fl(a - e)) == (float)sqrt(fl(a + e)) every double
// between, c included, gives that float. NaN fails both tests; squares past 3e76 never certify
// (a cap below float32's overflow at ~1.16e77), so the caller handles them as before.
TSL_HD bool certify_float_square(double nn, double g, index_t dim, double* s) {
  const double a = nn - 2.0 * g;
  const double e = 4.0 * double(dim + 3) * 0x1p-53 * (nn + fabs(a));
  const double lo = a - e, hi = a + e;
  if (!(hi <= 3.0e76)) return false;
  const float flo = (float)sqrt(lo > 0.0 ? lo : 0.0);
  const float fhi = (float)sqrt(hi);
  if (!(flo == fhi)) return false;
  *s = a > 0.0 ? a : 0.0;
  return true;
}

// Coordinate k of the float32 centre the certified route subtracts (CPU and GPU alike): the mean
// of eight rows spread over the cloud (all of them below eight), summed in double in row order
// and rounded to float32; 0 where that is not finite (a non-finite point fails certification
// anyway). Any float32 centre keeps the bound; a central one keeps the norms, and so the bound,
// small (the first point alone, an outlier, made nearly every pair fail). T is float; a template
// so that the float64 instantiation of the CUDA kernel, which never calls it, compiles.
TSL_HD index_t certify_centre_count(index_t n) { return n < 8 ? n : 8; }
// Row r < certify_centre_count(n) of those rows.
TSL_HD index_t certify_centre_row(index_t r, index_t n) {
  return r * n / certify_centre_count(n);
}
// The centre coordinate from its rows' sum in row order (acc = 0, then acc + x_r for each r).
TSL_HD float certify_centre_of_sum(double sum, index_t n) {
  const float c = (float)(sum / double(certify_centre_count(n)));
  return isfinite(c) ? c : 0.0f;
}
template <typename T>
TSL_HD float certify_centre(const T* x, index_t n, index_t dim, index_t k) {
  double acc = 0.0;
  for (index_t r = 0; r < certify_centre_count(n); ++r)
    acc = add_rn(acc, (double)x[certify_centre_row(r, n) * dim + k]);
  return certify_centre_of_sum(acc, n);
}

// Dense (n, n) distances of one cloud x (n, dim): exactly symmetric, exact zero diagonal.
template <typename T>
inline void pairwise_distance_cloud(const T* x, index_t n, index_t dim, T* out) {
  for (index_t i = 0; i < n; ++i) {
    out[i * n + i] = T(0);
    for (index_t j = 0; j < i; ++j) {
      T v = (T)sqrt(squared_distance(x + i * dim, x + j * dim, dim));
      out[i * n + j] = v;
      out[j * n + i] = v;
    }
  }
}

}  // namespace tsl
