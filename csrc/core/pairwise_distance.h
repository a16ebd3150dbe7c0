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
// coordinates): exact where the plain sum of squares would under- or overflow float64.
template <typename T>
TSL_HD double scaled_distance(const T* x, const T* y, index_t dim) {
  double m = 0.0;
  for (index_t k = 0; k < dim; ++k) {
    const double t = fabs((double)x[k] - (double)y[k]);
    m = t > m ? t : m;
  }
  if (m == 0.0) return 0.0;  // duplicates: nothing to scale
  double s = 0.0;
  for (index_t k = 0; k < dim; ++k) {
    const double t = ((double)x[k] - (double)y[k]) / m;
    s = add_rn(s, mul_rn(t, t));  // nvcc would fuse s += t * t
  }
  return m * sqrt(s);
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
