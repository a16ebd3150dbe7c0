// Raw CUDA kernels run on the host, for the kernels not written on the warp contract
// (core/warp.h): each thread of a block is a fiber (ucontext) on one OS thread, so a kernel
// header compiles unchanged with g++ and runs with the device's semantics for what it uses:
// __syncthreads, __syncthreads_or, full-warp __shfl_xor_sync / __shfl_down_sync, __shared__
// arrays, the _rn intrinsics (no contraction: the native build has -ffp-contract=off).
//
// Fibers run one at a time up to their next barrier or shuffle; with a seed, in a random order
// in which a warp may run ahead of the others between block barriers (odd seeds: one warp
// always does): shared-memory writes and reads that a missing barrier leaves unordered give
// seed-dependent results, which the tests compare. What the device forbids is refused with an
// abort naming it: a shuffle by part of a warp (a lane exited or waits at a block barrier), a
// partial mask.
//
// One block at a time, so `__shared__` is `static`: a kernel's shared arrays are shared by the
// block's fibers and, as on the device, hold the previous block's values until written. Blocks
// run in index order with seed 0, in reverse with seeds 1 mod 4 and in a seeded random order
// otherwise, since the device promises none (a grid's last block to finish need not be its last
// index); atomicAdd and __threadfence are then plain, as one block runs at a time.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#ifdef __CUDACC__
#error "cuda_host.h is the host's stand-in for CUDA; nvcc has the real one"
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace cuda_host {

[[noreturn]] inline void refuse(const char* what) {
  std::fprintf(stderr, "cuda_host: %s\n", what);
  std::abort();
}

enum class State { kRun, kBlockWait, kWarpWait, kDone };

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  State state = State::kRun;
  unsigned tid = 0;
  unsigned shuffles = 0;  // this thread's shuffles so far: picks the exchange buffer
};

struct Block {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  std::function<void()> kernel;
  int current = -1;
  int or_pending = 0, or_result = 0;  // __syncthreads_or
  std::vector<uint64_t> slots[2];     // shuffle exchange, alternating per shuffle
  uint64_t switches = 0;
};

inline Block& block() {
  static Block b;
  return b;
}

}  // namespace cuda_host

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace cuda_host {

inline void yield(State s) {
  Block& b = block();
  Fiber& f = b.fibers[b.current];
  f.state = s;
  swapcontext(&f.ctx, &b.scheduler);
}

inline void fiber_entry() {
  Block& b = block();
  b.kernel();
  b.fibers[b.current].state = State::kDone;
  // returning resumes uc_link, the scheduler
}

// Apart from run_block: getcontext returns twice, and GCC then doubts run_block's locals.
__attribute__((noinline)) inline void start_fiber(Fiber& f, unsigned tid, ucontext_t* back) {
  constexpr size_t kStack = size_t(64) << 10;
  if (f.stack.size() < kStack) f.stack.assign(kStack, 0);
  f.state = State::kRun;
  f.tid = tid;
  f.shuffles = 0;
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack.data();
  f.ctx.uc_stack.ss_size = f.stack.size();
  f.ctx.uc_link = back;
  makecontext(&f.ctx, fiber_entry, 0);
}

// Runs blockIdx's block of `kernel` to its end; seed 0 runs the fibers in thread order.
inline void run_block(unsigned threads, uint64_t seed, const std::function<void()>& kernel) {
  Block& b = block();
  if (b.fibers.size() < threads) b.fibers.resize(threads);
  b.kernel = kernel;
  b.or_pending = b.or_result = 0;
  for (auto& s : b.slots) s.assign(threads, 0);
  // Fibers ready to run. Seed 0 takes them first in, first out (lockstep, warp by warp);
  // another seed picks at random, so a warp whose 32 lanes met at a shuffle may run ahead of
  // lanes of other warps that have not left the last barrier, as on the device.
  std::vector<int> ready;
  for (unsigned t = 0; t < threads; ++t) {
    start_fiber(b.fibers[t], t, &b.scheduler);
    ready.push_back(int(t));
  }
  std::vector<int> at_shuffle((threads + 31) / 32, 0);
  unsigned at_barrier = 0, done = 0;
  size_t head = 0;  // seed 0: ready[head..] in order
  std::mt19937_64 rng(seed);
  // Odd seeds favour one warp between block barriers: its lanes run whenever ready, so it
  // reaches its next barrier before the other warps leave the last one (the schedule that
  // finds a missing barrier before a shared word's reuse, which random picks rarely make).
  const unsigned warps = (threads + 31) / 32;
  int favoured = (seed & 1) ? int(rng() % warps) : -1;
  for (;;) {
    while (head < ready.size()) {
      int t;
      size_t pick = ready.size();
      if (favoured >= 0)
        for (size_t r = head; r < ready.size() && pick == ready.size(); ++r)
          if (ready[r] / 32 == favoured) pick = r;
      if (seed) {
        if (pick == ready.size()) pick = head + rng() % (ready.size() - head);
        t = ready[pick];
        ready[pick] = ready.back();
        ready.pop_back();
      } else {
        t = ready[head++];
      }
      b.current = t;
      threadIdx = dim3(t % blockDim.x, (t / blockDim.x) % blockDim.y,
                       t / (blockDim.x * blockDim.y));
      ++b.switches;
      swapcontext(&b.scheduler, &b.fibers[t].ctx);
      const State st = b.fibers[t].state;
      if (st == State::kDone) ++done;
      if (st == State::kBlockWait) ++at_barrier;
      if (st == State::kWarpWait && ++at_shuffle[t / 32] == 32) {
        at_shuffle[t / 32] = 0;
        for (int l = 0; l < 32; ++l) {
          b.fibers[(t & ~31) + l].state = State::kRun;
          ready.push_back((t & ~31) + l);
        }
      }
    }
    b.current = -1;
    ready.clear();
    head = 0;
    for (int n : at_shuffle)
      if (n) refuse("a shuffle that part of the warp did not reach (full mask)");
    if (done == threads) return;
    if (at_barrier + done != threads) refuse("no fiber can run");
    // Threads that exited count as arrived, as on sm_70 and later.
    at_barrier = 0;
    if (favoured >= 0) favoured = int(rng() % warps);
    b.or_result = b.or_pending;
    b.or_pending = 0;
    for (unsigned t = 0; t < threads; ++t)
      if (b.fibers[t].state == State::kBlockWait) {
        b.fibers[t].state = State::kRun;
        ready.push_back(int(t));
      }
  }
}

// Every block of grid, each with blockDim threads: in index order (seed 0), in reverse (seeds 1
// mod 4: block 0 last, whatever the standard library's shuffle) or in a random order drawn from
// the seed.
inline void launch(dim3 grid, dim3 block_dim, uint64_t seed, const std::function<void()>& kernel) {
  gridDim = grid;
  blockDim = block_dim;
  const unsigned threads = block_dim.x * block_dim.y * block_dim.z;
  if (threads == 0 || threads > 1024 || threads % 32) refuse("blocks of whole warps, <= 1024");
  std::vector<dim3> order;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) order.push_back(dim3(x, y, z));
  if (seed % 4 == 1) {
    std::reverse(order.begin(), order.end());
  } else if (seed) {
    std::mt19937_64 rng(seed);
    std::shuffle(order.begin(), order.end(), rng);
  }
  for (const dim3& at : order) {
    blockIdx = at;
    run_block(threads, seed ? seed * 0x9E3779B97F4A7C15ull + (uint64_t(at.z) << 40) +
                                  (uint64_t(at.y) << 20) + at.x
                            : 0,
              kernel);
  }
}

template <typename T>
T exchange(unsigned mask, T v, unsigned src_lane) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffles move 4 or 8 bytes");
  if (mask != 0xffffffffu) refuse("a shuffle with a partial mask");
  Block& b = block();
  Fiber& f = b.fibers[b.current];
  std::vector<uint64_t>& slots = b.slots[f.shuffles++ & 1];
  uint64_t word = 0;
  std::memcpy(&word, &v, sizeof(T));
  slots[f.tid] = word;
  yield(State::kWarpWait);
  T out;
  std::memcpy(&out, &slots[(f.tid & ~31u) | src_lane], sizeof(T));
  return out;
}

}  // namespace cuda_host

inline void __syncthreads() { cuda_host::yield(cuda_host::State::kBlockWait); }
inline int __syncthreads_or(int p) {
  cuda_host::block().or_pending |= (p != 0);
  cuda_host::yield(cuda_host::State::kBlockWait);
  return cuda_host::block().or_result;
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  const unsigned lane = cuda_host::block().fibers[cuda_host::block().current].tid & 31u;
  return cuda_host::exchange(mask, v, (lane ^ unsigned(lane_mask)) & 31u);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta) {
  const unsigned lane = cuda_host::block().fibers[cuda_host::block().current].tid & 31u;
  return cuda_host::exchange(mask, v, lane + delta < 32 ? lane + delta : lane);
}
inline unsigned atomicAdd(unsigned* address, unsigned v) {
  const unsigned old = *address;
  *address = old + v;
  return old;
}
inline void __threadfence() {}
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline double __ddiv_rn(double a, double b) { return a / b; }
