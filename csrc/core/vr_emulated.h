// The GPU engine's per-cloud kernels run on the host through the warp emulation (warp_host.h):
// the same algorithm text the CUDA kernels instantiate with CudaBlock, so the native tests and
// the emulated op (TSLOSS_ENGINE=emulated) check the device's code against the scalar engine.
//
// The topology pass (topology_block.h) runs on an emulated block, the H1 reduction
// (h1_reduce_warp.h) on an emulated warp; the CUDA path runs the same two as its default kernels
// (its global passes and the scalar reduce_h1, one thread per cloud, behind
// TSLOSS_CUDA_TOPOLOGY=global and TSLOSS_CUDA_REDUCE=thread).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "h1_reduce_block.h"
#include "h1_reduce_warp.h"
#include "topology_block.h"
#include "vr_engine.h"
#include "warp_host.h"

namespace tsl {

// A test's view of the emulated kernels' device memory (csrc/native_tests/race_watch.h): before
// each kernel it is told which buffers are the device's (shared or global memory there), and
// when the kernel ends. Everything else a kernel touches is registers on the device.
class DeviceMemoryWatch {
 public:
  struct Buffer {
    const char* name;
    const void* data;
    size_t bytes;
  };
  virtual void launch(const char* kernel, const Buffer* buffers, int count) = 0;
  virtual void finish() = 0;

 protected:
  ~DeviceMemoryWatch() = default;
};

template <typename V>
inline DeviceMemoryWatch::Buffer device_buffer(const char* name, const V& v) {
  return {name, v.data(), v.size() * sizeof(v[0])};
}

struct EmulationOptions {
  uint64_t seed = 0;  // 0: lanes and warps in order; otherwise shuffled from this seed
  int warps = 0;      // 0: topology_warps(n)
  bool warp_reduction = true;  // false: the scalar reduce_h1 on the emulated columns
  int reduce_warps = 0;  // > 0: the warp reduction on a block of this many warps (block_reduce)
  index_t reduce_queries = -1;  // block_reduce's pivot queries per warp and round (-1: no limit)
  // Entries of each reduction array in the fast (shared-memory) part; the rest spills.
  index_t shared_entries = kDeviceFastEntries;
  // 0: the pool grows and the reduction reruns until the cloud fits. Otherwise the device's
  // way: a pool of this many bytes, and a cloud that exhausts it is reported (h1_count -1,
  // truncated, H1 rows padding, H0 exact), as the device's finalize reports it.
  uint64_t fixed_pool_bytes = 0;
  DeviceMemoryWatch* watch = nullptr;  // tests only
};

// The options of the emulated ops (TSLOSS_ENGINE=emulated): TSLOSS_EMULATED_POOL_BYTES, when
// set and not 0 (0: not fixed, as unset), fixes the reduction's pool at that many bytes, so
// that a cloud which exhausts it is reported as the device reports it (h1_count -1) instead of
// rerun with more: the tests' way into the device's overflow path. Read at every call, as
// TSLOSS_ENGINE is.
// Digits only, at most 2^40 (a TiB); anything else is an error naming the variable: strtoull
// took "-1" as 2^64 - 1, "1e6" as 1 and "abc" as 0, and sizes near 2^64 wrapped to an empty
// pool, each silently.
// TSLOSS_EMULATED_REDUCE_WARPS (1..16; 1, the default, one warp; no automatic 0, which on the
// device reads the SM count) runs the reduction on a block of that many warps (block_reduce),
// so that the Python suites can run through the block kernel's code too.
inline EmulationOptions emulation_options_from_env() {
  constexpr uint64_t kMaxPoolBytes = uint64_t(1) << 40;
  EmulationOptions opt;
  if (const char* w = std::getenv("TSLOSS_EMULATED_REDUCE_WARPS"); w != nullptr && *w != '\0') {
    const bool digits = (w[0] >= '0' && w[0] <= '9') &&
                        (w[1] == '\0' || (w[1] >= '0' && w[1] <= '9' && w[2] == '\0'));
    const int k = digits ? std::atoi(w) : 0;
    if (k < 1 || k > 16)
      throw std::invalid_argument(std::string("TSLOSS_EMULATED_REDUCE_WARPS must be 1..16, got '") +
                                  w + "'");
    opt.reduce_warps = k > 1 ? k : 0;
  }
  const char* v = std::getenv("TSLOSS_EMULATED_POOL_BYTES");
  if (v == nullptr || *v == '\0') return opt;
  uint64_t bytes = 0;
  if (!parse_count(v, kMaxPoolBytes, &bytes))
    throw std::invalid_argument(std::string("TSLOSS_EMULATED_POOL_BYTES must be a whole number "
                                            "of bytes from 0 (not fixed) to 2^40, got '") + v + "'");
  opt.fixed_pool_bytes = bytes;
  return opt;
}

// Seeded runs (the tests') start a cloud's device buffers as garbage, as shared memory and a
// reused pool are on the device, rather than zeros or the previous cloud's values: a read
// before a write then changes the result, which the parity tests see. 0x5A bytes: large finite
// floats and large positive integers, none of them a marker (-1, 0) the code could mistake
// for its own.
template <typename V>
inline void poison(V& v, const EmulationOptions& opt) {
  if (opt.seed != 0 && !v.empty()) std::memset((void*)v.data(), 0x5A, v.size() * sizeof(v[0]));
}

// The reduction's arrays on the host: a fast part of fixed size, second parts from a pool as
// on the device (they start empty and grow from it), and a pool that doubles, the reduction
// starting over, when the reduction reports it exhausted (the device reports the status).
template <typename T>
struct EmulatedReduceBuffers {
  std::vector<Entry<T>> set_fast;
  std::vector<int32_t> vwork_fast, arena_fast, v_start, v_length, pivot_slots;
  std::vector<int64_t> pivot_keys;
  std::vector<uint64_t> pool;  // 8-byte words: the pool's allocations are 16-byte multiples
  // As a launch of few clouds has on the device (96 MB there): a pool this size is never
  // exhausted in the tests, so the counters count no rerun; test_small_set runs one too small.
  uint64_t pool_bytes = uint64_t(16) << 20;
  unsigned long long pool_used = 0;
};

// Reductions run on an emulated block of warps (block_reduce), for the tests of
// TSLOSS_EMULATED_REDUCE_WARPS.
inline std::atomic<int64_t>& emulated_block_reductions() {
  static std::atomic<int64_t> count{0};
  return count;
}

template <typename T>
inline Status run_h1_reduction_warp(const DistanceMatrix<T>& d, T threshold,
                                    const std::vector<H1Column<T>>& columns,
                                    EmulatedReduceBuffers<T>& b, std::vector<H1Pair<T>>& pairs,
                                    const EmulationOptions& opt, WarpReduceStats* stats,
                                    WarpCounters* counters) {
  const index_t m = (index_t)columns.size();
  const index_t fast = opt.shared_entries;
  const index_t pivot_capacity = pivot_table_capacity(m);
  b.pivot_keys.resize(pivot_capacity);
  b.pivot_slots.resize(pivot_capacity);
  b.v_start.resize(m + 1);
  b.v_length.resize(m + 1);
  pairs.resize(m + 1);
  // A block's warps each have a set and a V of their own; they share the arena.
  const int K = opt.reduce_warps > 0 ? std::min(opt.reduce_warps, kBlockReduceMaxWarps) : 1;
  b.set_fast.resize(fast * K);
  b.vwork_fast.resize(fast * K);
  b.arena_fast.resize(fast);
  const bool fixed = opt.fixed_pool_bytes > 0;
  for (;;) {
    const uint64_t pool_bytes = fixed ? opt.fixed_pool_bytes : b.pool_bytes;
    // The pool (16 MB) is poisoned whole when it grows, then only where the last cloud wrote
    // (within the pool as it is now: a fixed pool may be smaller than the last one).
    const size_t kept = b.pool.size(), words = (pool_bytes + 7) / 8;
    b.pool.resize(words);
    if (opt.seed != 0) {
      if (words > kept) std::memset((void*)(b.pool.data() + kept), 0x5A, (words - kept) * 8);
      const size_t written = std::min<size_t>(b.pool_used, std::min(kept, words) * 8);
      std::memset((void*)b.pool.data(), 0x5A, written);
    }
    for (auto* v : {&b.vwork_fast, &b.arena_fast, &b.v_start, &b.v_length, &b.pivot_slots})
      poison(*v, opt);
    poison(b.set_fast, opt);
    poison(b.pivot_keys, opt);
    poison(pairs, opt);
    b.pool_used = 0;
    WarpReduceMemory<T> mem{Spill<Entry<T>>{b.set_fast.data(), fast, nullptr, 0},
                            Spill<int32_t>{b.vwork_fast.data(), fast, nullptr, 0},
                            Spill<int32_t>{b.arena_fast.data(), fast, nullptr, 0},
                            b.pivot_keys.data(), b.pivot_slots.data(), pivot_capacity,
                            b.v_start.data(), b.v_length.data(), m + 1,
                            pairs.data(), m + 1};
    mem.pool = WarpPool{reinterpret_cast<unsigned char*>(b.pool.data()), pool_bytes,
                        &b.pool_used};
    WarpReduceStats local;
    index_t num_pairs = 0;
    // What the reduction's kernel sees of device memory (the block's shared rows too).
    BlockReduceShared<T> shared;
    const bool block = opt.reduce_warps > 0;
    if (block && opt.seed != 0) std::memset((void*)&shared, 0x5A, sizeof shared);  // as poison()
    // A warp launched alone: its uniform code is its lanes'; a block: each phase names its warps.
    host_schedule.warp = block ? -1 : 0;
    schedule_fence();
    if (opt.watch) {
      const DeviceMemoryWatch::Buffer buffers[] = {
          device_buffer("set", b.set_fast),          device_buffer("vwork", b.vwork_fast),
          device_buffer("arena", b.arena_fast),      device_buffer("pivot_keys", b.pivot_keys),
          device_buffer("pivot_slots", b.pivot_slots), device_buffer("v_start", b.v_start),
          device_buffer("v_length", b.v_length),     device_buffer("pairs", pairs),
          {"pool", b.pool.data(), size_t(pool_bytes)}, device_buffer("columns", columns),
          {"block_shared", &shared, sizeof shared}};
      opt.watch->launch(block ? "h1_reduce_block" : "h1_reduce_warp", buffers,
                        int(sizeof buffers / sizeof buffers[0]) - (block ? 0 : 1));
    }
    Status s;
    if (block) {
      HostBlock blk(K, opt.seed);
      std::vector<WarpReducer<HostWarp, T>> reducers;
      reducers.reserve(K);
      for (int k = 0; k < K; ++k) {
        WarpReduceMemory<T> own = mem;
        own.set = Spill<Entry<T>>{b.set_fast.data() + k * fast, fast, nullptr, 0};
        own.vwork = Spill<int32_t>{b.vwork_fast.data() + k * fast, fast, nullptr, 0};
        reducers.emplace_back(blk.warp(k), d, threshold, own, &local);
      }
      s = block_reduce(blk, shared, columns.data(), m,
                       [&](int k) -> WarpReducer<HostWarp, T>& { return reducers[k]; },
                       &num_pairs, opt.reduce_queries);
      if (counters) {
        counters->steps += blk.counters().steps;
        counters->collectives += blk.counters().collectives;
        counters->barriers += blk.counters().barriers;
        counters->span += blk.counters().span;
      }
      if (s == kOk) emulated_block_reductions().fetch_add(1, std::memory_order_relaxed);
    } else {
      HostWarp w(opt.seed, counters);
      WarpReducer<HostWarp, T> reducer(w, d, threshold, mem, &local);
      const int64_t steps_before = counters ? counters->steps : 0;
      s = reducer.run(columns.data(), m, &num_pairs);
      if (counters) counters->span += counters->steps - steps_before;  // one warp: its steps
    }
    if (opt.watch) opt.watch->finish();
    if (s == kOk) {
      pairs.resize(num_pairs);
      if (stats) *stats = local;
      return kOk;
    }
    if (s != kHeapFull && s != kReductionArenaFull) return s;  // sized exactly above: not reached
    if (fixed) {
      if (stats) *stats = local;
      return s;
    }
    b.pool_bytes *= 2;
  }
}

template <typename T>
struct EmulatedWorkspace {
  std::vector<uint64_t> key_hi;
  std::vector<uint32_t> key_lo, warp_words;
  std::vector<int32_t> parent;
  std::vector<uint8_t> in_tree;
  std::vector<T> warp_values;
  std::vector<MstEdge<T>> mst;
  std::vector<int64_t> best_parent;
  HostWorkspace<T> host;  // the column list, the pairs, the scalar reduction's buffers
  EmulatedReduceBuffers<T> reduce;
  TopologyStats topology;
  WarpReduceStats reduction;
  WarpCounters warp;
  Status status = kOk;
};

// Clouds run through the emulation in this process. The results are the scalar engine's bits by
// design, so this count is how a test sees that a switch (TSLOSS_ENGINE=emulated) took effect.
inline std::atomic<int64_t>& emulated_cloud_count() {
  static std::atomic<int64_t> count{0};
  return count;
}

// Persistence of one cloud, as vr_persistence_cloud, with the topology pass emulated.
template <typename T>
inline void vr_persistence_cloud_emulated(const T* dist, index_t n, int maxdim,
                                          CloudOutput<T> out, EmulatedWorkspace<T>& ws,
                                          const EmulationOptions& opt = EmulationOptions()) {
  emulated_cloud_count().fetch_add(1, std::memory_order_relaxed);
  clear_h1_output(out);
  if (n <= 1) return;

  const DistanceMatrix<T> d{dist, n};
  const bool h1 = maxdim >= 1 && n >= 3;
  ws.key_hi.resize(n);
  ws.key_lo.resize(n);
  ws.parent.resize(n);
  ws.in_tree.resize(n);
  ws.warp_words.assign(kFlagWords, 0);
  ws.warp_values.assign(HostBlock::kMaxWarps, T(0));
  ws.mst.resize(n - 1);
  ws.best_parent.resize(n);
  poison(ws.key_hi, opt);
  poison(ws.key_lo, opt);
  poison(ws.parent, opt);
  poison(ws.in_tree, opt);
  poison(ws.warp_words, opt);
  poison(ws.warp_values, opt);
  poison(ws.mst, opt);
  poison(ws.best_parent, opt);
  std::vector<H1Column<T>>& columns = ws.host.columns;
  columns.resize(h1 ? n * (n - 1) / 2 : 0);
  poison(columns, opt);
  T threshold = T(0);
  int32_t num_columns = 0;
  TopologyCloud<T> c{d,
                     h1,
                     ws.key_hi.data(),
                     ws.key_lo.data(),
                     ws.parent.data(),
                     ws.in_tree.data(),
                     ws.warp_words.data(),
                     ws.warp_values.data(),
                     ws.mst.data(),
                     out.h0,
                     out.h0_edges,
                     ws.best_parent.data(),
                     &threshold,
                     columns.data(),
                     &num_columns};
  HostBlock blk(opt.warps > 0 ? opt.warps : topology_warps(n), opt.seed);
  host_schedule.warp = -1;
  schedule_fence();
  if (opt.watch) {
    const DeviceMemoryWatch::Buffer buffers[] = {
        device_buffer("key_hi", ws.key_hi),
        device_buffer("key_lo", ws.key_lo),
        device_buffer("parent", ws.parent),
        device_buffer("in_tree", ws.in_tree),
        device_buffer("warp_words", ws.warp_words),
        device_buffer("warp_values", ws.warp_values),
        device_buffer("mst", ws.mst),
        device_buffer("best_parent", ws.best_parent),
        device_buffer("columns", columns),
        {"h0", out.h0, size_t(2 * (n - 1)) * sizeof(T)},
        {"h0_edges", out.h0_edges, size_t(2 * (n - 1)) * sizeof(int64_t)},
        {"threshold", &threshold, sizeof threshold},
        {"num_columns", &num_columns, sizeof num_columns}};
    opt.watch->launch("cloud_topology", buffers, int(sizeof buffers / sizeof buffers[0]));
  }
  cloud_topology(blk, c, &ws.topology);
  if (opt.watch) opt.watch->finish();
  ws.warp.steps += blk.counters().steps;
  ws.warp.collectives += blk.counters().collectives;
  ws.warp.barriers += blk.counters().barriers;
  if (threshold != threshold) {  // a non-finite distance: reported as the device's finalize does
    *out.h1_count = kInvalidInputCount;
    return;
  }
  if (!h1) return;
  columns.resize(num_columns);
  if (opt.warp_reduction) {
    ws.status = run_h1_reduction_warp(d, threshold, columns, ws.reduce, ws.host.pairs, opt,
                                      &ws.reduction, &ws.warp);
    if (ws.status != kOk) {  // a fixed pool ran out: reported as the device's finalize does
      *out.h1_count = kH1OverflowCount;
      *out.truncated = true;
      return;
    }
  } else {
    run_h1_reduction(d, threshold, ws.host);
  }

  report_h1_pairs(d, ws.host.pairs, out);
}

}  // namespace tsl
