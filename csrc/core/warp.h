// The warp contract: how warp-cooperative algorithms are written once and run both as CUDA
// kernels and, lane by lane, on the host.
//
// An algorithm is a template on a warp type W (and, for block-wide kernels, a block type). Two
// implementations exist: CudaWarp (warp_cuda.h, intrinsics, included from .cu files only) and
// HostWarp (warp_host.h, a lockstep emulation for the native tests and the emulated op). The
// type, not #ifdef __CUDA_ARCH__, picks one: nvcc's host pass parses kernel bodies too, and the
// host build must run the very code the device runs.
//
// Rules of the contract, which HostWarp enforces or exposes:
// - A per-lane value is a `typename W::template Var<T>`; lane l's copy is `v[l]`. On the device
//   a Var is one register and `[l]` ignores l; on the host it is an array of 32.
// - Per-lane code runs inside `w.each([&](int lane) { ... })`. It may read anything, write only
//   its own lane's Vars and its own shared or global words. The host runs the lanes one after
//   another, in a shuffled order under test, so code that lets a lane see another lane's write
//   inside one `each` gives order-dependent results, which the parity tests catch.
// - Collectives (ballot, any, all, shfl, min, match_any, sync, and reserve: one bounded atomic
//   add for the warp, its old value to every lane) are called outside `each`, where the whole
//   warp stands at the same point; the host asserts it. Their results are uniform: plain
//   values that every lane holds, so control flow outside `each` is warp-uniform.
// - Only sync() (and a block barrier) orders memory: a word one lane stores and another lane
//   loads, or loads before another stores to it, needs a barrier between the two steps, even
//   with ballots or shuffles between them. Lockstep on the host hides a missing one;
//   test_races (csrc/native_tests/race_watch.h) sees every access and finds it.
// - Every lane of the warp takes part in every collective (full mask): algorithms keep idle
//   lanes in the loop with a neutral value instead of letting them leave.
// - A block type runs warp phases `blk.each_warp([&](W& w, int warp) { ... })` separated by
//   `blk.sync()` (a block barrier). State that crosses a barrier lives in shared or global
//   memory, never in a Var: on the host a phase's Vars end with the phase.
#pragma once

#include <stdint.h>

#include "common.h"

namespace tsl {
namespace warp {

constexpr int kLanes = 32;

// Bits of the lanes below `lane`: with a ballot, a lane's rank among the lanes that voted yes.
TSL_HD uint32_t lanes_below(int lane) { return lane == 0 ? 0u : (0xffffffffu >> (32 - lane)); }

TSL_HD int popcount(uint32_t m) {
#if defined(__CUDA_ARCH__)
  return __popc(m);
#else
  return __builtin_popcount(m);
#endif
}

// Lowest set bit's position; m != 0.
TSL_HD int lowest_bit(uint32_t m) {
#if defined(__CUDA_ARCH__)
  return __ffs(m) - 1;
#else
  return __builtin_ctz(m);
#endif
}

// A float or double as an unsigned integer of the same order: the distance part of packed
// argmin and sort keys. +0.0 is added first so that -0.0 (equal to 0.0 in every comparison of
// the scalar engine) becomes 0.0 and gets the same key. Negative values (an invalid distance
// matrix, which CUDA does not check on the host) come below the positive ones in their own
// order, so the keys order every non-NaN value as the scalar engine's comparisons do: the warp
// reduction's sorted runs and its argmin must agree, or a column's reduction never ends. NaNs
// get keys of their own, never all ones (the "none" marker of the argmins).
TSL_HD uint64_t order_bits(double x) {
  const double y = x + 0.0;
  uint64_t u;
  memcpy(&u, &y, sizeof u);
  const uint64_t k = (u >> 63) ? ~u : u | (uint64_t(1) << 63);
  return k == ~uint64_t(0) ? k - 1 : k;
}
TSL_HD uint64_t order_bits(float x) {
  const float y = x + 0.0f;
  uint32_t u;
  memcpy(&u, &y, sizeof u);
  const uint32_t k = (u >> 31) ? ~u : u | 0x80000000u;
  return k == ~0u ? k - 1 : k;  // the device's NaN, 0x7fffffff, would be all ones
}

}  // namespace warp
}  // namespace tsl
