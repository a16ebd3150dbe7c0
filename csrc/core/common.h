// Shared, torch-free definitions for the Vietoris–Rips engine.
//
// Everything here compiles as plain C++17 on the host and as CUDA device code under nvcc, so the
// CPU tests exercise exactly the rules the GPU kernels run: the filtration order, the
// combinatorial number system and the cofacet/facet queries that define apparent pairs.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define TSL_HD __host__ __device__ __forceinline__
// A rare path kept out of line on the device, so that its registers do not weigh on the loop
// that calls it.
#define TSL_HD_COLD __host__ __device__ __noinline__
#else
#define TSL_HD inline
#define TSL_HD_COLD inline
#endif

// A loop over a compile-time count, unrolled: on the device an array indexed by its counter
// then stays in registers (a run-time index would put it in local memory).
#if defined(__CUDACC__) || defined(__clang__)
#define TSL_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define TSL_UNROLL _Pragma("GCC unroll 16")
#else
#define TSL_UNROLL
#endif

namespace tsl {

using index_t = int64_t;

// Status codes returned by per-cloud routines that run with caller-provided, fixed-capacity
// workspaces (the GPU cannot grow memory mid-kernel; the CPU grows and retries).
enum Status : int32_t {
  kOk = 0,
  kHeapFull = 1,
  kPivotTableFull = 2,
  kReductionArenaFull = 3,
  kPairsFull = 4,
};

// h1_count of a cloud with a non-finite distance on CUDA (Python's INVALID_INPUT); the CPU
// raises instead.
constexpr int64_t kInvalidInputCount = -2;
// h1_count of a cloud whose H1 reduction outgrew the device's workspace (Python's
// H1_OVERFLOW): its H0 is exact, its H1 unknown. The CPU grows its buffers instead.
constexpr int64_t kH1OverflowCount = -1;

// NaN and +-Inf alike (x - x is NaN for both), without <cmath>'s host-only overloads.
template <typename T>
TSL_HD bool is_finite(T x) {
  return x - x == T(0);
}

// Largest cloud the engine accepts. Triangle indices C(n,3) stay far inside int64 and the
// O(n^2) distance matrix of one cloud stays in the tens of MB.
constexpr index_t kMaxPoints = 4096;

// ---- Combinatorial number system (Ripser's simplex indexing) ---------------------------------
// An edge {i > j} has index C(i,2) + j; a triangle {a > b > c} has index C(a,3) + C(b,2) + c.
// Ordering by index is the colexicographic order of vertex sets.

TSL_HD index_t choose2(index_t n) { return n * (n - 1) / 2; }
TSL_HD index_t choose3(index_t n) { return n * (n - 1) * (n - 2) / 6; }

TSL_HD index_t edge_index(index_t i, index_t j) {
  // Accepts either argument order.
  return i > j ? choose2(i) + j : choose2(j) + i;
}

TSL_HD index_t triangle_index(index_t a, index_t b, index_t c) {
  // Requires a > b > c.
  return choose3(a) + choose2(b) + c;
}

// Decoding starts from the closed-form root (sqrt / cbrt in double, exact to well under one
// unit for indices of clouds up to kMaxPoints) and corrects it by at most a step or two.
TSL_HD void edge_vertices(index_t idx, index_t n, index_t* i, index_t* j) {
  index_t v = (index_t)((1.0 + sqrt(1.0 + 8.0 * (double)idx)) * 0.5);
  if (v > n - 1) v = n - 1;
  while (v > 1 && choose2(v) > idx) --v;
  while (v < n - 1 && choose2(v + 1) <= idx) ++v;
  *i = v;
  *j = idx - choose2(v);
}

// Cube root to about 0.1% (one Newton step from an exponent-third guess): a start for the
// decoding below, which corrects it exactly; the library cbrt is a slow call on the host.
TSL_HD float approx_cbrt(float x) {
  if (!(x > 0.0f)) return 0.0f;
  uint32_t bits;
  memcpy(&bits, &x, sizeof bits);
  bits = bits / 3 + 709921077u;  // thirds the exponent (and roughly the mantissa)
  float y;
  memcpy(&y, &bits, sizeof y);
  return y - (y * y * y - x) / (3.0f * y * y);
}

TSL_HD void triangle_vertices(index_t idx, index_t n, index_t* a, index_t* b, index_t* c) {
  index_t v = (index_t)approx_cbrt(6.0f * (float)idx);
  if (v < 2) v = 2;
  if (v > n - 1) v = n - 1;
  while (v > 2 && choose3(v) > idx) --v;
  while (v < n - 1 && choose3(v + 1) <= idx) ++v;
  *a = v;
  idx -= choose3(v);
  edge_vertices(idx, v, b, c);
}

// ---- Filtration order -----------------------------------------------------------------------
// Simplices of one dimension are ordered by diameter, then by *decreasing* index (Ripser's
// "reverse colexicographic" refinement). This strict total order makes the minimum spanning
// tree, the persistence pairing and every reported edge unique, and equal to ripser.py's.

template <typename T>
struct Entry {
  T diameter;
  index_t index;  // -1: no simplex
};

// I: index_t, or uint32_t where the device passes form edge indices in 32 bits (index32.h).
template <typename T, typename I>
TSL_HD bool filtration_less(T da, I ia, T db, I ib) {
  return da < db || (da == db && ia > ib);
}

template <typename T>
TSL_HD bool filtration_less(const Entry<T>& a, const Entry<T>& b) {
  return filtration_less(a.diameter, a.index, b.diameter, b.index);
}

// A dense, row-major, symmetric N x N distance matrix of one cloud.
template <typename T>
struct DistanceMatrix {
  const T* data;
  index_t n;
  TSL_HD T operator()(index_t i, index_t j) const { return data[i * n + j]; }
  TSL_HD const T* row(index_t i) const { return data + i * n; }
};

// Enclosing radius: min_i max_j d(i, j). At that scale the Rips complex is a cone over the
// vertex attaining it, so every H1 class has died by then and larger simplices only form
// zero-persistence pairs. Restricting the complex to it changes no reported pair.
template <typename T>
TSL_HD T enclosing_radius(const DistanceMatrix<T>& d) {
  // Each row's maximum over eight running maxima side by side (one chain waited on every
  // compare): a maximum does not depend on the order, and only values above +0 replace one, so
  // the bits are the single chain's (NaN entries are skipped either way).
  constexpr int kChains = 8;
  T best = T(0);
  for (index_t i = 0; i < d.n; ++i) {
    T m[kChains];
    TSL_UNROLL for (int c = 0; c < kChains; ++c) m[c] = T(0);
    const T* r = d.row(i);
    const index_t whole = d.n - d.n % kChains;
    for (index_t j = 0; j < whole; j += kChains)
      TSL_UNROLL for (int c = 0; c < kChains; ++c) m[c] = r[j + c] > m[c] ? r[j + c] : m[c];
    for (index_t j = whole; j < d.n; ++j) m[0] = r[j] > m[0] ? r[j] : m[0];
    T row_max = m[0];
    TSL_UNROLL for (int c = 1; c < kChains; ++c) row_max = m[c] > row_max ? m[c] : row_max;
    if (i == 0 || row_max < best) best = row_max;
  }
  return best;
}

// An environment setting's number: digits only (no sign, space or exponent), at most `most`;
// false for anything else. The one reading of the host's and the CUDA glue's settings: atoll
// and strtoull read a prefix ("1e6" as 1, "-1" as 2^64 - 1) and wrapped near 2^64, unsaid.
inline bool parse_count(const char* v, uint64_t most, uint64_t* out) {
  if (v == nullptr || *v == '\0') return false;
  uint64_t n = 0;
  for (; *v != '\0'; ++v) {
    const uint64_t d = uint64_t(*v - '0');
    if (*v < '0' || *v > '9' || d > most || n > (most - d) / 10) return false;
    n = n * 10 + d;
  }
  *out = n;
  return true;
}

}  // namespace tsl
