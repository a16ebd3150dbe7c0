// Native tests of the torch-free engine with known answers; run by ctest (also under ASan and
// UBSan with -DTSLOSS_SANITIZE=ON). Exits non-zero on the first failed check group.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "check.h"
#include "engine_reference.h"
#include "vr_reference.h"
#include "core/edge_incidence.h"
#include "core/pairwise_distance.h"
#include "core/tsloss_terms.h"
#include "core/vr_engine.h"
#include "cpu/distance_tiles.h"
#include "cpu/distance_grad_tiles.h"
#include "cpu/edge_gradients.h"

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

// The CUDA kernel's float32 route (csrc/cuda/pairwise_distance_kernel.cuh), its arithmetic modelled
// on the host: the centre tsl::certify_centre, y = x - c rounded in double; eight lanes each sum
// the coordinates k = l (mod 8) by FMA in double (the Gram product and both norms); the lanes meet
// by the xor tree 1, 2, 4; then tsl::certify_float_square, as the kernel calls it.
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
      // 300 and 520: past 256 points, where only AVX2 and AVX-512 take the route (panels).
      for (int64_t n : {2, 3, 5, 9, 17, 64, 130, 256, 300, 520}) {
        // 45: whole groups of four vectors, then single vectors, then scalars, in every build.
        for (int64_t dim : {1, 3, 8, 9, 45, 129, 2048}) {
          if ((n * dim > 256 * 300 && kind != 0) || (n > 256 && dim > 129)) continue;
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

// TSLoss's dense pair weights (cpu::uniform_weight_rows) in every build against the scalar
// quotient glue::fill_pair_weights takes, T(w / d) for d > 0, W left alone elsewhere, bit for bit
// (zero signs and NaNs included), and their largest |w / d|: distances zero, negative, NaN,
// infinite, subnormal and ordinary, numerators of both signs, zeros of both signs, NaN, huge and
// tiny, at sizes that leave a row's tail to the scalar loop.
template <typename T>
void test_uniform_weight_rows() {
  std::mt19937 rng(29);
  std::uniform_real_distribution<double> uniform(0.1, 10.0);
  const double ws[] = {1.0, -2.5, 0.0, -0.0, 1e300, -1e-300, 3.7e-5, double(NAN)};
  for (int level : {0, 3, 4}) {
    if (!tsl::set_x86_cap(level)) continue;
    for (int64_t n : {1, 2, 5, 9, 17, 40}) {
      for (double w : ws) {
        const int64_t n4 = (n + 3) / 4 * 4;
        std::vector<T> d(n * n), W(n4 * n4, T(0)), ref(n4 * n4, T(0));
        for (T& v : d) {
          const int r = int(rng() % 20);
          v = r == 0 ? T(0) : r == 1 ? T(-0.0) : r == 2 ? T(NAN) : r == 3 ? T(INFINITY)
            : r == 4 ? T(-1) : r == 5 ? std::numeric_limits<T>::denorm_min() : T(uniform(rng));
        }
        double top_ref = 0.0;
        for (int64_t i = 1; i < n; ++i)
          for (int64_t j = 0; j < i; ++j) {
            const double dj = static_cast<double>(d[i * n + j]);
            if (!(dj > 0.0)) continue;
            const double q = w / dj, a = std::fabs(q);
            ref[i * n4 + j] = static_cast<T>(q);
            top_ref = a > top_ref ? a : top_ref;
          }
        const double top = tsloss::cpu::uniform_weight_rows<T>(n, n4, d.data(), w, W.data());
        CHECK(memcmp(&top, &top_ref, sizeof top) == 0, "uniform weights' top, level %d n=%lld "
              "w=%g: %.17g vs %.17g", level, (long long)n, w, top, top_ref);
        for (int64_t e = 0; e < n4 * n4; ++e)
          CHECK(memcmp(&W[e], &ref[e], sizeof(T)) == 0, "uniform weights, level %d n=%lld w=%g, "
                "entry %lld: %.17g vs %.17g", level, (long long)n, w, (long long)e, double(W[e]),
                double(ref[e]));
      }
    }
  }
  tsl::set_x86_cap(-1);
}

// The distance backward's tiles (pairwise_distance, TSLoss) in every build, in place, with the
// sums in scratch (rows a multiple of 2 KB apart: dim 512 and 1024; clouds of n % 4 != 0 at dim
// 16, 512 and 1024) and all through scratch, at the op's chunk width and at the narrowest, each
// chunk prefetching the next (the next cloud's first at a cloud's end), against the scalar order
// bit for bit, zero signs included. Some clouds weigh only a few pairs (normalize="none": the
// bars' edges), so that whole tiles are skipped, and one none.
template <typename T>
void test_pair_grad() {
  std::mt19937 rng(17);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uniform;
  for (int level : {0, 3, 4}) {
    if (!tsl::set_x86_cap(level)) continue;
    for (int64_t n : {1, 2, 3, 4, 5, 8, 13, 17, 32, 33}) {
      for (int64_t dim : {1, 7, 16, 17, 100, 300, 512, 1024}) {
        const int64_t B = 3, n4 = (n + 3) / 4 * 4;
        std::vector<T> x(B * n * dim), W(B * n4 * n4, T(0)), ref(B * n * dim);
        for (T& v : x) v = static_cast<T>(3.0 + normal(rng));
        for (int64_t b = 0; b < B; ++b) {
          const double keep = b == 0 ? 0.0 : b == 1 ? 0.1 : 1.0;  // the last: every pair
          for (int64_t i = 1; i < n; ++i)
            for (int64_t j = 0; j < i; ++j)
              if (uniform(rng) < keep) W[b * n4 * n4 + i * n4 + j] = static_cast<T>(normal(rng));
          pair_grad_reference(&x[b * n * dim], n, dim, &W[b * n4 * n4], n4, &ref[b * n * dim]);
        }
        // Rows on 64-byte lines (as torch's tensors start: in place where the shape allows)
        // and 16 bytes off them (through scratch).
        for (int64_t chunk : {tsloss::cpu::grad_chunk(sizeof(T)), int64_t(16)})
          for (int64_t off : {int64_t(0), int64_t(16 / sizeof(T))}) {
            // Clouds in descending order and 64 values past the last: a row written past a
            // cloud's end lands in a cloud already checked or in the tail, and a point read
            // past the last cloud's end is a NaN.
            const int64_t tail = 64;
            tsloss::cpu::LineVector<T> xl(off + B * n * dim + tail,
                                          std::numeric_limits<T>::quiet_NaN());
            tsloss::cpu::LineVector<T> gl(off + B * n * dim + tail, T(-1));
            std::copy(x.begin(), x.end(), xl.begin() + off);
            T* const xp = xl.data() + off;
            T* const gx = gl.data() + off;
            std::vector<T> scratch(2 * n4 * chunk);
            const int64_t chunks = (dim + chunk - 1) / chunk;
            for (int64_t b = B - 1; b >= 0; --b)
              for (int64_t c = 0; c < chunks; ++c) {
                const bool last = c + 1 == chunks;
                const int64_t nb = last ? b - 1 : b, nk = last ? 0 : (c + 1) * chunk;
                const bool next = nb >= 0;
                tsloss::cpu::pair_grad_chunk(
                    &xp[b * n * dim], n, dim, &W[b * n4 * n4], n4, c * chunk,
                    std::min(chunk, dim - c * chunk), scratch.data(), &gx[b * n * dim],
                    next ? &xp[nb * n * dim + nk] : nullptr,
                    next ? &gx[nb * n * dim + nk] : nullptr, next ? std::min(chunk, dim - nk) : 0);
              }
            for (int64_t e = B * n * dim; e < B * n * dim + tail; ++e)
              CHECK(gx[e] == T(-1), "distance gradient tiles, level %d n=%lld dim=%lld: wrote "
                    "past the last cloud", level, (long long)n, (long long)dim);
            for (int64_t e = 0; e < B * n * dim; ++e)
              CHECK(std::signbit(gx[e]) == std::signbit(ref[e]) && (gx[e] == ref[e]),
                    "distance gradient tiles, level %d n=%lld dim=%lld chunk=%lld off=%lld, "
                    "entry %lld: %.17g vs %.17g", level, (long long)n, (long long)dim,
                    (long long)chunk, (long long)off, (long long)e, (double)gx[e], (double)ref[e]);
          }
      }
    }
  }
  tsl::set_x86_cap(-1);
}

// vr_persistence's backward from points (cpu/edge_gradients.h) in every build against the
// scalar rule the CUDA kernel also runs (tsl::edge_scale, then step = T(s * (diff * m)) added to
// u's row and subtracted from v's, edge after edge), bit for bit, zero signs included: lengths
// summed several edges side by side, whole rows and blocks of coordinates added into a block of
// their own (k0 > 0, its own row stride), dimensions that leave tails to the scalar loops, edges
// sharing endpoints, duplicate points (no direction: s = 0), and scales far from 1, where the
// lengths and differences are rescaled (tiny or huge points, huge gradients).
template <typename T>
void test_edge_gradients() {
  std::mt19937 rng(41);
  std::normal_distribution<double> normal;
  const double big = sizeof(T) == 8 ? 1e300 : 1e30, tiny = sizeof(T) == 8 ? 1e-300 : 1e-30;
  for (int level : {0, 3, 4}) {
    if (!tsl::set_x86_cap(level)) continue;
    for (int64_t n : {2, 5, 13}) {
      for (int64_t dim : {1, 7, 8, 9, 17, 100, 300}) {
        for (int kind = 0; kind < 4; ++kind) {  // ordinary; tiny, huge points; huge g on small ones
          const double scale =
              kind == 1 ? tiny : kind == 2 ? big / 1e6 : kind == 3 ? tiny * 1e10 : 1.0;
          std::vector<T> x(n * dim);
          for (T& v : x) v = static_cast<T>((3.0 + normal(rng)) * scale);
          std::copy(x.begin(), x.begin() + dim, x.begin() + (n - 1) * dim);  // a duplicate
          std::vector<tsloss::cpu::LiveEdge> edges;
          for (int64_t r = 0; r < 3 * n; ++r) {
            const int64_t u = int64_t(rng() % n), v = int64_t(rng() % n);
            if (u == v) continue;
            const double g = normal(rng) * (kind == 3 ? big : 1.0);
            edges.push_back({u, v, static_cast<double>(static_cast<T>(g)), {0.0, 1.0}});
          }
          const int64_t count = int64_t(edges.size());
          std::vector<T> ref(n * dim, T(0));
          for (const auto& e : edges) {
            const T* xu = &x[e.u * dim];
            const T* xv = &x[e.v * dim];
            const tsl::EdgeScale sc = tsl::edge_scale(e.g, xu, xv, dim);
            if (sc.s == 0.0) continue;
            for (int64_t k = 0; k < dim; ++k) {
              const T step = static_cast<T>(
                  sc.s * ((static_cast<double>(xu[k]) - static_cast<double>(xv[k])) * sc.m));
              ref[e.u * dim + k] += step;
              ref[e.v * dim + k] -= step;
            }
          }
          // Lengths in two ranges, as two threads would take them.
          tsloss::cpu::edge_scales(x.data(), dim, edges.data(), 0, count / 2);
          tsloss::cpu::edge_scales(x.data(), dim, edges.data(), count / 2, count);
          for (const auto& e : edges) {
            const tsl::EdgeScale want = tsl::edge_scale(e.g, &x[e.u * dim], &x[e.v * dim], dim);
            CHECK(memcmp(&want, &e.scale, sizeof want) == 0, "edge scale, level %d n=%lld "
                  "dim=%lld kind %d: (%.17g, %g) vs (%.17g, %g)", level, (long long)n,
                  (long long)dim, kind, e.scale.s, e.scale.m, want.s, want.m);
          }
          int64_t live = 0;
          for (const auto& e : edges)
            if (e.scale.s != 0.0) edges[live++] = e;
          // The whole rows in place, then blocks of coordinates each into a block of its own.
          for (int64_t span : {dim, int64_t(8), int64_t(5)}) {
            std::vector<T> got(n * dim, T(0));
            for (int64_t k0 = 0; k0 < dim; k0 += span) {
              const int64_t k1 = std::min(dim, k0 + span), w = k1 - k0;
              if (w == dim) {
                tsloss::cpu::scatter_edges(x.data(), dim, edges.data(), live, 0, dim, got.data(),
                                           dim);
                continue;
              }
              std::vector<T> block(n * w, T(0));
              tsloss::cpu::scatter_edges(x.data(), dim, edges.data(), live, k0, k1, block.data(),
                                         w);
              for (int64_t r = 0; r < n; ++r)
                std::copy(&block[r * w], &block[r * w] + w, &got[r * dim + k0]);
            }
            for (int64_t i = 0; i < n * dim; ++i)
              CHECK(memcmp(&got[i], &ref[i], sizeof(T)) == 0, "edge gradient, level %d n=%lld "
                    "dim=%lld kind %d span %lld, entry %lld: %.17g vs %.17g", level,
                    (long long)n, (long long)dim, kind, (long long)span, (long long)i,
                    double(got[i]), double(ref[i]));
          }
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

// The first engine's reduction (TSLOSS_CUDA_REDUCE=thread: cuda/h1_reduce.cu, reduce_kernel) runs
// reduce_h1 once per cloud over fixed buffers, its coboundary heap dropping cancelling pairs when
// full (EntryHeap::compact); the host engine grows its heaps instead, so no other host test runs
// compaction. Wherever a fixed heap suffices the pairs must be the engine's, and where it does not
// the reduction must say so (the device then flags the cloud). Some capacities must succeed only by
// compacting: the same heap without compaction fills.
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

// enclosing_radius against its definition, one chain per row (min over rows of the row maximum,
// starting from +0), bit for bit: matrices of 1 to 40 points (every remainder of the eight
// chains), entries +-0, NaN and ties, half of them with one large entry at a random place.
template <typename T>
void test_enclosing_radius() {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> kind(0, 9);
  std::uniform_real_distribution<double> val(0.0, 4.0);
  int64_t bad = 0, cases = 0;
  for (int64_t n = 1; n <= 40; ++n)
    for (int trial = 0; trial < 60; ++trial) {
      std::vector<T> m(n * n);
      for (T& v : m) {
        const int k = kind(rng);
        v = k == 0 ? T(-0.0) : k == 1 ? T(NAN) : k == 2 ? T(1) : T(val(rng));
      }
      if (trial % 2 == 1) m[rng() % (n * n)] = T(9);  // one large entry, anywhere
      T expect = T(0);
      for (int64_t i = 0; i < n; ++i) {
        T row_max = T(0);
        for (int64_t j = 0; j < n; ++j) row_max = m[i * n + j] > row_max ? m[i * n + j] : row_max;
        if (i == 0 || row_max < expect) expect = row_max;
      }
      const T got = tsl::enclosing_radius(tsl::DistanceMatrix<T>{m.data(), n});
      bad += memcmp(&got, &expect, sizeof(T)) != 0;
      ++cases;
    }
  CHECK(bad == 0, "enclosing_radius differs from one chain per row on %lld of %lld matrices",
        (long long)bad, (long long)cases);
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

// ---- The engine against an independent persistence (vr_reference.h) -------------------------

// Clouds for the comparison with the reference: 0 Gaussian; 1 integer-rounded Gaussian (many
// equal lengths); 2 points of a small lattice, some of them repeated; 3 Gaussian points of
// which about a third repeat earlier ones; 4 a regular polygon in the first two coordinates
// (every chord of one span equal, exactly at phase 0 and radius 1, up to rounding otherwise),
// sometimes with its centre. Points are shuffled: the engine's index tie rules then meet many
// vertex orders.
std::vector<double> reference_cloud(int kind, int n, int dim, std::mt19937& rng) {
  std::normal_distribution<double> gauss;
  std::uniform_real_distribution<double> uniform;
  std::vector<double> x(n * dim, 0.0);
  switch (kind) {
    case 0:
      for (double& v : x) v = gauss(rng);
      break;
    case 1: {
      const double scale = 1.0 + rng() % 3;
      for (double& v : x) v = std::round(scale * gauss(rng));
      break;
    }
    case 2: {
      const int side = 2 + rng() % 3;
      const double step = rng() % 2 ? 1.0 : 0.1;  // 0.1: equal integer steps, inexact lengths
      for (double& v : x) v = step * double(rng() % side);
      break;
    }
    case 3:
      for (int p = 0; p < n; ++p) {
        const int from = p > 0 && rng() % 3 == 0 ? int(rng() % p) : p;
        for (int k = 0; k < dim; ++k) x[p * dim + k] = from == p ? gauss(rng) : x[from * dim + k];
      }
      break;
    default: {
      const bool exact = rng() % 2;
      const bool centre = n > 3 && rng() % 2;
      const int ring = centre ? n - 1 : n;
      const double phase = exact ? 0.0 : 2 * M_PI * uniform(rng);
      const double radius = exact ? 1.0 : 0.5 + 2 * uniform(rng);
      const double offset = exact ? 0.0 : gauss(rng);
      for (int p = 0; p < n; ++p) {
        for (int k = 0; k < dim; ++k) x[p * dim + k] = offset;
        if (p == ring) continue;  // the centre
        x[p * dim] += radius * std::cos(phase + 2 * M_PI * p / ring);
        x[p * dim + 1] += radius * std::sin(phase + 2 * M_PI * p / ring);
      }
      break;
    }
  }
  std::vector<int> order(n);
  for (int p = 0; p < n; ++p) order[p] = p;
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<double> shuffled(n * dim);
  for (int p = 0; p < n; ++p)
    for (int k = 0; k < dim; ++k) shuffled[p * dim + k] = x[order[p] * dim + k];
  return shuffled;
}

struct ReferenceTally {
  long clouds = 0, bars = 0, zero_length = 0, tied_clouds = 0, truncated = 0;
};

// Bars (birth, death) in the engine's documented H1 order (README: by decreasing persistence,
// the later birth first, then the later birth edge in the filtration).
template <typename T>
std::vector<tsl_ref::RefBar<T>> in_h1_order(std::vector<tsl_ref::RefBar<T>> bars) {
  std::sort(bars.begin(), bars.end(), [](const tsl_ref::RefBar<T>& a, const tsl_ref::RefBar<T>& b) {
    const T pa = a.death - a.birth, pb = b.death - b.birth;
    if (pa != pb) return pa > pb;
    return a.birth != b.birth ? a.birth > b.birth : a.birth_position > b.birth_position;
  });
  return bars;
}

// One cloud against the reference. Values, from the reference in its own tie order: the H0
// deaths and the H1 bars in the documented orders, H1's count whole at the default capacity and
// truncated to its first rows at a small one; every reported edge has its bar's value as its
// length. Simplices, from the reference in the documented tie order (ripser.py's), where the
// pairing is unique: each H0 row's edge, each H1 row's birth edge, and a death edge that is a
// side of the reference's death triangle.
template <typename T>
void compare_with_reference(const std::vector<double>& pts, int n, int dim, const char* tag,
                            ReferenceTally& tally) {
  const std::vector<T> x(pts.begin(), pts.end());
  const std::vector<double> xr(x.begin(), x.end());  // the points as the engine sees them
  // The engine's distances (pairwise_distance_cloud): the canonical square in double, its
  // root rounded to T. The same values, so bars compare with ==.
  std::vector<T> dist(n * n, T(0));
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < i; ++j)
      dist[i * n + j] = dist[j * n + i] =
          T(std::sqrt(tsl::squared_distance(&x[i * dim], &x[j * dim], dim)));
  const tsl_ref::RefDiagram<T> ref = tsl_ref::vr_reference(dist.data(), n);
  const tsl_ref::RefDiagram<T> ordered =
      tsl_ref::vr_reference(dist.data(), n, tsl_ref::Order::kRipser);
  CHECK(ref.essential_h0 == 1 && ref.essential_h1 == 0 && (int)ref.h0.size() == n - 1,
        "%s: the reference itself: %d infinite H0, %d infinite H1, %zu H0 deaths", tag,
        ref.essential_h0, ref.essential_h1, ref.h0.size());
  std::vector<T> deaths, ordered_deaths;
  for (const auto& bar : ref.h0) deaths.push_back(bar.death);
  for (const auto& bar : ordered.h0) ordered_deaths.push_back(bar.death);
  std::sort(deaths.begin(), deaths.end());
  const std::vector<tsl_ref::RefBar<T>> expect = in_h1_order(ref.h1);
  const std::vector<tsl_ref::RefBar<T>> named = in_h1_order(ordered.h1);
  const int64_t refcount = (int64_t)expect.size();
  // The reference's own claim: its two tie orders give the same values.
  bool same_values = ordered_deaths.size() == deaths.size() && named.size() == expect.size();
  for (size_t q = 0; same_values && q < named.size(); ++q)
    same_values = named[q].birth == expect[q].birth && named[q].death == expect[q].death;
  std::sort(ordered_deaths.begin(), ordered_deaths.end());
  CHECK(same_values && ordered_deaths == deaths,
        "%s: the reference's diagrams differ between its two tie orders", tag);

  auto length = [&](int64_t u, int64_t v) {
    return u >= 0 && u < v && v < n ? dist[u * n + v] : T(-1);
  };
  const int64_t K = std::max<int64_t>(4 * n, 8);  // the default capacity (default_max_h1)
  const Result<T> r = run<T>(xr, n, dim, K);
  for (int k = 0; k + 1 < n; ++k) {
    const int64_t u = r.h0_edges[2 * k], v = r.h0_edges[2 * k + 1];
    CHECK(r.h0[2 * k] == T(0) && r.h0[2 * k + 1] == deaths[k],
          "%s: H0 bar %d (%.9g, %.9g), reference death %.9g", tag, k, (double)r.h0[2 * k],
          (double)r.h0[2 * k + 1], (double)deaths[k]);
    CHECK(length(u, v) == r.h0[2 * k + 1], "%s: H0 bar %d death %.9g, its edge (%lld,%lld)",
          tag, k, (double)r.h0[2 * k + 1], (long long)u, (long long)v);
    // In filtration order: the same order as the engine's (by death, the larger index first).
    const int* e = ordered.h0[k].death_vertices;
    CHECK(u == e[0] && v == e[1], "%s: H0 bar %d edge (%lld,%lld), reference (%d,%d)", tag, k,
          (long long)u, (long long)v, e[0], e[1]);
  }
  CHECK(r.count == refcount, "%s: H1 count %lld, reference %lld (+%d of zero length)", tag,
        (long long)r.count, (long long)refcount, ref.h1_zero_length);
  CHECK(r.truncated == (r.count > K), "%s: truncated %d with count %lld of capacity %lld", tag,
        int(r.truncated), (long long)r.count, (long long)K);
  const int64_t keep = std::min<int64_t>(std::min<int64_t>(r.count, refcount), K);
  for (int64_t q = 0; q < keep; ++q) {
    const T b = r.h1[2 * q], d = r.h1[2 * q + 1];
    CHECK(b == expect[q].birth && d == expect[q].death,
          "%s: H1 row %lld (%.9g, %.9g), reference (%.9g, %.9g)", tag, (long long)q, (double)b,
          (double)d, (double)expect[q].birth, (double)expect[q].death);
    const int64_t* e = &r.h1_edges[4 * q];
    CHECK(length(e[0], e[1]) == b, "%s: H1 row %lld birth %.9g, its edge (%lld,%lld)", tag,
          (long long)q, (double)b, (long long)e[0], (long long)e[1]);
    CHECK(length(e[2], e[3]) == d, "%s: H1 row %lld death %.9g, its edge (%lld,%lld)", tag,
          (long long)q, (double)d, (long long)e[2], (long long)e[3]);
    const int* be = named[q].birth_vertices;
    const int* dt = named[q].death_vertices;
    auto in_triangle = [&](int64_t w) { return w == dt[0] || w == dt[1] || w == dt[2]; };
    CHECK(e[0] == be[0] && e[1] == be[1] && in_triangle(e[2]) && in_triangle(e[3]),
          "%s: H1 row %lld edges (%lld,%lld) (%lld,%lld), reference birth (%d,%d) death "
          "(%d,%d,%d)", tag, (long long)q, (long long)e[0], (long long)e[1], (long long)e[2],
          (long long)e[3], be[0], be[1], dt[0], dt[1], dt[2]);
  }
  check_padding(r, K, tag);

  // At a capacity of 2 the kept rows are the first two of the same order.
  const Result<T> small = run<T>(xr, n, dim, 2);
  const int64_t kept = std::min<int64_t>(refcount, 2);
  CHECK(small.count == refcount && small.truncated == (refcount > 2),
        "%s: at capacity 2, H1 count %lld (truncated %d), reference %lld", tag,
        (long long)small.count, int(small.truncated), (long long)refcount);
  for (int64_t q = 0; q < kept; ++q)
    CHECK(small.h1[2 * q] == expect[q].birth && small.h1[2 * q + 1] == expect[q].death &&
              small.h1_edges[4 * q] == named[q].birth_vertices[0] &&
              small.h1_edges[4 * q + 1] == named[q].birth_vertices[1],
          "%s: at capacity 2, H1 row %lld (%.9g, %.9g) born at (%lld,%lld), reference "
          "(%.9g, %.9g) at (%d,%d)", tag, (long long)q, (double)small.h1[2 * q],
          (double)small.h1[2 * q + 1], (long long)small.h1_edges[4 * q],
          (long long)small.h1_edges[4 * q + 1], (double)expect[q].birth,
          (double)expect[q].death, named[q].birth_vertices[0], named[q].birth_vertices[1]);
  check_padding(small, 2, tag);

  // Heaps and the arena from one entry up: every column that overflows resumes where it
  // stopped (reduce_column), and the result must not show it.
  const Result<T> grown = run<T>(xr, n, dim, K, 1, 1);
  CHECK(grown.count == r.count && grown.h1 == r.h1 && grown.h1_edges == r.h1_edges,
        "%s: buffers grown from one entry change H1 (count %lld, not %lld, or a row)", tag,
        (long long)grown.count, (long long)r.count);

  std::vector<T> lengths;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < i; ++j) lengths.push_back(dist[i * n + j]);
  std::sort(lengths.begin(), lengths.end());
  ++tally.clouds;
  tally.bars += refcount;
  tally.zero_length += ref.h1_zero_length;
  tally.tied_clouds += std::adjacent_find(lengths.begin(), lengths.end()) != lengths.end();
  tally.truncated += r.truncated;
}

// The engine against vr_reference on clouds of every kind, N = 3..16, dim 2..5.
template <typename T>
void test_against_reference(int trials) {
  static const char* kinds[] = {"gaussian", "rounded", "lattice", "duplicates", "polygon"};
  std::mt19937 rng(sizeof(T) == 4 ? 101 : 202);
  char tag[160];
  for (int kind = 0; kind < 5; ++kind) {
    ReferenceTally tally;
    for (int n = 3; n <= 16; ++n)
      for (int dim = 2; dim <= 5; ++dim)
        for (int trial = 0; trial < trials; ++trial) {
          const std::vector<double> pts = reference_cloud(kind, n, dim, rng);
          std::snprintf(tag, sizeof tag, "reference, %s %s n=%d dim=%d trial %d",
                        sizeof(T) == 4 ? "float" : "double", kinds[kind], n, dim, trial);
          compare_with_reference<T>(pts, n, dim, tag, tally);
        }
    std::printf("reference, %s %s: %ld clouds, %ld H1 bars (and %ld zero-length pairs), %ld "
                "clouds with equal edge lengths, %ld truncated at 4N\n",
                sizeof(T) == 4 ? "float" : "double", kinds[kind], tally.clouds, tally.bars,
                tally.zero_length, tally.tied_clouds, tally.truncated);
    // Guards against a comparison gone vacuous (say, a generator that lost its ties or bars).
    CHECK(tally.bars >= tally.clouds / 4 && (kind == 0 || tally.tied_clouds >= tally.clouds / 2),
          "reference, %s: too few bars (%ld) or tied clouds (%ld) in %ld clouds", kinds[kind],
          tally.bars, tally.tied_clouds, tally.clouds);
  }
}

// ---- TSLoss terms (core/tsloss_terms.h) against their definitions ---------------------------

// The header's definitions for one cloud, re-derived: u_r = D_r / s, v_q = P_q / s for
// q < count (P_q = d_q - b_q), else 0; C = mean_r u_r or mean_r |u_r - target|;
// R = sum_{q < count} v_q^p; S = mean_r (u_r - prev0_r)^2 + mean_q (v_q - prev1_q)^2 over the
// rows that hold a bar now (q < count) or held one then (prev1_q != 0), counted up to the last
// such row (0 if none); F = kc C + kr R + ks S. u and v are rounded to T as the forward rounds
// them (D, P and s must be T values); with T = double, F is the smooth function whose
// derivatives the backward's pieces give.
template <typename T>
double plain_objective(const std::vector<double>& D, const std::vector<double>& P, int64_t count,
                       double s, const std::vector<double>& prev0,
                       const std::vector<double>& prev1, const tsl::TermOptions& o, double kc,
                       double kr, double ks, double* C = nullptr, double* R = nullptr,
                       double* S = nullptr) {
  const size_t H0 = D.size(), K = P.size();
  size_t rows = 0;
  for (size_t q = 0; q < K; ++q)
    if ((int64_t)q < count || prev1[q] != 0.0) rows = q + 1;
  double c = 0, r = 0, s0 = 0, s1 = 0;
  for (size_t i = 0; i < H0; ++i) {
    const double u = (double)(T(D[i]) / T(s));
    c += o.target_mode ? std::fabs(u - o.target) : u;
    s0 += (u - prev0[i]) * (u - prev0[i]);
  }
  for (size_t q = 0; q < K; ++q) {
    const double v = (int64_t)q < count ? (double)(T(P[q]) / T(s)) : 0.0;
    if ((int64_t)q < count)
      r += o.p == 1.0 ? v : o.p == 2.0 ? v * v : o.p == 1.5 ? v * std::sqrt(v) : std::pow(v, o.p);
    s1 += (v - prev1[q]) * (v - prev1[q]);
  }
  // A negative count (the device's overflow and invalid-input codes): H1 unknown, so are the
  // terms built on it.
  const bool unknown = count < 0;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double conn = c / H0, red = unknown ? nan : r,
               stab = !o.has_prev ? 0.0 : unknown ? nan : s0 / H0 + (rows > 0 ? s1 / rows : 0.0);
  if (C) *C = conn;
  if (R) *R = red;
  if (S) *S = stab;
  return kc * conn + kr * red + ks * stab;
}

// The scale: raw_scale is the mean over ordered pairs, rounded in T; clamp_scale keeps it at
// least the smallest normal, passing the gradient exactly where the raw mean reaches it, and
// is 1 (no gradient) without normalize.
template <typename T>
void test_tsloss_scale() {
  const T tiny = std::numeric_limits<T>::min();
  for (int64_t n : {2, 3, 7, 40}) {
    const double pair_sum = 1.2345 * double(n * (n - 1) / 2);  // mean distance 1.2345
    const double raw = (double)tsl::raw_scale<T>(pair_sum, n);
    CHECK(std::fabs(raw - 1.2345) <= 4 * std::numeric_limits<T>::epsilon(),
          "raw_scale(n=%lld) = %.17g, the mean is 1.2345", (long long)n, raw);
  }
  // A sum that outgrows T (float32 only: the sum is double) keeps its mean; one past double has
  // none (NaN, not the Inf that zeroed every term).
  const T big = std::numeric_limits<T>::max() / T(4);
  for (int64_t n : {2, 3, 64}) {
    const double pair_sum = double(big) * double(n * (n - 1) / 2);  // mean distance: big
    const T raw = tsl::raw_scale<T>(pair_sum, n);
    if (pair_sum <= std::numeric_limits<double>::max())
      CHECK(std::fabs((double)raw - (double)big) <= 4 * std::numeric_limits<T>::epsilon() * big,
            "raw_scale(n=%lld) of a sum past T = %.17g, the mean is %.17g", (long long)n,
            (double)raw, (double)big);
    else
      CHECK(std::isnan(raw), "raw_scale(n=%lld) of a sum past double = %.17g, not NaN",
            (long long)n, (double)raw);
  }
  bool passes = false;
  CHECK(tsl::clamp_scale(T(0.5), true, &passes) == T(0.5) && passes, "clamp_scale(0.5)");
  CHECK(tsl::clamp_scale(tiny, true, &passes) == tiny && passes, "clamp_scale at the bound");
  CHECK(tsl::clamp_scale(T(0), true, &passes) == tiny && !passes, "clamp_scale(0)");
  CHECK(tsl::clamp_scale(tiny / T(4), true, &passes) == tiny && !passes, "clamp_scale below");
  CHECK(tsl::clamp_scale(T(7), false, &passes) == T(1) && !passes, "clamp_scale without normalize");
  const T nan = std::numeric_limits<T>::quiet_NaN();
  CHECK(std::isnan(tsl::clamp_scale(nan, true, &passes)), "clamp_scale(NaN) is not NaN");
}

// cloud_terms against plain_objective, with every option: normalize on/off, connectivity
// total/target, p = 1, 2, 1.5, with and without a previous topology (its bars in none, some or
// all of the K rows), count at 0, part of K, all of K and negative (H1 unknown: NaN
// redundancy and stability, zero H1 topology). Padding rows hold values that must not count.
template <typename T>
void test_tsloss_forward() {
  std::mt19937 rng(31);
  std::uniform_real_distribution<double> uni(0.1, 2.0);
  const int64_t n = 7, H0 = n - 1, K = 6;
  for (int64_t count : {int64_t(0), int64_t(3), K, int64_t(-1)})
    for (int64_t prev_count : {int64_t(0), int64_t(2), int64_t(4), K})  // the previous bars
    for (bool normalize : {false, true})
      for (bool target_mode : {false, true})
        for (double p : {1.0, 2.0, 1.5})
          for (bool has_prev : {false, true}) {
            std::vector<T> h0(2 * H0), h1(2 * K), prev0(H0), prev1(K), topo0(H0, T(-3)),
                topo1(K, T(-3));
            std::vector<double> D(H0), P(K), p0(H0, 0.0), p1(K, 0.0);
            for (int64_t r = 0; r < H0; ++r) {
              h0[2 * r] = T(0);
              h0[2 * r + 1] = T(uni(rng));
              D[r] = (double)h0[2 * r + 1];
            }
            for (int64_t q = 0; q < K; ++q) {
              h1[2 * q] = T(uni(rng));
              h1[2 * q + 1] = h1[2 * q] + T(uni(rng));
              P[q] = (double)(h1[2 * q + 1] - h1[2 * q]);
            }
            for (int64_t r = 0; r < H0; ++r) p0[r] = (double)(prev0[r] = T(uni(rng)));
            // The previous call's bars fill its first prev_count rows, zeros after them.
            for (int64_t q = 0; q < K; ++q)
              p1[q] = (double)(prev1[q] = q < prev_count ? T(uni(rng)) : T(0));
            bool passes;
            const T s = tsl::clamp_scale(tsl::raw_scale<T>(uni(rng) * 21.0, n), normalize,
                                         &passes);
            const tsl::TermOptions o{normalize, target_mode, has_prev, 0.8, p, 0.7, 1.3, 0.4};
            const tsl::CloudSums got = tsl::cloud_terms(
                h0.data(), n, h1.data(), K, count, s, has_prev ? prev0.data() : nullptr,
                has_prev ? prev1.data() : nullptr, o, topo0.data(), topo1.data());
            double C, R, S;
            plain_objective<T>(D, P, count, (double)s, p0, p1, o, 0, 0, 0, &C, &R, &S);
            auto close = [](double a, double b) {
              if (b != b) return a != a;
              return std::fabs(a - b) <= 1e-12 * (1.0 + std::fabs(b));
            };
            CHECK(close(got.conn, C) && close(got.red, R) && close(got.stab, S),
                  "cloud_terms (%s count=%lld normalize=%d target=%d p=%g prev=%d): "
                  "C %.17g vs %.17g, R %.17g vs %.17g, S %.17g vs %.17g",
                  sizeof(T) == 4 ? "float" : "double", (long long)count, int(normalize),
                  int(target_mode), p, int(has_prev), got.conn, C, got.red, R, got.stab, S);
            bool topo_ok = true;
            for (int64_t r = 0; r < H0; ++r) topo_ok &= topo0[r] == T(D[r]) / s;
            for (int64_t q = 0; q < K; ++q)
              topo_ok &= topo1[q] == (q < count ? T(P[q]) / s : T(0));
            CHECK(topo_ok, "cloud_terms topology (count=%lld normalize=%d): not u and v",
                  (long long)count, int(normalize));
          }
}

// The backward's pieces against finite differences of plain_objective in double: h0_death_grad
// is dF/dD_r, h1_pers_grad dF/dP_q (0 for padding), the *ds they accumulate dF/ds with D and P
// held, and dense_pair_weight spreads it over the pairs as s = 2 sum_{i>j} d_ij / (n (n - 1))
// does. Targets sit between the u values, clear of the kink, where the slope is pinned to 0.
void test_tsloss_backward() {
  std::mt19937 rng(37);
  std::uniform_real_distribution<double> uni(0.1, 2.0);
  const int64_t n = 6, H0 = n - 1, K = 5;
  const double kc = 0.7, kr = 1.3, ks = 0.45;
  const tsl::CloudCoefficients k{kc, kr, ks, 0.0};
  for (int64_t count : {int64_t(2), K})
    for (int64_t prev_count : {int64_t(0), int64_t(3), K})  // the previous bars: fewer, more, all
    for (bool target_mode : {false, true})
      for (double p : {1.0, 2.0, 1.5})
        for (bool has_prev : {false, true}) {
          std::vector<double> D(H0), P(K), p0(H0, 0.0), p1(K, 0.0);
          for (double& v : D) v = uni(rng);
          for (double& v : P) v = uni(rng);
          if (has_prev) {
            for (double& v : p0) v = uni(rng);
            for (int64_t q = 0; q < K; ++q) p1[q] = q < prev_count ? uni(rng) : 0.0;
          }
          const double s = 0.9;
          std::vector<double> u(D);
          for (double& v : u) v /= s;
          std::sort(u.begin(), u.end());
          const tsl::TermOptions o{true, target_mode, has_prev, 0.5 * (u[1] + u[2]), p,
                                   kc, kr, ks};
          auto F = [&](const std::vector<double>& Dx, const std::vector<double>& Px, double sx) {
            return plain_objective<double>(Dx, Px, count, sx, p0, p1, o, kc, kr, ks);
          };
          auto fd_close = [](double fd, double g) {
            return std::fabs(fd - g) <= 1e-6 * (1.0 + std::fabs(g));
          };
          const double h = 1e-6;
          double ds = 0.0;
          for (int64_t r = 0; r < H0; ++r) {
            std::vector<double> Dp(D), Dm(D);
            Dp[r] += h;
            Dm[r] -= h;
            const double fd = (F(Dp, P, s) - F(Dm, P, s)) / (2 * h);
            const double g = tsl::h0_death_grad(D[r] / s, p0[r], H0, s, o, k, &ds);
            CHECK(fd_close(fd, g), "h0_death_grad (target=%d p=%g prev=%d) row %lld: %.12g, "
                  "finite difference %.12g", int(target_mode), p, int(has_prev), (long long)r,
                  g, fd);
          }
          for (int64_t q = 0; q < K; ++q) {
            std::vector<double> Pp(P), Pm(P);
            Pp[q] += h;
            Pm[q] -= h;
            const double fd = (F(D, Pp, s) - F(D, Pm, s)) / (2 * h);
            const double v = q < count ? P[q] / s : 0.0;
            const double g = tsl::h1_pers_grad(v, p1[q], q, count,
                                               has_prev ? tsl::stability_rows(p1.data(), K, count)
                                                        : 0,
                                               s, o, k, &ds);
            CHECK(fd_close(fd, g), "h1_pers_grad (count=%lld target=%d p=%g prev=%d) row %lld: "
                  "%.12g, finite difference %.12g", (long long)count, int(target_mode), p,
                  int(has_prev), (long long)q, g, fd);
          }
          const double fds = (F(D, P, s + h) - F(D, P, s - h)) / (2 * h);
          CHECK(fd_close(fds, ds), "d/ds (count=%lld target=%d p=%g prev=%d): %.12g, finite "
                "difference %.12g", (long long)count, int(target_mode), p, int(has_prev), ds, fds);
          // One pair's distance moves the sum, and the scale with it.
          const double pair_sum = s * double(n * (n - 1)) / 2.0;
          auto scale_of = [&](double sum) { return 2.0 * sum / double(n * (n - 1)); };
          const double fdw =
              (F(D, P, scale_of(pair_sum + h)) - F(D, P, scale_of(pair_sum - h))) / (2 * h);
          const double w = tsl::dense_pair_weight(ds, n, true);
          CHECK(fd_close(fdw, w), "dense_pair_weight: %.12g, finite difference %.12g", w, fdw);
          CHECK(tsl::dense_pair_weight(ds, n, false) == 0.0, "dense_pair_weight without passing");
        }
  // The kink of |u - target|: slope 0, as torch's abs.
  const tsl::TermOptions kink{true, true, false, 1.25, 1.0, 1.0, 1.0, 0.0};
  double ds = 0.0;
  CHECK(tsl::h0_death_grad(1.25, 0.0, 4, 2.0, kink, k, &ds) == 0.0 && ds == 0.0,
        "h0_death_grad at the kink is not 0");
  // The batch reduction: d mean / d L_b = 1 / B, d sum / d L_b = 1, none: each its own.
  const double g[3] = {3.0, 5.0, 7.0};
  CHECK(tsl::reduced_grad(g, 1, 3, tsl::kReduceNone) == 5.0 &&
            tsl::reduced_grad(g, 1, 3, tsl::kReduceMean) == 1.0 &&
            tsl::reduced_grad(g, 2, 3, tsl::kReduceSum) == 3.0 &&
            tsl::reduced_grad<double>(nullptr, 1, 3, tsl::kReduceSum) == 0.0,
        "reduced_grad");
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
  test_edge_gradients<T>();
  test_uniform_weight_rows<T>();
  test_square<T>();
  test_hexagon<T>();
  test_duplicates<T>();
  test_tiny<T>();
  test_random_mst<T>(1, 40, 3);
  test_random_mst<T>(2, 100, 8);
  test_against_reference<T>(20);
  test_tsloss_scale<T>();
  test_tsloss_forward<T>();
}


// ---- Edge incidence lists (core/edge_incidence.h) --------------------------------------------

// The CUDA gradient's edge sum for point i and one coordinate, as it ran before the incidence
// lists: every reported edge scanned in order. The lists must give the same terms in the same
// order, so the same bits.
double edge_sum_by_scan(int64_t i, int64_t N, int64_t H0, int64_t K, const std::vector<double>& w,
                        const std::vector<int64_t>& e0, const std::vector<int64_t>& e1,
                        const std::vector<double>& d, const std::vector<double>& xk) {
  double acc = 0.0;
  for (int64_t e = 0; e < H0 + K; ++e) {
    const double g = w[e];
    if (g == 0.0) continue;
    for (int side = 0; side < (e < H0 ? 1 : 2); ++side) {
      const int64_t* p = e < H0 ? &e0[2 * e] : &e1[4 * (e - H0) + 2 * side];
      const int64_t u = p[0], v = p[1];
      if (u < 0 || v < 0 || u >= N || v >= N || u == v || (u != i && v != i)) continue;
      const int64_t other = u == i ? v : u;
      const double dd = d[i * N + other];
      if (!(dd > 0.0)) continue;
      const double ge = e >= H0 && side == 0 ? -g : g;
      acc = acc + ge * ((xk[i] - xk[other]) / dd);
    }
  }
  return acc;
}

void test_edge_incidence() {
  std::mt19937_64 rng(2026);
  int clouds = 0;
  for (int64_t N : {1, 2, 3, 5, 17, 64}) {
    for (int64_t K : {int64_t(0), int64_t(1), int64_t(7), 3 * N}) {
      for (int rep = 0; rep < 20; ++rep, ++clouds) {
        const int64_t H0 = N - 1, E = H0 + K;
        // Endpoints mostly valid, some -1 (rows past h1_count), out of range or a loop; weights
        // mostly nonzero; repeated edges and hubs (a point in many edges) come from small N.
        auto end = [&]() -> int64_t {
          const int r = int(rng() % 20);
          return r == 0 ? -1 : r == 1 ? N : int64_t(rng() % uint64_t(N));
        };
        std::vector<int64_t> e0(2 * H0), e1(4 * K);
        for (auto& v : e0) v = end();
        for (auto& v : e1) v = end();
        std::vector<double> w(E);
        for (auto& v : w) v = rng() % 5 == 0 ? 0.0 : std::ldexp(double(rng() % 2001) - 1000.0, -7);
        std::vector<double> d(N * N), xk(N);
        for (auto& v : d) v = rng() % 9 == 0 ? 0.0 : 0.25 + double(rng() % 1000) / 97.0;
        for (auto& v : xk) v = double(int64_t(rng() % 2001) - 1000) / 37.0;
        // The kernel's construction: counts, offsets by a prefix sum, then each point's keys.
        std::vector<int64_t> off(N + 1, 0), keys(tsl::incidence_capacity(N, K), -1);
        for (int64_t i = 0; i < N; ++i)
          off[i + 1] = tsl::point_incidences(i, N, H0, K, w.data(), e0.data(), e1.data(), nullptr);
        for (int64_t i = 0; i < N; ++i) off[i + 1] += off[i];
        CHECK(off[N] <= tsl::incidence_capacity(N, K), "N=%lld K=%lld: %lld keys, capacity %lld",
              (long long)N, (long long)K, (long long)off[N], (long long)tsl::incidence_capacity(N, K));
        if (off[N] > tsl::incidence_capacity(N, K)) continue;
        for (int64_t i = 0; i < N; ++i)
          tsl::point_incidences(i, N, H0, K, w.data(), e0.data(), e1.data(), keys.data() + off[i]);
        for (int64_t i = 0; i < N; ++i) {
          double acc = 0.0;
          for (int64_t q = off[i]; q < off[i + 1]; ++q) {
            CHECK(q == off[i] || keys[q] > keys[q - 1], "keys not increasing");
            const int64_t e = keys[q] >> 1;
            const int side = int(keys[q] & 1);
            const tsl::EdgeEnds p = tsl::edge_endpoints(e, side, H0, e0.data(), e1.data());
            CHECK(w[e] != 0.0 && (p.u == i || p.v == i) && p.u != p.v, "a key that gives no term");
            const int64_t other = p.u == i ? p.v : p.u;
            const double dd = d[i * N + other];
            if (!(dd > 0.0)) continue;
            const double ge = e >= H0 && side == 0 ? -w[e] : w[e];
            acc = acc + ge * ((xk[i] - xk[other]) / dd);
          }
          const double want = edge_sum_by_scan(i, N, H0, K, w, e0, e1, d, xk);
          CHECK(std::memcmp(&acc, &want, sizeof acc) == 0, "N=%lld K=%lld point %lld: %.17g by "
                "the lists, %.17g by the scan", (long long)N, (long long)K, (long long)i, acc, want);
        }
      }
    }
  }
  std::printf("edge incidence: %d clouds, lists equal to the scan bit for bit\n", clouds);
}

}  // namespace

// The environment settings' number reading: digits only, within the bound, and no wrap near
// 2^64 (nor below 10, where most - digit went negative).
void test_parse_count() {
  struct Case {
    const char* text;
    uint64_t most;
    bool ok;
    uint64_t value;
  };
  const Case cases[] = {
      {"0", 16, true, 0},          {"16", 16, true, 16},       {"17", 16, false, 0},
      {"007", 16, true, 7},        {"", 16, false, 0},         {"1e6", uint64_t(1) << 40, false, 0},
      {"-1", 16, false, 0},        {"+5", 16, false, 0},       {" 5", 16, false, 0},
      {"5 ", 16, false, 0},        {"abc", 16, false, 0},      {"8", 7, false, 0},
      {"7", 7, true, 7},           {"1099511627776", uint64_t(1) << 40, true, uint64_t(1) << 40},
      {"1099511627777", uint64_t(1) << 40, false, 0},
      {"18446744073709551615", ~uint64_t(0), true, ~uint64_t(0)},
      {"18446744073709551616", ~uint64_t(0), false, 0},
      {"99999999999999999999999", ~uint64_t(0), false, 0}};
  for (const Case& c : cases) {
    uint64_t got = 12345;
    const bool ok = tsl::parse_count(c.text, c.most, &got);
    CHECK(ok == c.ok && (!ok || got == c.value), "parse_count('%s', %llu): %d %llu", c.text,
          (unsigned long long)c.most, int(ok), (unsigned long long)got);
  }
  CHECK(!tsl::parse_count(nullptr, 16, nullptr), "parse_count(nullptr)");
}

int main() {
  test_parse_count();
  test_prim_first_contact();
  test_index_decoding();
  test_certified_distances();
  test_scaled_distance();
  test_tsloss_backward();
  test_edge_incidence();
  test_enclosing_radius<float>();
  test_enclosing_radius<double>();
  run_all<float>();
  run_all<double>();
  return tsl_test::finish_checks("core");
}
