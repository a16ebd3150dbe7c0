// H0 of a Rips filtration: the deaths are the edge lengths of the minimum spanning tree.
//
// Prim's algorithm, O(N^2) on a dense matrix, with edges compared in filtration order
// (diameter, then decreasing index). Under that strict order the spanning tree is unique and
// equals the one Ripser's union-find finds, so every death edge matches ripser.py's.
#pragma once

#include "common.h"

namespace tsl {

template <typename T>
struct MstEdge {
  T diameter;
  index_t u, v;  // u < v
};

// mst_edge_before on (diameter, edge index) pairs, of any index type.
template <typename T, typename I>
TSL_HD bool mst_edge_order(T da, I ia, T db, I ib) {
  const bool na = da != da, nb = db != db;
  if (na || nb) return na == nb ? ia > ib : nb;
  return filtration_less(da, ia, db, ib);
}

// Is the candidate edge (d, idx) better than the current best (bd, bidx)? bidx < 0: no best.
template <typename T>
TSL_HD bool prim_better(T d, index_t idx, T bd, index_t bidx) {
  return bidx < 0 || filtration_less(d, idx, bd, bidx);
}

// Sequential Prim for one cloud. `best_d`, `best_parent` and `outside` are workspaces of n
// entries. Writes n-1 edges in the order vertices join the tree. The CUDA kernel runs the same
// comparison (prim_better) with one thread per vertex and a block-wide argmin.
template <typename T>
TSL_HD void prim_mst(const DistanceMatrix<T>& d, T* best_d, index_t* best_parent,
                     index_t* outside, MstEdge<T>* out) {
  const index_t n = d.n;
  if (n <= 1) return;
  // The vertices not yet in the tree, packed: each step scans only those, and their order does
  // not matter because the comparison is a strict total order.
  index_t remaining = n - 1;
  for (index_t v = 1; v < n; ++v) {
    outside[v - 1] = v;
    best_d[v] = d(0, v);
    best_parent[v] = 0;
  }
  best_parent[0] = -1;
  for (index_t step = 0; step + 1 < n; ++step) {
    // Edge indices only break exact ties, so they are computed (and prim_better, the GPU's rule,
    // applied) only on a tie; the unpredictable comparisons become selects.
    index_t pos = 0;
    for (index_t t = 1; t < remaining; ++t) {
      const index_t v = outside[t], w = outside[pos];
      const T dv = best_d[v], dw = best_d[w];
      bool better = dv < dw;
      if (dv == dw)
        better = prim_better(dv, edge_index(best_parent[v], v), dw, edge_index(best_parent[w], w));
      pos = better ? t : pos;
    }
    const index_t next = outside[pos];
    outside[pos] = outside[--remaining];
    const index_t p = best_parent[next];
    out[step] = MstEdge<T>{best_d[next], p < next ? p : next, p < next ? next : p};
    const T* row = d.row(next);
    for (index_t t = 0; t < remaining; ++t) {
      const index_t v = outside[t];
      const T dv = row[v], bv = best_d[v];
      bool better = dv < bv;
      if (dv == bv)
        better = prim_better(dv, edge_index(next, v), bv, edge_index(best_parent[v], v));
      best_d[v] = better ? dv : bv;
      best_parent[v] = better ? next : best_parent[v];
    }
  }
}

// H0 bars are reported in filtration order of their death edges. A NaN diameter (a cloud with
// non-finite points, which the CPU refuses and CUDA marks invalid afterwards) sorts last, by
// index, so the order stays strict: CUDA places bars by rank, and with NaN incomparable two
// bars would share a row and one row would stay unwritten.
template <typename T>
TSL_HD bool mst_edge_before(const MstEdge<T>& a, const MstEdge<T>& b) {
  return mst_edge_order(a.diameter, edge_index(a.u, a.v), b.diameter, edge_index(b.u, b.v));
}

// Is the edge {i, j} in the tree? `best_parent` as left by prim_mst.
TSL_HD bool is_tree_edge(const index_t* best_parent, index_t i, index_t j) {
  return best_parent[i] == j || best_parent[j] == i;
}

}  // namespace tsl
