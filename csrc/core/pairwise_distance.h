// Euclidean distance between two points by the difference form, accumulated in double.
//
// The Gram form |x|^2 + |y|^2 - 2 x.y cancels catastrophically for close points (in float32 it
// loses ~1e-3, enough to change diagrams); the difference form has no cancellation.
#pragma once

#include <math.h>

#include "common.h"

namespace tsl {

template <typename T>
TSL_HD double squared_distance(const T* x, const T* y, index_t dim) {
  double s = 0.0;
  for (index_t k = 0; k < dim; ++k) {
    double t = (double)x[k] - (double)y[k];
    s += t * t;
  }
  return s;
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
    s += t * t;
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
