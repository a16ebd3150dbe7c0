// Torch glue shared by the CUDA ops (vr_persistence_cuda.cpp, tsloss_cuda.cpp): error checks of
// the launchers and the environment settings both read the same way.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>

#include "../checks.h"
#include "kernels.h"

namespace tsloss {
namespace cuda_glue {

inline void check_cuda(cudaError_t err, const char* what) {
  TSL_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

// A positive integer setting from the environment; unset, empty or not positive: fallback.
inline int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  const long long parsed = std::atoll(v);
  return parsed > 0 ? static_cast<int64_t>(parsed) : fallback;
}

// The H1 capacities for clouds of n points, with the TSLOSS_CUDA_H1_* overrides.
inline tsl::cuda::H1Capacity h1_capacity(int64_t n) {
  tsl::cuda::H1Capacity c = tsl::cuda::default_h1_capacity(n);
  c.heap = env_int("TSLOSS_CUDA_H1_HEAP", c.heap);
  c.columns = env_int("TSLOSS_CUDA_H1_COLUMNS", c.columns);
  c.arena = env_int("TSLOSS_CUDA_H1_ARENA", c.arena);
  return c;
}

}  // namespace cuda_glue
}  // namespace tsloss
