// Implicit coboundaries of edges and the apparent-pair test, shared by CPU and GPU.
//
// The coboundary of an edge {i > j} is the set of triangles {i, j, k}; it is never stored, only
// enumerated from the distance matrix. An edge e and a triangle t form an apparent pair when t
// is e's earliest cofacet and e is t's latest facet (both in filtration order) and they have
// the same diameter. Apparent pairs are persistence pairs of zero persistence, so their columns
// need no reduction: on the GPU every edge is tested by its own thread.
#pragma once

#include <string.h>

#include "band_x86.h"
#include "common.h"

namespace tsl {

// Diameter of the triangle {i, j, k} given the diameter of the edge {i, j}.
template <typename T>
TSL_HD T cofacet_diameter(const DistanceMatrix<T>& d, T edge_diameter, index_t i, index_t j,
                          index_t k) {
  T a = d(i, k), b = d(j, k);
  T m = a > b ? a : b;
  return m > edge_diameter ? m : edge_diameter;
}

// Triangle index of {i, j, k} for an edge i > j and a third vertex k.
TSL_HD index_t cofacet_index(index_t i, index_t j, index_t k) {
  if (k > i) return triangle_index(k, i, j);
  if (k > j) return triangle_index(i, k, j);
  return triangle_index(i, j, k);
}

// ---- Blocks of third vertices as bit masks -------------------------------------------------
// Scans over the third vertex k of an edge's cofacets are done a block of kBlock vertices at a
// time: a branch-free pass builds a mask of the k that qualify, and only its set bits are
// visited. Outcomes of the per-vertex tests are unpredictable, so this beats branching.
constexpr index_t kBlock = 32;

TSL_HD int highest_bit(uint32_t m) {
#if defined(__CUDA_ARCH__)
  return 31 - __clz(m);
#else
  return 31 - __builtin_clz(m);
#endif
}

// Bit t set for each t < hi - lo (hi - lo <= kBlock) whose vertex k = lo + t makes a triangle
// {i, j, k} with the edge {i, j} (rows ri, rj, length de) of diameter in (lower, upper]. Two
// builds of the same mask: bit by bit in a register (the device's), and as byte flags that the
// host compiler vectorises, packed eight at a time by one multiply (little-endian, as x86 and
// ARM are); x86 hosts with AVX2 or AVX-512 use vector compares instead (band_x86.h). The native
// tests check that they all agree.
template <typename T>
TSL_HD uint32_t band_bits(const T* ri, const T* rj, T de, T lower, T upper, index_t lo,
                          index_t hi) {
  uint32_t m = 0;
  for (index_t t = 0; t < hi - lo; ++t) {
    T diam = ri[lo + t] > rj[lo + t] ? ri[lo + t] : rj[lo + t];
    diam = diam > de ? diam : de;
    m |= uint32_t((diam > lower) & (diam <= upper)) << t;
  }
  return m;
}

template <typename T>
inline uint32_t band_flags(const T* ri, const T* rj, T de, T lower, T upper, index_t lo,
                           index_t hi) {
  unsigned char flag[kBlock] = {};
  for (index_t t = 0; t < hi - lo; ++t) {
    T diam = ri[lo + t] > rj[lo + t] ? ri[lo + t] : rj[lo + t];
    diam = diam > de ? diam : de;
    flag[t] = (unsigned char)((diam > lower) & (diam <= upper));
  }
  uint32_t m = 0;
  for (int q = 0; q < int(kBlock / 8); ++q) {
    uint64_t w;
    memcpy(&w, flag + 8 * q, 8);
    m |= uint32_t((w * 0x0102040810204080ull) >> 56) << (8 * q);
  }
  return m;
}

// Bit (k - lo) set for each k in [lo, hi) (hi - lo <= kBlock), k neither i nor j, whose cofacet
// {i, j, k} of the edge {i, j} (length de) has its diameter in (lower, upper].
template <typename T>
TSL_HD uint32_t cofacet_mask(const DistanceMatrix<T>& d, index_t i, index_t j, T de, T lower,
                             T upper, index_t lo, index_t hi) {
#if defined(__CUDA_ARCH__)
  uint32_t m = band_bits(d.row(i), d.row(j), de, lower, upper, lo, hi);
#else
  uint32_t m;
  if (!band_mask_x86(d.row(i), d.row(j), de, lower, upper, lo, hi, &m))
    m = band_flags(d.row(i), d.row(j), de, lower, upper, lo, hi);
#endif
  // i and j themselves always pass (their "cofacet" has the edge's own length); drop them.
  if (i >= lo && i < hi) m &= ~(uint32_t(1) << (i - lo));
  if (j >= lo && j < hi) m &= ~(uint32_t(1) << (j - lo));
  return m;
}

// The largest third vertex k (neither i nor j) within `reach` of both ends of the edge {i, j}
// (length de <= reach), or -1. With reach = de: the vertices whose cofacet has the edge's own
// length.
template <typename T>
TSL_HD index_t last_vertex_within(const DistanceMatrix<T>& d, index_t i, index_t j, T de,
                                  T reach) {
  for (index_t hi = d.n; hi > 0; hi -= kBlock) {
    const index_t lo = hi > kBlock ? hi - kBlock : 0;
    const uint32_t m = cofacet_mask(d, i, j, de, T(-1), reach, lo, hi);
    if (m) return lo + highest_bit(m);
  }
  return -1;
}

// Earliest cofacet (in filtration order) of the edge {i > j} among triangles of diameter
// <= threshold; {.., -1} if none. A cofacet's index grows with its third vertex k, so among
// equal diameters the largest k wins. First the common case, a k within the edge's own length
// of both ends (the cofacet cannot be beaten); failing that, the least far side over all k.
template <typename T>
TSL_HD Entry<T> earliest_cofacet(const DistanceMatrix<T>& d, index_t i, index_t j,
                                 T edge_diameter, T threshold) {
  if (edge_diameter > threshold) return Entry<T>{T(0), -1};  // every cofacet is beyond it
  const index_t within = last_vertex_within(d, i, j, edge_diameter, edge_diameter);
  if (within >= 0) return Entry<T>{edge_diameter, cofacet_index(i, j, within)};
  // The least far side first, in kLanes independent minima that the host compiler vectorises;
  // then the largest k attaining it: the last vertex within that reach.
  constexpr int kLanes = 8;
  const T* ri = d.row(i);
  const T* rj = d.row(j);
  T lane_best[kLanes];
  for (int l = 0; l < kLanes; ++l) lane_best[l] = T(INFINITY);
  for (index_t k0 = 0; k0 < d.n; k0 += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const index_t k = k0 + l < d.n ? k0 + l : i;  // past the end: a stand-in that is skipped
      T a = ri[k] > rj[k] ? ri[k] : rj[k];
      a = (k == i || k == j) ? T(INFINITY) : a;
      lane_best[l] = a < lane_best[l] ? a : lane_best[l];
    }
  }
  T best = lane_best[0];
  for (int l = 1; l < kLanes; ++l) best = lane_best[l] < best ? lane_best[l] : best;
  if (!(best <= threshold)) return Entry<T>{T(0), -1};
  return Entry<T>{best, cofacet_index(i, j, last_vertex_within(d, i, j, edge_diameter, best))};
}

// Latest facet (in filtration order) of the triangle {a > b > c}: the longest edge; among
// equally long edges the one of smallest index, i.e. {b,c} before {a,c} before {a,b}.
template <typename T>
TSL_HD Entry<T> latest_facet(const DistanceMatrix<T>& d, index_t a, index_t b, index_t c) {
  T dbc = d(b, c), dac = d(a, c), dab = d(a, b);
  Entry<T> best{dbc, edge_index(b, c)};
  if (dac > best.diameter) best = Entry<T>{dac, edge_index(a, c)};
  if (dab > best.diameter) best = Entry<T>{dab, edge_index(a, b)};
  return best;
}

template <typename T>
TSL_HD Entry<T> latest_facet(const DistanceMatrix<T>& d, index_t triangle) {
  index_t a, b, c;
  triangle_vertices(triangle, d.n, &a, &b, &c);
  return latest_facet(d, a, b, c);
}

// The longest edge of a triangle as a vertex pair (u < v): the edge whose length is the
// triangle's diameter, and so the edge that carries the gradient of an H1 death.
template <typename T>
TSL_HD void death_edge(const DistanceMatrix<T>& d, index_t triangle, index_t* u, index_t* v) {
  Entry<T> f = latest_facet(d, triangle);
  index_t i, j;
  edge_vertices(f.index, d.n, &i, &j);
  *u = j;
  *v = i;
}

// Whether the edge {i > j} of length de is the latest facet of the triangle {i, j, k} whose
// other sides d_ik and d_jk are at most de: latest_facet's answer, from values the caller has.
// With the vertices ordered a > b > c, latest_facet prefers {b,c}, then {a,c}, then {a,b} among
// equally long edges, so {i, j} loses exactly to an equally long side that comes first.
template <typename T>
TSL_HD bool is_latest_facet(index_t i, index_t j, index_t k, T de, T dik, T djk) {
  if (k > i) return true;              // {i, j} is {b, c}
  if (k > j) return djk != de;         // {i, j} is {a, c}: only {b, c} = {k, j} comes first
  return djk != de && dik != de;       // {i, j} is {a, b}: {j, k} and {i, k} come first
}

// Whether the edge {i > j} (diameter de <= the threshold) is the facet of a zero-persistence
// apparent pair: its earliest cofacet has the edge's own diameter, i.e. some k is within de of
// both ends (the largest such k gives the earliest), and the edge is that triangle's latest
// facet. The CUDA flag kernel tests every edge with this; the CPU sweep finds k with vector
// compares where it can (sweep_x86.h) and decides with is_latest_facet.
template <typename T>
TSL_HD bool in_apparent_pair(const DistanceMatrix<T>& d, index_t i, index_t j, T de) {
  const index_t k = last_vertex_within(d, i, j, de, de);
  return k >= 0 && is_latest_facet(i, j, k, de, d(i, k), d(j, k));
}

// If the triangle t is the cofacet of a zero-persistence apparent pair, returns its partner
// edge; otherwise {.., -1}.
template <typename T>
TSL_HD Entry<T> apparent_facet(const DistanceMatrix<T>& d, Entry<T> t, T threshold) {
  Entry<T> f = latest_facet(d, t.index);
  if (f.diameter == t.diameter) {
    index_t i, j;
    edge_vertices(f.index, d.n, &i, &j);
    Entry<T> back = earliest_cofacet(d, i, j, f.diameter, threshold);
    if (back.index == t.index) return f;
  }
  return Entry<T>{T(0), -1};
}

}  // namespace tsl
