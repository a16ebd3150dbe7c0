// Which of a cloud's reported edges touch each point, in the order the TSLoss gradient adds
// them (the CPU's order): the H0 death edges, then per H1 bar its birth edge and its death edge.
//
// The CUDA gradient kernel runs one thread per (point, coordinate). Each thread once scanned
// every reported edge of its cloud (H0 + K of them) to find the few that touch its point: at
// (N, D, B) = (256, 768, 1024) that scan was 2 * 10^11 iterations and 84 % of a TSLoss
// forward+backward on the H200 (576 of 690 ms, benchmarks/results/h200-2026-12-04). A point's
// incidences are now listed once per cloud, as keys 2e + side in increasing order, so each
// thread reads only its own point's few, and adds them in the same order: the same bits.
#pragma once

#include <stdint.h>

#include "common.h"

namespace tsl {

// Sides of reported edge e: an H0 row has one edge, an H1 bar two (birth, then death).
TSL_HD int edge_sides(int64_t e, int64_t H0) { return e < H0 ? 1 : 2; }

struct EdgeEnds {
  int64_t u, v;
};

// The endpoints of one side of reported edge e of a cloud: h0_edges (H0, 2) and h1_edges (K, 4)
// are that cloud's rows.
TSL_HD EdgeEnds edge_endpoints(int64_t e, int side, int64_t H0, const int64_t* h0_edges,
                               const int64_t* h1_edges) {
  const int64_t* p = e < H0 ? h0_edges + 2 * e : h1_edges + 4 * (e - H0) + 2 * side;
  return EdgeEnds{p[0], p[1]};
}

// Whether the edge (u, v) gives point i a gradient term: both endpoints are points of the
// cloud, distinct, and one of them is i (rows past h1_count hold -1, invalid input anything).
TSL_HD bool edge_touches(int64_t i, int64_t N, int64_t u, int64_t v) {
  return u >= 0 && v >= 0 && u < N && v < N && u != v && (u == i || v == i);
}

// Point i's incidences among a cloud's E = H0 + K reported edges of weights w (0: no term), in
// gradient order, as keys 2e + side; written to keys when it is not null. Returns how many.
// At most 2 H0 + 4 K keys in a cloud (each H0 edge has two endpoints, each bar two edges).
TSL_HD int64_t point_incidences(int64_t i, int64_t N, int64_t H0, int64_t K,
                                const double* w, const int64_t* h0_edges,
                                const int64_t* h1_edges, int64_t* keys) {
  int64_t n = 0;
  for (int64_t e = 0; e < H0 + K; ++e) {
    if (w[e] == 0.0) continue;
    for (int side = 0; side < edge_sides(e, H0); ++side) {
      const EdgeEnds p = edge_endpoints(e, side, H0, h0_edges, h1_edges);
      if (!edge_touches(i, N, p.u, p.v)) continue;
      if (keys != nullptr) keys[n] = 2 * e + side;
      ++n;
    }
  }
  return n;
}

// Keys a cloud's incidence lists may hold, the sum over its points of point_incidences.
TSL_HD int64_t incidence_capacity(int64_t N, int64_t K) {
  return 2 * (N > 0 ? N - 1 : 0) + 4 * K;
}

}  // namespace tsl
