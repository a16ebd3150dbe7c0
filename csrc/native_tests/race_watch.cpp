// The race detector's shadow memory and the instrumentation's entry points (see race_watch.h).
// This file must not be compiled with -fsanitize=thread: it is the runtime those calls reach.
#include "race_watch.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace tsl_test {

namespace {
RaceWatch* g_armed = nullptr;
bool g_instrumented = false;
constexpr size_t kPage = 4096;  // bytes of a buffer per lazily made shadow page
}  // namespace

bool instrumented() { return g_instrumented; }

// What one byte has seen since the kernel began: its last write and the reads after it. A
// thread is (warp, lane), -1 meaning every warp or every lane; reads by different threads that
// no barrier separates merge into the smallest such set. Barrier counts are the kernel's own
// (from its launch), those of the access's warp and of the block.
struct RaceWatch::Cell {
  uint32_t write_warp_barriers, write_block_barriers, read_warp_barriers, read_block_barriers;
  int8_t write_warp, write_lane, read_warp, read_lane;
  bool written, read;
  bool write_atomic, read_atomic;  // the last write, and every read since it, were atomics
};

struct RaceWatch::Region {
  std::string name;
  uintptr_t begin, end;
  std::vector<std::unique_ptr<Cell[]>> pages;
  int64_t accesses = 0;
  Cell& cell(uintptr_t address) {
    const size_t at = address - begin;
    std::unique_ptr<Cell[]>& p = pages[at / kPage];
    if (!p) {
      p.reset(new Cell[kPage]);
      std::memset((void*)p.get(), 0, kPage * sizeof(Cell));
    }
    return p[at % kPage];
  }
};

RaceWatch::RaceWatch() = default;
RaceWatch::~RaceWatch() {
  if (g_armed == this) g_armed = nullptr;
}

void RaceWatch::launch(const char* kernel, const Buffer* buffers, int count) {
  kernel_ = kernel;
  regions_.clear();
  last_ = nullptr;
  for (int b = 0; b < count; ++b) {
    if (buffers[b].bytes == 0 || buffers[b].data == nullptr) continue;
    auto r = std::make_unique<Region>();
    r->name = buffers[b].name;
    r->begin = reinterpret_cast<uintptr_t>(buffers[b].data);
    r->end = r->begin + buffers[b].bytes;
    r->pages.resize((buffers[b].bytes + kPage - 1) / kPage);
    regions_.push_back(std::move(r));
  }
  const tsl::HostSchedule& now = tsl::host_schedule;
  block_base_ = now.block_barriers;
  std::copy(now.warp_barriers, now.warp_barriers + tsl::warp::kLanes, warp_base_);
  g_armed = this;
}

void RaceWatch::finish() {
  g_armed = nullptr;
  for (const auto& r : regions_) {
    auto it = std::find_if(per_buffer_.begin(), per_buffer_.end(),
                           [&](const auto& p) { return p.first == r->name; });
    if (it == per_buffer_.end()) per_buffer_.emplace_back(r->name, r->accesses);
    else it->second += r->accesses;
  }
  regions_.clear();
  last_ = nullptr;
}

RaceWatch::Region* RaceWatch::find(uintptr_t address) {
  if (last_ && address >= last_->begin && address < last_->end) return last_;
  for (const auto& r : regions_)
    if (address >= r->begin && address < r->end) return last_ = r.get();
  return nullptr;
}

void RaceWatch::report(const Region& r, uintptr_t address, const char* kind, int other_warp,
                       int other_lane) {
  ++hazard_count_;
  if (first_.size() >= 16) return;
  const tsl::HostSchedule& now = tsl::host_schedule;
  first_.push_back(Hazard{kernel_, r.name, kind, uint64_t(address - r.begin), now.warp, now.lane,
                          other_warp, other_lane});
}

void RaceWatch::access(uintptr_t address, size_t bytes, Access how) {
  const bool write = how == kWrite || how == kAtomicUpdate;
  const bool atomic = how == kAtomicRead || how == kAtomicUpdate;
  const tsl::HostSchedule& now = tsl::host_schedule;
  const int warp = now.warp, lane = now.lane;
  const uint32_t block = uint32_t(now.block_barriers - block_base_);
  const uint32_t own = warp >= 0 ? uint32_t(now.warp_barriers[warp] - warp_base_[warp]) : 0;
  // Whether a barrier that both this thread and the recorded one took part in has passed.
  auto ordered = [&](int w, uint32_t warp_barriers, uint32_t block_barriers) {
    return block > block_barriers || (w >= 0 && w == warp && own > warp_barriers);
  };
  auto same_thread = [&](int w, int l) { return w >= 0 && l >= 0 && w == warp && l == lane; };
  bool reported = false;
  for (size_t k = 0; k < bytes; ++k) {
    Region* r = find(address + k);
    if (r == nullptr) continue;
    if (k == 0 || address + k == r->begin) ++r->accesses, ++watched_;
    Cell& c = r->cell(address + k);
    const char* hazard = nullptr;
    int ow = 0, ol = 0;
    const bool after_write = c.written && !(atomic && c.write_atomic) &&
                             !same_thread(c.write_warp, c.write_lane) &&
                             !ordered(c.write_warp, c.write_warp_barriers, c.write_block_barriers);
    if (write) {
      if (lane < 0 && !atomic) {
        hazard = "write by every lane", ow = warp, ol = lane;
      } else if (after_write) {
        hazard = "write after write", ow = c.write_warp, ol = c.write_lane;
      } else if (c.read && !(atomic && c.read_atomic) && !same_thread(c.read_warp, c.read_lane) &&
                 !ordered(c.read_warp, c.read_warp_barriers, c.read_block_barriers)) {
        hazard = "write after read", ow = c.read_warp, ol = c.read_lane;
      }
      c.written = true;
      c.write_atomic = atomic;
      c.write_warp = int8_t(warp), c.write_lane = int8_t(lane);
      c.write_warp_barriers = own, c.write_block_barriers = block;
      c.read = false;  // later accesses meet this write first
    } else {
      if (after_write) hazard = "read after write", ow = c.write_warp, ol = c.write_lane;
      if (c.read && !same_thread(c.read_warp, c.read_lane) &&
          !ordered(c.read_warp, c.read_warp_barriers, c.read_block_barriers)) {
        // Unordered readers merge: every lane of one warp, or every thread.
        if (c.read_warp != warp) c.read_warp = -1;
        c.read_lane = -1;
        c.read_atomic = c.read_atomic && atomic;
      } else {
        c.read_warp = int8_t(warp), c.read_lane = int8_t(lane);
        c.read_atomic = atomic;
      }
      c.read = true;
      c.read_warp_barriers = own, c.read_block_barriers = block;
    }
    if (hazard && !reported) {
      report(*r, address + k, hazard, ow, ol);
      reported = true;
    }
  }
}

int64_t RaceWatch::watched_accesses(const std::string& buffer) const {
  for (const auto& p : per_buffer_)
    if (p.first == buffer) return p.second;
  return 0;
}

std::string RaceWatch::describe(const Hazard& h) const {
  auto who = [](int w, int l) {
    char s[48];
    if (w < 0) std::snprintf(s, sizeof s, "every thread");
    else if (l < 0) std::snprintf(s, sizeof s, "every lane of warp %d", w);
    else std::snprintf(s, sizeof s, "warp %d lane %d", w, l);
    return std::string(s);
  };
  char s[256];
  std::snprintf(s, sizeof s, "%s: %s at %s+%llu by %s, after %s", h.kernel.c_str(),
                h.kind.c_str(), h.buffer.c_str(), (unsigned long long)h.offset,
                who(h.warp, h.lane).c_str(), who(h.other_warp, h.other_lane).c_str());
  return s;
}

}  // namespace tsl_test

// ---- the instrumentation's entry points (GCC's -fsanitize=thread ABI) --------------------------
// Loads, stores and atomics report to the armed watch, and the atomics then do what they say;
// function entry and exit are not instrumented (--param=tsan-instrument-func-entry-exit=0).
namespace {
bool g_inside = false;  // the watch's own memset (a fresh shadow page) is not the kernel's
using tsl_test::RaceWatch;
inline void seen(const void* p, size_t n, RaceWatch::Access how) {
  if (tsl_test::g_armed == nullptr || g_inside) return;
  g_inside = true;
  tsl_test::g_armed->access(reinterpret_cast<uintptr_t>(p), n, how);
  g_inside = false;
}
constexpr RaceWatch::Access kLoad = RaceWatch::kRead, kStore = RaceWatch::kWrite,
                            kAtomicLoad = RaceWatch::kAtomicRead,
                            kAtomicRmw = RaceWatch::kAtomicUpdate;
}  // namespace

// memcpy, memset and memmove of the linked objects (-Wl,--wrap=...): the instrumentation leaves
// them to the TSan runtime's interceptors, which are not linked.
extern "C" {
void* __real_memcpy(void*, const void*, size_t);
void* __real_memset(void*, int, size_t);
void* __real_memmove(void*, const void*, size_t);
void* __wrap_memcpy(void* d, const void* s, size_t n) {
  seen(s, n, kLoad);
  seen(d, n, kStore);
  return __real_memcpy(d, s, n);
}
void* __wrap_memmove(void* d, const void* s, size_t n) {
  seen(s, n, kLoad);
  seen(d, n, kStore);
  return __real_memmove(d, s, n);
}
void* __wrap_memset(void* d, int c, size_t n) {
  seen(d, n, kStore);
  return __real_memset(d, c, n);
}
}

extern "C" {
void __tsan_init() { tsl_test::g_instrumented = true; }
#define TSL_WATCH_SIZE(n)                                                      \
  void __tsan_read##n(void* p) { seen(p, n, kLoad); }                          \
  void __tsan_write##n(void* p) { seen(p, n, kStore); }                        \
  void __tsan_unaligned_read##n(void* p) { seen(p, n, kLoad); }                \
  void __tsan_unaligned_write##n(void* p) { seen(p, n, kStore); }              \
  void __tsan_volatile_read##n(void* p) { seen(p, n, kLoad); }                 \
  void __tsan_volatile_write##n(void* p) { seen(p, n, kStore); }
TSL_WATCH_SIZE(1)
TSL_WATCH_SIZE(2)
TSL_WATCH_SIZE(4)
TSL_WATCH_SIZE(8)
TSL_WATCH_SIZE(16)
#undef TSL_WATCH_SIZE
void __tsan_read_range(void* p, unsigned long n) { seen(p, n, kLoad); }
void __tsan_write_range(void* p, unsigned long n) { seen(p, n, kStore); }
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}

// Memory orders arrive as the C++ enum's values; every atomic runs sequentially consistent
// (one thread runs the emulation).
#define TSL_ATOMIC(bits, type)                                                                  \
  type __tsan_atomic##bits##_load(const volatile type* a, int) {                                \
    seen((const void*)a, sizeof(type), kAtomicLoad);                                            \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                \
  }                                                                                             \
  void __tsan_atomic##bits##_store(volatile type* a, type v, int) {                             \
    seen((const void*)a, sizeof(type), kAtomicRmw);                                             \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                   \
  }                                                                                             \
  type __tsan_atomic##bits##_exchange(volatile type* a, type v, int) {                          \
    seen((const void*)a, sizeof(type), kAtomicRmw);                                             \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                         \
  }                                                                                             \
  type __tsan_atomic##bits##_fetch_add(volatile type* a, type v, int) {                         \
    seen((const void*)a, sizeof(type), kAtomicRmw);                                             \
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                          \
  }                                                                                             \
  type __tsan_atomic##bits##_fetch_sub(volatile type* a, type v, int) {                         \
    seen((const void*)a, sizeof(type), kAtomicRmw);                                             \
    return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                          \
  }                                                                                             \
  type __tsan_atomic##bits##_fetch_and(volatile type* a, type v, int) {                         \
    seen((const void*)a, sizeof(type), kAtomicRmw);                                             \
    return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                          \
  }                                                                                             \
  type __tsan_atomic##bits##_fetch_or(volatile type* a, type v, int) {                          \
    seen((const void*)a, sizeof(type), kAtomicRmw);                                             \
    return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                           \
  }                                                                                             \
  type __tsan_atomic##bits##_fetch_xor(volatile type* a, type v, int) {                         \
    seen((const void*)a, sizeof(type), kAtomicRmw);                                             \
    return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                          \
  }                                                                                             \
  int __tsan_atomic##bits##_compare_exchange_strong(volatile type* a, type* expected, type v,   \
                                                    int, int) {                                 \
    seen((const void*)a, sizeof(type), kAtomicRmw);                                             \
    return __atomic_compare_exchange_n(a, expected, v, false, __ATOMIC_SEQ_CST,                 \
                                       __ATOMIC_SEQ_CST);                                       \
  }                                                                                             \
  int __tsan_atomic##bits##_compare_exchange_weak(volatile type* a, type* expected, type v,     \
                                                  int, int) {                                   \
    seen((const void*)a, sizeof(type), kAtomicRmw);                                             \
    return __atomic_compare_exchange_n(a, expected, v, false, __ATOMIC_SEQ_CST,                 \
                                       __ATOMIC_SEQ_CST);                                       \
  }                                                                                             \
  type __tsan_atomic##bits##_compare_exchange_val(volatile type* a, type expected, type v, int, \
                                                  int) {                                        \
    seen((const void*)a, sizeof(type), kAtomicRmw);                                             \
    __atomic_compare_exchange_n(a, &expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);    \
    return expected;                                                                            \
  }
TSL_ATOMIC(8, unsigned char)
TSL_ATOMIC(16, unsigned short)
TSL_ATOMIC(32, unsigned int)
TSL_ATOMIC(64, unsigned long long)
#undef TSL_ATOMIC
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) {}
}
