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

// Bit t set for each k = lo + t < hi (0 < hi - lo <= kBlock = 32) with max(ri[k], rj[k]) <= de:
// band_flags(ri, rj, de, -1, de, lo, hi) for the non-negative distances the engine sees. Lanes
// past hi are neither loaded nor set.
struct WithinAvx512 {
  __attribute__((target("avx512f,avx512vl"))) static uint32_t bits(const float* ri,
                                                                  const float* rj, float de,
                                                                  index_t lo, index_t hi) {
    const __m512 r = _mm512_set1_ps(de);
    const uint32_t lanes = hi - lo >= 32 ? ~0u : (1u << (hi - lo)) - 1;
    uint32_t m = 0;
    for (int q = 0; q < 2; ++q) {  // unrolled: the lane masks are fixed per call
      const __mmask16 part = __mmask16(lanes >> (16 * q));
      // maskz_max: plain max_ps starts from an undefined vector, which GCC 12 warns about
      const __m512 far = _mm512_maskz_max_ps(part, _mm512_maskz_loadu_ps(part, ri + lo + 16 * q),
                                             _mm512_maskz_loadu_ps(part, rj + lo + 16 * q));
      m |= uint32_t(_mm512_mask_cmp_ps_mask(part, far, r, _CMP_LE_OQ)) << (16 * q);
    }
    return m;
  }
  __attribute__((target("avx512f,avx512vl"))) static uint32_t bits(const double* ri,
                                                                  const double* rj, double de,
                                                                  index_t lo, index_t hi) {
    const __m512d r = _mm512_set1_pd(de);
    const uint32_t lanes = hi - lo >= 32 ? ~0u : (1u << (hi - lo)) - 1;
    uint32_t m = 0;
    for (int q = 0; q < 4; ++q) {
      const __mmask8 part = __mmask8(lanes >> (8 * q));
      const __m512d far = _mm512_maskz_max_pd(part, _mm512_maskz_loadu_pd(part, ri + lo + 8 * q),
                                              _mm512_maskz_loadu_pd(part, rj + lo + 8 * q));
      m |= uint32_t(_mm512_mask_cmp_pd_mask(part, far, r, _CMP_LE_OQ)) << (8 * q);
    }
    return m;
  }
};

// The same with AVX2: a masked load for the last, partial vector (its lanes past hi read as
// zero and are cleared).
struct WithinAvx2 {
  // All-ones in the first `left` (0 < left < 8, or < 4) 32- or 64-bit lanes, as maskload wants.
  __attribute__((target("avx2"))) static __m256i first_lanes32(index_t left) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)left), idx);
  }
  __attribute__((target("avx2"))) static __m256i first_lanes64(index_t left) {
    const __m256i idx = _mm256_setr_epi64x(0, 1, 2, 3);
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x((long long)left), idx);
  }
  __attribute__((target("avx2"))) static uint32_t bits(const float* ri, const float* rj,
                                                       float de, index_t lo, index_t hi) {
    const __m256 r = _mm256_set1_ps(de);
    const uint32_t lanes = hi - lo >= 32 ? ~0u : (1u << (hi - lo)) - 1;
    uint32_t m = 0;
    for (int q = 0; q < 4 && lo + 8 * q < hi; ++q) {
      const index_t at = lo + 8 * q, left = hi - at;
      __m256 a, b;
      if (left >= 8) {
        a = _mm256_loadu_ps(ri + at);
        b = _mm256_loadu_ps(rj + at);
      } else {
        const __m256i live = first_lanes32(left);
        a = _mm256_maskload_ps(ri + at, live);
        b = _mm256_maskload_ps(rj + at, live);
      }
      const __m256 within = _mm256_cmp_ps(_mm256_max_ps(a, b), r, _CMP_LE_OQ);
      m |= uint32_t(_mm256_movemask_ps(within)) << (8 * q);
    }
    return m & lanes;
  }
  __attribute__((target("avx2"))) static uint32_t bits(const double* ri, const double* rj,
                                                       double de, index_t lo, index_t hi) {
    const __m256d r = _mm256_set1_pd(de);
    const uint32_t lanes = hi - lo >= 32 ? ~0u : (1u << (hi - lo)) - 1;
    uint32_t m = 0;
    for (int q = 0; q < 8 && lo + 4 * q < hi; ++q) {
      const index_t at = lo + 4 * q, left = hi - at;
      __m256d a, b;
      if (left >= 4) {
        a = _mm256_loadu_pd(ri + at);
        b = _mm256_loadu_pd(rj + at);
      } else {
        const __m256i live = first_lanes64(left);
        a = _mm256_maskload_pd(ri + at, live);
        b = _mm256_maskload_pd(rj + at, live);
      }
      const __m256d within = _mm256_cmp_pd(_mm256_max_pd(a, b), r, _CMP_LE_OQ);
      m |= uint32_t(_mm256_movemask_pd(within)) << (4 * q);
    }
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
