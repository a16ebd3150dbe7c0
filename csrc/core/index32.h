// 32-bit vertex, edge and offset arithmetic for the device's per-step paths (the H1 reduction,
// h1_reduce_warp.h, and the per-cloud topology pass, topology_block.h): each 64-bit integer
// operation is two or more instructions on the device, and these paths are chains of dependent
// ones. A vertex is below kMaxPoints, a distance's offset i * n + k below kMaxPoints^2 and an
// edge index below C(kMaxPoints, 2) < 2^24; only a triangle index (C(n, 3), past 2^32) needs 64
// bits, and cofacet_index32 forms it there. The CPU engine keeps common.h's 64-bit forms; the
// native tests check these against them up to kMaxPoints.
#pragma once

#include "common.h"

namespace tsl {
namespace index32 {

using vertex_t = int32_t;
static_assert(kMaxPoints * kMaxPoints <= INT32_MAX, "distance offsets must fit vertex_t");

// Row i of d, read at 32-bit third vertices: the offset i * n + k in 32 unsigned bits, so that
// an address is one add and one wide multiply-add (from a signed offset, the compiler formed
// the 64-bit sum of the widened i * n and k, five instructions).
template <typename T>
struct Row32 {
  const T* data;
  uint32_t offset;
  TSL_HD Row32(const DistanceMatrix<T>& d, vertex_t i)
      : data(d.data), offset(uint32_t(i) * uint32_t(d.n)) {}
  TSL_HD T operator[](vertex_t k) const { return data[offset + uint32_t(k)]; }
};

// cofacet_index(i, j, k) for the edge {i > j} and a third vertex k: the same triangle index,
// its vertices a > b > c ordered by 32-bit min and max, C(b, 2) + c in 32 bits and C(a, 3) in
// 64 as C(a, 2) (a - 2) / 3, an exact division, so a product with the inverse of 3 modulo 2^64.
TSL_HD index_t cofacet_index32(vertex_t i, vertex_t j, vertex_t k) {
  const uint32_t a = uint32_t(k > i ? k : i), c = uint32_t(k < j ? k : j);
  const uint32_t b = uint32_t(k > i ? i : (k > j ? k : j));
  const uint64_t a3 = uint64_t(a * (a - 1) / 2) * (a - 2) * 0xAAAAAAAAAAAAAAABull;
  return index_t(a3 + (b * (b - 1) / 2 + c));
}

// edge_vertices in 32 bits: an edge index is below C(kMaxPoints, 2) < 2^24, so a float root
// (within one of the vertex) and 32-bit corrections give the same {i > j}.
TSL_HD void edge_vertices32(uint32_t idx, vertex_t n, vertex_t* i, vertex_t* j) {
  vertex_t v = vertex_t((1.0f + sqrtf(1.0f + 8.0f * float(idx))) * 0.5f);
  if (v > n - 1) v = n - 1;
  while (v > 1 && uint32_t(v) * uint32_t(v - 1) / 2 > idx) --v;
  while (v < n - 1 && uint32_t(v + 1) * uint32_t(v) / 2 <= idx) ++v;
  *i = v;
  *j = vertex_t(idx - uint32_t(v) * uint32_t(v - 1) / 2);
}
static_assert(kMaxPoints * (kMaxPoints - 1) / 2 < (1 << 24), "edge indices must be exact floats");

// edge_index in 32 bits (either argument order): C(i, 2) + j < 2^24 for vertices < kMaxPoints.
TSL_HD uint32_t edge_index32(vertex_t i, vertex_t j) {
  const uint32_t a = uint32_t(i > j ? i : j), b = uint32_t(i > j ? j : i);
  return a * (a - 1) / 2 + b;
}

// Distances at 32-bit vertices, for the per-cloud topology pass: d(i, k) at the offset i * n + k
// in 32 unsigned bits (Row32's form: a multiply-add and a wide multiply-add an address), read on
// the device through the read-only data cache (ld.global.nc, as the kernel's const __restrict__
// matrix was read): the kernel hands the pass an opaque pointer (topology.cu), whose loads the
// compiler would otherwise make generic.
template <typename T>
struct Dist32 {
  const T* data;
  uint32_t n;
  TSL_HD explicit Dist32(const DistanceMatrix<T>& d) : data(d.data), n(uint32_t(d.n)) {}
  TSL_HD T operator()(vertex_t i, vertex_t k) const {
    const T* p = data + (uint32_t(i) * n + uint32_t(k));
#if defined(__CUDA_ARCH__)
    return __ldg(p);
#else
    return *p;
#endif
  }
};

}  // namespace index32
}  // namespace tsl
