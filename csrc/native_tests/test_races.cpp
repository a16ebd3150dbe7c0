// The GPU engine's kernels, run through the host emulation under the race detector
// (race_watch.h): no two threads may touch one byte of device memory, one of them writing,
// without a barrier both take part in between, which compute-sanitizer's racecheck and
// synccheck check on a GPU. First the detector itself on small kernels with and without the
// barrier they need, then the topology and reduction kernels on clouds of every family.
//
//   test_races [--clouds F]   only the fraction F of the cloud sweep (default 1)
//
// Built with -fsanitize=thread for the instrumentation only (race_watch.cpp is the runtime), so
// not in the ASan build. TEST_RACES_VERBOSE=1 prints each cloud.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "clouds.h"
#include "core/pairwise_distance.h"
#include "core/vr_emulated.h"
#include "race_watch.h"

namespace {

volatile int32_t g_sink;  // where the small kernels' loads go, so that none is dropped as unused
volatile size_t g_bytes = 64;  // a size the compiler cannot see, so that memset stays a call

using tsl::HostBlock;
using tsl::HostWarp;
using tsl_test::RaceWatch;

// ---- the detector ------------------------------------------------------------------------------

// One small kernel over a watched buffer of 64 ints: the first hazard's kind, or "" for none.
template <class Kernel>
std::string first_hazard(const Kernel& kernel) {
  RaceWatch watch;
  std::vector<int32_t> buf(64, 0);
  const tsl::DeviceMemoryWatch::Buffer b = tsl::device_buffer("buf", buf);
  tsl::host_schedule.warp = 0;
  watch.launch("synthetic", &b, 1);
  kernel(buf.data());
  watch.finish();
  CHECK(watch.watched_accesses("buf") > 0, "the synthetic kernel's accesses were not seen");
  return watch.hazards() ? watch.first_hazards()[0].kind : std::string();
}

void expect(const std::string& got, const char* want, const char* what) {
  CHECK(got == want, "%s: got \"%s\", want \"%s\"", what, got.c_str(), want);
}

void test_detector_on_one_warp() {
  for (uint64_t seed : {0ull, 7ull}) {
    auto neighbour = [&](bool barrier, bool ballot) {
      return [=](int32_t* buf) {
        HostWarp w(seed);
        HostWarp::Var<int32_t> got;
        HostWarp::Var<bool> yes;
        w.each([&](int l) {
          buf[l] = l + 1;
          yes[l] = true;
        });
        if (ballot) (void)w.ballot(yes);
        if (barrier) w.sync();
        w.each([&](int l) { got[l] = buf[(l + 1) % 32]; });
        g_sink = w.max(got);
      };
    };
    expect(first_hazard(neighbour(false, false)), "read after write",
           "a neighbour's word, no barrier");
    expect(first_hazard(neighbour(false, true)), "read after write",
           "a neighbour's word after a ballot (not a fence)");
    expect(first_hazard(neighbour(true, false)), "", "a neighbour's word after a warp barrier");
    expect(first_hazard([&](int32_t* buf) {
             HostWarp w(seed);
             HostWarp::Var<int32_t> got;
             w.each([&](int l) { buf[l] = l; });
             w.each([&](int l) { got[l] = buf[l]; });
             w.each([&](int l) { buf[l] = got[l] + 1; });
             g_sink = w.max(got);
           }),
           "", "a lane's own word across steps");
    auto shift = [&](bool barrier) {
      return [=](int32_t* buf) {
        HostWarp w(seed);
        HostWarp::Var<int32_t> got;
        w.each([&](int l) { got[l] = buf[l + 1]; });
        if (barrier) w.sync();
        w.each([&](int l) { buf[l] = got[l]; });
      };
    };
    expect(first_hazard(shift(false)), "write after read", "shift left, no barrier");
    expect(first_hazard(shift(true)), "", "shift left after a warp barrier");
    auto two_writers = [&](bool barrier) {
      return [=](int32_t* buf) {
        HostWarp w(seed);
        w.each([&](int l) {
          if (l == 0) buf[0] = 1;
        });
        if (barrier) w.sync();
        w.each([&](int l) {
          if (l == 1) buf[0] = 2;
        });
      };
    };
    expect(first_hazard(two_writers(false)), "write after write", "two lanes write, no barrier");
    expect(first_hazard(two_writers(true)), "", "two lanes write, a warp barrier between");
    auto uniform_then_lane = [&](bool barrier) {
      return [=](int32_t* buf) {
        HostWarp w(seed);
        const int32_t v = buf[3];  // warp-uniform: every lane reads
        if (barrier) w.sync();
        w.each([&](int l) {
          if (l == 0) buf[3] = v + 1;
        });
      };
    };
    expect(first_hazard(uniform_then_lane(false)), "write after read",
           "a uniform read, then one lane writes");
    expect(first_hazard(uniform_then_lane(true)), "", "a uniform read, a barrier, one lane writes");
    auto lane_then_uniform = [&](bool barrier) {
      return [=](int32_t* buf) {
        HostWarp w(seed);
        w.each([&](int l) {
          if (l == 5) buf[0] = 9;
        });
        if (barrier) w.sync();
        CHECK(buf[0] == 9, "the uniform read");
      };
    };
    expect(first_hazard(lane_then_uniform(false)), "read after write",
           "one lane writes, then a uniform read");
    expect(first_hazard(lane_then_uniform(true)), "", "one lane writes, a barrier, a uniform read");
    expect(first_hazard([&](int32_t* buf) {
             HostWarp w(seed);
             buf[1] = 4;
           }),
           "write by every lane", "a uniform write");
    // memset is a library call, which the instrumentation does not see: the link wraps it.
    auto cleared = [&](bool barrier) {
      return [=](int32_t* buf) {
        HostWarp w(seed);
        HostWarp::Var<int32_t> got;
        w.each([&](int l) {
          if (l == 0) std::memset(buf, 0, g_bytes * sizeof(int32_t));
        });
        if (barrier) w.sync();
        w.each([&](int l) { got[l] = buf[l]; });
        g_sink = w.max(got);
      };
    };
    expect(first_hazard(cleared(false)), "read after write", "lane 0's memset, no barrier");
    expect(first_hazard(cleared(true)), "", "lane 0's memset, then a warp barrier");
    // Atomics from every lane do not race with each other; a plain store after them does.
    auto counted = [&](bool barrier) {
      return [=](int32_t* buf) {
        HostWarp w(seed);
        w.each([&](int) { __atomic_fetch_add(&buf[0], 1, __ATOMIC_RELAXED); });
        if (barrier) w.sync();
        w.each([&](int l) {
          if (l == 5) buf[0] = 0;
        });
      };
    };
    expect(first_hazard(counted(false)), "write after write",
           "atomics from every lane, then one lane's store, no barrier");
    expect(first_hazard(counted(true)), "", "atomics from every lane, a barrier, a store");
  }
}

void test_detector_on_a_block() {
  for (uint64_t seed : {0ull, 11ull}) {
    // Warp 0 writes, warp 1 reads: its own warp barrier does not order another warp's stores.
    auto across = [&](bool block_barrier) {
      return [=](int32_t* buf) {
        HostBlock blk(2, seed);
        tsl::host_schedule.warp = -1;
        blk.each_warp([&](HostWarp& w, int warp) {
          w.each([&](int l) {
            if (warp == 0 && l == 0) buf[0] = 1;
          });
          w.sync();
        });
        if (block_barrier) blk.sync();
        blk.each_warp([&](HostWarp& w, int warp) {
          HostWarp::Var<int32_t> got;
          w.each([&](int l) { got[l] = warp == 1 && l == 3 ? buf[0] : 0; });
          g_sink = w.max(got);
        });
      };
    };
    expect(first_hazard(across(false)), "read after write",
           "another warp's word after a warp barrier only");
    expect(first_hazard(across(true)), "", "another warp's word after a block barrier");
    auto block_uniform = [&](bool block_barrier) {
      return [=](int32_t* buf) {
        HostBlock blk(3, seed);
        tsl::host_schedule.warp = -1;
        blk.each_warp([&](HostWarp& w, int warp) {
          w.each([&](int l) {
            if (l == 0) buf[warp] = warp;
          });
        });
        if (block_barrier) blk.sync();
        int32_t sum = 0;
        for (int k = 0; k < blk.warps(); ++k) sum += buf[k];  // every thread reads
        CHECK(sum == 3, "the block-uniform sum");
      };
    };
    expect(first_hazard(block_uniform(false)), "read after write",
           "the warps' words read by the block, no barrier");
    expect(first_hazard(block_uniform(true)), "", "the warps' words read by the block after one");
    // One warp's two lanes in two phases with no barrier at all.
    expect(first_hazard([=](int32_t* buf) {
             HostBlock blk(2, seed);
             tsl::host_schedule.warp = -1;
             blk.each_warp([&](HostWarp& w, int warp) {
               w.each([&](int l) {
                 if (warp == 0 && l == 0) buf[8] = 1;
               });
             });
             blk.each_warp([&](HostWarp& w, int warp) {
               HostWarp::Var<int32_t> got;
               w.each([&](int l) { got[l] = warp == 0 && l == 1 ? buf[8] : 0; });
               g_sink = w.max(got);
             });
           }),
           "read after write", "two phases of one warp, no barrier");
  }
}

// ---- the kernels ------------------------------------------------------------------------------

struct Sweep {
  int64_t clouds = 0, hazard_clouds = 0;
};

template <typename T>
tsl::WarpReduceStats run_cloud(RaceWatch& watch, const std::vector<double>& pts, int64_t n, int64_t dim,
               const tsl::EmulationOptions& base, Sweep& sweep, const char* what) {
  std::vector<T> x(pts.begin(), pts.end()), dist(n * n);
  tsl::pairwise_distance_cloud(x.data(), n, dim, dist.data());
  const int64_t K = std::max<int64_t>(4 * n, 8);
  tsl_test::Outputs<T> out(n, K);
  tsl::EmulatedWorkspace<T> ws;
  ws.reduce.pool_bytes = uint64_t(1) << 20;  // it doubles when a cloud needs more
  tsl::EmulationOptions opt = base;
  opt.watch = &watch;
  const int64_t before = watch.hazards();
  tsl::vr_persistence_cloud_emulated(dist.data(), n, 1, out.view(K), ws, opt);
  ++sweep.clouds;
  if (watch.hazards() > before && ++sweep.hazard_clouds <= 5)
    std::printf("FAIL hazards in %s n=%lld dim=%lld %s seed=%llu warps=%d shared=%lld pool=%llu\n",
                what, (long long)n, (long long)dim, sizeof(T) == 4 ? "float" : "double",
                (unsigned long long)opt.seed, opt.warps, (long long)opt.shared_entries,
                (unsigned long long)opt.fixed_pool_bytes);
  return ws.reduction;
}

void test_kernels(double fraction) {
  struct Size {
    int64_t n;
    int clouds;
  };
  // Four clouds at N >= 200: the families but the polygon, whose ring costs 18-28 s here.
  const Size sizes[] = {{3, 40}, {4, 40}, {7, 40}, {17, 60}, {31, 40}, {32, 40},
                        {33, 40}, {48, 20}, {64, 20}, {100, 10}, {200, 4}, {256, 4}};
  RaceWatch watch;
  Sweep sweep;
  std::mt19937 rng(424242);
  const auto t0 = std::chrono::steady_clock::now();
  for (const Size& s : sizes) {
    const int clouds = std::max(1, int(s.clouds * fraction));
    for (int q = 0; q < clouds; ++q) {
      const int family = q % tsl_test::kFamilies;
      int64_t dim = 0;
      const std::vector<double> pts = tsl_test::make_cloud(family, s.n, &dim, rng);
      tsl::EmulationOptions opt;
      opt.seed = 1 + rng();
      // topology_warps(n), 1 to 8 warps, or wider blocks the device takes for small batches
      // (topology_threads gives any count to 32: two and one sub-chunks a warp in the flag
      // pass's spans at 16 and 32, uneven splits at 12 and 21).
      static const int kWide[] = {12, 16, 21, 32};
      opt.warps = q % 3 == 0 ? 0 : (q % 5 == 4 ? kWide[(q / 5) % 4] : 1 + int(rng() % 8));
      // Every entry spilled, a few, the device's split: the spill and growth paths run too.
      static const tsl::index_t kShared[] = {0, 7, 64, tsl::kDeviceFastEntries};
      opt.shared_entries = kShared[(q / tsl_test::kFamilies) % 4];
      // Now and then the device's fixed pool, small enough that tie-heavy clouds exhaust it.
      if (q % 7 == 6) opt.fixed_pool_bytes = 8192;
      // Every third cloud's reduction on a block of 2 to 16 warps (block_reduce), some of them
      // in short rounds.
      if (q % 3 == 1) {
        opt.reduce_warps = 2 + int(rng() % 15);
        opt.reduce_queries = q % 2 ? -1 : 1 + tsl::index_t(rng() % 3);
      }
      const auto c0 = std::chrono::steady_clock::now();
      if (q % 2) run_cloud<double>(watch, pts, s.n, dim, opt, sweep, tsl_test::family_name(family));
      else run_cloud<float>(watch, pts, s.n, dim, opt, sweep, tsl_test::family_name(family));
      if (std::getenv("TEST_RACES_VERBOSE"))
        std::printf("n=%lld %s q=%d: %.3f s\n", (long long)s.n, tsl_test::family_name(family), q,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count());
    }
  }
  for (const RaceWatch::Hazard& h : watch.first_hazards())
    std::printf("  %s\n", watch.describe(h).c_str());
  CHECK(watch.hazards() == 0, "%lld hazards in %lld of %lld clouds", (long long)watch.hazards(),
        (long long)sweep.hazard_clouds, (long long)sweep.clouds);
  // The kernels' own accesses were seen (an uninstrumented copy of them would see none).
  for (const char* b : {"key_hi", "parent", "in_tree", "warp_words", "mst", "columns", "h0",
                        "pivot_keys", "pivot_slots", "v_start", "pairs", "pool", "block_shared"})
    CHECK(watch.watched_accesses(b) > 0, "no access to %s was seen", b);
  if (fraction >= 0.5)  // then some clouds have a shared part (a tiny sweep may not)
    for (const char* b : {"set", "vwork", "arena"})
      CHECK(watch.watched_accesses(b) > 0, "no access to %s was seen", b);
  std::printf("kernels: %lld clouds, %lld watched accesses, %lld hazards (%.1f s)\n",
              (long long)sweep.clouds, (long long)watch.watched_accesses(),
              (long long)watch.hazards(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

// The reduction's cold paths, which a roomy pool seldom takes: a set that cannot grow is
// compacted in place (compact_entries with its source and destination equal), and arrays grow
// in the middle of a column. Tie-heavy clouds through fixed pools from too small to enough.
void test_pool_pressure() {
  RaceWatch watch;
  Sweep sweep;
  int64_t compactions = 0, grown = 0;
  std::mt19937 rng(77);
  for (int family : {tsl_test::kPolygon, tsl_test::kLattice}) {
    for (int64_t n : {40, 64}) {
      int64_t dim = 0;
      const std::vector<double> pts = tsl_test::make_cloud(family, n, &dim, rng);
      for (uint64_t pool : {6144, 8192, 12288, 16384, 24576, 32768, 49152}) {
        for (tsl::index_t shared : {tsl::index_t(0), tsl::kDeviceFastEntries}) {
          tsl::EmulationOptions opt;
          opt.seed = 1 + rng();
          opt.shared_entries = shared;
          opt.fixed_pool_bytes = pool;
          const tsl::WarpReduceStats r =
              run_cloud<double>(watch, pts, n, dim, opt, sweep, tsl_test::family_name(family));
          compactions += r.compactions;
          grown += r.grown;
        }
      }
    }
  }
  // Bare 140- and 150-gons store one V column of 1,100-1,260 edges: with a small or no shared
  // part, the arena's second part (1,024 entries) fills in the middle of it and grows, copying
  // entries that other lanes wrote in the column's earlier chunks (the barrier before grow's
  // copy).
  for (const int64_t n : {140, 150}) {
    std::vector<double> ring(2 * n);
    for (int64_t p = 0; p < n; ++p) {
      ring[2 * p] = std::cos(2 * M_PI * double(p) / double(n));
      ring[2 * p + 1] = std::sin(2 * M_PI * double(p) / double(n));
    }
    tsl::EmulationOptions opt;
    opt.seed = uint64_t(n);
    // Whether the copying lanes differ from the writing ones depends on where the column
    // starts relative to the 32-lane chunks: a shared part of 7 entries moves it.
    opt.shared_entries = n == 140 ? 7 : 0;
    const tsl::WarpReduceStats r =
        n == 140 ? run_cloud<float>(watch, ring, n, 2, opt, sweep, "bare ring")
                 : run_cloud<double>(watch, ring, n, 2, opt, sweep, "bare ring");
    CHECK(r.arena_used > 1024 && r.vwork_high > 1024, "the %lld-gon's arena %lld, longest column %lld",
          (long long)n, (long long)r.arena_used, (long long)r.vwork_high);
    grown += r.grown;
  }
  for (const RaceWatch::Hazard& h : watch.first_hazards())
    std::printf("  %s\n", watch.describe(h).c_str());
  CHECK(watch.hazards() == 0, "%lld hazards in %lld of %lld clouds", (long long)watch.hazards(),
        (long long)sweep.hazard_clouds, (long long)sweep.clouds);
  CHECK(compactions > 0 && grown > 0, "the cold paths did not run: %lld compactions, %lld grown",
        (long long)compactions, (long long)grown);
  std::printf("pool pressure: %lld clouds, %lld compactions, %lld arrays grown, %lld hazards\n",
              (long long)sweep.clouds, (long long)compactions, (long long)grown,
              (long long)watch.hazards());
}

}  // namespace

int main(int argc, char** argv) {
  double fraction = 1.0;
  for (int a = 1; a + 1 < argc; ++a)
    if (std::strcmp(argv[a], "--clouds") == 0) fraction = std::atof(argv[a + 1]);
  CHECK(tsl_test::instrumented(), "built without -fsanitize=thread: the detector sees nothing");
  test_detector_on_one_warp();
  test_detector_on_a_block();
  test_pool_pressure();
  test_kernels(fraction);
  return tsl_test::finish_checks("race");
}
