// The x86-64 level of the host CPU, for the host kernels built once per level and picked at run
// time (the distance tiles in csrc/cpu/distance_tiles.h, the apparent-pair sweep in
// vr_engine.h). Host-only: nvcc never sees it.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define TSL_X86_LEVELS 1
#endif

namespace tsl {

// 4: AVX-512 (F and VL), 3: AVX2 + FMA, 0: baseline or not x86-64. Probed once.
inline int x86_level() {
#ifdef TSL_X86_LEVELS
  static const int level = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
                               ? 4
                               : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                                      ? 3
                                      : 0);
  return level;
#else
  return 0;
#endif
}

}  // namespace tsl
