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
// - A per-lane value is a `typename W::template Var<T>`; lane l's copy is `v[l]`, used only in
//   lane l's own step. On the device a Var is one register and `[l]` ignores l; on the host it
//   is an array of 32, and `[l]` aborts from another lane's step or from warp-uniform code
//   (it checks the lane, not the warp: another warp's Var is the algorithm's to avoid).
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
// reduction's sorted runs and its argmin must agree, or a column's reduction never ends. Every
// NaN gets one key, above +Inf and below all ones (the "none" marker of the argmins), as the
// scalar engine sorts NaN diameters last: a NaN's bits are not portable (x86 makes its NaNs
// negative and keeps them through `x + 0`, the device replaces them by one positive NaN), and
// keys from the bits put the emulation's NaNs first and the device's last.
TSL_HD uint64_t order_bits(double x) {
  if (x != x) return ~uint64_t(0) - 1;
  const double y = x + 0.0;
  uint64_t u;
  memcpy(&u, &y, sizeof u);
  return (u >> 63) ? ~u : u | (uint64_t(1) << 63);
}
TSL_HD uint64_t order_bits(float x) {
  if (x != x) return 0xfffffffeu;
  const float y = x + 0.0f;
  uint32_t u;
  memcpy(&u, &y, sizeof u);
  return (u >> 31) ? ~u : u | 0x80000000u;
}

// The butterfly of CudaWarp's float and integer min and max, here so that the host tests run
// it step by step: at step s every lane takes its partner lane ^ butterfly_offset(s)'s value
// when that is strictly better. Offsets rise, so lane 0 ends with the lowest lane's value among
// equal best ones, which is what HostWarp's scan in lane order returns; equal floats can differ
// in their bits (-0 and +0). Falling offsets preferred lanes 0, 16, 8, 24, 4, ... instead. NaN
// inputs are outside the contract: a tree and a scan drop them differently.
constexpr int kButterflySteps = 5;
TSL_HD int butterfly_offset(int step) { return 1 << step; }
template <typename T>
TSL_HD T keep_min(T mine, T other) { return other < mine ? other : mine; }
template <typename T>
TSL_HD T keep_max(T mine, T other) { return other > mine ? other : mine; }

}  // namespace warp
}  // namespace tsl
