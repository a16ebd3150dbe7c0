// The apparent-pair sweep of vr_engine.h (sweep_h1_columns_portable) built for AVX-512 and for
// AVX2, host-only. Same columns in the same order; only the search for the third vertex differs.
//
// Per edge {i > j} of length de the sweep needs k, the largest vertex within de of both ends
// (last_vertex_within), and then three yes/no decisions: below the threshold, not a tree edge,
// not the facet of an apparent pair. With vector compares the search costs a few instructions
// per block of 32 vertices; what is left are the decisions, which no predictor guesses, so every
// edge is written out and kept by advancing a count instead of by a branch. Against the portable
// build, on Gaussian clouds: AVX-512 1.4x (N = 32) to 1.9x (N = 256) for float32 and 2.3-3.5x
// for float64; AVX2 1.3-1.6x and 1.8-2.7x. At N = 16 all builds take about the same time.
#pragma once

#include "x86_level.h"

#ifdef TSL_X86_LEVELS

#include <immintrin.h>

#include <vector>

#include "h0_mst.h"
#include "h1_reduce.h"

namespace tsl {

// One vector of the search below: bit l set for each live lane l (bit l of `live`) with
// max(ri[l], rj[l]) <= de. Lanes that are not live are neither loaded nor set.
__attribute__((target("avx512f,avx512vl"))) inline uint32_t within_avx512(const float* ri,
                                                                         const float* rj,
                                                                         float de, uint32_t live) {
  const __mmask16 lanes = __mmask16(live);
  // maskz_max: plain max_ps starts from an undefined vector, which GCC 12 warns about
  const __m512 far = _mm512_maskz_max_ps(lanes, _mm512_maskz_loadu_ps(lanes, ri),
                                         _mm512_maskz_loadu_ps(lanes, rj));
  return _mm512_mask_cmp_ps_mask(lanes, far, _mm512_set1_ps(de), _CMP_LE_OQ);
}

__attribute__((target("avx512f,avx512vl"))) inline uint32_t within_avx512(const double* ri,
                                                                         const double* rj,
                                                                         double de,
                                                                         uint32_t live) {
  const __mmask8 lanes = __mmask8(live);
  const __m512d far = _mm512_maskz_max_pd(lanes, _mm512_maskz_loadu_pd(lanes, ri),
                                          _mm512_maskz_loadu_pd(lanes, rj));
  return _mm512_mask_cmp_pd_mask(lanes, far, _mm512_set1_pd(de), _CMP_LE_OQ);
}

// The same with AVX2, for the first `left` lanes (all when left >= the lane count): a masked
// load only for a partial vector, whose other lanes read as zero and are cleared by the caller.
__attribute__((target("avx2"))) inline uint32_t within_avx2(const float* ri, const float* rj,
                                                           float de, index_t left) {
  __m256 a, b;
  if (left >= 8) {
    a = _mm256_loadu_ps(ri);
    b = _mm256_loadu_ps(rj);
  } else {
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)left),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    a = _mm256_maskload_ps(ri, live);
    b = _mm256_maskload_ps(rj, live);
  }
  return _mm256_movemask_ps(_mm256_cmp_ps(_mm256_max_ps(a, b), _mm256_set1_ps(de), _CMP_LE_OQ));
}

__attribute__((target("avx2"))) inline uint32_t within_avx2(const double* ri, const double* rj,
                                                           double de, index_t left) {
  __m256d a, b;
  if (left >= 4) {
    a = _mm256_loadu_pd(ri);
    b = _mm256_loadu_pd(rj);
  } else {
    const __m256i live = _mm256_cmpgt_epi64(_mm256_set1_epi64x((long long)left),
                                            _mm256_setr_epi64x(0, 1, 2, 3));
    a = _mm256_maskload_pd(ri, live);
    b = _mm256_maskload_pd(rj, live);
  }
  return _mm256_movemask_pd(_mm256_cmp_pd(_mm256_max_pd(a, b), _mm256_set1_pd(de), _CMP_LE_OQ));
}

// Bit t set for each k = lo + t < hi (0 < hi - lo <= kBlock = 32) with max(ri[k], rj[k]) <= de:
// band_flags(ri, rj, de, -1, de, lo, hi) for the non-negative distances the engine sees.
struct WithinAvx512 {
  template <typename T>
  __attribute__((target("avx512f,avx512vl"))) static uint32_t bits(const T* ri, const T* rj,
                                                                  T de, index_t lo, index_t hi) {
    constexpr int L = 64 / sizeof(T);  // lanes per vector
    const uint32_t lanes = hi - lo >= 32 ? ~0u : (1u << (hi - lo)) - 1;
    uint32_t m = 0;
    for (int q = 0; q < 32 / L; ++q)  // unrolled: the lane masks are fixed per call
      m |= within_avx512(ri + lo + L * q, rj + lo + L * q, de,
                         (lanes >> (L * q)) & ((1u << L) - 1))
           << (L * q);
    return m;
  }
};

struct WithinAvx2 {
  template <typename T>
  __attribute__((target("avx2"))) static uint32_t bits(const T* ri, const T* rj, T de,
                                                       index_t lo, index_t hi) {
    constexpr int L = 32 / sizeof(T);
    const uint32_t lanes = hi - lo >= 32 ? ~0u : (1u << (hi - lo)) - 1;
    uint32_t m = 0;
    for (int q = 0; q < 32 / L && lo + L * q < hi; ++q)
      m |= within_avx2(ri + lo + L * q, rj + lo + L * q, de, hi - lo - L * q) << (L * q);
    return m & lanes;
  }
};

// sweep_h1_columns_portable with k found by Within and the decisions taken without branches.
template <typename T, class Within>
__attribute__((always_inline)) inline void sweep_unbranched(const DistanceMatrix<T>& d,
                                                            T threshold,
                                                            const index_t* best_parent,
                                                            index_t i0, index_t i1,
                                                            std::vector<H1Column<T>>& columns) {
  thread_local std::vector<H1Column<T>> row_columns;  // one row's edges, the kept ones first
  if ((index_t)row_columns.size() < d.n) row_columns.resize(d.n);
  H1Column<T>* out = row_columns.data();
  for (index_t i = i0 < 1 ? 1 : i0; i < i1; ++i) {
    const T* ri = d.row(i);
    const index_t parent_i = best_parent[i];
    index_t kept = 0;
    for (index_t j = 0; j < i; ++j) {
      const T de = ri[j];
      const T* rj = d.row(j);
      index_t k = -1;  // last_vertex_within(d, i, j, de, de)
      for (index_t hi = d.n; hi > 0; hi -= kBlock) {
        const index_t lo = hi > kBlock ? hi - kBlock : 0;
        uint32_t m = Within::bits(ri, rj, de, lo, hi);
        if (i >= lo && i < hi) m &= ~(uint32_t(1) << (i - lo));
        if (j >= lo && j < hi) m &= ~(uint32_t(1) << (j - lo));
        if (m) {
          k = lo + highest_bit(m);
          break;
        }
      }
      const index_t kk = k < 0 ? 0 : k;  // any vertex: read, then discarded
      const bool apparent = (k >= 0) & is_latest_facet(i, j, kk, de, ri[kk], rj[kk]);
      const bool tree = (parent_i == j) | (best_parent[j] == i);  // is_tree_edge, unbranched
      out[kept] = H1Column<T>{de, i, j};
      kept += (de <= threshold) & !tree & !apparent;
    }
    columns.insert(columns.end(), out, out + kept);
  }
}

template <typename T>
__attribute__((target("avx512f,avx512vl,lzcnt"))) void sweep_h1_columns_avx512(
    const DistanceMatrix<T>& d, T threshold, const index_t* best_parent, index_t i0, index_t i1,
    std::vector<H1Column<T>>& columns) {
  sweep_unbranched<T, WithinAvx512>(d, threshold, best_parent, i0, i1, columns);
}

template <typename T>
__attribute__((target("avx2,lzcnt"))) void sweep_h1_columns_avx2(
    const DistanceMatrix<T>& d, T threshold, const index_t* best_parent, index_t i0, index_t i1,
    std::vector<H1Column<T>>& columns) {
  sweep_unbranched<T, WithinAvx2>(d, threshold, best_parent, i0, i1, columns);
}

}  // namespace tsl

#endif  // TSL_X86_LEVELS
