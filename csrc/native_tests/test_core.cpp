// Native tests of the torch-free engine with known answers; run by ctest (also under ASan and
// UBSan with -DTSLOSS_SANITIZE=ON). Exits non-zero on the first failed check group.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "check.h"
#include "engine_reference.h"
#include "core/pairwise_distance.h"
#include "core/vr_engine.h"
#include "cpu/distance_tiles.h"
#include "cpu/distance_grad_tiles.h"

namespace {

template <typename T>
struct Result {
  std::vector<T> h0, h1;
  std::vector<int64_t> h0_edges, h1_edges;
  int64_t count = 0;
  bool truncated = false;
};

// `capacity`: the reduction's buffers start that small (0: the workspace's defaults).
template <typename T>
Result<T> run(const std::vector<double>& pts, int64_t n, int64_t dim, int64_t K = 8,
              int64_t sweep_chunks = 1, int64_t capacity = 0) {
  std::vector<T> x(pts.begin(), pts.end()), dist(n * n);
  tsl::pairwise_distance_cloud(x.data(), n, dim, dist.data());
  Result<T> r;
  const int64_t h0 = n > 0 ? n - 1 : 0;
  r.h0.assign(2 * h0, T(-7));
  r.h0_edges.assign(2 * h0, -7);
  r.h1.assign(2 * K, T(-7));
  r.h1_edges.assign(4 * K, -7);
  tsl::HostWorkspace<T> ws;
  if (capacity > 0) ws.heap_capacity = ws.vheap_capacity = ws.arena_capacity = capacity;
  tsl::CloudOutput<T> out{r.h0.data(), r.h0_edges.data(), r.h1.data(), r.h1_edges.data(),
                          &r.count, &r.truncated, K};
  tsl::vr_persistence_cloud(dist.data(), n, 1, out, ws, sweep_chunks);
  return r;
}

template <typename T>
bool near(T a, double b, double tol) {
  return std::fabs(static_cast<double>(a) - b) <= tol * (1.0 + std::fabs(b));
}

template <typename T>
double tol() {
  return sizeof(T) == 4 ? 1e-6 : 1e-12;
}

template <typename T>
void check_padding(const Result<T>& r, int64_t K, const char* name) {
  for (int64_t q = r.count; q < K; ++q) {
    CHECK(r.h1[2 * q] == T(0) && r.h1[2 * q + 1] == T(0), "%s: padding value row %lld", name,
          (long long)q);
    for (int c = 0; c < 4; ++c)
      CHECK(r.h1_edges[4 * q + c] == -1, "%s: padding edge row %lld", name, (long long)q);
  }
}

template <typename T>
void test_square() {
  const std::vector<double> pts{0, 0, 1, 0, 1, 1, 0, 1};
  Result<T> r = run<T>(pts, 4, 2);
  for (int k = 0; k < 3; ++k) {
    CHECK(r.h0[2 * k] == T(0), "square birth");
    CHECK(near(r.h0[2 * k + 1], 1.0, tol<T>()), "square H0 death %d = %g", k,
          (double)r.h0[2 * k + 1]);
    CHECK(r.h0_edges[2 * k] < r.h0_edges[2 * k + 1], "square H0 edge order");
  }
  CHECK(r.count == 1, "square H1 count %lld", (long long)r.count);
  CHECK(!r.truncated, "square truncated");
  CHECK(near(r.h1[0], 1.0, tol<T>()) && near(r.h1[1], std::sqrt(2.0), tol<T>()),
        "square H1 bar (%g, %g)", (double)r.h1[0], (double)r.h1[1]);
  // Birth edge: a unit side (j < i); death edge: a diagonal {0,2} or {1,3}.
  const int64_t* e = r.h1_edges.data();
  CHECK(e[0] < e[1], "square birth edge order");
  CHECK((e[2] == 0 && e[3] == 2) || (e[2] == 1 && e[3] == 3), "square death edge (%lld,%lld)",
        (long long)e[2], (long long)e[3]);
  check_padding(r, 8, "square");
}

template <typename T>
void test_hexagon() {
  const int n = 6;
  std::vector<double> pts;
  for (int k = 0; k < n; ++k) {
    pts.push_back(std::cos(2 * M_PI * k / n));
    pts.push_back(std::sin(2 * M_PI * k / n));
  }
  Result<T> r = run<T>(pts, n, 2);
  // Side 1, short diagonal sqrt 3, long diagonal 2. H0: five sides. The hexagon's cycle is
  // born at 1 and filled by triangles of short diagonals at sqrt 3.
  for (int k = 0; k < n - 1; ++k)
    CHECK(near(r.h0[2 * k + 1], 1.0, 1e-5), "hexagon H0 death %g", (double)r.h0[2 * k + 1]);
  CHECK(r.count == 1, "hexagon H1 count %lld", (long long)r.count);
  CHECK(near(r.h1[0], 1.0, 1e-5) && near(r.h1[1], std::sqrt(3.0), 1e-5),
        "hexagon H1 bar (%g, %g)", (double)r.h1[0], (double)r.h1[1]);
  check_padding(r, 8, "hexagon");
}

template <typename T>
void test_duplicates() {
  // Three copies of one point and a fourth point at distance 2: H0 deaths 0, 0, 2; no H1.
  const std::vector<double> pts{0, 0, 0, 0, 0, 0, 2, 0};
  Result<T> r = run<T>(pts, 4, 2);
  CHECK(r.h0[1] == T(0) && r.h0[3] == T(0) && near(r.h0[5], 2.0, tol<T>()),
        "duplicates H0 deaths %g %g %g", (double)r.h0[1], (double)r.h0[3], (double)r.h0[5]);
  CHECK(r.count == 0 && !r.truncated, "duplicates H1 count %lld", (long long)r.count);
  check_padding(r, 8, "duplicates");
}

template <typename T>
void test_tiny() {
  Result<T> one = run<T>({1.0, 2.0}, 1, 2);
  CHECK(one.h0.empty() && one.count == 0 && !one.truncated, "N=1");
  check_padding(one, 8, "N=1");
  Result<T> two = run<T>({0.0, 0.0, 3.0, 4.0}, 2, 2);
  CHECK(two.h0.size() == 2 && near(two.h0[1], 5.0, tol<T>()), "N=2 death %g",
        (double)two.h0[1]);
  CHECK(two.h0_edges[0] == 0 && two.h0_edges[1] == 1, "N=2 edge");
  CHECK(two.count == 0, "N=2 H1 count");
  check_padding(two, 8, "N=2");
}

// Kruskal with union-find on the same distances: the MST weight is unique even with ties.
double kruskal_weight(const std::vector<double>& d, int n) {
  std::vector<std::pair<double, std::pair<int, int>>> edges;
  for (int i = 1; i < n; ++i)
    for (int j = 0; j < i; ++j) edges.push_back({d[i * n + j], {i, j}});
  std::sort(edges.begin(), edges.end());
  std::vector<int> parent(n);
  for (int i = 0; i < n; ++i) parent[i] = i;
  auto find = [&](int v) {
    while (parent[v] != v) v = parent[v] = parent[parent[v]];
    return v;
  };
  double w = 0;
  for (auto& e : edges) {
    int a = find(e.second.first), b = find(e.second.second);
    if (a != b) {
      parent[a] = b;
      w += e.first;
    }
  }
  return w;
}

template <typename T>
void test_random_mst(unsigned seed, int n, int dim) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<double> pts(n * dim);
  for (double& p : pts) p = normal(rng);
  // Round to T first so Kruskal sees the very points the engine sees.
  std::vector<T> xt(pts.begin(), pts.end());
  std::vector<double> xr(xt.begin(), xt.end());
  std::vector<T> dist(n * n);
  tsl::pairwise_distance_cloud(xt.data(), n, dim, dist.data());
  std::vector<double> dd(dist.begin(), dist.end());
  const double expected = kruskal_weight(dd, n);
  Result<T> r = run<T>(xr, n, dim, 4);
  double sum = 0;
  for (int k = 0; k + 1 < n; ++k) {
    sum += (double)r.h0[2 * k + 1];
    if (k > 0) CHECK(r.h0[2 * k + 1] >= r.h0[2 * k - 1], "random H0 sorted");
  }
  CHECK(std::fabs(sum - expected) <= 1e-9 * (1 + expected), "random MST weight %.12g vs %.12g",
        sum, expected);
  CHECK(r.count >= 0, "random H1 count");
  CHECK(r.truncated == (r.count > 4), "random truncated flag");
  const int64_t keep = r.count < 4 ? r.count : 4;
  for (int64_t q = 0; q < keep; ++q) {
    CHECK(r.h1[2 * q + 1] > r.h1[2 * q], "random H1 bar has positive persistence");
    if (q > 0)
      CHECK(r.h1[2 * q + 1] - r.h1[2 * q] <= r.h1[2 * q - 1] - r.h1[2 * q - 2],
            "random H1 sorted by persistence");
  }
  check_padding(r, 4, "random");
}

// The tiled, vectorised CPU distances against the canonical double loop, bit for bit, in every
// build this CPU can run (the cap selects it), over sizes that exercise every tile shape and
// remainder: row counts around the tiles and blocks, dims around the lane groups and chunks.
template <typename T>
void test_distance_tiles() {
  std::mt19937 rng(7);
  std::normal_distribution<double> normal;
  for (int level : {0, 3, 4}) {
    if (!tsl::set_x86_cap(level)) continue;  // a build this CPU cannot run
    for (int64_t n : {1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 17, 33, 65}) {
      for (int64_t dim : {1, 3, 7, 8, 9, 15, 16, 17, 31, 127, 128, 129, 255, 256, 257, 1000}) {
        std::vector<T> x(n * dim);
        for (T& v : x) v = static_cast<T>(3.0 + normal(rng));  // off-centre: no lucky zeros
        for (int64_t i0 : {int64_t(0), n / 2}) {
          std::vector<double> sq((n - i0) * n, -1.0);
          tsloss::cpu::squared_distance_lower_rows(x.data(), n, dim, i0, n, sq.data());
          for (int64_t i = i0; i < n; ++i)
            for (int64_t j = 0; j < i; ++j) {
              const double ref = tsl::squared_distance(&x[i * dim], &x[j * dim], dim);
              const double got = sq[(i - i0) * n + j];
              CHECK(got == ref, "row-block distance, level %d n=%lld dim=%lld (%lld,%lld): "
                    "%.17g vs %.17g", level, (long long)n, (long long)dim, (long long)i,
                    (long long)j, got, ref);
            }
        }
        std::vector<double> whole(n * n, -1.0);
        tsloss::cpu::squared_distance_lower(x.data(), n, dim, whole.data());
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < i; ++j) {
            const double ref = tsl::squared_distance(&x[i * dim], &x[j * dim], dim);
            const double got = whole[i * n + j];
            CHECK(got == ref, "whole-cloud distance, level %d n=%lld dim=%lld (%lld,%lld): "
                  "%.17g vs %.17g", level, (long long)n, (long long)dim, (long long)i,
                  (long long)j, got, ref);
          }
      }
    }
  }
  tsl::set_x86_cap(-1);
}

// The clouds of the certified-distance tests: 0 centred Gaussian, 1 far off-centre, 2 exact
// ties, 3 magnitudes 1e-30..1e30, 4 ties on a grid, 5 duplicate points, 6 a NaN, 7 a distance
// beyond float32, 8 two tight clusters far apart (the Gram sums lose the inner distances),
// 9 an outlier as the first point.
std::vector<float> certified_test_cloud(int kind, int64_t n, int64_t dim, std::mt19937& rng) {
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<int> small(-2, 2);
  std::uniform_real_distribution<double> uniform(-30.0, 30.0);
  std::vector<float> x(n * dim);
  for (int64_t v = 0; v < n * dim; ++v) {
    const double g = normal(rng);
    switch (kind) {
      case 0: x[v] = float(g); break;                           // centred
      case 1: x[v] = float(1000.0 + g); break;                  // far off-centre
      case 2: x[v] = float(small(rng)); break;                  // exact ties
      case 3: x[v] = float(g * std::pow(10.0, uniform(rng))); break;  // magnitudes
      case 4: x[v] = float(std::round(g * 4.0) / 4.0); break;   // ties on a grid
      default: x[v] = float(g); break;
    }
  }
  if (kind == 5)  // duplicate points
    for (int64_t i = 1; i < n; i += 2)
      for (int64_t k = 0; k < dim; ++k) x[i * dim + k] = x[(i - 1) * dim + k];
  if (kind == 6) x[(n / 2) * dim] = std::nanf("");
  if (kind == 7) {  // a distance beyond float32
    x[(n - 1) * dim] = 3.0e38f;
    x[(n - 2) * dim] = -3.0e38f;
  }
  if (kind == 9)  // the first point an outlier, 100 sigma out
    for (int64_t k = 0; k < dim; ++k) x[k] += 100.0f;
  if (kind == 8)  // two tight clusters far apart: the Gram sums lose the inner distances
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < dim; ++k)
        x[i * dim + k] =
            float((i % 2 ? 1e3 : -1e3) * (1.0 + 0.01 * k) + 1e-3 * normal(rng));
  return x;
}

// The CUDA kernel's float32 route (csrc/cuda/pairwise_distance.cu), its arithmetic modelled on
// the host: the centre tsl::certify_centre, y = x - c rounded in double; eight lanes each
// sum the coordinates k = l (mod 8) by FMA in double (the Gram product and both norms); the
// lanes meet by the xor tree 1, 2, 4; then tsl::certify_float_square, as the kernel calls it.
double gpu_route_square(const float* x, int64_t n, int64_t dim, int64_t i, int64_t j,
                        int64_t* fallbacks) {
  double g[8] = {0}, ni[8] = {0}, nj[8] = {0};
  for (int64_t k = 0; k < dim; ++k) {
    const double c = double(tsl::certify_centre(x, n, dim, k));
    const double u = double(x[i * dim + k]) - c, v = double(x[j * dim + k]) - c;
    g[k % 8] = std::fma(u, v, g[k % 8]);
    ni[k % 8] = std::fma(u, u, ni[k % 8]);
    nj[k % 8] = std::fma(v, v, nj[k % 8]);
  }
  for (int off = 1; off < 8; off <<= 1)
    for (double* s : {g, ni, nj}) {
      double t[8];
      for (int l = 0; l < 8; ++l) t[l] = s[l] + s[l ^ off];
      for (int l = 0; l < 8; ++l) s[l] = t[l];
    }
  double s;
  if (tsl::certify_float_square(ni[0] + nj[0], g[0], dim, &s)) return s;
  ++*fallbacks;  // the kernel's block sums its tile canonically
  return tsl::squared_distance(&x[i * dim], &x[j * dim], dim);
}

// The certified float32 distances (Gram sums, canonical only where the bound leaves a doubt)
// against the canonical float32 distance, bit for bit, in every build, on clouds that defeat
// certification (ties, duplicates, far off-centre, magnitudes 1e-30..1e30, non-finite and
// overflowing points) and on centred ones, where nearly every pair must certify.
void test_certified_distances() {
  std::mt19937 rng(11);
  auto fdist = [](double s) { return static_cast<float>(std::sqrt(s)); };
  for (int level : {0, 3, 4}) {
    if (!tsl::set_x86_cap(level)) continue;
    for (int kind = 0; kind < 10; ++kind) {
      for (int64_t n : {2, 3, 5, 9, 17, 64, 130, 256}) {
        for (int64_t dim : {1, 3, 8, 9, 129, 2048}) {
          if (n * dim > 256 * 300 && kind != 0) continue;
          std::vector<float> x = certified_test_cloud(kind, n, dim, rng);
          std::vector<double> sq(n * n, -1.0);
          const int64_t exact = tsloss::cpu::certified_squares_lower(x.data(), n, dim, sq.data());
          for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < i; ++j) {
              const float ref = fdist(tsl::squared_distance(&x[i * dim], &x[j * dim], dim));
              const float got = fdist(sq[i * n + j]);
              CHECK(memcmp(&ref, &got, sizeof ref) == 0 || (std::isnan(ref) && std::isnan(got)),
                    "certified distance, level %d kind %d n=%lld dim=%lld (%lld,%lld): "
                    "%.9g vs %.9g", level, kind, (long long)n, (long long)dim, (long long)i,
                    (long long)j, double(got), double(ref));
            }
          // The CPU's row-by-row centre is the shared per-coordinate one, bit for bit.
          std::vector<float> centre(dim);
          tsloss::cpu::certify_centre_rows(x.data(), n, dim, centre.data());
          for (int64_t k = 0; k < dim; ++k) {
            const float c = tsl::certify_centre(x.data(), n, dim, k);
            CHECK(memcmp(&c, &centre[k], sizeof c) == 0, "centre, kind %d n=%lld dim=%lld k=%lld: "
                  "%.9g vs %.9g", kind, (long long)n, (long long)dim, (long long)k,
                  double(centre[k]), double(c));
          }
          int64_t gpu_fallbacks = 0;
          if (level == 0)  // the GPU route's arithmetic (no x86 build involved)
            for (int64_t i = 0; i < n; ++i)
              for (int64_t j = 0; j < i; ++j) {
                const float ref = fdist(tsl::squared_distance(&x[i * dim], &x[j * dim], dim));
                const float got = fdist(gpu_route_square(x.data(), n, dim, i, j, &gpu_fallbacks));
                CHECK(memcmp(&ref, &got, sizeof ref) == 0 || (std::isnan(ref) && std::isnan(got)),
                      "GPU route's distance, kind %d n=%lld dim=%lld (%lld,%lld): %.9g vs %.9g",
                      kind, (long long)n, (long long)dim, (long long)i, (long long)j,
                      double(got), double(ref));
              }
          if (level == 0 && (kind == 0 || kind == 1 || kind == 9) && n >= 64 && dim >= 129)
            CHECK(gpu_fallbacks * 100 <= n * (n - 1) / 2, "GPU route: %lld of %lld pairs of a "
                  "Gaussian cloud (kind %d) needed the canonical sum (n=%lld dim=%lld)",
                  (long long)gpu_fallbacks, (long long)(n * (n - 1) / 2), kind, (long long)n,
                  (long long)dim);
          if (kind == 0 && n >= 64 && dim >= 129)
            CHECK(exact * 100 <= n * (n - 1) / 2, "centred cloud certifies: %lld of %lld pairs "
                  "needed the canonical sum (level %d n=%lld dim=%lld)", (long long)exact,
                  (long long)(n * (n - 1) / 2), level, (long long)n, (long long)dim);
          // A duplicate pair's Gram value is an exact 0 with a positive bound: it never
          // certifies, except when the pair is the whole cloud (its centre is the point itself).
          if (kind == 5 && n > 2)
            CHECK(exact >= n / 2, "duplicate points never certify (%lld, n=%lld dim=%lld)",
                  (long long)exact, (long long)n, (long long)dim);
        }
      }
    }
  }
  tsl::set_x86_cap(-1);
}

// The distance backward's fixed order for one coordinate (cpu/distance_grad_tiles.h), one
// scalar at a time: rows padded with zeros to n4, in blocks of four; block bi takes its pairs with
// every earlier block bj (skipped when all sixteen weights are zero), each row's four terms
// summed as (t0 + t1) + (t2 + t3), added to bi's rows and subtracted from bj's; then its own six
// pairs in order (skipped when their six weights are zero).
template <typename T>
void pair_grad_reference(const T* x, int64_t n, int64_t dim, const T* W, int64_t n4, T* g) {
  const int ia[6] = {1, 2, 2, 3, 3, 3}, ib[6] = {0, 0, 1, 0, 1, 2};
  for (int64_t k = 0; k < dim; ++k) {
    std::vector<T> u(n4, T(0)), acc(n4, T(0));
    for (int64_t r = 0; r < n; ++r) u[r] = x[r * dim + k];
    for (int64_t bi = 0; bi < n4 / 4; ++bi) {
      for (int64_t bj = 0; bj < bi; ++bj) {
        T t[4][4];
        bool any = false;
        for (int a = 0; a < 4; ++a)
          for (int b = 0; b < 4; ++b) {
            const T w = W[(bi * 4 + a) * n4 + bj * 4 + b];
            any |= w != T(0);
            t[a][b] = w * (u[bi * 4 + a] - u[bj * 4 + b]);
          }
        if (!any) continue;
        for (int a = 0; a < 4; ++a)
          acc[bi * 4 + a] = acc[bi * 4 + a] + ((t[a][0] + t[a][1]) + (t[a][2] + t[a][3]));
        for (int b = 0; b < 4; ++b)
          acc[bj * 4 + b] = acc[bj * 4 + b] - ((t[0][b] + t[1][b]) + (t[2][b] + t[3][b]));
      }
      bool any = false;
      for (int p = 0; p < 6; ++p) any |= W[(bi * 4 + ia[p]) * n4 + bi * 4 + ib[p]] != T(0);
      if (!any) continue;
      for (int p = 0; p < 6; ++p) {
        const T w = W[(bi * 4 + ia[p]) * n4 + bi * 4 + ib[p]];
        const T t = w * (u[bi * 4 + ia[p]] - u[bi * 4 + ib[p]]);
        acc[bi * 4 + ia[p]] = acc[bi * 4 + ia[p]] + t;
        acc[bi * 4 + ib[p]] = acc[bi * 4 + ib[p]] - t;
      }
    }
    for (int64_t r = 0; r < n; ++r) g[r * dim + k] = acc[r];
  }
}

// The distance backward's tiles (pairwise_distance, TSLoss) in every build, in place and through scratch, at the op's chunk
// width and at the narrowest, each chunk prefetching the next (the next cloud's first at a
// cloud's end), against the scalar order bit for bit, zero signs included. Some clouds weigh
// only a few pairs (normalize="none": the bars' edges), so that whole tiles are skipped.
template <typename T>
void test_pair_grad() {
  std::mt19937 rng(17);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uniform;
  for (int level : {0, 3, 4}) {
    if (!tsl::set_x86_cap(level)) continue;
    for (int64_t n : {1, 2, 3, 4, 5, 8, 13, 17, 33}) {
      for (int64_t dim : {1, 7, 16, 17, 100, 300, 512}) {
        const int64_t B = 2, n4 = (n + 3) / 4 * 4;
        std::vector<T> x(B * n * dim), W(B * n4 * n4, T(0)), ref(B * n * dim);
        for (T& v : x) v = static_cast<T>(3.0 + normal(rng));
        for (int64_t b = 0; b < B; ++b) {
          const double keep = b == 0 ? 1.0 : 0.1;
          for (int64_t i = 1; i < n; ++i)
            for (int64_t j = 0; j < i; ++j)
              if (uniform(rng) < keep) W[b * n4 * n4 + i * n4 + j] = static_cast<T>(normal(rng));
          pair_grad_reference(&x[b * n * dim], n, dim, &W[b * n4 * n4], n4, &ref[b * n * dim]);
        }
        for (int64_t chunk : {tsloss::cpu::grad_chunk(sizeof(T)), int64_t(16)}) {
          std::vector<T> gx(B * n * dim, T(-1)), scratch(2 * n4 * chunk);
          const int64_t chunks = (dim + chunk - 1) / chunk;
          for (int64_t b = 0; b < B; ++b)
            for (int64_t c = 0; c < chunks; ++c) {
              const bool last = c + 1 == chunks;
              const int64_t nb = last ? b + 1 : b, nk = last ? 0 : (c + 1) * chunk;
              const bool next = nb < B;
              tsloss::cpu::pair_grad_chunk(
                  &x[b * n * dim], n, dim, &W[b * n4 * n4], n4, c * chunk,
                  std::min(chunk, dim - c * chunk), scratch.data(), &gx[b * n * dim],
                  next ? &x[nb * n * dim + nk] : nullptr, next ? &gx[nb * n * dim + nk] : nullptr,
                  next ? std::min(chunk, dim - nk) : 0);
            }
          for (int64_t e = 0; e < B * n * dim; ++e)
            CHECK(std::signbit(gx[e]) == std::signbit(ref[e]) && (gx[e] == ref[e]),
                  "distance gradient tiles, level %d n=%lld dim=%lld chunk=%lld, entry %lld: "
                  "%.17g vs %.17g", level, (long long)n, (long long)dim, (long long)chunk,
                  (long long)e, (double)gx[e], (double)ref[e]);
        }
      }
    }
  }
  tsl::set_x86_cap(-1);
}

// The device's bit-by-bit band mask, the host's packed byte flags and the x86 vector builds
// this CPU runs agree on every block length, with values on and around both band ends.
template <typename T>
void test_band_masks() {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> level(0, 6);
  std::vector<T> ri(40), rj(40);
  for (int trial = 0; trial < 2000; ++trial) {
    for (int k = 0; k < 40; ++k) {
      ri[k] = T(level(rng));
      rj[k] = T(level(rng));
    }
    const T de = T(level(rng)), lower = T(level(rng)) - T(0.5) * T(trial % 2),
            upper = T(level(rng));
    const int64_t lo = trial % 9, hi = lo + 1 + (trial / 9) % tsl::kBlock;
    const uint32_t bits = tsl::band_bits(ri.data(), rj.data(), de, lower, upper, lo, hi);
    const uint32_t flags = tsl::band_flags(ri.data(), rj.data(), de, lower, upper, lo, hi);
    CHECK(bits == flags, "band masks differ: lo=%lld hi=%lld bits=%08x flags=%08x", (long long)lo,
          (long long)hi, bits, flags);
#ifdef TSL_X86_BANDS
    if (tsl::x86_level() >= 3) {
      const uint32_t avx2 = tsl::BandAvx2::bits(ri.data(), rj.data(), de, lower, upper, lo, hi);
      CHECK(avx2 == flags, "AVX2 band mask differs: lo=%lld hi=%lld %08x vs %08x", (long long)lo,
            (long long)hi, avx2, flags);
    }
    if (tsl::x86_level() >= 4) {
      const uint32_t avx512 =
          tsl::BandAvx512::bits(ri.data(), rj.data(), de, lower, upper, lo, hi);
      CHECK(avx512 == flags, "AVX-512 band mask differs: lo=%lld hi=%lld %08x vs %08x",
            (long long)lo, (long long)hi, avx512, flags);
    }
#endif
  }
}

// A sweep split into row chunks (as the CPU op does for a lone cloud) gives the same result,
// bit for bit, whatever the chunk count, including chunks with no rows at all.
template <typename T>
void test_split_sweep() {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> coord(0, 3);  // a small grid: many exactly equal lengths
  for (int64_t n : {3, 5, 33, 70}) {
    std::vector<double> pts(n * 4);
    for (double& v : pts) v = coord(rng);
    const int64_t K = 4 * n;
    const Result<T> whole = run<T>(pts, n, 4, K, 1);
    for (int64_t chunks : {2, 7, 64}) {
      const Result<T> split = run<T>(pts, n, 4, K, chunks);
      CHECK(split.count == whole.count && split.h1 == whole.h1 &&
                split.h1_edges == whole.h1_edges && split.h0 == whole.h0,
            "split sweep n=%lld chunks=%lld differs", (long long)n, (long long)chunks);
    }
  }
}

// Buffers that start far too small give the same result, bit for bit: the reduction resumes
// after each overflow within the column that overflowed (the heaps) and the arena grows between
// columns. A polygon's column chases its pivot round the circle through hundreds of additions;
// the grid and Gaussian clouds have many columns, some owning pivots the others add.
template <typename T>
void test_growing_buffers() {
  std::mt19937 rng(12);
  std::uniform_int_distribution<int> coord(0, 3);
  std::normal_distribution<double> gauss;
  for (int kind = 0; kind < 3; ++kind) {
    const int64_t n = 60, dim = kind == 0 ? 2 : 3;
    std::vector<double> pts(n * dim);
    for (int64_t p = 0; p < n; ++p)
      for (int64_t c = 0; c < dim; ++c)
        pts[p * dim + c] = kind == 0   ? (c == 0 ? std::cos(2 * M_PI * p / n)
                                                 : std::sin(2 * M_PI * p / n))
                           : kind == 1 ? coord(rng)
                                       : gauss(rng);
    const int64_t K = 4 * n;
    const Result<T> roomy = run<T>(pts, n, dim, K);
    for (int64_t capacity : {1, 3, 64}) {
      const Result<T> grown = run<T>(pts, n, dim, K, 1, capacity);
      CHECK(grown.count == roomy.count && grown.h1 == roomy.h1 &&
                grown.h1_edges == roomy.h1_edges && grown.h0 == roomy.h0,
            "kind %d: buffers grown from %lld differ", kind, (long long)capacity);
    }
  }
}

// The device's default reduction (cuda/h1_reduce.cu, reduce_kernel) runs reduce_h1 once per
// cloud over fixed buffers, its coboundary heap dropping cancelling pairs when full
// (EntryHeap::compact); the host engine grows its heaps instead, so no other host test runs
// compaction. Wherever a fixed heap suffices the pairs must be the engine's, and where it does
// not the reduction must say so (the device then flags the cloud). Some capacities must succeed
// only by compacting: the same heap without compaction fills.
template <typename T>
void test_device_heap_compaction() {
  std::mt19937 rng(21);
  std::uniform_int_distribution<int> coord(0, 2);
  std::normal_distribution<double> gauss;
  int exercised = 0;
  for (int kind = 0; kind < 3; ++kind) {
    const int64_t n = kind == 0 ? 48 : 40, dim = kind == 0 ? 2 : 3;
    std::vector<T> x(n * dim), dist(n * n);
    for (int64_t p = 0; p < n; ++p)
      for (int64_t c = 0; c < dim; ++c)
        x[p * dim + c] = kind == 0   ? T(c == 0 ? std::cos(2 * M_PI * p / n)
                                                : std::sin(2 * M_PI * p / n))
                         : kind == 1 ? T(coord(rng))
                                     : T(gauss(rng));
    tsl::pairwise_distance_cloud(x.data(), n, dim, dist.data());
    const tsl::DistanceMatrix<T> d{dist.data(), n};
    const tsl_test::EngineReference<T> ref = tsl_test::engine_reference(dist, n);
    const tsl::index_t m = (tsl::index_t)ref.columns.size();
    const tsl::index_t P = tsl::pivot_table_capacity(m), big = 1 << 20;
    const T threshold = tsl::enclosing_radius(d);
    for (tsl::index_t cap : {4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 384, 1024}) {
      tsl::Status status[2];
      for (int compacts = 0; compacts < 2; ++compacts) {
        std::vector<tsl::Entry<T>> heap(cap);
        std::vector<tsl::index_t> vheap(big), keys(P), slots(P), start(m + 1), length(m + 1),
            arena(big);
        std::vector<tsl::H1Pair<T>> pairs(m + 1);
        tsl::H1Workspace<T> w{tsl::EntryHeap<T>{heap.data(), 0, cap, compacts == 1},
                              tsl::IndexHeap{vheap.data(), 0, big},
                              tsl::PivotTable{keys.data(), slots.data(), P, 0},
                              start.data(), length.data(), m + 1, arena.data(), big, 0, 0};
        tsl::index_t np = 0;
        status[compacts] = tsl::reduce_h1(d, ref.columns.data(), m, threshold, w, pairs.data(),
                                          m + 1, &np);
        CHECK(status[compacts] == tsl::kOk || status[compacts] == tsl::kHeapFull,
              "kind %d, heap %lld: status %d", kind, (long long)cap, (int)status[compacts]);
        if (status[compacts] != tsl::kOk) continue;
        pairs.resize(np);
        tsl_test::sort_by_diagram(pairs);
        CHECK(tsl_test::same_pairs(pairs, ref.pairs),
              "kind %d, heap %lld (%s): pairs differ from the engine's", kind,
              (long long)cap, compacts ? "compacting" : "fixed");
        // A stored V column is Z/2-reduced: an edge twice would cancel, so keeping both only
        // fills the device's fixed arena sooner (the diagrams cannot show it).
        for (tsl::index_t s = 0; s < w.slots_used; ++s) {
          std::vector<tsl::index_t> col(arena.begin() + start[s],
                                        arena.begin() + start[s] + length[s]);
          std::sort(col.begin(), col.end());
          CHECK(std::adjacent_find(col.begin(), col.end()) == col.end(),
                "kind %d, heap %lld: V column %lld keeps a cancelling pair", kind,
                (long long)cap, (long long)s);
        }
      }
      CHECK(!(status[0] == tsl::kOk && status[1] != tsl::kOk),
            "kind %d, heap %lld: compacting failed where a plain heap sufficed", kind,
            (long long)cap);
      exercised += status[0] == tsl::kHeapFull && status[1] == tsl::kOk;
    }
  }
  CHECK(exercised > 0, "no heap size needed compaction to succeed");
}

// prim_better with no best yet (bidx < 0) takes any candidate: the CUDA Prim (h0_mst.cu) starts
// every vertex at best 0 with parent -1, and the host Prim never asks this, so only here is it
// checked without a GPU.
void test_prim_first_contact() {
  CHECK(tsl::prim_better(1.0, 5, 0.0, -1) && tsl::prim_better(1.0f, 5, 2.0f, -1),
        "prim_better refuses a candidate when there is no best");
  CHECK(tsl::prim_better(1.0, 5, 1.0, 3) && !tsl::prim_better(1.0, 3, 1.0, 5) &&
            tsl::prim_better(0.5, 9, 1.0, 3),
        "prim_better: by diameter, then by the larger index first");
}

// Clouds for the sweep tests: Gaussian points, or points of a small integer grid (many exactly
// equal lengths, where the tie rules decide).
template <typename T>
std::vector<T> test_matrix(int64_t n, bool grid, std::mt19937& rng) {
  std::normal_distribution<double> gauss;
  std::uniform_int_distribution<int> coord(0, 2);
  const int64_t dim = 3;
  std::vector<T> x(n * dim), dist(n * n);
  for (T& v : x) v = grid ? T(coord(rng)) : T(gauss(rng));
  tsl::pairwise_distance_cloud(x.data(), n, dim, dist.data());
  return dist;
}

// is_latest_facet gives latest_facet's answer for every triangle {i, j, k} with k within the
// length of {i, j} of both ends, ties included.
template <typename T>
void test_latest_facet_rule() {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 40; ++trial) {
    const int64_t n = 12;
    const std::vector<T> dist = test_matrix<T>(n, trial % 2 == 0, rng);
    const tsl::DistanceMatrix<T> d{dist.data(), n};
    for (int64_t i = 1; i < n; ++i)
      for (int64_t j = 0; j < i; ++j)
        for (int64_t k = 0; k < n; ++k) {
          const T de = d(i, j);
          if (k == i || k == j || d(i, k) > de || d(j, k) > de) continue;
          int64_t v[3] = {i, j, k};
          std::sort(v, v + 3, [](int64_t a, int64_t b) { return a > b; });
          const bool expect = tsl::latest_facet(d, v[0], v[1], v[2]).index == tsl::edge_index(i, j);
          CHECK(tsl::is_latest_facet(i, j, k, de, d(i, k), d(j, k)) == expect,
                "is_latest_facet(%lld, %lld, %lld) differs from latest_facet", (long long)i,
                (long long)j, (long long)k);
        }
  }
}

// Every build of the apparent-pair sweep this CPU can run gives the portable build's columns,
// in order, across block boundaries (N = 31..33, 64, 65) and with many ties; also when the
// rows are swept in parts appended to one list, as a split sweep does.
template <typename T>
void test_sweep_builds() {
  using Sweep = void (*)(const tsl::DistanceMatrix<T>&, T, const tsl::index_t*, tsl::index_t,
                         tsl::index_t, std::vector<tsl::H1Column<T>>&);
  std::vector<std::pair<const char*, Sweep>> builds;
#ifdef TSL_X86_BANDS
  if (tsl::x86_level() >= 3) builds.push_back({"avx2", tsl::sweep_h1_columns_avx2<T>});
  if (tsl::x86_level() >= 4) builds.push_back({"avx512", tsl::sweep_h1_columns_avx512<T>});
#endif
  if (builds.empty()) std::printf("note: no vector build of the sweep runs on this CPU\n");
  std::mt19937 rng(17);
  for (int64_t n : {3, 4, 16, 31, 32, 33, 64, 65, 100})
    for (bool grid : {false, true}) {
      const std::vector<T> dist = test_matrix<T>(n, grid, rng);
      const tsl::DistanceMatrix<T> d{dist.data(), n};
      std::vector<T> best_d(n);
      std::vector<tsl::index_t> parent(n), outside(n);
      std::vector<tsl::MstEdge<T>> mst(n - 1);
      tsl::prim_mst(d, best_d.data(), parent.data(), outside.data(), mst.data());
      const T radius = tsl::enclosing_radius(d);
      for (T threshold : {radius, T(0.5) * radius, T(INFINITY)}) {
        std::vector<tsl::H1Column<T>> expect;
        tsl::sweep_h1_columns_portable(d, threshold, parent.data(), 0, n, expect);
        for (const auto& build : builds) {
          std::vector<tsl::H1Column<T>> whole, parts(1, tsl::H1Column<T>{T(-1), -1, -1});
          build.second(d, threshold, parent.data(), 0, n, whole);
          build.second(d, threshold, parent.data(), 0, n / 3, parts);
          build.second(d, threshold, parent.data(), n / 3, n, parts);
          bool same = whole.size() == expect.size() && parts.size() == expect.size() + 1;
          for (size_t c = 0; same && c < expect.size(); ++c)
            same = whole[c].diameter == expect[c].diameter && whole[c].i == expect[c].i &&
                   whole[c].j == expect[c].j && parts[c + 1].i == expect[c].i &&
                   parts[c + 1].j == expect[c].j;
          CHECK(same, "%s sweep differs: n=%lld grid=%d threshold=%g (%zu vs %zu columns)",
                build.first, (long long)n, int(grid), double(threshold), whole.size(),
                expect.size());
        }
      }
    }
}

// Simplex indices decode to their vertices for clouds up to kMaxPoints: every index at and
// around each boundary C(v, 3) and C(v, 2), where a start that is one off would show.
void test_index_decoding() {
  const tsl::index_t n = tsl::kMaxPoints;
  for (tsl::index_t a = 2; a < n; ++a)
    for (tsl::index_t b : {a - 1, a / 2, tsl::index_t(1)})
      for (tsl::index_t c : {b - 1, tsl::index_t(0)}) {
        if (!(a > b && b > c && c >= 0)) continue;
        tsl::index_t x, y, z;
        tsl::triangle_vertices(tsl::triangle_index(a, b, c), n, &x, &y, &z);
        CHECK(x == a && y == b && z == c, "triangle (%lld,%lld,%lld) decoded as (%lld,%lld,%lld)",
              (long long)a, (long long)b, (long long)c, (long long)x, (long long)y, (long long)z);
      }
  for (tsl::index_t i = 1; i < n; ++i)
    for (tsl::index_t j : {i - 1, tsl::index_t(0)}) {
      tsl::index_t x, y;
      tsl::edge_vertices(tsl::edge_index(i, j), n, &x, &y);
      CHECK(x == i && y == j, "edge (%lld,%lld) decoded as (%lld,%lld)", (long long)i,
            (long long)j, (long long)x, (long long)y);
    }
}

// The orders CUDA places bars by (by rank: each row's position is the number of rows before
// it) must be strict even with NaN values, which a non-finite cloud gives before it is marked
// invalid: then the ranks are a permutation, every row written exactly once. NaN goes last.
template <typename T>
void test_rank_orders_with_nan() {
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  std::vector<tsl::MstEdge<T>> edges;
  std::vector<tsl::H1Pair<T>> pairs;
  const T values[] = {T(1), nan, T(2), T(1), nan, inf, T(0.5), nan};
  tsl::index_t k = 0;
  for (T v : values) {
    const tsl::index_t u = k + 1, w = k / 2;
    edges.push_back(tsl::MstEdge<T>{v, w, u});
    pairs.push_back(tsl::H1Pair<T>{T(0.25) * (k % 3), v, tsl::edge_index(u, w), k});
    pairs.push_back(tsl::H1Pair<T>{v, T(3), tsl::edge_index(u + 10, w), k});
    ++k;
  }
  auto check_ranks = [](const auto& xs, auto before, auto is_nan, const char* what) {
    const size_t n = xs.size();
    std::vector<int> seen(n, 0);
    size_t nan_count = 0;
    for (const auto& x : xs) nan_count += is_nan(x);
    for (size_t a = 0; a < n; ++a) {
      CHECK(!before(xs[a], xs[a]), "%s: an element before itself", what);
      size_t rank = 0;
      for (size_t b = 0; b < n; ++b) {
        rank += before(xs[b], xs[a]);
        CHECK(a == b || before(xs[a], xs[b]) != before(xs[b], xs[a]),
              "%s: elements %zu and %zu unordered", what, a, b);
      }
      CHECK(rank < n && seen[rank]++ == 0, "%s: rank %zu taken twice", what, rank);
      CHECK(!is_nan(xs[a]) || rank >= n - nan_count, "%s: a NaN row at rank %zu", what, rank);
    }
  };
  check_ranks(
      edges, [](const auto& a, const auto& b) { return tsl::mst_edge_before(a, b); },
      [](const auto& e) { return std::isnan(e.diameter); }, "mst_edge_before");
  check_ranks(
      pairs, [](const auto& a, const auto& b) { return tsl::h1_pair_before(a, b); },
      [](const auto& p) { return std::isnan(p.death - p.birth); }, "h1_pair_before");
}

// Distances past the float64 range come out +Inf (the CPU glue raises on it, the CUDA engine
// flags the cloud), never NaN; under- and near-overflowing ones stay exact by scaling.
void test_scaled_distance() {
  const double big = 1e308, inf = std::numeric_limits<double>::infinity();
  const double a[2] = {big, 0.0}, b[2] = {-big, 0.0}, c[2] = {0.0, big}, z[2] = {0.0, 0.0};
  CHECK(tsl::scaled_distance(a, b, 2) == inf, "scaled_distance(1e308, -1e308) is not +Inf");
  const double r = tsl::scaled_distance(a, c, 2);  // sqrt(2) 1e308: its square would overflow
  CHECK(std::fabs(r / std::hypot(big, big) - 1) < 1e-15, "scaled_distance near the range");
  CHECK(tsl::scaled_distance(a, z, 2) == big, "scaled_distance(1e308, 0)");
  const float fa[1] = {3e38f}, fb[1] = {-3e38f};  // float32 points: double differences, finite
  CHECK(tsl::scaled_distance(fa, fb, 1) == 2.0 * double(fa[0]), "scaled_distance of float32");
  const double tiny[2] = {1e-300, 1e-300};
  const double t = tsl::scaled_distance(tiny, z, 2);  // its square would underflow to 0
  CHECK(std::fabs(t / std::hypot(1e-300, 1e-300) - 1) < 1e-15, "scaled_distance tiny");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (double v : {inf, -inf, nan}) CHECK(!tsl::is_finite(v), "is_finite(%g)", v);
  for (double v : {0.0, -0.0, big, -big, 1e-310}) CHECK(tsl::is_finite(v), "!is_finite(%g)", v);
  CHECK(!tsl::is_finite(std::numeric_limits<float>::infinity()), "is_finite(float Inf)");
  CHECK(tsl::is_finite(std::numeric_limits<float>::max()), "!is_finite(FLT_MAX)");
}

template <typename T>
void run_all() {
  test_rank_orders_with_nan<T>();
  test_band_masks<T>();
  test_latest_facet_rule<T>();
  test_sweep_builds<T>();
  test_split_sweep<T>();
  test_growing_buffers<T>();
  test_device_heap_compaction<T>();
  test_distance_tiles<T>();
  test_pair_grad<T>();
  test_square<T>();
  test_hexagon<T>();
  test_duplicates<T>();
  test_tiny<T>();
  test_random_mst<T>(1, 40, 3);
  test_random_mst<T>(2, 100, 8);
}

}  // namespace

int main() {
  test_prim_first_contact();
  test_index_decoding();
  test_certified_distances();
  test_scaled_distance();
  run_all<float>();
  run_all<double>();
  return tsl_test::finish_checks("core");
}
