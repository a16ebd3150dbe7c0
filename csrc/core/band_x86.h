// Host builds of the cofacet band mask for this CPU: AVX-512 and AVX2 compares in place of
// band_flags' packed byte flags (apparent_pairs.h). The engine asks for one such mask per block
// of 32 third vertices whenever it enumerates a coboundary or looks for an apparent pair, which
// is most of its time at N >= 32. Host-only: under nvcc (and off x86) band_mask_x86 declines and
// the portable mask is used.
#pragma once

#include "common.h"
#include "x86_level.h"

#if defined(TSL_X86_LEVELS) && !defined(__CUDACC__)
#define TSL_X86_BANDS 1
#include <immintrin.h>
#endif

namespace tsl {

#ifdef TSL_X86_BANDS
// One vector of a block: bit l set for each live lane l (bit l of `live`) whose cofacet diameter
// max(ri[l], rj[l], de) lies in (lower, upper]. Lanes that are not live are neither loaded nor
// set. kWithin: the apparent-pair sweep's band (-1, de], i.e. max(ri[l], rj[l]) <= de, in two
// instructions fewer.
template <bool kWithin>
__attribute__((target("avx512f,avx512vl"))) inline uint32_t band_avx512(
    const float* ri, const float* rj, float de, float lower, float upper, uint32_t live) {
  const __mmask16 lanes = __mmask16(live);
  // maskz_max: plain max_ps starts from an undefined vector, which GCC 12 warns about
  __m512 far = _mm512_maskz_max_ps(lanes, _mm512_maskz_loadu_ps(lanes, ri),
                                   _mm512_maskz_loadu_ps(lanes, rj));
  __mmask16 above = lanes;
  if (!kWithin) {
    far = _mm512_maskz_max_ps(lanes, far, _mm512_set1_ps(de));
    above = _mm512_mask_cmp_ps_mask(lanes, far, _mm512_set1_ps(lower), _CMP_GT_OQ);
  }
  return _mm512_mask_cmp_ps_mask(above, far, _mm512_set1_ps(upper), _CMP_LE_OQ);
}

template <bool kWithin>
__attribute__((target("avx512f,avx512vl"))) inline uint32_t band_avx512(
    const double* ri, const double* rj, double de, double lower, double upper, uint32_t live) {
  const __mmask8 lanes = __mmask8(live);
  __m512d far = _mm512_maskz_max_pd(lanes, _mm512_maskz_loadu_pd(lanes, ri),
                                    _mm512_maskz_loadu_pd(lanes, rj));
  __mmask8 above = lanes;
  if (!kWithin) {
    far = _mm512_maskz_max_pd(lanes, far, _mm512_set1_pd(de));
    above = _mm512_mask_cmp_pd_mask(lanes, far, _mm512_set1_pd(lower), _CMP_GT_OQ);
  }
  return _mm512_mask_cmp_pd_mask(above, far, _mm512_set1_pd(upper), _CMP_LE_OQ);
}

// The same with AVX2, for the first `left` lanes (all when left >= the lane count): a masked
// load only for a partial vector, whose other lanes read as zero and are cleared by the caller.
template <bool kWithin>
__attribute__((target("avx2"))) inline uint32_t band_avx2(const float* ri, const float* rj,
                                                         float de, float lower, float upper,
                                                         index_t left) {
  __m256 a, b;
  if (left >= 8) {
    a = _mm256_loadu_ps(ri);
    b = _mm256_loadu_ps(rj);
  } else {
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)left),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    a = _mm256_maskload_ps(ri, live);
    b = _mm256_maskload_ps(rj, live);
  }
  __m256 far = _mm256_max_ps(a, b);
  if (kWithin) return _mm256_movemask_ps(_mm256_cmp_ps(far, _mm256_set1_ps(upper), _CMP_LE_OQ));
  far = _mm256_max_ps(far, _mm256_set1_ps(de));
  return _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(far, _mm256_set1_ps(lower), _CMP_GT_OQ),
                                          _mm256_cmp_ps(far, _mm256_set1_ps(upper), _CMP_LE_OQ)));
}

template <bool kWithin>
__attribute__((target("avx2"))) inline uint32_t band_avx2(const double* ri, const double* rj,
                                                         double de, double lower, double upper,
                                                         index_t left) {
  __m256d a, b;
  if (left >= 4) {
    a = _mm256_loadu_pd(ri);
    b = _mm256_loadu_pd(rj);
  } else {
    const __m256i live = _mm256_cmpgt_epi64(_mm256_set1_epi64x((long long)left),
                                            _mm256_setr_epi64x(0, 1, 2, 3));
    a = _mm256_maskload_pd(ri, live);
    b = _mm256_maskload_pd(rj, live);
  }
  __m256d far = _mm256_max_pd(a, b);
  if (kWithin) return _mm256_movemask_pd(_mm256_cmp_pd(far, _mm256_set1_pd(upper), _CMP_LE_OQ));
  far = _mm256_max_pd(far, _mm256_set1_pd(de));
  return _mm256_movemask_pd(_mm256_and_pd(_mm256_cmp_pd(far, _mm256_set1_pd(lower), _CMP_GT_OQ),
                                          _mm256_cmp_pd(far, _mm256_set1_pd(upper), _CMP_LE_OQ)));
}

// band_flags(ri, rj, de, lower, upper, lo, hi) (0 < hi - lo <= kBlock = 32), bit for bit;
// within(...) is band_flags(ri, rj, de, -1, de, lo, hi) for the engine's non-negative lengths.
struct BandAvx512 {
  template <typename T, bool kWithin = false>
  __attribute__((target("avx512f,avx512vl"))) static uint32_t bits(const T* ri, const T* rj,
                                                                  T de, T lower, T upper,
                                                                  index_t lo, index_t hi) {
    constexpr int L = 64 / sizeof(T);  // lanes per vector
    const uint32_t lanes = hi - lo >= 32 ? ~0u : (1u << (hi - lo)) - 1;
    uint32_t m = 0;
    for (int q = 0; q < 32 / L; ++q)  // unrolled: the lane masks are fixed per call
      m |= band_avx512<kWithin>(ri + lo + L * q, rj + lo + L * q, de, lower, upper,
                                (lanes >> (L * q)) & ((1u << L) - 1))
           << (L * q);
    return m;
  }
  template <typename T>
  __attribute__((target("avx512f,avx512vl"))) static uint32_t within(const T* ri, const T* rj,
                                                                    T de, index_t lo,
                                                                    index_t hi) {
    return bits<T, true>(ri, rj, de, T(-1), de, lo, hi);
  }
};

struct BandAvx2 {
  template <typename T, bool kWithin = false>
  __attribute__((target("avx2"))) static uint32_t bits(const T* ri, const T* rj, T de, T lower,
                                                       T upper, index_t lo, index_t hi) {
    constexpr int L = 32 / sizeof(T);
    const uint32_t lanes = hi - lo >= 32 ? ~0u : (1u << (hi - lo)) - 1;
    uint32_t m = 0;
    for (int q = 0; q < 32 / L && lo + L * q < hi; ++q)
      m |= band_avx2<kWithin>(ri + lo + L * q, rj + lo + L * q, de, lower, upper,
                              hi - lo - L * q)
           << (L * q);
    return m & lanes;
  }
  template <typename T>
  __attribute__((target("avx2"))) static uint32_t within(const T* ri, const T* rj, T de,
                                                         index_t lo, index_t hi) {
    return bits<T, true>(ri, rj, de, T(-1), de, lo, hi);
  }
};

// Out of line, for callers built for the baseline ISA (cofacet_mask): one call per block.
template <typename T>
__attribute__((target("avx512f,avx512vl"), noinline)) uint32_t band_bits_avx512(
    const T* ri, const T* rj, T de, T lower, T upper, index_t lo, index_t hi) {
  return BandAvx512::bits(ri, rj, de, lower, upper, lo, hi);
}

template <typename T>
__attribute__((target("avx2"), noinline)) uint32_t band_bits_avx2(const T* ri, const T* rj,
                                                                  T de, T lower, T upper,
                                                                  index_t lo, index_t hi) {
  return BandAvx2::bits(ri, rj, de, lower, upper, lo, hi);
}
#endif

// Whether this CPU has a vector build of the band mask; if so, *m is its mask (band_flags').
template <typename T>
inline bool band_mask_x86(const T* ri, const T* rj, T de, T lower, T upper, index_t lo,
                          index_t hi, uint32_t* m) {
#ifdef TSL_X86_BANDS
  const int level = x86_level();
  if (level == 4) {
    *m = band_bits_avx512(ri, rj, de, lower, upper, lo, hi);
    return true;
  }
  if (level == 3) {
    *m = band_bits_avx2(ri, rj, de, lower, upper, lo, hi);
    return true;
  }
#else
  (void)ri, (void)rj, (void)de, (void)lower, (void)upper, (void)lo, (void)hi, (void)m;
#endif
  return false;
}

}  // namespace tsl
