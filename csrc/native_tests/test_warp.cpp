// The warp emulation (warp_host.h) and the GPU engine's warp-cooperative kernels run through it,
// against the scalar engine, bit for bit; run by ctest, plain and under ASan/UBSan.
//
//   test_warp [--big F] [--mid F] [--counters]  parity on 10,000 clouds; under the sanitizers
//                                                only the fraction F of those of N >= 255
//                                                (--big) and of N = 64, 100 (--mid); --counters
//                                                prints the emulation's counters per N
//   test_warp --probe N                          the reduction's work on a ring, a ring with
//                                                centre, a lattice and a Gaussian cloud of N
//   test_warp --columns N D                      the reduction's work per column on a Gaussian
//                                                cloud, and what K warps committing columns in
//                                                order could take
// Environment: TEST_WARP_ONLY_N=n runs the parity on size n alone (other clouds then differ),
// TEST_WARP_VERBOSE=1 prints each cloud and its time.
//
// The emulation's refusals (a collective from per-lane code, a block barrier inside a warp
// phase) are checked in forked children, which must die by abort().
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "clouds.h"
#include "engine_reference.h"
#include "core/pairwise_distance.h"
#include "core/vr_emulated.h"

namespace {

using namespace tsl_test;  // the cloud families
using tsl::HostBlock;
using tsl::HostWarp;
using tsl::index_t;

// ---- the emulation itself ---------------------------------------------------------------------

void test_warp_primitives() {
  HostWarp w(12345);
  HostWarp::Var<int32_t> v;
  HostWarp::Var<bool> odd;
  w.each([&](int l) {
    v[l] = (l * 7) % 32;
    odd[l] = l & 1;
  });
  CHECK(w.ballot(odd) == 0xAAAAAAAAu, "ballot");
  CHECK(w.any(odd) && !w.all(odd), "any/all");
  CHECK(w.shfl(v, 5) == 3, "shfl");
  CHECK(w.min(v) == 0 && w.max(v) == 31, "min/max");
  HostWarp::Var<int64_t> one;
  w.each([&](int l) { one[l] = l; });
  CHECK(w.sum(one) == 31 * 32 / 2, "sum");
  HostWarp::Var<uint32_t> group;
  w.each([&](int l) { group[l] = uint32_t(l % 3); });
  const HostWarp::Var<uint32_t> same = w.match_any(group);
  for (int l = 0; l < 32; ++l) {
    uint32_t expect = 0;
    for (int m = 0; m < 32; ++m) expect |= uint32_t(m % 3 == l % 3) << m;
    CHECK(same.v[l] == expect, "match_any lane %d", l);
  }
  CHECK(tsl::warp::lanes_below(0) == 0 && tsl::warp::lanes_below(5) == 0x1f &&
            tsl::warp::lanes_below(31) == 0x7fffffffu,
        "lanes_below");
  // Lane order is shuffled on every `each` under a seed, and every lane runs exactly once.
  std::vector<int> first, second;
  w.each([&](int l) { first.push_back(l); });
  w.each([&](int l) { second.push_back(l); });
  std::vector<int> sorted = first;
  std::sort(sorted.begin(), sorted.end());
  bool once = sorted.size() == 32;
  for (int l = 0; once && l < 32; ++l) once = sorted[l] == l;
  CHECK(once, "each runs every lane once");
  CHECK(first != second, "lane order reshuffled between steps");
  HostWarp plain;
  std::vector<int> in_order;
  plain.each([&](int l) { in_order.push_back(l); });
  for (int l = 0; l < 32; ++l) CHECK(in_order[l] == l, "unseeded warp runs lanes in order");
  // Packed keys order like the values they come from; -0 keys as +0.
  CHECK(tsl::warp::order_bits(-0.0) == tsl::warp::order_bits(0.0), "-0.0 key");
  CHECK(tsl::warp::order_bits(-0.0f) == tsl::warp::order_bits(0.0f), "-0.0f key");
  CHECK(tsl::warp::order_bits(1.5f) < tsl::warp::order_bits(1.5000001f) &&
            tsl::warp::order_bits(1e-40f) < tsl::warp::order_bits(1e-38f) &&
            tsl::warp::order_bits(3.0) < tsl::warp::order_bits(double(INFINITY)),
        "order_bits keeps the order");
  // Negative values too (an unchecked CUDA distance matrix): below zero, in their order.
  CHECK(tsl::warp::order_bits(-double(INFINITY)) < tsl::warp::order_bits(-2.0) &&
            tsl::warp::order_bits(-2.0) < tsl::warp::order_bits(-1e-300) &&
            tsl::warp::order_bits(-1e-300) < tsl::warp::order_bits(0.0) &&
            tsl::warp::order_bits(-2.0f) < tsl::warp::order_bits(-1.0f) &&
            tsl::warp::order_bits(-1e-40f) < tsl::warp::order_bits(0.0f) &&
            tsl::warp::order_bits(0.0f) < tsl::warp::order_bits(1e-45f),
        "order_bits orders negative values");
  uint64_t all_ones_nan = ~uint64_t(0);
  double nan_bits;
  std::memcpy(&nan_bits, &all_ones_nan, sizeof nan_bits);
  CHECK(tsl::warp::order_bits(nan_bits) != ~uint64_t(0), "no key is the argmins' none marker");
  uint32_t device_nan = 0x7fffffffu;
  float nan_f;
  std::memcpy(&nan_f, &device_nan, sizeof nan_f);
  CHECK(tsl::warp::order_bits(nan_f) != 0xffffffffu, "no float key is all ones");
  // Every NaN one key, above +Inf: x86's negative NaN keys as the device's positive one.
  const double x86_nan = -std::numeric_limits<double>::quiet_NaN();
  CHECK(tsl::warp::order_bits(x86_nan) == tsl::warp::order_bits(nan_bits) &&
            tsl::warp::order_bits(double(INFINITY)) < tsl::warp::order_bits(x86_nan) &&
            tsl::warp::order_bits(-nan_f) == tsl::warp::order_bits(nan_f) &&
            tsl::warp::order_bits(float(INFINITY)) < tsl::warp::order_bits(-nan_f),
        "NaN keys ignore the NaN's bits and sort last");
}

// A lane-order dependency shows up as a changed result: a lane reads a word its neighbour writes
// in the same step. Shuffled orders must disagree with each other for such code.
void test_shuffle_exposes_order_dependence() {
  std::vector<int> results;
  for (uint64_t seed = 1; seed <= 8; ++seed) {
    HostWarp w(seed);
    int word[33] = {0};
    HostWarp::Var<int> seen;
    w.each([&](int l) {
      seen[l] = word[l + 1];  // a racy read: the neighbour's write may or may not be there
      word[l] = 1;
    });
    HostWarp::Var<int64_t> s;
    w.each([&](int l) { s[l] = seen[l]; });
    results.push_back(int(w.sum(s)));
  }
  std::sort(results.begin(), results.end());
  CHECK(results.front() != results.back(), "shuffled lane orders expose a cross-lane read");
}

// block_sort against std::sort: every count up to and past the block's lanes, warps 1..8, with
// duplicate-free keys (a strict order, as the engine's orders are).
void test_block_sort() {
  std::mt19937 rng(9);
  for (int count : {0, 1, 2, 3, 31, 32, 33, 63, 64, 65, 100, 255, 256, 257, 1000, 1500}) {
    for (int warps : {1, 3, 8}) {
      std::vector<std::pair<int, int>> x(count);
      for (int k = 0; k < count; ++k) x[k] = {int(rng() % 17), k};
      std::shuffle(x.begin(), x.end(), rng);
      std::vector<std::pair<int, int>> expect = x;
      std::sort(expect.begin(), expect.end());
      HostBlock blk(warps, 77 + count);
      tsl::block_sort(blk, x.data(), count,
                      [](const std::pair<int, int>& a, const std::pair<int, int>& b) { return a < b; });
      CHECK(x == expect, "block_sort count=%d warps=%d", count, warps);
    }
  }
}

void test_refusals() {
  CHECK(aborts([] {
          HostWarp w(1);
          HostWarp::Var<bool> p;
          w.each([&](int l) {
            p[l] = true;
            if (l == 3) w.ballot(p);
          });
        }),
        "a ballot from per-lane code must abort");
  CHECK(aborts([] {
          HostWarp w(1);
          w.each([&](int) { w.each([](int) {}); });
        }),
        "per-lane code nested in per-lane code must abort");
  CHECK(aborts([] {
          HostBlock blk(2, 1);
          blk.each_warp([&](HostWarp&, int) { blk.sync(); });
        }),
        "a block barrier inside a warp phase must abort");
  // Another warp's collective: from a lane's step (one lane of a ballot on the device) or from
  // another warp's phase (on the device, that warp's own ballot, over other values).
  CHECK(aborts([] {
          HostBlock blk(2, 1);
          HostWarp::Var<bool> p;
          for (bool& b : p.v) b = true;
          blk.first_warp([&](HostWarp& w) {
            w.each([&](int l) {
              if (l == 0) blk.warp(1).ballot(p);
            });
          });
        }),
        "another warp's ballot from per-lane code must abort");
  CHECK(aborts([] {
          HostBlock blk(2, 1);
          blk.first_warp([&](HostWarp& w) {
            w.each([&](int l) {
              if (l == 3) blk.warp(1).sync();
            });
          });
        }),
        "another warp's sync from per-lane code must abort");
  CHECK(aborts([] {
          HostBlock blk(2, 1);
          HostWarp::Var<bool> p;
          for (bool& b : p.v) b = true;
          blk.first_warp([&](HostWarp&) { blk.warp(1).ballot(p); });
        }),
        "another warp's ballot from a warp's phase must abort");
  // A Var is one register per thread on the device: `[l]` there ignores l.
  CHECK(aborts([] {
          HostWarp w(1);
          HostWarp::Var<int> v;
          w.each([&](int l) { v[l] = l; });
          w.each([&](int l) { v[l] = v[(l + 1) % 32]; });
        }),
        "a lane reading another lane's Var copy must abort");
  CHECK(aborts([] {
          HostWarp w(1);
          HostWarp::Var<int> v;
          w.each([&](int l) { v[l] = l; });
          if (v[0] == 0) w.sync();
        }),
        "warp-uniform code reading a Var copy must abort");
  CHECK(!aborts([] {
          HostBlock blk(2, 1);
          blk.each_warp([&](HostWarp& w, int) { w.sync(); });
          blk.sync();
        }),
        "uniform collectives and barriers must not abort");
}

// CudaWarp's min and max run warp::keep_min/keep_max over the butterfly_offset steps; run here
// step by step over 32 lanes, lane 0 must end with what HostWarp's scan returns, bit for bit:
// -0 and +0 tie, and the lowest lane's wins. (Falling offsets failed this.)
template <typename T>
void test_butterfly_matches_scan() {
  std::mt19937 rng(7);
  int64_t differ = 0, ties = 0;
  for (int q = 0; q < 2000; ++q) {
    T lanes[32];
    for (int l = 0; l < 32; ++l) {
      const int r = int(rng() % 6);
      lanes[l] = r == 0 ? T(-0.0) : r == 1 ? T(0.0) : T(r) / T(4);
      if (q % 2) lanes[l] = -lanes[l];  // max ties too: -0 against +0 at the top
    }
    for (const bool is_min : {true, false}) {
      T tree[32];
      std::copy(lanes, lanes + 32, tree);
      for (int s = 0; s < tsl::warp::kButterflySteps; ++s) {
        T next[32];
        for (int l = 0; l < 32; ++l) {
          const T other = tree[l ^ tsl::warp::butterfly_offset(s)];
          next[l] = is_min ? tsl::warp::keep_min(tree[l], other)
                           : tsl::warp::keep_max(tree[l], other);
        }
        std::copy(next, next + 32, tree);
      }
      HostWarp w;
      HostWarp::Var<T> v;
      w.each([&](int l) { v[l] = lanes[l]; });
      const T scan = is_min ? w.min(v) : w.max(v);
      ties += scan == T(0);
      differ += std::memcmp(&tree[0], &scan, sizeof(T)) != 0;
    }
  }
  CHECK(differ == 0 && ties > 0, "the device's butterfly and the host's scan differ in %lld of "
        "4000 reductions (%lld with a zero result)", (long long)differ, (long long)ties);
}

// A device launch gives every cloud a pivot slice sized for the launch's largest; each cloud
// uses the table every engine sizes for its own columns (tsl::pivot_table_capacity), so it
// probes as the host engines do and clears only that: the same pairs, and the rest of the
// slice untouched.
template <typename T>
void test_pivot_table_within_a_slice() {
  std::mt19937 rng(31);
  std::normal_distribution<double> gauss;
  const int64_t n = 40, dim = 3;
  std::vector<T> x(n * dim), dist(n * n);
  for (T& v : x) v = T(gauss(rng));
  tsl::pairwise_distance_cloud(x.data(), n, dim, dist.data());
  const tsl::DistanceMatrix<T> d{dist.data(), n};
  const tsl_test::EngineReference<T> ref = tsl_test::engine_reference(dist, n);
  const index_t m = (index_t)ref.columns.size(), own = tsl::pivot_table_capacity(m);
  const index_t slice = 8 * own, fast = 1 << 15;
  std::vector<int64_t> keys(slice, 777);
  std::vector<int32_t> slots(slice, 555), v_start(m + 1), v_length(m + 1), vwork(fast),
      arena(fast);
  std::vector<tsl::Entry<T>> set(fast);
  std::vector<tsl::H1Pair<T>> pairs(m + 1);
  const tsl::WarpReduceMemory<T> mem{
      tsl::Spill<tsl::Entry<T>>{set.data(), fast, nullptr, 0},
      tsl::Spill<int32_t>{vwork.data(), fast, nullptr, 0},
      tsl::Spill<int32_t>{arena.data(), fast, nullptr, 0},
      keys.data(), slots.data(), slice, v_start.data(), v_length.data(), m + 1, pairs.data(),
      m + 1};
  HostWarp w(9);
  tsl::WarpReducer<HostWarp, T> reducer(w, d, tsl::enclosing_radius(d), mem, nullptr);
  index_t num_pairs = -1;
  const tsl::Status s = reducer.run(ref.columns.data(), m, &num_pairs);
  std::vector<tsl::H1Pair<T>> got(pairs.begin(), pairs.begin() + (s == tsl::kOk ? num_pairs : 0));
  tsl_test::sort_by_diagram(got);
  CHECK(s == tsl::kOk && tsl_test::same_pairs(got, ref.pairs),
        "a %lld-slot slice (own table %lld): status %d, %lld pairs against %zu",
        (long long)slice, (long long)own, int(s), (long long)num_pairs, ref.pairs.size());
  bool untouched = true;
  for (index_t k = own; k < slice; ++k) untouched = untouched && keys[k] == 777 && slots[k] == 555;
  CHECK(untouched, "the slice past the cloud's own %lld-slot table was touched", (long long)own);
}

// The device passes' 32-bit vertex arithmetic (core/index32.h) against the engine's 64-bit forms
// up to kMaxPoints, where the parity tests' clouds stay far below it: every triple of 128 points
// and the top vertices of 4,096 against random others, every edge (and every pair's edge index)
// of 4,096 points and a few smaller n, and reads at the matrix's far corners.
void test_index32() {
  namespace wr = tsl::index32;
  int64_t bad = 0;
  for (index_t i = 1; i < 128; ++i)
    for (index_t j = 0; j < i; ++j)
      for (index_t k = 0; k < 128; ++k)
        if (k != i && k != j)
          bad += wr::cofacet_index32(wr::vertex_t(i), wr::vertex_t(j), wr::vertex_t(k)) !=
                 tsl::cofacet_index(i, j, k);
  const index_t n = tsl::kMaxPoints;
  std::mt19937 rng(5);
  std::uniform_int_distribution<index_t> vertex(0, n - 1);
  for (int t = 0; t < 2000000; ++t) {
    index_t i = t % 2 ? n - 1 - t % 64 : vertex(rng), j = vertex(rng), k = vertex(rng);
    if (i == j || k == i || k == j) continue;
    if (i < j) std::swap(i, j);
    bad += wr::cofacet_index32(wr::vertex_t(i), wr::vertex_t(j), wr::vertex_t(k)) !=
           tsl::cofacet_index(i, j, k);
  }
  CHECK(bad == 0, "cofacet_index32 differs from cofacet_index on %lld triples", (long long)bad);
  bad = 0;
  for (index_t m : {index_t(2), index_t(3), index_t(17), index_t(1000), n})
    for (index_t e = 0; e < m * (m - 1) / 2; ++e) {
      index_t i, j;
      wr::vertex_t i32, j32;
      tsl::edge_vertices(e, m, &i, &j);
      wr::edge_vertices32(uint32_t(e), wr::vertex_t(m), &i32, &j32);
      bad += i32 != i || j32 != j;
    }
  CHECK(bad == 0, "edge_vertices32 differs from edge_vertices on %lld edges", (long long)bad);
  bad = 0;
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n; ++j)
      if (i != j)
        bad += index_t(wr::edge_index32(wr::vertex_t(i), wr::vertex_t(j))) != tsl::edge_index(i, j);
  CHECK(bad == 0, "edge_index32 differs from edge_index on %lld pairs", (long long)bad);
  // Entries equal to their offsets (exact in float below 2^24 = n^2).
  std::vector<float> dist(n * n);
  for (index_t o = 0; o < n * n; ++o) dist[o] = float(o);
  const tsl::DistanceMatrix<float> d{dist.data(), n};
  bad = 0;
  const wr::Dist32<float> d32(d);
  for (index_t i : {index_t(0), index_t(1), n / 2, n - 2, n - 1}) {
    const wr::Row32<float> row(d, wr::vertex_t(i));
    for (index_t k : {index_t(0), index_t(31), n - 33, n - 1})
      bad += row[wr::vertex_t(k)] != d(i, k) || d32(wr::vertex_t(i), wr::vertex_t(k)) != d(i, k);
  }
  CHECK(bad == 0, "Row32 or Dist32 read %lld entries other than DistanceMatrix's", (long long)bad);
}

// A set too small for the tail and one run (TSLOSS_CUDA_H1_HEAP < 256 on the device) refuses a
// cloud with columns, and only such a cloud.
void test_small_set() {
  using T = double;
  const int64_t n = 4;
  std::vector<T> dist(n * n, 1.0);
  for (int64_t i = 0; i < n; ++i) dist[i * n + i] = 0.0;
  const tsl::DistanceMatrix<T> d{dist.data(), n};
  const tsl::index_t small = 2 * tsl::WarpReducer<HostWarp, T>::kSealAt - 1;
  std::vector<tsl::Entry<T>> set(small);
  std::vector<int32_t> vwork(64), arena(64), slots(16), v_start(8), v_length(8);
  std::vector<int64_t> keys(16);
  std::vector<tsl::H1Pair<T>> pairs(8);
  const tsl::WarpReduceMemory<T> mem{
      tsl::Spill<tsl::Entry<T>>{set.data(), small, nullptr, 0},
      tsl::Spill<int32_t>{vwork.data(), 64, nullptr, 0},
      tsl::Spill<int32_t>{arena.data(), 64, nullptr, 0},
      keys.data(), slots.data(), 16, v_start.data(), v_length.data(), 8, pairs.data(), 8};
  const tsl::H1Column<T> column{T(1), 2, 1};
  for (int64_t m : {0, 1}) {
    HostWarp w(7);
    tsl::WarpReducer<HostWarp, T> reducer(w, d, T(1), mem, nullptr);
    tsl::index_t num_pairs = -1;
    const tsl::Status s = reducer.run(&column, m, &num_pairs);
    CHECK(s == (m ? tsl::kHeapFull : tsl::kOk), "a %lld-entry set with %lld columns: status %d",
          (long long)small, (long long)m, int(s));
    CHECK(m || num_pairs == 0, "no columns, %lld pairs", (long long)num_pairs);
  }
  // With a pool the set takes a second part from it; a pool too small leaves the set full.
  std::vector<uint64_t> words(4096);
  for (uint64_t bytes : {uint64_t(1000), uint64_t(8 * words.size())}) {
    unsigned long long used = 0;
    tsl::WarpReduceMemory<T> pooled = mem;
    pooled.pool = tsl::WarpPool{reinterpret_cast<unsigned char*>(words.data()), bytes, &used};
    HostWarp w(7);
    tsl::WarpReduceStats stats;
    tsl::WarpReducer<HostWarp, T> reducer(w, d, T(1), pooled, &stats);
    tsl::index_t num_pairs = -1;
    const tsl::Status s = reducer.run(&column, 1, &num_pairs);
    const bool fits = bytes > 1024 * sizeof(tsl::Entry<T>);
    CHECK(s == (fits ? tsl::kOk : tsl::kHeapFull) && stats.grown == (fits ? 1 : 0),
          "a %llu-byte pool: status %d, grown %lld", (unsigned long long)bytes, int(s),
          (long long)stats.grown);
    CHECK(fits || used == 0, "a request that did not fit took %llu bytes of the pool", used);
  }
  // A request that does not fit takes nothing: a later, smaller one still gets its bytes.
  HostWarp w(3);
  unsigned long long used = 0;
  const uint64_t a = w.reserve(&used, 100, 150), b = w.reserve(&used, 100, 150),
                 c = w.reserve(&used, 50, 150), e = w.reserve(&used, 1, 150);
  CHECK(a == 0 && b == ~uint64_t(0) && c == 100 && e == ~uint64_t(0) && used == 150,
        "reserve: %llu %llu %llu %llu, used %llu", (unsigned long long)a, (unsigned long long)b,
        (unsigned long long)c, (unsigned long long)e, used);
}

// ---- clouds -----------------------------------------------------------------------------------

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

struct SizeCounters {
  int64_t clouds = 0, columns = 0, max_columns = 0, prim_steps = 0, flag_chunks = 0,
          sort_stages = 0, steps = 0, collectives = 0, barriers = 0, shared_bytes = 0,
          scan_steps = 0, scan_path = 0, pivot_queries = 0, set_high = 0, max_set_high = 0,
          vwork_high = 0, arena = 0, max_arena = 0, additions = 0, emergent = 0, pushed = 0,
          grown = 0;
};
std::map<int64_t, SizeCounters> g_counters;

// One cloud through both engines; returns false (and reports) on any difference.
template <typename T>
bool compare_matrix(const std::vector<T>& dist, int64_t n, int64_t dim, uint64_t seed, int warps,
                    const char* what);

template <typename T>
bool compare_cloud(const std::vector<double>& pts, int64_t n, int64_t dim, uint64_t seed,
                   int warps, const char* what) {
  std::vector<T> x(pts.begin(), pts.end()), dist(n * n);
  tsl::pairwise_distance_cloud(x.data(), n, dim, dist.data());
  return compare_matrix(dist, n, dim, seed, warps, what);
}

// One workspace through a cloud with the growing pool, then with a smaller fixed one (the
// device's overflow path): the seeded poisoning stays within the pool as it now is (ASan in
// .ci/run), and the cloud that exhausts it is reported as the device reports it.
void test_fixed_pool_after_a_larger_one() {
  using T = double;
  const int64_t n = 100, K = 4 * n;
  std::vector<T> x(2 * n), dist(n * n);
  for (int64_t p = 0; p < n; ++p) {
    x[2 * p] = std::cos(2 * M_PI * p / n);
    x[2 * p + 1] = std::sin(2 * M_PI * p / n);
  }
  tsl::pairwise_distance_cloud(x.data(), n, 2, dist.data());
  Outputs<T> out(n, K);
  tsl::EmulatedWorkspace<T> ews;
  tsl::EmulationOptions opt;
  opt.seed = 3;
  tsl::vr_persistence_cloud_emulated(dist.data(), n, 1, out.view(K), ews, opt);
  CHECK(out.count == 1 && ews.status == tsl::kOk, "the ring: count %lld, status %d",
        (long long)out.count, int(ews.status));
  opt.fixed_pool_bytes = 24576;  // the ring's ties need over 32 KB
  tsl::vr_persistence_cloud_emulated(dist.data(), n, 1, out.view(K), ews, opt);
  CHECK(out.count == -1 && out.truncated && ews.status != tsl::kOk,
        "the ring in a 24 KB pool: count %lld, status %d", (long long)out.count,
        int(ews.status));
}

// One distance matrix through both engines (dim: the points' dimension, for the report only).
template <typename T>
bool compare_matrix(const std::vector<T>& dist, int64_t n, int64_t dim, uint64_t seed, int warps,
                    const char* what) {
  const int64_t K = std::max<int64_t>(4 * n, 8) / (seed % 3 == 0 ? 8 : 1);  // some truncate
  Outputs<T> ref(n, K), emu(n, K);
  // Both engines keep their workspaces from cloud to cloud, as the ops keep theirs per thread:
  // a cloud starts in buffers the last one left, which the emulation poisons where they were
  // written, so a read of another cloud's data still shows. A fresh workspace every cloud cost
  // the emulation a 16 MB pool to map and poison each time (under ASan, where every such block
  // is mapped and unmapped anew, ~2 minutes of the sanitizer run, most of it in the kernel).
  // Every 16th cloud still starts from empty workspaces.
  static tsl::HostWorkspace<T> kept_hws;
  static tsl::EmulatedWorkspace<T> kept_ews;
  tsl::HostWorkspace<T> fresh_hws;
  tsl::EmulatedWorkspace<T> fresh_ews;
  const bool fresh = seed % 16 == 0;
  tsl::HostWorkspace<T>& hws = fresh ? fresh_hws : kept_hws;
  tsl::EmulatedWorkspace<T>& ews = fresh ? fresh_ews : kept_ews;
  ews.topology = {};  // this cloud's counters alone
  ews.reduction = {};
  ews.warp = {};
  ews.status = tsl::kOk;
  tsl::vr_persistence_cloud(dist.data(), n, 1, ref.view(K), hws);
  tsl::EmulationOptions opt;
  opt.seed = seed;
  opt.warps = warps;
  // The reduction's fast (shared-memory) part: from none at all, every entry spilled, through
  // the device's split, to more than the device has.
  static const tsl::index_t kShared[] = {0, 7, 64, tsl::kDeviceFastEntries, 1024};
  opt.shared_entries = kShared[(seed >> 8) % 5];
  tsl::vr_persistence_cloud_emulated(dist.data(), n, 1, emu.view(K), ews, opt);

  bool ok = same_bits(ref.h0, emu.h0) && ref.h0_edges == emu.h0_edges &&
            same_bits(ref.h1, emu.h1) && ref.h1_edges == emu.h1_edges &&
            ref.count == emu.count && ref.truncated == emu.truncated && ews.status == tsl::kOk;
  // The intermediate the GPU hands to the reduction: the column list, in order.
  if (n >= 3) {
    const tsl::DistanceMatrix<T> d{dist.data(), n};
    ok = ok && ews.host.columns.size() == hws.columns.size();
    for (size_t c = 0; ok && c < hws.columns.size(); ++c)
      ok = ews.host.columns[c].i == hws.columns[c].i && ews.host.columns[c].j == hws.columns[c].j &&
           std::memcmp(&ews.host.columns[c].diameter, &hws.columns[c].diameter, sizeof(T)) == 0;
    for (int64_t v = 0; ok && v < n; ++v) ok = ews.best_parent[v] == hws.best_parent[v];
    (void)d;
  }
  if (!ok) {
    ++tsl_test::failures();
    std::printf("FAIL %s n=%lld dim=%lld %s seed=%llu warps=%d: emulated kernels differ from the "
                "scalar engine (count %lld vs %lld, columns %zu vs %zu)\n",
                what, (long long)n, (long long)dim, sizeof(T) == 4 ? "float" : "double",
                (unsigned long long)seed, warps, (long long)emu.count, (long long)ref.count,
                ews.host.columns.size(), hws.columns.size());
  }
  // Every other cloud again through the block reduction (block_reduce), on 2 to 16 warps run in
  // a shuffled order each phase.
  if (seed % 2 == 1) {
    static tsl::EmulatedWorkspace<T> block_ews;
    Outputs<T> blk(n, K);
    tsl::EmulationOptions bopt = opt;
    bopt.reduce_warps = 2 + int((seed >> 4) % 15);
    // A third of them in short rounds: a warp stops after a few pivot queries, so that columns
    // still reducing sit in the window (the commit must stop at them).
    bopt.reduce_queries = (seed >> 9) % 3 == 0 ? tsl::index_t(1 + (seed >> 11) % 4) : -1;
    block_ews.reduction = {};
    block_ews.status = tsl::kOk;
    tsl::vr_persistence_cloud_emulated(dist.data(), n, 1, blk.view(K), block_ews, bopt);
    const bool same = same_bits(ref.h1, blk.h1) && ref.h1_edges == blk.h1_edges &&
                      ref.count == blk.count && ref.truncated == blk.truncated &&
                      block_ews.status == tsl::kOk && block_ews.reduction.widening_misses == 0;
    if (!same) {
      ok = false;
      ++tsl_test::failures();
      std::printf("FAIL %s n=%lld dim=%lld %s seed=%llu: the block reduction on %d warps differs "
                  "from the scalar engine (count %lld vs %lld, status %d, widening misses %lld)\n",
                  what, (long long)n, (long long)dim, sizeof(T) == 4 ? "float" : "double",
                  (unsigned long long)seed, bopt.reduce_warps, (long long)blk.count,
                  (long long)ref.count, int(block_ews.status),
                  (long long)block_ews.reduction.widening_misses);
    }
  }
  SizeCounters& s = g_counters[n];
  ++s.clouds;
  s.columns += ews.topology.columns;
  s.max_columns = std::max<int64_t>(s.max_columns, ews.topology.columns);
  s.prim_steps += ews.topology.prim_steps;
  s.flag_chunks += ews.topology.flag_chunks;
  s.sort_stages += ews.topology.sort_stages;
  s.scan_steps += ews.topology.scan_steps;
  s.scan_path += ews.topology.scan_path;
  const tsl::WarpReduceStats& r = ews.reduction;
  if (r.widening_misses != 0) {
    ok = false;
    ++tsl_test::failures();
    std::printf("FAIL %s n=%lld seed=%llu: %lld widenings missed the next cofacet level\n", what,
                (long long)n, (unsigned long long)seed, (long long)r.widening_misses);
  }
  s.pivot_queries += r.pivot_queries;
  s.set_high += r.set_high;
  s.max_set_high = std::max<int64_t>(s.max_set_high, r.set_high);
  s.vwork_high = std::max<int64_t>(s.vwork_high, r.vwork_high);
  s.arena += r.arena_used;
  s.max_arena = std::max<int64_t>(s.max_arena, r.arena_used);
  s.additions += r.additions;
  s.emergent += r.emergent;
  s.pushed += r.entries_pushed;
  s.grown += r.grown;
  s.steps += ews.warp.steps;
  s.collectives += ews.warp.collectives;
  s.barriers += ews.warp.barriers;
  s.shared_bytes = tsl::topology_state_bytes(n, sizeof(T), sizeof(tsl::MstEdge<T>));
  return ok;
}

// The parity run: 10,000 clouds over the sizes and families, float and double alternating, lane
// and warp orders shuffled, the block's warp count varied.
void test_parity(double big_fraction, double mid_fraction) {
  struct Size {
    int64_t n;
    int clouds;
  };
  // A tie-heavy cloud costs the emulation up to 1 s at N = 256 and 13 s at N = 512 (integer
  // coordinates), so the large sizes get fewer clouds.
  const Size sizes[] = {{3, 2900}, {31, 2100}, {32, 2100}, {33, 2100}, {64, 480},
                        {100, 260}, {255, 20},  {256, 20},  {257, 20},  {512, 2}};
  const char* only = std::getenv("TEST_WARP_ONLY_N");
  std::mt19937 rng(2026);
  int64_t total = 0, failed = 0;
  std::map<int, int64_t> per_family;
  for (const Size& s : sizes) {
    if (only && std::atoll(only) != s.n) continue;
    const double share = s.n >= 255 ? big_fraction : (s.n >= 64 ? mid_fraction : 1.0);
    const int clouds = std::max(1, int(s.clouds * share));
    for (int q = 0; q < clouds; ++q) {
      const int family = q % kFamilies;
      int64_t dim = 0;
      const std::vector<double> pts = make_cloud(family, s.n, &dim, rng);
      const uint64_t seed = 1 + rng();
      // topology_warps(n), or 1 to 8 warps, or the wider blocks a device takes for batches of
      // fewer than 8 clouds a multiprocessor: any count to 32 (topology_threads in
      // topology.cu: 21 warps for 200 clouds on 132 multiprocessors).
      static const int kWarpChoices[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 17, 21, 24, 31, 32};
      constexpr int kChoices = int(sizeof(kWarpChoices) / sizeof(kWarpChoices[0]));
      const int warps = (q / kFamilies) % 4 == 0 ? 0 : kWarpChoices[rng() % kChoices];
      const auto t0 = std::chrono::steady_clock::now();
      const bool ok = (q / kFamilies) % 2 == 0
                          ? compare_cloud<float>(pts, s.n, dim, seed, warps, family_name(family))
                          : compare_cloud<double>(pts, s.n, dim, seed, warps, family_name(family));
      ++total;
      ++per_family[family];
      if (std::getenv("TEST_WARP_VERBOSE"))
        std::printf("n=%lld %s dim=%lld q=%d: %.3f s\n", (long long)s.n, family_name(family),
                    (long long)dim, q,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      if (!ok && ++failed > 20) {
        std::printf("too many failures; stopping the parity run\n");
        return;
      }
    }
  }
  std::printf("parity: %lld clouds (", (long long)total);
  for (auto& f : per_family) std::printf("%s%s %lld", f.first ? ", " : "", family_name(f.first), (long long)f.second);
  std::printf("), %lld differ\n", (long long)failed);
}

// Matrices the CPU op refuses but CUDA does not check on the host (it would synchronise):
// negative entries, which the emulated kernels must order as the scalar engine does (when the
// warp reduction's sorted runs and its argmin ranked negative values differently, a column's
// reduction never ended), and NaN entries, where only termination is asked.
void test_unchecked_matrices() {
  std::mt19937 rng(99);
  int64_t negative = 0, with_nan = 0;
  for (int q = 0; q < 400; ++q) {
    const int64_t n = 8 + int64_t(rng() % 40);
    const bool nan = q % 4 == 3;
    // Every other NaN matrix gets +Inf entries instead (an overflowed distance): flagged alike.
    const double bad = q % 8 == 3 ? double(NAN) : double(INFINITY);
    std::vector<double> d(n * n, 0.0);
    for (int64_t i = 1; i < n; ++i)
      for (int64_t j = 0; j < i; ++j) {
        double v = double(int(rng() % 23) - 7) / 8.0;  // (-1, 2) in eighths: ties and negatives
        if (nan && (rng() % 32 == 0 || (i == n - 1 && j == 0))) v = bad;
        d[i * n + j] = d[j * n + i] = v;
      }
    const uint64_t seed = 1 + rng();
    if (!nan) {
      const bool ok = q % 2 ? compare_matrix(std::vector<float>(d.begin(), d.end()), n, 0, seed,
                                             0, "negative entries")
                            : compare_matrix(d, n, 0, seed, 0, "negative entries");
      negative += ok;
      continue;
    }
    const int64_t K = 4 * n;
    Outputs<double> emu(n, K);
    tsl::EmulatedWorkspace<double> ews;
    tsl::EmulationOptions opt;
    opt.seed = seed;
    tsl::vr_persistence_cloud_emulated(d.data(), n, 1, emu.view(K), ews, opt);
    // Reached: the emulation ended. The device's finalize_kernel flags such a cloud alike.
    CHECK(emu.count == tsl::kInvalidInputCount,
          "a matrix with %s entries gave h1_count %lld, not kInvalidInputCount",
          bad != bad ? "NaN" : "Inf", (long long)emu.count);
    if (bad != bad) {
      // The host's NaN (x86: negative) and the device's (positive) give the same tree and
      // columns: the edges reach the user even for an invalid cloud.
      std::vector<double> flipped = d;
      for (double& v : flipped)
        if (v != v) v = -v;
      Outputs<double> other(n, K);
      tsl::vr_persistence_cloud_emulated(flipped.data(), n, 1, other.view(K), ews, opt);
      CHECK(other.h0_edges == emu.h0_edges && other.h1_edges == emu.h1_edges,
            "the sign of the NaN entries changed the emulated edges (n = %lld)", (long long)n);
    }
    ++with_nan;
  }
  std::printf("unchecked matrices: %lld with negative entries equal the scalar engine, %lld with "
              "NaN or Inf entries ended and were flagged\n", (long long)negative,
              (long long)with_nan);
}

void print_counters() {
  std::printf("topology pass (one block per cloud), per cloud:\n");
  std::printf("%6s %7s %9s %8s %8s %8s %9s %11s %10s %10s %12s %9s %8s\n", "N", "clouds",
              "columns", "max", "prim", "chunks", "sortrnds", "scan/edge", "scanpath",
              "warpsteps", "collectives", "barriers", "smem(B)");
  for (auto& e : g_counters) {
    const SizeCounters& s = e.second;
    const double c = double(s.clouds);
    const double edges = double(e.first) * double(e.first - 1) / 2;
    std::printf("%6lld %7lld %9.1f %8lld %8.0f %8.0f %9.1f %11.1f %10.0f %10.0f %12.0f %9.0f "
                "%8lld\n",
                (long long)e.first, (long long)s.clouds, s.columns / c, (long long)s.max_columns,
                s.prim_steps / c, s.flag_chunks / c, s.sort_stages / c, s.scan_steps / c / edges,
                s.scan_path / c, s.steps / c,
                s.collectives / c, s.barriers / c, (long long)s.shared_bytes);
  }
  std::printf("H1 reduction (one warp per cloud), per cloud (max over clouds in brackets):\n");
  std::printf("%6s %9s %9s %9s %10s %14s %9s %14s %8s\n", "N", "emergent", "queries",
              "additions", "pushed", "set high", "V high", "arena", "grown");
  for (auto& e : g_counters) {
    const SizeCounters& s = e.second;
    const double c = double(s.clouds);
    std::printf("%6lld %9.1f %9.1f %9.1f %10.0f %7.1f [%5lld] %9lld %7.1f [%5lld] %8.2f\n",
                (long long)e.first, s.emergent / c, s.pivot_queries / c, s.additions / c,
                s.pushed / c, s.set_high / c, (long long)s.max_set_high, (long long)s.vwork_high,
                s.arena / c, (long long)s.max_arena, s.grown / c);
  }
}


// --probe N: the warp reduction's work on single clouds of N points that stress it, each checked
// against the scalar engine: a bare ring (the worst case), a ring with its centre, a lattice and
// a Gaussian cloud. Prints the reduction's warp steps and collectives (the emulation's count of
// warp-wide instructions, without the topology pass), its set high-water and both times.
void probe(int64_t n) {
  if (n < 4 || n > 4096) {
    std::printf("--probe takes N in 4..4096, got %lld\n", (long long)n);
    ++tsl_test::failures();
    return;
  }
  struct Case {
    const char* name;
    int64_t dim;
    std::vector<double> x;
  };
  std::vector<Case> cases;
  for (int centre = 0; centre < 2; ++centre) {
    const int64_t ring = n - centre;
    std::vector<double> x(n * 2, 0.0);
    for (int64_t p = 0; p < ring; ++p) {
      x[2 * p] = std::cos(2 * M_PI * double(p) / double(ring));
      x[2 * p + 1] = std::sin(2 * M_PI * double(p) / double(ring));
    }
    cases.push_back({centre ? "ring+centre" : "bare ring", 2, x});
  }
  std::mt19937 rng(7);
  std::vector<double> lattice(n * 2), gauss(n * 8), wide(n * 4096);
  for (double& v : lattice) v = double(rng() % 6);
  std::normal_distribution<double> g;
  for (double& v : gauss) v = g(rng);
  for (double& v : wide) v = g(rng);
  cases.push_back({"lattice 6x6", 2, lattice});
  cases.push_back({"gaussian D=8", 8, gauss});
  // The benchmark's clouds: in 4096 dimensions the distances crowd near their mean.
  cases.push_back({"gaussian 4096", 4096, wide});
  std::printf("%-14s %6s %8s %8s %8s %8s %12s %12s %10s %10s %10s  %s\n", "cloud", "N",
              "columns", "queries", "adds", "pushed", "red. steps", "collectives", "set high",
              "emul. s", "scalar s", "parity");
  for (const Case& c : cases) {
    std::vector<double> dist(n * n);
    tsl::pairwise_distance_cloud(c.x.data(), n, c.dim, dist.data());
    const int64_t K = 4 * n;
    Outputs<double> ref(n, K), emu(n, K), topo(n, K);
    tsl::HostWorkspace<double> hws;
    auto t0 = std::chrono::steady_clock::now();
    tsl::vr_persistence_cloud(dist.data(), n, 1, ref.view(K), hws);
    const double scalar_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    tsl::EmulationOptions opt;
    tsl::EmulatedWorkspace<double> only_topology, ews;
    opt.warp_reduction = false;
    tsl::vr_persistence_cloud_emulated(dist.data(), n, 1, topo.view(K), only_topology, opt);
    opt.warp_reduction = true;
    t0 = std::chrono::steady_clock::now();
    tsl::vr_persistence_cloud_emulated(dist.data(), n, 1, emu.view(K), ews, opt);
    const double emu_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const bool ok = same_bits(ref.h1, emu.h1) && ref.h1_edges == emu.h1_edges &&
                    ref.count == emu.count && ews.status == tsl::kOk;
    CHECK(ok, "probe %s n=%lld: the emulated reduction differs from the scalar engine", c.name,
          (long long)n);
    CHECK(ews.reduction.widening_misses == 0,
          "probe %s n=%lld: %lld widenings missed the next cofacet level", c.name, (long long)n,
          (long long)ews.reduction.widening_misses);
    std::printf("%-14s %6lld %8lld %8lld %8lld %8lld %12lld %12lld %10lld %10.3f %10.3f  %s\n",
                c.name, (long long)n, (long long)ews.reduction.columns,
                (long long)ews.reduction.pivot_queries, (long long)ews.reduction.additions,
                (long long)ews.reduction.entries_pushed,
                (long long)(ews.warp.steps - only_topology.warp.steps),
                (long long)(ews.warp.collectives - only_topology.warp.collectives),
                (long long)ews.reduction.set_high, emu_s, scalar_s, ok ? "same" : "DIFFERENT");
  }
}

// --columns N D: how the warp reduction's work on one Gaussian cloud of N points in D dimensions
// (the benchmark's kind, seeded as the probe's) spreads over its columns, and what a block of K
// warps could take that reduced up to K consecutive columns at once and committed them in column
// order. A column's pivot is final once every earlier column is committed (the pivot table then
// holds what the serial reduction's held), so a column waits for the commit before it, and its
// warp takes the column K places on. Each column's cost is its warp steps when reduced after all
// earlier ones (the run on columns [0, c] less the run on [0, c)); the schedule leaves out the
// commits' own steps and a column's extra work when a column of its window takes the pivot it
// had found first. Beside it, block_reduce on K warps in the emulation: its span (per phase the
// longest warp's steps: the chain a device would run), all its warps' steps, and its rounds.
void columns_work(int64_t n, int64_t dim) {
  if (n < 4 || n > 1024 || dim < 1) {
    std::printf("--columns takes N in 4..1024 and D >= 1, got %lld %lld\n", (long long)n,
                (long long)dim);
    ++tsl_test::failures();
    return;
  }
  std::mt19937 rng(7);
  std::normal_distribution<double> g;
  std::vector<double> x(n * dim), dist(n * n);
  for (double& v : x) v = g(rng);
  tsl::pairwise_distance_cloud(x.data(), n, dim, dist.data());
  const int64_t K = 4 * n;
  Outputs<double> emu(n, K);
  tsl::EmulatedWorkspace<double> ews;
  tsl::EmulationOptions opt;
  opt.warp_reduction = true;
  tsl::vr_persistence_cloud_emulated(dist.data(), n, 1, emu.view(K), ews, opt);
  const std::vector<tsl::H1Column<double>> columns = ews.host.columns;
  const tsl::DistanceMatrix<double> d{dist.data(), n};
  double radius = INFINITY;  // the enclosing radius, as the topology pass finds it
  for (int64_t u = 0; u < n; ++u) {
    double m = 0.0;
    for (int64_t v = 0; v < n; ++v) m = std::max(m, dist[u * n + v]);
    radius = std::min(radius, m);
  }
  std::vector<int64_t> cost;
  int64_t before = 0;
  for (size_t c = 0; c <= columns.size(); ++c) {
    const std::vector<tsl::H1Column<double>> prefix(columns.begin(), columns.begin() + c);
    tsl::EmulatedReduceBuffers<double> b;
    std::vector<tsl::H1Pair<double>> pairs;
    tsl::WarpCounters wc;
    const tsl::Status s =
        tsl::run_h1_reduction_warp(d, radius, prefix, b, pairs, opt, nullptr, &wc);
    CHECK(s == tsl::kOk, "--columns: the reduction of %zu columns failed (%d)", c, int(s));
    if (c > 0) cost.push_back(wc.steps - before);
    before = wc.steps;
  }
  const int64_t m = (int64_t)cost.size();
  int64_t total = 0, heaviest = 0;
  for (int64_t v : cost) total += v, heaviest = std::max(heaviest, v);
  std::printf("N = %lld, D = %lld: %lld columns, %lld warp steps, the heaviest column %lld\n",
              (long long)n, (long long)dim, (long long)m, (long long)total, (long long)heaviest);
  std::printf("%6s %14s %8s %14s %14s %8s %8s\n", "warps", "schedule", "speedup", "block span",
              "block steps", "speedup", "rounds");
  for (int k : {1, 2, 4, 8, 16, 32}) {
    std::vector<int64_t> commit(m);
    for (int64_t c = 0; c < m; ++c) {
      const int64_t start = c >= k ? commit[c - k] : 0;
      commit[c] = std::max(start + cost[c], c > 0 ? commit[c - 1] : 0);
    }
    const int64_t span = m ? commit[m - 1] : 0;
    // The block reduction itself (block_reduce): its chain, each phase's longest warp.
    tsl::EmulationOptions bopt = opt;
    bopt.reduce_warps = k;
    if (const char* q = std::getenv("TEST_WARP_QUERIES")) bopt.reduce_queries = std::atoll(q);
    tsl::EmulatedReduceBuffers<double> b;
    std::vector<tsl::H1Pair<double>> pairs;
    tsl::WarpCounters wc;
    const tsl::Status s = tsl::run_h1_reduction_warp(d, radius, columns, b, pairs, bopt, nullptr,
                                                     &wc);
    CHECK(s == tsl::kOk, "--columns: the block reduction on %d warps failed (%d)", k, int(s));
    std::printf("%6d %14lld %8.2f %14lld %14lld %8.2f %8lld\n", k, (long long)span,
                span ? double(total) / span : 1.0, (long long)wc.span, (long long)wc.steps,
                wc.span ? double(total) / wc.span : 1.0, (long long)(wc.barriers / 3));
  }
}

}  // namespace

int main(int argc, char** argv) {
  double big = 1.0, mid = 1.0;
  bool counters = false;
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    if (arg == "--big" && a + 1 < argc) {
      big = std::atof(argv[++a]);
    } else if (arg == "--mid" && a + 1 < argc) {
      mid = std::atof(argv[++a]);
    } else if (arg == "--counters") {
      counters = true;
    } else if (arg == "--probe" && a + 1 < argc) {
      probe(std::atoll(argv[++a]));
      return tsl_test::finish_checks("warp probe");
    } else if (arg == "--columns" && a + 2 < argc) {
      const int64_t n = std::atoll(argv[++a]);
      columns_work(n, std::atoll(argv[++a]));
      return tsl_test::finish_checks("warp columns");
    } else {
      std::printf("unknown argument %s\n", argv[a]);
      return 2;
    }
  }
  test_warp_primitives();
  test_index32();
  test_shuffle_exposes_order_dependence();
  test_refusals();
  test_butterfly_matches_scan<float>();
  test_butterfly_matches_scan<double>();
  test_block_sort();
  test_unchecked_matrices();
  test_small_set();
  test_fixed_pool_after_a_larger_one();
  test_pivot_table_within_a_slice<float>();
  test_pivot_table_within_a_slice<double>();
  test_parity(big, mid);
  if (counters) print_counters();
  return tsl_test::finish_checks("warp");
}
