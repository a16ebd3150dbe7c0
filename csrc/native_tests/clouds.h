// The native tests' point clouds, families from generic to tie-heavy, and one cloud's output
// buffers, as test_warp and test_races use them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/vr_engine.h"

namespace tsl_test {

enum Family { kGaussian, kRounded, kLattice, kDuplicates, kPolygon, kFamilies };
inline const char* family_name(int f) {
  static const char* names[] = {"gaussian", "rounded", "lattice", "duplicates", "polygon"};
  return names[f];
}

// Points (n, dim) of one family.
inline std::vector<double> make_cloud(int family, int64_t n, int64_t* dim, std::mt19937& rng) {
  std::normal_distribution<double> gauss;
  std::vector<double> x;
  switch (family) {
    case kGaussian: {
      static const int dims[] = {2, 3, 8, 17};
      *dim = dims[rng() % 4];
      x.resize(n * *dim);
      for (double& v : x) v = gauss(rng);
      break;
    }
    case kRounded: {  // integer coordinates from a Gaussian: many equal lengths
      *dim = 2 + rng() % 3;
      const double scale = 1.0 + rng() % 4;
      x.resize(n * *dim);
      for (double& v : x) v = std::round(scale * gauss(rng));
      break;
    }
    case kLattice: {  // points of a small grid, with repeats when the grid is smaller than n
      // Sides 2 and 3 put hundreds of copies on a few sites, where the scalar reduction takes
      // 6-70 s per cloud at N = 512 (0.7 s at 256); clouds past 200 points get sides from 4 up.
      *dim = 2 + rng() % 2;
      const int side = (n > 200 ? 4 : 2) + rng() % 4;
      x.resize(n * *dim);
      for (double& v : x) v = double(rng() % side);
      break;
    }
    case kDuplicates: {  // a few distinct points, each many times
      *dim = 3;
      // One or two sites copied hundreds of times cost the scalar reduction about a minute at
      // N = 512 (a case for the engine's own issue); clouds past 200 points get 16 or more.
      const int distinct = (n > 200 ? 16 : 1) + rng() % 6;
      std::vector<double> base(distinct * 3);
      for (double& v : base) v = gauss(rng);
      x.resize(n * 3);
      for (int64_t p = 0; p < n; ++p) {
        const int s = rng() % distinct;
        for (int k = 0; k < 3; ++k) x[p * 3 + k] = base[s * 3 + k];
      }
      break;
    }
    default: {  // a regular polygon, sometimes with its centre (every side and chord ties)
      *dim = 2;
      x.resize(n * 2);
      // A bare ring is the reductions' worst case (--probe): at N = 256 the warp reduction's
      // set reaches 29 k entries, 0.5 s emulated (11 s when every pivot query scanned the whole
      // set), and at N = 512 206 k, 12 s. Past N = 256 the ring gets its centre.
      const bool centre = (rng() % 2 || n > 256) && n > 3;
      const int64_t ring = centre ? n - 1 : n;
      for (int64_t p = 0; p < ring; ++p) {
        x[2 * p] = std::cos(2 * M_PI * double(p) / double(ring));
        x[2 * p + 1] = std::sin(2 * M_PI * double(p) / double(ring));
      }
      if (centre) x[2 * (n - 1)] = x[2 * (n - 1) + 1] = 0.0;
      break;
    }
  }
  return x;
}

// One cloud's outputs, filled with -7 so that what a run leaves unwritten shows.
template <typename T>
struct Outputs {
  std::vector<T> h0, h1;
  std::vector<int64_t> h0_edges, h1_edges;
  int64_t count = -7;
  bool truncated = true;
  explicit Outputs(int64_t n, int64_t K)
      : h0(2 * std::max<int64_t>(n - 1, 0), T(-7)),
        h1(2 * K, T(-7)),
        h0_edges(2 * std::max<int64_t>(n - 1, 0), -7),
        h1_edges(4 * K, -7) {}
  tsl::CloudOutput<T> view(int64_t K) {
    return tsl::CloudOutput<T>{h0.data(), h0_edges.data(), h1.data(), h1_edges.data(),
                               &count, &truncated, K};
  }
};

}  // namespace tsl_test
