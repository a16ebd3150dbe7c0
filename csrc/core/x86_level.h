// The x86-64 level of the host CPU, for the host kernels built once per level and picked at run
// time (the distance tiles in csrc/cpu/distance_tiles.h, the apparent-pair sweep in
// vr_engine.h, the band masks in band_x86.h). Host-only: nvcc never sees it.
//
// Every build gives the same bits (the distances follow one canonical order of operations,
// core/pairwise_distance.h; the sweep and masks only compare), so the level is a matter of speed
// alone. A cap (set_x86_cap, tsloss_cuda.set_cpu_isa, TSLOSS_CPU_ISA) lowers it, so that tests
// and benchmarks can run every build a CPU supports.
#pragma once

#include <atomic>

#if defined(__x86_64__) && defined(__GNUC__)
#define TSL_X86_LEVELS 1
#include <cpuid.h>
#endif

namespace tsl {

#ifdef TSL_X86_LEVELS
// LZCNT (CPUID 0x80000001, ECX bit 5), which the sweep's levels 3 and 4 are compiled with: on a
// CPU without it the same bytes run as BSR, which gives a bit's index, not the count of zeros
// above it, so its masks would be wrong without a fault. Every AVX2 CPU made has it, but a
// hypervisor can hide it while passing AVX2 on; the probe is cpuid's own, as compilers' names
// for the bit differ.
inline bool cpu_has_lzcnt() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(0x80000001u, &a, &b, &c, &d) && ((c >> 5) & 1u);
}
#endif

// 4: AVX-512 (F and VL), 3: AVX2 + FMA, each with LZCNT; 0: baseline or not x86-64. Probed once.
inline int detected_x86_level() {
#ifdef TSL_X86_LEVELS
  static const int level =
      !cpu_has_lzcnt() ? 0
      : __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
          ? 4
          : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 3 : 0);
  return level;
#else
  return 0;
#endif
}

// The highest level the kernels may use; 4 (no cap) until lowered.
inline std::atomic<int>& x86_cap() {
  static std::atomic<int> cap{4};
  return cap;
}

// The level the kernels run: the CPU's, lowered by the cap. Read on every dispatch (a relaxed
// load), so a new cap applies from the next call on.
inline int x86_level() {
  const int cap = x86_cap().load(std::memory_order_relaxed);
  const int level = detected_x86_level();
  return level < cap ? level : cap;
}

// Caps the level at 0, 3 or 4, or lifts the cap (-1); false (and nothing changed) for any other
// value or for a level this CPU lacks: asking for it is a mistake to report, not to round down.
inline bool set_x86_cap(int level) {
  if (level == -1) level = 4;
  else if (level != 0 && level != 3 && level != 4) return false;
  else if (level > detected_x86_level()) return false;
  x86_cap().store(level, std::memory_order_relaxed);
  return true;
}

}  // namespace tsl
