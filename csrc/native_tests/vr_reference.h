// A deliberately plain Vietoris–Rips persistence (H0 and H1) of a small cloud (N up to ~16),
// the native tests' independent reference for the engine's diagrams.
//
// Why it is independent of csrc/core: it takes none of the engine's shortcuts (no spanning
// tree, no apparent pairs, no enclosing-radius threshold, no implicit coboundaries, no
// cohomology, no clearing) and none of its code: every vertex, edge and triangle is listed
// with its diameter, the whole boundary matrix of the 2-skeleton is built, and the textbook
// standard algorithm reduces it over Z/2 column by column. By default its order among equal
// diameters (dimension, then vertex lists lexicographically) is not the engine's (reverse
// colexicographic indices) on purpose: the diagram as a multiset of bars of positive length is
// the same for every total order that refines the diameters and puts each face before its
// cofaces (the homology of each sublevel complex does not depend on it; a tie rule only pairs
// simplices of one diameter differently, which moves zero-length bars alone). So comparing
// values checks the engine's answers without copying its conventions.
//
// Which simplices a bar pairs does depend on the order. For that, Order::kRipser takes the
// order the engine documents (README: ripser.py's; equal diameters by decreasing index in the
// combinatorial number system), under which the pairing is unique, so that the engine's birth
// and death edges can be checked as well: still by this file's own reduction.
#pragma once

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <utility>
#include <vector>

namespace tsl_ref {

enum class Order { kLexicographic, kRipser };

template <typename T>
struct RefBar {
  T birth, death;
  int birth_vertices[3];  // ascending, unused entries -1: a vertex (H0) or an edge (H1)
  int death_vertices[3];  // an edge (H0) or a triangle (H1)
  int birth_position;     // in the filtration order used
};

template <typename T>
struct RefDiagram {
  std::vector<RefBar<T>> h0;  // the N - 1 finite H0 bars (all born at 0), by death position
  std::vector<RefBar<T>> h1;  // H1 bars with death > birth, by death position
  int h1_zero_length = 0;     // H1 pairs with death == birth (not bars)
  int essential_h0 = 0;       // classes never killed: 1 for N >= 1
  int essential_h1 = 0;       // 0: the full 2-skeleton of a simplex has no H1
};

// dist: n x n, row-major, symmetric, zero diagonal. Cost O(m^3) for m = C(n+1, 2) + C(n, 3)
// simplices at worst: meant for n <= ~16.
template <typename T>
RefDiagram<T> vr_reference(const T* dist, int n, Order order = Order::kLexicographic) {
  struct Simplex {
    T diameter;
    int dim;
    int v[3];  // ascending; unused entries -1
    int64_t index;  // in the combinatorial number system, for Order::kRipser
  };
  auto d = [&](int i, int j) { return dist[i * n + j]; };
  auto max3 = [](T a, T b, T c) { return std::max(a, std::max(b, c)); };
  auto binom = [](int64_t a, int k) {
    int64_t r = 1;
    for (int t = 0; t < k; ++t) r = r * (a - t) / (t + 1);
    return a < k ? int64_t(0) : r;
  };

  std::vector<Simplex> s;
  for (int i = 0; i < n; ++i) s.push_back(Simplex{T(0), 0, {i, -1, -1}, i});
  for (int i = 0; i < n; ++i)
    for (int j = i + 1; j < n; ++j)
      s.push_back(Simplex{d(i, j), 1, {i, j, -1}, binom(j, 2) + i});
  for (int i = 0; i < n; ++i)
    for (int j = i + 1; j < n; ++j)
      for (int k = j + 1; k < n; ++k)
        s.push_back(Simplex{max3(d(i, j), d(i, k), d(j, k)), 2, {i, j, k},
                            binom(k, 3) + binom(j, 2) + i});
  // A face's diameter never exceeds its coface's, and at equal diameters the lower dimension
  // comes first: each simplex follows its faces, as a filtration must.
  std::sort(s.begin(), s.end(), [order](const Simplex& a, const Simplex& b) {
    if (a.diameter != b.diameter) return a.diameter < b.diameter;
    if (a.dim != b.dim) return a.dim < b.dim;
    if (order == Order::kRipser) return a.index > b.index;
    return std::lexicographical_compare(a.v, a.v + 3, b.v, b.v + 3);
  });

  const int m = (int)s.size();
  std::vector<int> vertex_pos(n), edge_pos(n * n, -1);
  for (int p = 0; p < m; ++p) {
    if (s[p].dim == 0) vertex_pos[s[p].v[0]] = p;
    if (s[p].dim == 1) edge_pos[s[p].v[0] * n + s[p].v[1]] = p;
  }
  // Boundaries as ascending lists of filtration positions; the pivot (low) is the last one.
  std::vector<std::vector<int>> col(m);
  for (int p = 0; p < m; ++p) {
    const int* v = s[p].v;
    if (s[p].dim == 1) col[p] = {vertex_pos[v[0]], vertex_pos[v[1]]};
    if (s[p].dim == 2)
      col[p] = {edge_pos[v[0] * n + v[1]], edge_pos[v[0] * n + v[2]], edge_pos[v[1] * n + v[2]]};
    std::sort(col[p].begin(), col[p].end());
  }

  std::vector<int> owner(m, -1);  // owner[r]: the reduced column whose low is r
  std::vector<bool> paired(m, false);
  RefDiagram<T> out;
  std::vector<int> sum;
  for (int p = 0; p < m; ++p) {
    std::vector<int>& c = col[p];
    while (!c.empty() && owner[c.back()] >= 0) {
      const std::vector<int>& other = col[owner[c.back()]];
      sum.clear();
      std::set_symmetric_difference(c.begin(), c.end(), other.begin(), other.end(),
                                    std::back_inserter(sum));
      c.swap(sum);
    }
    if (c.empty()) continue;
    const int low = c.back();
    owner[low] = p;
    paired[low] = paired[p] = true;
    RefBar<T> bar{s[low].diameter, s[p].diameter, {}, {}, low};
    std::copy(s[low].v, s[low].v + 3, bar.birth_vertices);
    std::copy(s[p].v, s[p].v + 3, bar.death_vertices);
    if (s[low].dim == 0) out.h0.push_back(bar);
    if (s[low].dim == 1) {
      if (bar.death > bar.birth)
        out.h1.push_back(bar);
      else
        ++out.h1_zero_length;
    }
  }
  // A simplex that is neither a pivot nor has a nonzero reduced column creates a class that
  // never dies (triangles' would be H2, not asked for).
  for (int p = 0; p < m; ++p)
    if (!paired[p] && col[p].empty()) {
      out.essential_h0 += s[p].dim == 0;
      out.essential_h1 += s[p].dim == 1;
    }
  return out;
}

}  // namespace tsl_ref
