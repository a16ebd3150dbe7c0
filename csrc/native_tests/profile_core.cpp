// Where one thread's time goes in the CPU engine, phase by phase, on seeded Gaussian clouds:
//
//   profile_core N D B [reps]
//
// Prints microseconds per cloud for the distances (whole-cloud tiles, float32 points widened to
// double) and for each phase of vr_persistence_cloud: Prim, sorting the tree edges, the
// enclosing radius, the apparent-pair sweep that collects the H1 columns, and the reduction.
// Each phase is timed over the whole batch, best of `reps` passes. A native harness, so perf and
// callgrind see the engine without Python or torch: `perf record ./profile_core 32 2048 64`.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "core/vr_engine.h"
#include "cpu/distance_tiles.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s N D B [reps]\n", argv[0]);
    return 2;
  }
  const int64_t n = std::atoll(argv[1]), dim = std::atoll(argv[2]), batch = std::atoll(argv[3]);
  const int reps = argc > 4 ? std::atoi(argv[4]) : 10;
  if (n < 3 || dim < 1 || batch < 1 || reps < 1 || n > tsl::kMaxPoints) {
    std::fprintf(stderr, "need 3 <= N <= %lld, D >= 1, B >= 1, reps >= 1\n",
                 (long long)tsl::kMaxPoints);
    return 2;
  }
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  std::vector<float> x(batch * n * dim);
  for (float& v : x) v = normal(rng);

  std::vector<float> dist(batch * n * n);
  std::vector<double> sq(n * n);
  double t_dist = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    for (int64_t b = 0; b < batch; ++b) {
      tsloss::cpu::squared_distance_lower(&x[b * n * dim], n, dim, sq.data());
      float* d = &dist[b * n * n];
      for (int64_t i = 0; i < n; ++i) {
        d[i * n + i] = 0.0f;
        for (int64_t j = 0; j < i; ++j)
          d[i * n + j] = d[j * n + i] = static_cast<float>(std::sqrt(sq[i * n + j]));
      }
    }
    t_dist = std::min(t_dist, seconds_since(t0));
  }

  enum { kPrim, kSortTree, kRadius, kSweep, kReduce, kPhases };
  const char* names[kPhases] = {"prim", "sort tree edges", "enclosing radius",
                                "apparent-pair sweep", "reduction"};
  double best[kPhases];
  std::fill(best, best + kPhases, 1e30);
  tsl::HostWorkspace<float> ws;
  int64_t pairs = 0;
  for (int r = 0; r < reps; ++r) {
    double t[kPhases] = {};
    pairs = 0;
    for (int64_t b = 0; b < batch; ++b) {
      const tsl::DistanceMatrix<float> d{&dist[b * n * n], n};
      auto t0 = Clock::now();
      ws.best_d.resize(n);
      ws.best_parent.resize(n);
      ws.outside.resize(n);
      ws.mst.resize(n - 1);
      tsl::prim_mst(d, ws.best_d.data(), ws.best_parent.data(), ws.outside.data(),
                    ws.mst.data());
      t[kPrim] += seconds_since(t0);
      t0 = Clock::now();
      std::sort(ws.mst.begin(), ws.mst.end(),
                [](const tsl::MstEdge<float>& a, const tsl::MstEdge<float>& c) {
                  return tsl::mst_edge_before(a, c);
                });
      t[kSortTree] += seconds_since(t0);
      t0 = Clock::now();
      const float threshold = tsl::enclosing_radius(d);
      t[kRadius] += seconds_since(t0);
      t0 = Clock::now();
      tsl::collect_h1_columns(d, threshold, ws.best_parent.data(), ws.columns, ws.column_parts);
      t[kSweep] += seconds_since(t0);
      t0 = Clock::now();
      tsl::run_h1_reduction(d, threshold, ws);
      t[kReduce] += seconds_since(t0);
      pairs += static_cast<int64_t>(ws.pairs.size());
    }
    for (int p = 0; p < kPhases; ++p) best[p] = std::min(best[p], t[p]);
  }
  std::printf("N=%lld D=%lld B=%lld, one thread, best of %d, us per cloud\n", (long long)n,
              (long long)dim, (long long)batch, reps);
  std::printf("  %-20s %9.2f\n", "distances", 1e6 * t_dist / batch);
  double engine = 0.0;
  for (int p = 0; p < kPhases; ++p) {
    std::printf("  %-20s %9.2f\n", names[p], 1e6 * best[p] / batch);
    engine += best[p];
  }
  std::printf("  %-20s %9.2f  (%.1f H1 pairs per cloud)\n", "engine total",
              1e6 * engine / batch, double(pairs) / batch);
  return 0;
}
