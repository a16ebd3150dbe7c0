// The host emulation of a warp and of a block of warps (see warp.h for the contract).
//
// Lanes run one after another inside `each`, in lockstep between collectives. Under test the
// lane order is reshuffled on every `each` (and the warp order on every block phase), so code
// that depends on lane order, such as a lane reading a word another lane writes in the same
// step, gives different results from run to run and fails the bit-for-bit comparisons.
// Collectives abort when called from inside per-lane code: that is a point the lanes may reach
// at different times, where a real warp would deadlock or read garbage.
//
// The emulation says nothing about speed or bank conflicts; the counters say how much work and
// memory the device would see. Memory ordering it exposes to a watcher: the schedule below says
// which lane runs and how many warp and block barriers have passed, so that a test which sees
// every memory access (csrc/native_tests/race_watch.h) can flag two lanes' accesses to one word
// with no barrier between them, as compute-sanitizer's racecheck does on the device. Lockstep
// hides those: the host finishes every lane's step before the next, a device warp need not.
#pragma once

#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>

#include "warp.h"

namespace tsl {

// Who runs now in this thread's emulation. warp -1: block-uniform code (every thread of the
// block runs it on the device); lane -1: warp-uniform code (every lane of the warp). Barrier
// counts only grow: an access recorded with the counts of its time is ordered before a later one
// when a barrier both threads took part in has passed since.
struct HostSchedule {
  int warp = -1;
  int lane = -1;
  uint64_t block_barriers = 0;
  uint64_t warp_barriers[warp::kLanes] = {};  // per warp of the block (at most 32)
};
inline thread_local HostSchedule host_schedule;

// Around every schedule update: the race detector's instrumentation is placed after the
// compiler's optimisations, which would otherwise drop the updates as never read, or move the
// kernel's loads and stores across them (a compiler barrier: no instruction in a normal build,
// a call into race_watch.cpp under the race test's instrumentation).
inline void schedule_fence() { std::atomic_signal_fence(std::memory_order_seq_cst); }

// Work counted by the emulation, summed over the warps that share it.
struct WarpCounters {
  int64_t steps = 0;        // `each` calls: warp-wide instructions issued, roughly
  int64_t collectives = 0;  // ballots, shuffles, reductions, syncs
  int64_t barriers = 0;     // block barriers
  // A block's chain: per phase, the most steps any of its warps took (first_warp: warp 0's).
  // The warps of a phase run side by side on a device, so this, not steps, is the block's time.
  int64_t span = 0;
};

// Aborts unless lane `lane` is the one running its step now (the rule HostWarp::Var enforces).
inline void own_lane(int lane) {
  if (host_schedule.lane == lane) return;
  fprintf(stderr, "HostWarp: lane %d's Var copy used from %s\n", lane,
          host_schedule.lane < 0 ? "warp-uniform code" : "another lane's step");
  abort();
}

class HostWarp {
 public:
  // Lane l's copy is v[l]; `[l]` is the kernels' way in, from lane l's own step only: on the
  // device a Var is the running thread's register and `[l]` ignores l, so reading another
  // lane's copy, or any copy from warp-uniform code, would read something else there. The
  // collectives (and tests that set up lanes by hand) use v.
  template <typename T>
  struct Var {
    T v[warp::kLanes];
    T& operator[](int lane) {
      own_lane(lane);
      return v[lane];
    }
    const T& operator[](int lane) const {
      own_lane(lane);
      return v[lane];
    }
  };

  // seed 0: lanes in order 0..31 (fast, for the emulated op); otherwise a reshuffled order.
  // id: the warp's place in its block (0 for a warp launched alone).
  explicit HostWarp(uint64_t seed = 0, WarpCounters* counters = nullptr, int id = 0)
      : state_(seed), id_(id), counters_(counters ? counters : &own_) {
    for (int l = 0; l < warp::kLanes; ++l) order_[l] = l;
  }

  template <class F>
  void each(F&& f) {
    require_uniform("each");
    ++counters_->steps;
    if (state_) shuffle();
    in_lane_ = true;
    HostSchedule& now = host_schedule;
    schedule_fence();
    const int caller = now.warp;  // the code around the step keeps its own (warp or block)
    now.warp = id_;
    for (int t = 0; t < warp::kLanes; ++t) {
      now.lane = order_[t];
      schedule_fence();
      f(order_[t]);
      schedule_fence();
    }
    now.lane = -1;
    now.warp = caller;
    schedule_fence();
    in_lane_ = false;
  }

  uint32_t ballot(const Var<bool>& p) {
    collective("ballot");
    uint32_t m = 0;
    for (int l = 0; l < warp::kLanes; ++l) m |= uint32_t(p.v[l] ? 1 : 0) << l;
    return m;
  }
  bool any(const Var<bool>& p) { return ballot(p) != 0; }
  bool all(const Var<bool>& p) { return ballot(p) == 0xffffffffu; }

  // Lane `src`'s value, to every lane.
  template <typename T>
  T shfl(const Var<T>& v, int src) {
    collective("shfl");
    if (src < 0 || src >= warp::kLanes) fail("shfl", "from a lane outside the warp");
    return v.v[src];
  }

  // The least value over the lanes (an argmin when the value is a packed key that ends in
  // something unique).
  template <typename T>
  T min(const Var<T>& v) {
    collective("min");
    T m = v.v[0];
    for (int l = 1; l < warp::kLanes; ++l) m = v.v[l] < m ? v.v[l] : m;
    return m;
  }
  template <typename T>
  T max(const Var<T>& v) {
    collective("max");
    T m = v.v[0];
    for (int l = 1; l < warp::kLanes; ++l) m = v.v[l] > m ? v.v[l] : m;
    return m;
  }
  // Sum in a fixed order: integers only (a float sum's bits would depend on the order).
  int64_t sum(const Var<int64_t>& v) {
    collective("sum");
    int64_t s = 0;
    for (int l = 0; l < warp::kLanes; ++l) s += v.v[l];
    return s;
  }

  // Per lane: the lanes holding the same value.
  Var<uint32_t> match_any(const Var<uint32_t>& v) {
    collective("match_any");
    Var<uint32_t> r;
    for (int l = 0; l < warp::kLanes; ++l) {
      r.v[l] = 0;
      for (int m = 0; m < warp::kLanes; ++m) r.v[l] |= uint32_t(v.v[m] == v.v[l]) << m;
    }
    return r;
  }

  // The only collective that orders memory: ballots, shuffles and reductions exchange
  // registers, and a lane's earlier stores need not be visible to the others after them.
  void sync() {
    collective("sync");
    schedule_fence();
    ++host_schedule.warp_barriers[id_];
    schedule_fence();
  }

  // *p += v once for the warp, only if the sum stays <= limit; every lane gets the old value,
  // or ~0 when it would not fit (and *p is unchanged). Atomic, as on the device.
  uint64_t reserve(unsigned long long* p, uint64_t v, uint64_t limit) {
    collective("reserve");
    unsigned long long old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old <= limit && v <= limit - old)
      if (__atomic_compare_exchange_n(p, &old, old + v, false, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED))
        return old;
    return ~uint64_t(0);
  }

  const WarpCounters& counters() const { return *counters_; }

 private:
  void collective(const char* what) {
    require_uniform(what);
    ++counters_->collectives;
  }
  // Per-lane code of any warp (a lane of warp 0 calling warp 1's ballot runs one lane's
  // collective on the device, where CudaBlock::warp(k) is the caller's own warp), and another
  // warp's phase, count as not uniform here.
  void require_uniform(const char* what) const {
    if (in_lane_ || host_schedule.lane >= 0)
      fail(what, "reached from per-lane code (not warp-uniform)");
    if (host_schedule.warp >= 0 && host_schedule.warp != id_)
      fail(what, "reached from another warp's code (on the device: that warp's own)");
  }
  [[noreturn]] static void fail(const char* what, const char* where) {
    fprintf(stderr, "HostWarp: %s %s\n", what, where);
    abort();
  }
  void shuffle() {
    for (int t = warp::kLanes - 1; t > 0; --t) {
      const int s = int(next() % uint64_t(t + 1));
      const int x = order_[t];
      order_[t] = order_[s];
      order_[s] = x;
    }
  }
  uint64_t next() {  // xorshift64*
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return state_ * 0x2545F4914F6CDD1Dull;
  }

  uint64_t state_;
  int id_;
  int order_[warp::kLanes];
  bool in_lane_ = false;
  WarpCounters own_;
  WarpCounters* counters_;
};

// A block of `warps` emulated warps. Phases run the warps one after another (shuffled under
// test); a barrier inside a phase aborts, as a __syncthreads() in divergent code would hang.
class HostBlock {
 public:
  using Warp = HostWarp;
  static constexpr int kMaxWarps = 32;

  HostBlock(int warps, uint64_t seed = 0)
      : warps_(warps < 1 ? 1 : (warps > kMaxWarps ? kMaxWarps : warps)), state_(seed) {
    for (int w = 0; w < warps_; ++w) {
      warp_[w] =
          HostWarp(seed ? seed * 0x9E3779B97F4A7C15ull + uint64_t(w) + 1 : 0, &counters_, w);
      order_[w] = w;
    }
  }

  HostBlock(const HostBlock&) = delete;  // the warps point at this block's counters
  HostBlock& operator=(const HostBlock&) = delete;

  int warps() const { return warps_; }
  int threads() const { return warps_ * warp::kLanes; }
  // Warp k, for state a warp keeps from phase to phase (block_reduce's reducers).
  HostWarp& warp(int k) { return warp_[k]; }

  template <class F>
  void each_warp(F&& f) {
    if (in_phase_) fail("each_warp nested in a phase");
    in_phase_ = true;
    if (state_) shuffle();
    int64_t longest = 0;
    for (int t = 0; t < warps_; ++t) {
      schedule_fence();
      host_schedule.warp = order_[t];
      schedule_fence();
      const int64_t before = counters_.steps;
      f(warp_[order_[t]], order_[t]);
      longest = std::max<int64_t>(longest, counters_.steps - before);
    }
    counters_.span += longest;
    schedule_fence();
    host_schedule.warp = -1;
    schedule_fence();
    in_phase_ = false;
  }

  // Only warp 0 runs `f` (a serial stretch of the kernel, such as Prim's steps).
  template <class F>
  void first_warp(F&& f) {
    if (in_phase_) fail("first_warp nested in a phase");
    in_phase_ = true;
    schedule_fence();
    host_schedule.warp = 0;
    schedule_fence();
    const int64_t before = counters_.steps;
    f(warp_[0]);
    counters_.span += counters_.steps - before;
    schedule_fence();
    host_schedule.warp = -1;
    schedule_fence();
    in_phase_ = false;
  }

  void sync() {
    if (in_phase_ || host_schedule.lane >= 0)
      fail("block barrier inside a warp phase or a lane's step");
    ++counters_.barriers;
    schedule_fence();
    ++host_schedule.block_barriers;
    schedule_fence();
  }

  const WarpCounters& counters() const { return counters_; }

 private:
  [[noreturn]] static void fail(const char* what) {
    fprintf(stderr, "HostBlock: %s\n", what);
    abort();
  }
  void shuffle() {
    for (int t = warps_ - 1; t > 0; --t) {
      state_ ^= state_ << 13;
      state_ ^= state_ >> 7;
      state_ ^= state_ << 17;
      const int s = int(state_ % uint64_t(t + 1));
      const int x = order_[t];
      order_[t] = order_[s];
      order_[s] = x;
    }
  }

  int warps_;
  uint64_t state_;
  bool in_phase_ = false;
  WarpCounters counters_;
  HostWarp warp_[kMaxWarps];
  int order_[kMaxWarps];
};

}  // namespace tsl
