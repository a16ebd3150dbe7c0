// The CUDA warp and block of the warp contract (warp.h): every operation is one intrinsic or a
// short shuffle tree. Included from .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

#include "warp.h"

namespace tsl {

struct CudaWarp {
  template <typename T>
  struct Var {
    T v;
    __device__ __forceinline__ T& operator[](int) { return v; }
    __device__ __forceinline__ const T& operator[](int) const { return v; }
  };

  __device__ __forceinline__ static int lane() { return int(threadIdx.x & 31u); }

  template <class F>
  __device__ __forceinline__ void each(F&& f) {
    f(lane());
  }

  __device__ __forceinline__ uint32_t ballot(const Var<bool>& p) {
    return __ballot_sync(0xffffffffu, p.v);
  }
  __device__ __forceinline__ bool any(const Var<bool>& p) { return __any_sync(0xffffffffu, p.v); }
  __device__ __forceinline__ bool all(const Var<bool>& p) { return __all_sync(0xffffffffu, p.v); }

  template <typename T>
  __device__ __forceinline__ T shfl(const Var<T>& v, int src) {
    return __shfl_sync(0xffffffffu, v.v, src);
  }

  template <typename T>
  __device__ __forceinline__ static T uniform(T m) {
    if constexpr (std::is_floating_point<T>::value) return __shfl_sync(0xffffffffu, m, 0);
    return m;
  }

  // Butterfly reductions (warp::keep_min's tree, whose step order the host tests check). For
  // integers every lane ends with the same result. Floats that compare equal can differ in
  // their bits (-0 and +0), and lanes would end with different ones, so the result is lane 0's:
  // the lowest lane's value among the equal least, which is what HostWarp's scan in lane order
  // returns.
  template <typename T>
  __device__ __forceinline__ T min(const Var<T>& v) {
    T m = v.v;
#pragma unroll
    for (int s = 0; s < warp::kButterflySteps; ++s)
      m = warp::keep_min(m, T(__shfl_xor_sync(0xffffffffu, m, warp::butterfly_offset(s))));
    return uniform(m);
  }
  template <typename T>
  __device__ __forceinline__ T max(const Var<T>& v) {
    T m = v.v;
#pragma unroll
    for (int s = 0; s < warp::kButterflySteps; ++s)
      m = warp::keep_max(m, T(__shfl_xor_sync(0xffffffffu, m, warp::butterfly_offset(s))));
    return uniform(m);
  }
  __device__ __forceinline__ int64_t sum(const Var<int64_t>& v) {
    long long s = v.v;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    return s;
  }

  __device__ __forceinline__ Var<uint32_t> match_any(const Var<uint32_t>& v) {
    return Var<uint32_t>{__match_any_sync(0xffffffffu, v.v)};
  }

  __device__ __forceinline__ void sync() { __syncwarp(); }

  // *p += v once for the warp (lane 0's compare-and-swap), only if the sum stays <= limit;
  // every lane gets the old value, or ~0 when it would not fit (and *p is unchanged).
  __device__ __forceinline__ uint64_t reserve(unsigned long long* p, uint64_t v, uint64_t limit) {
    unsigned long long got = ~0ull;
    if (lane() == 0) {
      unsigned long long old = *(volatile unsigned long long*)p;
      while (old <= limit && v <= limit - old) {
        const unsigned long long seen = atomicCAS(p, old, old + v);
        if (seen == old) {
          got = old;
          break;
        }
        old = seen;
      }
    }
    return __shfl_sync(0xffffffffu, got, 0);
  }
};

struct CudaBlock {
  using Warp = CudaWarp;
  CudaWarp warp_;

  __device__ __forceinline__ int warps() const { return int(blockDim.x >> 5); }
  __device__ __forceinline__ int threads() const { return int(blockDim.x); }

  template <class F>
  __device__ __forceinline__ void each_warp(F&& f) {
    f(warp_, int(threadIdx.x >> 5));
  }
  template <class F>
  __device__ __forceinline__ void first_warp(F&& f) {
    if ((threadIdx.x >> 5) == 0) f(warp_);
  }
  __device__ __forceinline__ void sync() { __syncthreads(); }
};

}  // namespace tsl
