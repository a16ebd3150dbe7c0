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

// Is the candidate edge (d, idx) better than the current best (bd, bidx)? bidx < 0: no best.
template <typename T>
TSL_HD bool prim_better(T d, index_t idx, T bd, index_t bidx) {
  return bidx < 0 || filtration_less(d, idx, bd, bidx);
}

// Sequential Prim for one cloud. `best_d`, `best_parent` and `in_tree` are workspaces of n
// entries. Writes n-1 edges in the order vertices join the tree. The CUDA kernel runs the same
// relaxation and comparison with one thread per vertex and a block-wide argmin.
template <typename T>
TSL_HD void prim_mst(const DistanceMatrix<T>& d, T* best_d, index_t* best_parent,
                     unsigned char* in_tree, MstEdge<T>* out) {
  const index_t n = d.n;
  if (n <= 1) return;
  for (index_t v = 0; v < n; ++v) {
    in_tree[v] = 0;
    best_d[v] = T(0);
    best_parent[v] = -1;
  }
  index_t current = 0;
  in_tree[0] = 1;
  for (index_t step = 0; step + 1 < n; ++step) {
    const T* row = d.row(current);
    index_t next = -1;
    T next_d = T(0);
    index_t next_idx = -1;
    for (index_t v = 0; v < n; ++v) {
      if (in_tree[v]) continue;
      T dv = row[v];
      index_t iv = edge_index(current, v);
      index_t bi = best_parent[v] < 0 ? -1 : edge_index(best_parent[v], v);
      if (prim_better(dv, iv, best_d[v], bi)) {
        best_d[v] = dv;
        best_parent[v] = current;
        bi = iv;
      }
      if (prim_better(best_d[v], bi, next_d, next_idx)) {
        next = v;
        next_d = best_d[v];
        next_idx = bi;
      }
    }
    in_tree[next] = 1;
    index_t p = best_parent[next];
    out[step] = MstEdge<T>{next_d, p < next ? p : next, p < next ? next : p};
    current = next;
  }
}

// H0 bars are reported in filtration order of their death edges.
template <typename T>
TSL_HD bool mst_edge_before(const MstEdge<T>& a, const MstEdge<T>& b) {
  return filtration_less(a.diameter, edge_index(a.u, a.v), b.diameter, edge_index(b.u, b.v));
}

// Is the edge {i, j} in the tree? `best_parent` as left by prim_mst.
TSL_HD bool is_tree_edge(const index_t* best_parent, index_t i, index_t j) {
  return best_parent[i] == j || best_parent[j] == i;
}

}  // namespace tsl
