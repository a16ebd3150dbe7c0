// The scalar engine as the native tests' reference for the device's reduction paths: one
// cloud's H1 column list (what a reduction takes) and its pairs, in the diagram order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/vr_engine.h"

namespace tsl_test {

template <typename T>
void sort_by_diagram(std::vector<tsl::H1Pair<T>>& pairs) {
  std::sort(pairs.begin(), pairs.end(), [](const tsl::H1Pair<T>& a, const tsl::H1Pair<T>& b) {
    return tsl::h1_pair_before(a, b);
  });
}

// Whether two pair lists in the diagram order are the same bars: values, birth edges and death
// triangles.
template <typename T>
bool same_pairs(const std::vector<tsl::H1Pair<T>>& a, const std::vector<tsl::H1Pair<T>>& b) {
  if (a.size() != b.size()) return false;
  for (size_t q = 0; q < a.size(); ++q)
    if (!(a[q].birth == b[q].birth && a[q].death == b[q].death &&
          a[q].birth_edge == b[q].birth_edge && a[q].death_triangle == b[q].death_triangle))
      return false;
  return true;
}

template <typename T>
struct EngineReference {
  std::vector<tsl::H1Column<T>> columns;
  std::vector<tsl::H1Pair<T>> pairs;  // in the diagram order
};

// The engine's run of the cloud with distance matrix dist (n x n).
template <typename T>
EngineReference<T> engine_reference(const std::vector<T>& dist, int64_t n) {
  const int64_t K = n * n;
  std::vector<T> h0(2 * n), h1(2 * K);
  std::vector<int64_t> h0_edges(2 * n), h1_edges(4 * K), count(1);
  bool truncated = false;
  tsl::HostWorkspace<T> ws;  // keeps the columns and the pairs
  tsl::vr_persistence_cloud(dist.data(), n, 1,
                            tsl::CloudOutput<T>{h0.data(), h0_edges.data(), h1.data(),
                                                h1_edges.data(), &count[0], &truncated, K},
                            ws);
  EngineReference<T> ref{ws.columns, ws.pairs};
  sort_by_diagram(ref.pairs);
  return ref;
}

}  // namespace tsl_test
