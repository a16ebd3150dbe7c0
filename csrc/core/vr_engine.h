// The CPU engine: Vietoris–Rips persistence (H0 and H1) of one cloud from its distance matrix.
//
// Host-only (std::vector workspaces, std::sort) but torch-free, so the native test program and
// the torch CPU op run the same code. The per-simplex rules it calls (filtration order, Prim's
// comparison, apparent pairs, the reduction) are the host/device ones the CUDA kernels use.
#pragma once

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "h0_mst.h"
#include "h1_reduce.h"
#include "sweep_x86.h"
#include "x86_level.h"

namespace tsl {

// Output views for one cloud. Shapes: h0 (n-1, 2), h0_edges (n-1, 2), h1 (capacity, 2),
// h1_edges (capacity, 4). Rows of h1 past the reported ones are padding: values 0, edges -1.
template <typename T>
struct CloudOutput {
  T* h0;
  int64_t* h0_edges;
  T* h1;
  int64_t* h1_edges;
  int64_t* h1_count;
  bool* truncated;
  index_t h1_capacity;
};

// Buffers reused across the clouds one thread processes: no allocation per column, and after
// the first clouds none per cloud either.
template <typename T>
struct HostWorkspace {
  std::vector<T> best_d;
  std::vector<index_t> best_parent;
  std::vector<MstEdge<T>> mst;
  std::vector<H1Column<T>> columns;
  std::vector<std::vector<H1Column<T>>> column_parts;  // per chunk of a split sweep
  std::vector<H1Pair<T>> pairs;
  std::vector<Entry<T>> heap;
  std::vector<index_t> outside, vheap, pivot_keys, pivot_slots, v_start, v_length, v_arena;
  index_t heap_capacity = 1 << 12;  // of heap, the working coboundary
  index_t vheap_capacity = 1 << 10;  // of vheap, the working column of V
  index_t arena_capacity = 1 << 12;
};

// Runs body(c) for every chunk c in [0, chunks). The engine's own default runs them in order; a
// caller with idle threads (the CPU op on a lone cloud) passes one that runs them in parallel.
struct SerialChunks {
  template <class Body>
  void operator()(index_t chunks, const Body& body) const {
    for (index_t c = 0; c < chunks; ++c) body(c);
  }
};

// Columns of the H1 reduction among the edges {i > j} with i in [i0, i1): below the threshold,
// neither tree edges nor facets of apparent pairs. Appended to `columns`, unsorted.
// The portable build, the shared in_apparent_pair per edge; sweep_h1_columns picks the build.
template <typename T>
inline void sweep_h1_columns_portable(const DistanceMatrix<T>& d, T threshold,
                                      const index_t* best_parent, index_t i0, index_t i1,
                                      std::vector<H1Column<T>>& columns) {
  for (index_t i = i0 < 1 ? 1 : i0; i < i1; ++i) {
    const T* ri = d.row(i);
    for (index_t j = 0; j < i; ++j) {
      T de = ri[j];
      if (de > threshold || is_tree_edge(best_parent, i, j)) continue;
      if (in_apparent_pair(d, i, j, de)) continue;
      columns.push_back(H1Column<T>{de, i, j});
    }
  }
}

// Columns of the H1 reduction among the edges {i > j} with i in [i0, i1) (see
// sweep_h1_columns_portable), by the fastest build for this CPU; all give the same columns in
// the same order.
template <typename T>
inline void sweep_h1_columns(const DistanceMatrix<T>& d, T threshold, const index_t* best_parent,
                             index_t i0, index_t i1, std::vector<H1Column<T>>& columns) {
#ifdef TSL_X86_BANDS
  if (x86_level() == 4)
    return sweep_h1_columns_avx512(d, threshold, best_parent, i0, i1, columns);
  if (x86_level() == 3) return sweep_h1_columns_avx2(d, threshold, best_parent, i0, i1, columns);
#endif
  sweep_h1_columns_portable(d, threshold, best_parent, i0, i1, columns);
}

// All columns of the H1 reduction, in reverse filtration order. The sweep is independent per
// edge, so it is cut into `chunks` row ranges of about equal edge counts, each swept into its own
// part by `run_chunks`.
template <typename T, class RunChunks = SerialChunks>
inline void collect_h1_columns(const DistanceMatrix<T>& d, T threshold,
                               const index_t* best_parent, std::vector<H1Column<T>>& columns,
                               std::vector<std::vector<H1Column<T>>>& parts, index_t chunks = 1,
                               const RunChunks& run_chunks = RunChunks()) {
  columns.clear();
  if (chunks <= 1) {
    sweep_h1_columns(d, threshold, best_parent, 1, d.n, columns);
  } else {
    if ((index_t)parts.size() < chunks) parts.resize(chunks);
    // Row i holds i edges: the boundaries of equal edge counts are at n * sqrt(c / chunks).
    auto boundary = [&](index_t c) {
      return c >= chunks ? d.n : (index_t)((double)d.n * sqrt((double)c / (double)chunks));
    };
    run_chunks(chunks, [&](index_t c) {
      parts[c].clear();
      sweep_h1_columns(d, threshold, best_parent, boundary(c), boundary(c + 1), parts[c]);
    });
    for (index_t c = 0; c < chunks; ++c)
      columns.insert(columns.end(), parts[c].begin(), parts[c].end());
  }
  // Lambdas, not function pointers: the comparisons inline into the sorts.
  std::sort(columns.begin(), columns.end(),
            [](const H1Column<T>& a, const H1Column<T>& b) { return column_before(a, b); });
}

template <typename T>
inline void run_h1_reduction(const DistanceMatrix<T>& d, T threshold, HostWorkspace<T>& ws) {
  const index_t m = (index_t)ws.columns.size();
  const index_t pivot_capacity = pivot_table_capacity(m);
  ws.pivot_keys.resize(pivot_capacity);
  ws.pivot_slots.resize(pivot_capacity);
  ws.v_start.resize(m + 1);
  ws.v_length.resize(m + 1);
  ws.pairs.resize(m + 1);
  ws.heap.resize(ws.heap_capacity);
  ws.vheap.resize(ws.vheap_capacity);
  H1Workspace<T> w{
      EntryHeap<T>{ws.heap.data(), 0, ws.heap_capacity, false},
      IndexHeap{ws.vheap.data(), 0, ws.vheap_capacity},
      PivotTable{ws.pivot_keys.data(), ws.pivot_slots.data(), pivot_capacity, 0},
      ws.v_start.data(), ws.v_length.data(), m + 1,
      nullptr, 0, 0, 0};  // the arena: sized for each column below
  index_t num_pairs = 0;
  // One column a call, resuming where the last call stopped (see reduce_h1), so that the
  // arena can grow between columns and a full heap between calls.
  while (w.columns_done < m) {
    // Room in the arena for a V column as long as the V heap can hold: storing a column, the
    // last step of its reduction, then never overflows.
    while (w.arena_size + ws.vheap_capacity > ws.arena_capacity) ws.arena_capacity *= 2;
    ws.v_arena.resize(ws.arena_capacity);  // keeps the V columns stored so far
    w.v_arena = ws.v_arena.data();
    w.arena_capacity = ws.arena_capacity;
    const Status s = reduce_h1(d, ws.columns.data(), w.columns_done + 1, threshold, w,
                               ws.pairs.data(), (index_t)ws.pairs.size(), &num_pairs);
    if (s == kOk) continue;
    // kHeapFull: the full heap grows and the column resumes (see reduce_column). The other
    // buffers cannot overflow: they are sized exactly above, the arena for every column. Were
    // that ever false, growing a heap would not help and the loop would never end: fail loudly.
    if (s != kHeapFull)
      throw std::logic_error("tsloss_cuda: the H1 reduction overflowed a buffer sized for it");
    if (w.coboundary.size == w.coboundary.capacity) {
      ws.heap_capacity *= 2;
      ws.heap.clear();  // enumerated again from V: nothing to copy
      ws.heap.resize(ws.heap_capacity);
      w.coboundary = EntryHeap<T>{ws.heap.data(), 0, ws.heap_capacity, false};
    } else {
      ws.vheap_capacity *= 2;
      ws.vheap.resize(ws.vheap_capacity);  // copies V, still a heap
      w.reduction.data = ws.vheap.data();
      w.reduction.capacity = ws.vheap_capacity;
    }
  }
  ws.pairs.resize(num_pairs);
}

// H1 outputs before any pair is known: padding rows (zeros, edges -1), count 0.
template <typename T>
inline void clear_h1_output(CloudOutput<T> out) {
  for (index_t r = 0; r < out.h1_capacity; ++r) {
    out.h1[2 * r] = out.h1[2 * r + 1] = T(0);
    for (int c = 0; c < 4; ++c) out.h1_edges[4 * r + c] = -1;
  }
  *out.h1_count = 0;
  *out.truncated = false;
}

// Writes the reduction's pairs in the diagram order (h1_pair_before), the first
// out.h1_capacity of them, with their birth and death edges; every engine reports through it.
template <typename T>
inline void report_h1_pairs(const DistanceMatrix<T>& d, std::vector<H1Pair<T>>& pairs,
                            CloudOutput<T> out) {
  const index_t count = (index_t)pairs.size();
  const index_t keep = count < out.h1_capacity ? count : out.h1_capacity;
  std::partial_sort(pairs.begin(), pairs.begin() + keep, pairs.end(),
                    [](const H1Pair<T>& a, const H1Pair<T>& b) { return h1_pair_before(a, b); });
  *out.h1_count = count;
  *out.truncated = count > out.h1_capacity;
  for (index_t r = 0; r < keep; ++r) {
    const H1Pair<T>& p = pairs[r];
    index_t i, j;
    edge_vertices(p.birth_edge, d.n, &i, &j);
    out.h1[2 * r] = p.birth;
    out.h1[2 * r + 1] = p.death;
    out.h1_edges[4 * r] = j;
    out.h1_edges[4 * r + 1] = i;
    if (p.death_triangle >= 0)
      death_edge(d, p.death_triangle, &out.h1_edges[4 * r + 2], &out.h1_edges[4 * r + 3]);
  }
}

// Persistence of one cloud. `dist` is a dense symmetric (n, n) matrix with zero diagonal.
// maxdim 0 computes H0 only (h1 rows all padding, count 0).
// `chunks` and `run_chunks` split the apparent-pair sweep (see collect_h1_columns); the result
// does not depend on them.
template <typename T, class RunChunks = SerialChunks>
inline void vr_persistence_cloud(const T* dist, index_t n, int maxdim, CloudOutput<T> out,
                                 HostWorkspace<T>& ws, index_t chunks = 1,
                                 const RunChunks& run_chunks = RunChunks()) {
  clear_h1_output(out);
  if (n <= 1) return;

  DistanceMatrix<T> d{dist, n};
  ws.best_d.resize(n);
  ws.best_parent.resize(n);
  ws.outside.resize(n);
  ws.mst.resize(n - 1);
  prim_mst(d, ws.best_d.data(), ws.best_parent.data(), ws.outside.data(), ws.mst.data());
  std::vector<MstEdge<T>>& sorted_mst = ws.mst;
  std::sort(sorted_mst.begin(), sorted_mst.end(),
            [](const MstEdge<T>& a, const MstEdge<T>& b) { return mst_edge_before(a, b); });
  for (index_t r = 0; r + 1 < n; ++r) {
    out.h0[2 * r] = T(0);
    out.h0[2 * r + 1] = sorted_mst[r].diameter;
    out.h0_edges[2 * r] = sorted_mst[r].u;
    out.h0_edges[2 * r + 1] = sorted_mst[r].v;
  }
  if (maxdim < 1 || n < 3) return;

  const T threshold = enclosing_radius(d);
  collect_h1_columns(d, threshold, ws.best_parent.data(), ws.columns, ws.column_parts, chunks,
                     run_chunks);
  run_h1_reduction(d, threshold, ws);

  report_h1_pairs(d, ws.pairs, out);
}

}  // namespace tsl
