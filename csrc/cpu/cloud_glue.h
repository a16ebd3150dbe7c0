// CPU glue shared by the ops' kernels (vr_persistence_cpu.cpp, tsloss_cpu.cpp): per-thread
// engine workspaces, the parallel split of a lone cloud's sweep, and one cloud's distances
// finished from their squares, with their sum and the checks that name the op the user called.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

#include <pthread.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "../checks.h"
#include "../core/pairwise_distance.h"
#include "../core/vr_engine.h"
#include "distance_tiles.h"
#include "distance_grad_tiles.h"

namespace tsloss {
namespace glue {

// at::parallel_for, with two things made independent of which thread ran what:
// - the calling thread's handling of subnormals (x86: MXCSR's flush-to-zero and
//   denormals-are-zero bits; arm64: FPCR's flush-to-zero; torch.set_flush_denormal sets them on
//   the calling thread only) in every task: with the pool's threads left as they were, a
//   flushed call gave subnormal clouds different bits at one and two threads;
// - the error raised: the one of the task that starts first, as one thread would have raised
//   (tasks run their range in order and stop at their first error), not whichever came first.
// Of the errors caught in several threads, the one of the lowest position (keep() inside a catch
// block; rethrow() once the threads are done).
struct FirstError {
  std::mutex lock;
  int64_t at = INT64_MAX;
  std::exception_ptr error;
  void keep(int64_t position) {
    std::lock_guard<std::mutex> hold(lock);
    if (position < at) {
      at = position;
      error = std::current_exception();
    }
  }
  void rethrow() const {
    if (error) std::rethrow_exception(error);
  }
};

template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
#if defined(__x86_64__) || defined(_M_X64)
  constexpr unsigned kSubnormalBits = 0x8040;  // FTZ | DAZ
  const unsigned mode = _mm_getcsr() & kSubnormalBits;
  struct Mode {  // restored however the task ends
    unsigned saved;
    explicit Mode(unsigned m) : saved(_mm_getcsr()) {
      if ((saved & kSubnormalBits) != m) _mm_setcsr((saved & ~kSubnormalBits) | m);
    }
    ~Mode() { _mm_setcsr(saved); }
  };
#elif defined(__aarch64__)
  // FPCR's FZ bit, arm64's flush-to-zero; compiled for arm64 by tests/test_portability.py, not
  // yet run on one.
  constexpr uint64_t kSubnormalBits = uint64_t(1) << 24;
  struct Mode {  // restored however the task ends
    uint64_t saved;
    explicit Mode(uint64_t m) : saved(get()) {
      if ((saved & kSubnormalBits) != m) set((saved & ~kSubnormalBits) | m);
    }
    ~Mode() { set(saved); }
    static uint64_t get() {
      uint64_t v;
      asm volatile("mrs %0, fpcr" : "=r"(v));
      return v;
    }
    static void set(uint64_t v) { asm volatile("msr fpcr, %0" : : "r"(v)); }
  };
  const uint64_t mode = Mode::get() & kSubnormalBits;
#else
  struct Mode {
    explicit Mode(unsigned) {}
  };
  const unsigned mode = 0;
#endif
  FirstError first;
  at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) {
    Mode guard(mode);
    try {
      f(b, e);
    } catch (...) {
      first.keep(b);
    }
  });
  first.rethrow();
}

// Who is asking, for error messages: the function the user called and its points argument.
struct Caller {
  const char* op;
  const char* points;
};

// Buffers of large outputs, kept when a tensor is freed for the next call's output of the same
// size. Outputs above glibc's largest mmap threshold (32 MB) are mapped anew at every call and
// each first write faults: for the (64, 64, 2048) float32 TSLoss gradient at two threads the
// backward ran 2.2x slower than at (56, 64, 2048) (perf: 21 % of the samples zeroing fresh pages
// in the kernel, against 2 %), because glibc reuses the smaller one's memory and not this one's.
// Smaller outputs fault too: glibc trims a freed block at the top of its heap back to the
// kernel, so depending on the heap's layout a training loop's 3 MB TSLoss gradient at
// (16, 768, 64) was faulted in afresh at every step (185-242 minor faults, 1.04-1.22 ms a step
// against 0.79-0.91) or never. So every output past glibc's default mmap threshold (128 KB)
// comes from here.
// A training loop asks for the same sizes every step, so a few buffers serve it. Holds at most
// TSLOSS_CPU_OUTPUT_CACHE_MB (default 256; 0: off) of freed buffers, the oldest dropped first.
class OutputCache {
 public:
  static constexpr size_t kMinBytes = size_t(128) << 10;

  static OutputCache& instance() {
    static OutputCache* cache = new OutputCache();  // never destroyed: tensors may outlive it
    return *cache;
  }

  size_t capacity() const { return capacity_; }
  size_t held() {
    std::lock_guard<std::mutex> lock(mutex_);
    return held_;
  }

  // A buffer of `bytes`, 2 MB-aligned if at least 2 MB (huge pages where the kernel grants
  // them), else page-aligned (64-byte off Linux): a cached one of that size, else on Linux the
  // smallest larger one with its tail unmapped, else a fresh one; nullptr if the allocation
  // failed. A cached buffer's pages are in memory already, where a fresh mapping's are zeroed
  // by the kernel at first touch: with shapes varying at every step, taking none of the larger
  // ones cost 8 % of the run.
  void* take(size_t bytes) {
    void* p = nullptr;
    size_t had = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      size_t pick = free_.size();
      for (size_t k = free_.size(); k-- > 0;) {
        if (free_[k].first == bytes) {
          pick = k;
          break;
        }
#if defined(__linux__)
        if (free_[k].first > bytes && (pick == free_.size() || free_[k].first < free_[pick].first))
          pick = k;
#endif
      }
      if (pick < free_.size()) {
        had = free_[pick].first;
        p = free_[pick].second;
        free_.erase(free_.begin() + pick);
        held_ -= had;
      }
    }
    if (p == nullptr) return allocate(bytes);
#if defined(__linux__)
    // A buffer of 2 MB or more is 2 MB-aligned, so a larger one than asked for is too.
    const size_t keep = whole_pages(bytes), mapped = whole_pages(had);
    if (mapped > keep) munmap(static_cast<char*>(p) + keep, mapped - keep);
#endif
    return p;
  }

  // Called when an output's storage is freed.
  void give(void* p, size_t bytes) {
    std::vector<std::pair<size_t, void*>> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (bytes > capacity_) {
        drop.emplace_back(bytes, p);
      } else {
        while (held_ + bytes > capacity_) {
          drop.push_back(free_.front());
          held_ -= free_.front().first;
          free_.erase(free_.begin());
        }
        free_.emplace_back(bytes, p);
        held_ += bytes;
      }
    }
    for (const auto& d : drop) release(d.second, d.first);
  }

 private:
  static constexpr size_t kHuge = size_t(2) << 20;

  // Mapped from the kernel rather than malloc'd: each free of a block glibc had mapped raised
  // its mmap threshold (up to 32 MB), so torch's later large allocations landed in the heap
  // around the cache's long-lived buffers, where glibc could not trim them. With shapes varying
  // at every step, resident memory stood ~1.6x the cap above the same run without the cache
  // (+454-476 MB at 256 MB, 178-199 MB of it freed heap glibc kept); mapped, a dropped buffer
  // goes back to the kernel whole and moves no threshold.
  static void* allocate(size_t bytes) {
#if defined(__linux__)
    const size_t len = whole_pages(bytes), align = bytes >= kHuge ? kHuge : 0;
    void* m = mmap(nullptr, len + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (m == MAP_FAILED) return nullptr;
    char* p = static_cast<char*>(m);
    if (align == 0) return p;
    char* a = p + (kHuge - reinterpret_cast<uintptr_t>(p) % kHuge) % kHuge;
    if (a > p) munmap(p, a - p);
    munmap(a + len, p + align - a);  // at least a page: p is page-aligned
#if defined(MADV_HUGEPAGE)
    madvise(a, bytes & ~(kHuge - 1), MADV_HUGEPAGE);
#endif
    return a;
#else
    void* p = nullptr;
    return posix_memalign(&p, bytes >= kHuge ? kHuge : 64, bytes) == 0 ? p : nullptr;
#endif
  }

  static void release(void* p, size_t bytes) {
#if defined(__linux__)
    munmap(p, whole_pages(bytes));
#else
    (void)bytes;
    free(p);
#endif
  }

#if defined(__linux__)
  static size_t whole_pages(size_t bytes) {
    static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return (bytes + page - 1) / page * page;
  }
#endif

  // A misspelt setting is refused, not read as 0 (off) or a prefix ("1e3": 1 MB); the check
  // runs at every large output until the constructor succeeds.
  OutputCache() {
    constexpr long long kMostMb = 1ll << 20;  // 1 TB; more would overflow the shift
    const char* v = std::getenv("TSLOSS_CPU_OUTPUT_CACHE_MB");
    long long mb = 256;
    if (v != nullptr && *v != '\0') {
      char* end = nullptr;
      errno = 0;
      mb = std::strtoll(v, &end, 10);  // digits only: strtoll takes " 5" and "+5"
      TSL_CHECK(*v >= '0' && *v <= '9' && *end == '\0' && errno == 0 && mb <= kMostMb,
                "TSLOSS_CPU_OUTPUT_CACHE_MB must be a whole number of MB, 0 (off) to ",
                int64_t(kMostMb), ", got '", v, "'");
    }
    capacity_ = static_cast<size_t>(mb) << 20;
    // A fork while another thread held mutex_ left the child's copy locked for good (its first
    // large output, or a freed one, hung): the fork waits for the mutex and both sides free it.
    pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                   [] { instance().mutex_.unlock(); });
  }

  std::mutex mutex_;
  std::vector<std::pair<size_t, void*>> free_;  // oldest first
  size_t held_ = 0;
  size_t capacity_ = 0;
};

// A cached buffer as a storage's data: given back to the cache when the storage frees it.
struct CachedBlock {
  void* p;
  size_t bytes;
  static void give_back(void* ctx) {
    const CachedBlock* b = static_cast<const CachedBlock*>(ctx);
    OutputCache::instance().give(b->p, b->bytes);
    delete b;
  }
};

// A contiguous tensor for a kernel that writes all of it (contents undefined until then). Large
// ones come from OutputCache; the rest from torch's allocator. The storage stays resizable, as
// any CPU tensor's (resize_, out= arguments): a resize takes torch's CPU allocator and gives
// the cached buffer back (at::from_blob's storage refused every resize).
inline at::Tensor empty_written(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) *
                       c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  if (bytes < OutputCache::kMinBytes) return at::empty(sizes, options);
  OutputCache& cache = OutputCache::instance();  // reads the setting at the first large output
  if (cache.capacity() == 0) return at::empty(sizes, options);
  // The context first: were its allocation to throw, no buffer taken would be lost.
  std::unique_ptr<CachedBlock> block(new CachedBlock{nullptr, bytes});
  void* p = cache.take(bytes);
  if (p == nullptr) return at::empty(sizes, options);  // let torch's allocator say why
  block->p = p;
  c10::DataPtr data(p, block.release(), &CachedBlock::give_back, c10::Device(c10::kCPU));
  c10::Storage storage(c10::Storage::use_byte_size_t(), bytes, std::move(data),
                       c10::GetCPUAllocator(), /*resizable=*/true);
  return at::empty({0}, options).set_(std::move(storage), 0, sizes);
}

// Cloud b's slots in vr_persistence's outputs (h0 (B, N-1, 2), h0_edges (B, N-1, 2), h1 (B, K, 2),
// h1_edges (B, K, 4), h1_count (B,), truncated (B,); checks.h's empty_diagrams).
template <typename T>
tsl::CloudOutput<T> cloud_output(const at::Tensor& h0, const at::Tensor& h0_edges,
                                 const at::Tensor& h1, const at::Tensor& h1_edges,
                                 const at::Tensor& h1_count, const at::Tensor& truncated,
                                 int64_t b) {
  const int64_t H0 = h0.size(1), K = h1.size(1);
  return {h0.data_ptr<T>() + b * H0 * 2,       h0_edges.data_ptr<int64_t>() + b * H0 * 2,
          h1.data_ptr<T>() + b * K * 2,        h1_edges.data_ptr<int64_t>() + b * K * 4,
          h1_count.data_ptr<int64_t>() + b,    truncated.data_ptr<bool>() + b,
          K};
}

// Clouds per parallel task so that each task does at least ~32k units of work.
inline int64_t cloud_grain(int64_t work_per_cloud) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_cloud));
}

// Pair weights w_ij / d_ij for the tiles, which sum in T. Clouds far from unit scale (float32
// distances of 1e-30 or 1e25, float64 ones past 1e+-150) have weights past T's range, which
// the tiles turned into Inf, NaN or 0; such a cloud's weights are scaled by 2^k into it and
// pair_gradients scales the gradient back. A power of two changes no rounding where the values
// stay normal. The quotient is taken in double and rounded to T once (for float w and d that is
// float division's own result), so a cloud whose largest weight lies within 2^+-kSafe keeps
// its bits, at the cost of a max per pair.
struct PairValue {
  double w, d;
};

// Writes W[i * n4 + j] = pair(i, j).w / pair(i, j).d for j < i < n (pairs with d <= 0 are left
// alone: zero), times 2^k; returns k.
template <typename T, class Pair>
int fill_pair_weights(int64_t n, int64_t n4, T* W, const Pair& pair) {
  constexpr int kSafe = sizeof(T) == 4 ? 60 : 500;
  double top = 0.0;
  bool weighs = false;  // a w != 0: a top of 0 is then an underflow, not a cloud without weight
  for (int64_t i = 1; i < n; ++i)
    for (int64_t j = 0; j < i; ++j) {
      const PairValue p = pair(i, j);
      if (!(p.d > 0.0)) continue;
      const double q = p.w / p.d, a = std::fabs(q);
      W[i * n4 + j] = static_cast<T>(q);
      top = a > top ? a : top;
      weighs |= p.w != 0.0;
    }
  const double safe = std::ldexp(1.0, kSafe);
  if (top <= safe && (top >= 1.0 / safe || !weighs)) return 0;
  // The largest exponent of a weight (finite w and d; each ilogb in [-1074, 1023]).
  int e = INT_MIN;
  for (int64_t i = 1; i < n; ++i)
    for (int64_t j = 0; j < i; ++j) {
      const PairValue p = pair(i, j);
      if (p.d > 0.0 && p.d < INFINITY && p.w != 0.0 && std::isfinite(p.w))
        e = std::max(e, std::ilogb(p.w) - std::ilogb(p.d));
    }
  if (e == INT_MIN || (e <= kSafe && e >= -kSafe)) return 0;
  const int k = -e;
  for (int64_t i = 1; i < n; ++i)
    for (int64_t j = 0; j < i; ++j) {
      const PairValue p = pair(i, j);
      if (!(p.d > 0.0)) continue;
      if (!(p.d < INFINITY)) {
        W[i * n4 + j] = T(0);
        continue;
      }
      int ew, ed;
      const double mw = std::frexp(p.w, &ew), md = std::frexp(p.d, &ed);
      W[i * n4 + j] = static_cast<T>(std::ldexp(mw / md, ew - ed + k));
    }
  return k;
}

// An addend of one pair's numerator: g added to (or, where minus, subtracted from) pair {i, j},
// j < i, at pair = i * n4 + j. A subtraction rather than the add of -g, as the numerators' old
// matrix compiled it: the two differ in the sign of a NaN g's result.
struct PairTerm {
  int64_t pair;
  double g;
  bool minus;
};

// fill_pair_weights for numerators w_ij = w + the terms of pair {i, j} in the order given (as a
// double matrix of w with each term added in turn would hold them), distances d (n x n, T):
// the same weights, bits and scale k. Most pairs have no term (TSLoss: the dense scale weight on
// every pair, the bars' weights on ~3n edges), so their quotients run as vectors
// (cpu::uniform_weight_rows) and the few with terms are redone one by one. The bound on the
// largest quotient that the vector pass gives (edge pairs counted with w alone too) is exact
// enough to keep the scale at zero when it lies well inside the safe range, and an edge pair
// within it shows that the largest is not below it; otherwise (extreme scales, no edge) the
// scalar fill_pair_weights decides, over a matrix of the numerators. terms: reordered.
template <typename T>
int fill_uniform_pair_weights(int64_t n, int64_t n4, T* W, double w, const T* d,
                              std::vector<PairTerm>& terms) {
  constexpr int kSafe = sizeof(T) == 4 ? 60 : 500;
  const double safe = std::ldexp(1.0, kSafe);
  const double top = cpu::uniform_weight_rows(n, n4, d, w, W);
  std::stable_sort(terms.begin(), terms.end(),
                   [](const PairTerm& a, const PairTerm& b) { return a.pair < b.pair; });
  double top_terms = 0.0;
  int64_t groups = 0;
  for (size_t t = 0; t < terms.size();) {
    const int64_t p = terms[t].pair;
    double sum = w;
    for (; t < terms.size() && terms[t].pair == p; ++t)
      sum = terms[t].minus ? sum - terms[t].g : sum + terms[t].g;
    terms[groups++] = PairTerm{p, sum, false};  // each group's numerator, in pair order
    const double dp = static_cast<double>(d[(p / n4) * n + p % n4]);
    if (!(dp > 0.0)) continue;
    const double q = sum / dp, a = std::fabs(q);
    W[p] = static_cast<T>(q);
    top_terms = a > top_terms ? a : top_terms;
  }
  terms.resize(groups);
  if (top <= safe && top_terms <= safe && top_terms >= 1.0 / safe) return 0;
  return fill_pair_weights(n, n4, W, [&](int64_t i, int64_t j) {
    const int64_t p = i * n4 + j;
    const auto at = std::lower_bound(terms.begin(), terms.end(), p,
                                     [](const PairTerm& a, int64_t v) { return a.pair < v; });
    const double num = at != terms.end() && at->pair == p ? at->g : w;
    return PairValue{num, static_cast<double>(d[i * n + j])};
  });
}

// The gradient on the points of a function of the distances, for every cloud of x (B, N, D):
// gx_i = sum_j W_ij (x_i - x_j), W symmetric, by the pair tiles (cpu/distance_grad_tiles.h, one
// visit per unordered pair). weights(b, W) writes cloud b's W_ij below the diagonal
// (W[i * n4 + j], j < i < N, n4 = N rounded up to 4) into W, zero elsewhere on entry, scaled by
// 2^k (fill_pair_weights), and returns k. With at least two clouds per thread each task takes
// whole clouds; otherwise each cloud's coordinate chunks are shared out. Neither the split nor
// the thread count changes a sum's order.
template <typename T, class Weights>
void pair_gradients(const T* px, int64_t B, int64_t N, int64_t D, T* po, const Weights& weights) {
  if (B == 0 || N == 0 || D == 0) return;  // no chunk to run (the callers return earlier)
  const int64_t n4 = (N + 3) / 4 * 4;
  const int64_t threads = at::get_num_threads();
  const bool per_cloud = B >= 2 * threads;
  int64_t chunk = cpu::grad_chunk(sizeof(T));
  // Few clouds share out their chunks: at least one per thread, even if narrower (the chunk
  // width changes no sum's order).
  if (!per_cloud) chunk = std::min(chunk, std::max<int64_t>(16, (D / threads) & ~int64_t(15)));
  const int64_t chunks = (D + chunk - 1) / chunk;
  auto fill = [&](int64_t b, T* W) -> int {
    std::fill(W, W + n4 * n4, T(0));
    return weights(b, W);
  };
  // Chunk c of cloud b under W (scaled by 2^k); meanwhile chunk nc of cloud nb is prefetched
  // (nb < 0: none).
  auto run_chunk = [&](int64_t b, int64_t c, const T* W, int k, T* scratch, int64_t nb,
                       int64_t nc) {
    const int64_t nk = nc * chunk, k0 = c * chunk, kc = std::min(chunk, D - k0);
    cpu::pair_grad_chunk(px + b * N * D, N, D, W, n4, k0, kc, scratch, po + b * N * D,
                         nb < 0 ? nullptr : px + nb * N * D + nk,
                         nb < 0 ? nullptr : po + nb * N * D + nk,
                         nb < 0 ? 0 : std::min(chunk, D - nk));
    if (k == 0) return;
    for (int64_t i = 0; i < N; ++i)
      for (T* g = po + b * N * D + i * D + k0, *e = g + kc; g < e; ++g)
        *g = static_cast<T>(std::ldexp(static_cast<double>(*g), -k));
  };
  if (per_cloud) {
    glue::parallel_for(0, B, cloud_grain(N * N * D), [&](int64_t begin, int64_t end) {
      cpu::LineVector<T> W(n4 * n4), scratch(2 * n4 * chunk);
      for (int64_t b = begin; b < end; ++b) {
        const int k = fill(b, W.data());
        // The next chunk is this cloud's, or the next cloud's first in this task.
        for (int64_t c = 0; c + 1 < chunks; ++c)
          run_chunk(b, c, W.data(), k, scratch.data(), b, c + 1);
        run_chunk(b, chunks - 1, W.data(), k, scratch.data(), b + 1 < end ? b + 1 : -1, 0);
      }
    });
    return;
  }
  std::vector<T> W(n4 * n4);
  // A task takes ~2^18 pair-coordinate terms at least: less was slower to share out than to
  // run (one prompt of N = 8 took 9.7 us at two threads, 7.5 at one; N = 16, D = 768 14.2
  // and 12.7).
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, N * N * chunk));
  for (int64_t b = 0; b < B; ++b) {
    const int k = fill(b, W.data());
    glue::parallel_for(0, chunks, grain, [&](int64_t begin, int64_t end) {
      cpu::LineVector<T> scratch(2 * n4 * chunk);
      for (int64_t c = begin; c < end; ++c)
        run_chunk(b, c, W.data(), k, scratch.data(), c + 1 < end ? b : -1, c + 1);
    });
  }
}

// Each thread keeps its engine workspace across calls: a training loop calls the op every step,
// and allocating (and page-faulting) the buffers anew costs more than a small cloud's whole
// persistence. A workspace that grew past cpu::kKeepScratch entries for an unusually large cloud
// is dropped after the call rather than held for the life of the thread.
template <typename T>
tsl::HostWorkspace<T>& thread_workspace() {
  thread_local tsl::HostWorkspace<T> ws;
  return ws;
}

// Runs the chunks of a split apparent-pair sweep on torch's threads.
struct ParallelChunks {
  template <class Body>
  void operator()(int64_t chunks, const Body& body) const {
    glue::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) body(c);
    });
  }
};

template <typename T>
void trim_thread_workspace(tsl::HostWorkspace<T>& ws) {
  if (ws.heap_capacity > cpu::kKeepScratch || ws.vheap_capacity > cpu::kKeepScratch ||
      ws.arena_capacity > cpu::kKeepScratch ||
      int64_t(ws.pivot_keys.size()) > cpu::kKeepScratch)
    ws = tsl::HostWorkspace<T>();
}

// Row blocks of 4 points; a work unit pairs block q with block nb-1-q so that every unit of the
// triangle costs about the same.
constexpr int64_t kRowBlock = 4;

// Distances of rows [i0, i1) of cloud b (x: (N, D)) to all earlier rows, from their squares
// sq[(i - i0) * N + j], written to both triangles of out (N, N) with the diagonal. A
// non-finite result is traced back to its cause (non-finite input, or a distance the dtype
// cannot hold) and reported in the name of `op`, the op the user called: no NaN leaves it.
// Adds the rounded distances to *sum (when given) in row order, i then j ascending: one running
// sum, the same bits as a plain loop over the finished matrix (TSLoss's scale), however the rows
// were blocked.
template <typename T>
void finish_distance_rows(const T* x, int64_t N, int64_t D, int64_t i0, int64_t i1, int64_t b,
                          const double* sq, T* out, const Caller& op, double* sum_out = nullptr) {
  double sum = sum_out ? *sum_out : 0.0;
  for (int64_t i = i0; i < i1; ++i) {
    out[i * N + i] = T(0);
    const double* si = sq + (i - i0) * N;
    for (int64_t j = 0; j < i; ++j) {
      const double dist = tsl::distance_from_square(si[j], x + i * D, x + j * D, D);
      const T v = static_cast<T>(dist);
      if (!std::isfinite(v)) {
        for (int64_t p : {j, i})
          for (int64_t k = 0; k < D; ++k)
            TSL_CHECK(std::isfinite(x[p * D + k]), op.op, ": ", op.points, " contains NaN or Inf ",
                        "(point ", p, " of cloud ", b, ", coordinate ", k,
                        "); distances and persistence of non-finite points are undefined");
        TSL_CHECK(sizeof(T) != 4, op.op, ": the distance between points ", j,
                    " and ", i, " of cloud ", b, " (", dist, ") overflows float32; pass float64 "
                    "points");
        TSL_CHECK(false, op.op, ": the distance between points ", j, " and ", i,
                    " of cloud ", b, " exceeds the float64 range");
      }
      out[i * N + j] = v;
      out[j * N + i] = v;
      sum += static_cast<double>(v);
    }
  }
  if (sum_out) *sum_out = sum;
}

// The same, computing the squares into sq ((i1 - i0) * N doubles of scratch).
template <typename T>
void distance_rows(const T* x, int64_t N, int64_t D, int64_t i0, int64_t i1, int64_t b,
                   double* sq, T* out, const Caller& op, double* sum = nullptr) {
  cpu::squared_distance_lower_rows(x, N, D, i0, i1, sq);
  finish_distance_rows(x, N, D, i0, i1, b, sq, out, op, sum);
}

// All distances of one cloud, serially (the caller parallelises over clouds): whole-cloud tiles
// for small clouds, else row blocks with a scratch of kRowBlock rows.
template <typename T>
void cloud_distances(const T* x, int64_t N, int64_t D, int64_t b, std::vector<double>& sq,
                     T* out, const Caller& op, double* sum = nullptr) {
  if constexpr (std::is_same<T, float>::value) {
    if (cpu::certify_float_distances(N, D)) {
      sq.resize(N * N);
      cpu::certified_squares_lower(x, N, D, sq.data());  // same floats, fewer operations
      finish_distance_rows(x, N, D, 0, N, b, sq.data(), out, op, sum);
      return;
    }
  }
  if (cpu::whole_cloud_tiles(N)) {
    sq.resize(N * N);
    cpu::squared_distance_lower(x, N, D, sq.data());
    finish_distance_rows(x, N, D, 0, N, b, sq.data(), out, op, sum);
    return;
  }
  sq.resize(kRowBlock * N);
  for (int64_t i0 = 0; i0 < N; i0 += kRowBlock)
    distance_rows(x, N, D, i0, std::min(N, i0 + kRowBlock), b, sq.data(), out, op, sum);
  cpu::release_row_scratch();
}

// Row-block units of the n-row lower triangles of B clouds, with balanced work: unit q of a
// cloud takes its row blocks q and blocks - 1 - q (rows of block r hold about r times the pairs
// of block 0). f(b, i0, i1) per block, in parallel, at least `grain` units a task. An error is
// that of the first block in (cloud, row) order, as the whole clouds' row-ordered path raises
// it: a unit runs its last block before the next unit's first.
template <class F>
void for_balanced_row_blocks(int64_t B, int64_t n, int64_t rows_per_block, const F& f,
                             int64_t grain = 1) {
  const int64_t blocks = (n + rows_per_block - 1) / rows_per_block;
  const int64_t units = (blocks + 1) / 2;
  FirstError first;
  glue::parallel_for(0, B * units, grain, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t b = u / units, q = u % units;
      for (int64_t block : {q, blocks - 1 - q}) {
        try {
          f(b, block * rows_per_block, std::min(n, (block + 1) * rows_per_block));
        } catch (...) {
          first.keep(b * blocks + block);
        }
        if (block == blocks - 1 - q) break;  // the middle block of an odd count, done once
      }
    }
    cpu::release_row_scratch();  // the row kernel's, if this task grew it large
  });
  first.rethrow();
}

// The float32 distances of B clouds, fewer than twice the threads (a training step's one
// prompt), by the certified route (cpu::certified_squares_lower's) with every thread: each task
// sums the Gram products of one cloud over one range of its coordinates (the ranges' sums add
// in any order: the bound allows it), then row blocks of all clouds are summed, certified and
// finished in parallel. The canonical row blocks ran 2.4x slower per cloud than whole clouds on
// the certified route (one (64, 4096) cloud at 2 threads, AVX2: 0.58 ms, against 0.24 ms per
// cloud in a batch of 4). A cloud with more than an eighth of its pairs uncertified takes
// rows(b, i0, i1), the canonical rows, in the same pass of row blocks as the others' finish, so
// that an error is the first in (cloud, row) order. Clouds go in groups whose partial sums (an
// N x N matrix per cloud and part) fit kSplitDoubles.
constexpr int64_t kSplitDoubles = int64_t(1) << 23;  // 64 MiB

template <class Rows>
void split_certified_group(const float* x, int64_t b0, int64_t B, int64_t N, int64_t D,
                           float* out, const Caller& op, const Rows& rows, int64_t grain) {
  const int64_t threads = at::get_num_threads();
  const int64_t parts = std::max<int64_t>(
      1, std::min({(threads + B - 1) / B, D / cpu::kChunk, kSplitDoubles / (B * N * N)}));
  // Kept by the calling thread across calls (a training step calls this every step, and fresh
  // buffers would be page-faulted in each time) unless large, an error passing through or not.
  // Lambdas see another thread's copies under these names (thread_local is not captured): they
  // use the pointers.
  thread_local std::vector<float> centre_buf;
  thread_local std::vector<double> partial_buf, norms_buf;
  struct KeepSmall {
    ~KeepSmall() {
      cpu::keep_small(partial_buf);
      cpu::keep_small(centre_buf);
    }
  } keep_small;
  centre_buf.resize(B * D);
  partial_buf.resize(B * parts * N * N);
  norms_buf.resize(B * N);
  float* centre = centre_buf.data();
  double* partial = partial_buf.data();  // cloud b, part p: partial + (b * parts + p) * N * N
  double* norms = norms_buf.data();
  std::vector<std::atomic<int64_t>> doubtful(B);
  for (int64_t b = 0; b < B; ++b) {
    cpu::certify_centre_rows(x + b * N * D, N, D, centre + b * D);
    doubtful[b] = 0;
  }
  auto bound = [&](int64_t p) {
    return p == parts ? D : p * D / parts / cpu::kChunk * cpu::kChunk;
  };
  glue::parallel_for(0, B * parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / parts, p = t % parts;
      cpu::gram_sums_lower(x + b * N * D, N, D, bound(p), bound(p + 1) - bound(p),
                           centre + b * D, partial + t * N * N);
    }
  });
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < N; ++i) {
      double n2 = 0.0;
      for (int64_t p = 0; p < parts; ++p) n2 += partial[(b * parts + p) * N * N + i * N + i];
      norms[b * N + i] = n2;
    }
  for_balanced_row_blocks(B, N, 8, [&](int64_t b, int64_t i0, int64_t i1) {
    double* sq = partial + b * parts * N * N;
    for (int64_t p = 1; p < parts; ++p)
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = 0; j < i; ++j) sq[i * N + j] += sq[p * N * N + i * N + j];
    doubtful[b] += cpu::certify_rows(sq, norms + b * N, N, D, i0, i1);
  });
  std::vector<char> done(B);
  for (int64_t b = 0; b < B; ++b) done[b] = doubtful[b] * 8 <= N * (N - 1) / 2;
  for_balanced_row_blocks(B, N, kRowBlock, [&](int64_t b, int64_t i0, int64_t i1) {
    if (!done[b]) return rows(b0 + b, i0, i1);
    const float* xb = x + b * N * D;
    double* sq = partial + b * parts * N * N;
    cpu::recompute_doubtful_rows(xb, N, D, i0, i1, sq);
    finish_distance_rows(xb, N, D, i0, i1, b0 + b, sq + i0 * N, out + b * N * N, op);
  }, grain);
}

// The distances of few clouds: float32 clouds by the certified split where the route applies
// (cpu::certify_float_distances, as cloud_distances decides for whole clouds), all others by
// rows(b, i0, i1), the canonical rows, in balanced row blocks of all clouds, so that one large
// cloud keeps every thread busy.
template <class Rows>
void few_cloud_distances(const float* x, int64_t B, int64_t N, int64_t D, float* out,
                         const Caller& op, const Rows& rows, int64_t grain) {
  if (!cpu::certify_float_distances(N, D))
    return for_balanced_row_blocks(B, N, kRowBlock, rows, grain);
  const int64_t group = std::max<int64_t>(1, kSplitDoubles / (N * N));
  for (int64_t b0 = 0; b0 < B; b0 += group)
    split_certified_group(x + b0 * N * D, b0, std::min(group, B - b0), N, D, out + b0 * N * N,
                          op, rows, grain);
}

// float64 keeps the canonical sums (no bound certifies them).
template <class Rows>
void few_cloud_distances(const double*, int64_t B, int64_t N, int64_t, double*, const Caller&,
                         const Rows& rows, int64_t grain) {
  for_balanced_row_blocks(B, N, kRowBlock, rows, grain);
}

// Distances (B, N, N) of points x (B, N, D) float32/float64, as the pairwise_distance op computes
// them (parallel over clouds, or over row blocks for few clouds), with its checks reported in
// the name of `op`. Defined in vr_persistence_cpu.cpp.
at::Tensor distances(const at::Tensor& x, const Caller& op);

// Clouds of fewer than two points have no distance to carry a non-finite coordinate to
// finish_distance_rows, which reports it for all others: their coordinates are checked here.
template <typename T>
void check_lone_points(const T* x, int64_t B, int64_t N, int64_t D, const Caller& op) {
  if (N >= 2) return;
  for (int64_t k = 0; k < B * N * D; ++k)
    TSL_CHECK(std::isfinite(x[k]), op.op, ": ", op.points, " contains NaN or Inf (cloud ",
                k / std::max<int64_t>(N * D, 1), "); persistence of non-finite points is undefined");
}

// A user's distance matrix is read through its upper triangle, entries (j, i) with j < i, as
// ripser.py reads it (a lower-triangle reading differs on a matrix symmetric only up to
// rounding, and so does giotto-ph 0.2.4, which gave one such 4-cycle an infinite H1 bar); it must be finite, non-negative, zero on the diagonal and
// symmetric up to rounding. Errors name cloud `b` of the batch and the entry as the user indexes
// it (the upper one, unless only the lower is bad). A -0 entry is read as +0 (as on CUDA), so
// that no -0 death comes out of a matrix equal to one without it.
template <typename T>
void symmetric_from_upper(const T* in, int64_t n, int64_t b, T* out) {
  for (int64_t i = 0; i < n; ++i) {
    TSL_CHECK(in[i * n + i] == T(0), "vr_persistence: distance matrix of cloud ", b,
                " has non-zero diagonal entry ", in[i * n + i], " at (", i, ", ", i,
                "); a distance matrix is zero there (torch.cdist leaves rounding error: zero "
                "it with m.diagonal(dim1=-2, dim2=-1).zero_(), or pass the points)");
    out[i * n + i] = T(0);
    for (int64_t j = 0; j < i; ++j) {
      const T up = in[j * n + i], lo = in[i * n + j];
      const bool up_ok = std::isfinite(up);
      TSL_CHECK(up_ok && std::isfinite(lo), "vr_persistence: distance matrix of cloud ", b,
                  " contains NaN or Inf at (", up_ok ? i : j, ", ", up_ok ? j : i, ")");
      TSL_CHECK(up >= T(0), "vr_persistence: distance matrix of cloud ", b,
                  " has negative entry ", up, " at (", j, ", ", i, ")");
      const T scale = std::abs(lo) > std::abs(up) ? std::abs(lo) : std::abs(up);
      TSL_CHECK(std::abs(lo - up) <= T(1e-4) * scale, "vr_persistence: distance matrix of cloud ",
                  b, " is not symmetric: entry (", j, ", ", i, ") = ", up, " but (", i, ", ",
                  j, ") = ", lo, "; it must be, up to rounding (a triangle alone: m + m.mT)");
      out[i * n + j] = up + T(0);  // -0 as +0: the same diagrams' bits for equal matrices
      out[j * n + i] = up + T(0);
    }
  }
}

}  // namespace glue
}  // namespace tsloss
