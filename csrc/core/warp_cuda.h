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
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // Integers on sm_80 and later: redux.sync, one instruction per 32-bit word, where the
    // butterfly is five dependent shuffle-and-compare rounds (two shuffles each for 64 bits).
    // The pivot query takes three 64-bit minima and a sum, Prim's step one minimum; both are
    // chains that a warp runs alone. An integer minimum is exact either way.
    if constexpr (std::is_integral<T>::value && (sizeof(T) == 4 || sizeof(T) == 8))
      return redux_min(v.v);
#endif
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
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // Three 32-bit redux.sync sums of 26-, 26- and 12-bit pieces (32 of them stay below 2^31),
    // recombined modulo 2^64: the two's-complement sum the butterfly's adds give.
    const uint64_t u = uint64_t(v.v);
    const uint64_t s0 = __reduce_add_sync(0xffffffffu, unsigned(u & 0x3ffffffu));
    const uint64_t s1 = __reduce_add_sync(0xffffffffu, unsigned((u >> 26) & 0x3ffffffu));
    const uint64_t s2 = __reduce_add_sync(0xffffffffu, unsigned(u >> 52));
    return int64_t(s0 + (s1 << 26) + (s2 << 52));
#else
    long long s = v.v;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    return s;
#endif
  }

  __device__ __forceinline__ Var<uint32_t> match_any(const Var<uint32_t>& v) {
    return Var<uint32_t>{__match_any_sync(0xffffffffu, v.v)};
  }

  __device__ __forceinline__ void sync() { __syncwarp(); }

 private:
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  // 64 bits: the high words' minimum (signed for a signed type), then the least low word among
  // the lanes that hold it, compared unsigned: the lexicographic order of the two words.
  template <typename T>
  __device__ __forceinline__ static T redux_min(T x) {
    if constexpr (sizeof(T) == 4) {  // int or unsigned exactly: the overloads there are
      using Word = std::conditional_t<std::is_signed<T>::value, int, unsigned>;
      return T(__reduce_min_sync(0xffffffffu, Word(x)));
    } else {
      const uint64_t u = uint64_t(x);
      uint32_t hi_bits;
      if constexpr (std::is_signed<T>::value)
        hi_bits = uint32_t(__reduce_min_sync(0xffffffffu, int(int32_t(u >> 32))));
      else
        hi_bits = __reduce_min_sync(0xffffffffu, unsigned(u >> 32));
      const unsigned lo = uint32_t(u >> 32) == hi_bits ? unsigned(u) : 0xffffffffu;
      return T((uint64_t(hi_bits) << 32) | __reduce_min_sync(0xffffffffu, lo));
    }
  }
#endif

 public:

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
  // This thread's warp (k is its index: each thread keeps its own warp's state).
  __device__ __forceinline__ CudaWarp& warp(int) { return warp_; }
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
