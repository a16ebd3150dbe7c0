// A race detector for the emulated kernels: the host's stand-in for compute-sanitizer's
// racecheck and synccheck, for sessions without a GPU.
//
// The lockstep emulation (warp_host.h) finishes every lane's step before any lane starts the
// next, so code that lets lane A read a word lane B wrote in an earlier step, with no barrier in
// between, gives the right answer on the host and may not on the device: there a warp's lanes
// need not stay together, and only a warp barrier (__syncwarp) or a block barrier
// (__syncthreads) orders one thread's stores before another's loads. Ballots, shuffles and
// reductions exchange registers and order nothing in memory.
//
// test_races is compiled with -fsanitize=thread for its instrumentation alone: the compiler
// calls __tsan_read4(addr), __tsan_write8(addr), ... at every load and store, and this file's
// companion (race_watch.cpp, not instrumented, no TSan runtime linked) defines those calls. While
// a kernel runs, the accesses that fall in its device buffers (DeviceMemoryWatch's buffers) are
// checked against a shadow of each byte: its last writer and its readers since, each with the
// warp and block barrier counts of its time (HostSchedule). A hazard is two accesses to one byte
// by different threads, at least one a write, with no barrier both took part in between:
// read after write, write after write, write after read. Code that every lane runs (warp-uniform
// code, lane -1) reads as all 32 lanes; a write there is 32 writers of one word. Atomics count
// (an atomic is not a race with another atomic, only with a plain access), and so do memcpy,
// memset and memmove calls: the link wraps them (-Wl,--wrap), since the instrumentation leaves
// them to a TSan runtime that is not there. GCC only: Clang's instrumentation calls entry
// points (__tsan_memcpy, ...) that this runtime has not been tried with.
//
// Single-threaded: one watch is armed at a time, in the thread that runs the kernels.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/vr_emulated.h"

namespace tsl_test {

class RaceWatch final : public tsl::DeviceMemoryWatch {
 public:
  struct Hazard {
    std::string kernel, buffer, kind;  // kind: "read after write", ...
    uint64_t offset;                   // byte offset in the buffer
    int warp, lane;                    // this access's thread (-1: every warp / lane)
    int other_warp, other_lane;        // the earlier access's
  };

  RaceWatch();
  ~RaceWatch();
  RaceWatch(const RaceWatch&) = delete;
  RaceWatch& operator=(const RaceWatch&) = delete;

  void launch(const char* kernel, const Buffer* buffers, int count) override;
  void finish() override;

  // How a load or store touches memory. Atomics conflict with plain accesses only: two
  // threads' atomics on one word are not a race.
  enum Access { kRead, kWrite, kAtomicRead, kAtomicUpdate };
  // Called by the instrumentation (race_watch.cpp) for every load, store, atomic and mem* call.
  void access(uintptr_t address, size_t bytes, Access how);

  int64_t hazards() const { return hazard_count_; }
  const std::vector<Hazard>& first_hazards() const { return first_; }  // the first 16
  // Accesses that fell in a buffer: zero would mean the kernels were not instrumented.
  int64_t watched_accesses() const { return watched_; }
  int64_t watched_accesses(const std::string& buffer) const;
  std::string describe(const Hazard& h) const;

 private:
  struct Cell;
  struct Region;
  Region* find(uintptr_t address);
  void report(const Region& r, uintptr_t address, const char* kind, int other_warp,
              int other_lane);

  std::string kernel_;
  std::vector<std::unique_ptr<Region>> regions_;
  Region* last_ = nullptr;
  uint64_t block_base_ = 0;
  uint64_t warp_base_[tsl::warp::kLanes] = {};
  int64_t hazard_count_ = 0, watched_ = 0;
  std::vector<Hazard> first_;
  std::vector<std::pair<std::string, int64_t>> per_buffer_;
};

// Whether this binary's kernels call the watch (compiled with the instrumentation).
bool instrumented();

}  // namespace tsl_test
