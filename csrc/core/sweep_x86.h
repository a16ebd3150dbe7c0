// The apparent-pair sweep of vr_engine.h (sweep_h1_columns_portable) built for AVX-512 and for
// AVX2, host-only. Same columns in the same order; only the search for the third vertex differs.
//
// Per edge {i > j} of length de the sweep needs k, the largest vertex within de of both ends
// (last_vertex_within), and then three yes/no decisions: below the threshold, not a tree edge,
// not the facet of an apparent pair. With vector compares the search costs a few instructions
// per block of 32 vertices; what is left are the decisions, which no predictor guesses, so every
// edge is written out and kept by advancing a count instead of by a branch. Against the portable
// sweep on band_flags, on Gaussian clouds: AVX-512 1.4x (N = 32) to 1.9x (N = 256) for float32
// and 2.3-3.5x for float64; AVX2 1.3-1.6x and 1.8-2.7x. Since the portable sweep also gets the
// vector masks (band_x86.h, one call per block), what this build adds is their inlining and the
// unbranched decisions: sweep 4.8 -> 4.4 us per cloud at N = 32, 19.1 -> 16.4 at N = 64,
// 318 -> 259 at N = 256 (float32, AVX-512, build/profile_core).
#pragma once

#include "band_x86.h"

#ifdef TSL_X86_BANDS

#include <vector>

#include "h1_reduce.h"

namespace tsl {

// sweep_h1_columns_portable with k found by Band (band_x86.h) and the decisions taken without
// branches.
template <typename T, class Band>
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
      // last_vertex_within(d, i, j, de, de), its loop written out so that Band's compares
      // inline: through the shared template they stay calls (the ISA of the caller in between
      // differs), 10-13 % slower.
      index_t k = -1;
      for (index_t hi = d.n; hi > 0; hi -= kBlock) {
        const index_t lo = hi > kBlock ? hi - kBlock : 0;
        uint32_t m = Band::within(ri, rj, de, lo, hi);
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
  sweep_unbranched<T, BandAvx512>(d, threshold, best_parent, i0, i1, columns);
}

template <typename T>
__attribute__((target("avx2,lzcnt"))) void sweep_h1_columns_avx2(
    const DistanceMatrix<T>& d, T threshold, const index_t* best_parent, index_t i0, index_t i1,
    std::vector<H1Column<T>>& columns) {
  sweep_unbranched<T, BandAvx2>(d, threshold, best_parent, i0, i1, columns);
}

}  // namespace tsl

#endif  // TSL_X86_BANDS
