// Squared Euclidean distances of one cloud on the CPU, register-tiled and vectorised (their
// backward: distance_grad_tiles.h).
//
// Torch-free, so the native tests check it bit for bit against the canonical double loop of
// core/pairwise_distance.h (the certified float32 route at the end reaches the same bits by
// proof rather than by order). The difference form (no Gram-matrix cancellation) is kept; speed
// comes from register tiles of point pairs that reuse every loaded vector, over L1-sized
// coordinate chunks for clouds of up to 256 points (row blocks beyond), and from a build per x86
// level picked at run time. Every build sums in the canonical order: eight lane sums per pair
// (coordinate k into lane k mod 8), a rounded product then a rounded add, a fixed final tree.
// A build whose vectors hold fewer than eight doubles makes one pass per group of lanes over the
// L1-resident chunk, which leaves its registers free for a larger tile. So batch layout, thread
// count and CPU never change a bit, in float64 too. float32 coordinates are widened to double in
// registers, so a float32 distance is the correctly rounded value in all but ~1e-9 of cases: the
// matrix ripser.py builds from the same points. Only float64 sums outside [tsl::kSafeSquareLow,
// tsl::kSafeSquareHigh], where squares may have under- or overflowed, need the caller's scaled
// recomputation. float32 clouds of 32-256 points in D >= 256 (up to 1024 points with AVX2 and
// AVX-512) reach the same floats faster through certified_squares_lower: Gram sums with FMA, each
// pair proved equal to the canonical float32 distance by a rounding bound or recomputed
// canonically.
#pragma once

#include <stdint.h>
#include <string.h>

#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/pairwise_distance.h"
#include "../core/x86_level.h"

#ifdef TSL_X86_LEVELS
#include <immintrin.h>  // certify_row_v4/v3 only, inside their target attributes
#endif

// The FMA forms below are GCC's x86 assembly. A compiler for another target rejects their operand
// constraints even in a branch never taken, and Clang rejects a 256- or 512-bit operand in a
// function without the target attribute (these helpers take theirs from the caller they are
// inlined into): both failed to build. Elsewhere each helper is the plain operation, whose bits
// the FMA forms equal (multiply_add's sums aside: their bound holds either way).
#if (defined(__x86_64__) || defined(__i386__)) && !defined(__clang__)
#define TSL_X86_ASM 1
#else
#define TSL_X86_ASM 0
#endif

namespace tsloss {
namespace cpu {

// Register tiles live in registers only if every loop over them is unrolled fully (TSL_UNROLL,
// core/common.h); left to its heuristics GCC kept the AVX2 build's accumulators on the stack
// (5x slower than SSE2).

using tsl::kDistanceLanes;

// Portable vector types (GCC/Clang extensions): the compiler lowers them to the widest
// registers the clone's target has, or to pairs of narrower ones.
template <typename T, int Bytes>
struct Vec {
  typedef T type __attribute__((vector_size(Bytes)));
  static constexpr int lanes = Bytes / sizeof(T);
};

// Buffers the tiles stream through (row chunks, carried sums, the backward's scratch) start on a
// 64-byte line. std::vector's 16-byte alignment left every other AVX2 load and three of four
// AVX-512 loads crossing a line; glibc puts large blocks 16 bytes past a page.
template <typename T>
struct LineAligned {
  using value_type = T;
  LineAligned() = default;
  template <typename U>
  LineAligned(const LineAligned<U>&) {}
  T* allocate(size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
  }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <typename U>
  bool operator==(const LineAligned<U>&) const { return true; }
  template <typename U>
  bool operator!=(const LineAligned<U>&) const { return false; }
};
template <typename T>
using LineVector = std::vector<T, LineAligned<T>>;

// By reference, never by value: vector values crossing a call boundary would change the ABI
// between the clones.
template <typename V>
__attribute__((always_inline)) inline void load(V& v, const void* p) {
  memcpy(&v, p, sizeof(V));
}

template <typename V>
__attribute__((always_inline)) inline void store(void* p, const V& v) {
  memcpy(p, &v, sizeof(V));
}

// Float lanes widened to double, exactly. GCC 12 splits __builtin_convertvector of 8 floats to a
// 512-bit vector (and of 4 to a 256-bit one) into two conversions of half the width, a lane
// extract and an insert: four instructions where vcvtps2pd is one. In the row kernel, which widens
// every point vector it loads, that was eight of a tile step's ~40 instructions (one float32
// prompt of 16 points in 2048 dimensions ran at 0.68x the float64 one's speed, 0.75x with this
// and the in-block pairs below). Vex: the caller's build has AVX
// (the baseline build's scatter holds 256-bit vectors in SSE register pairs, which asm cannot
// name; a wrong Vex fails to compile, "impossible constraint").
template <bool Vex, typename VD, typename VT>
__attribute__((always_inline)) inline void widen(VD& v, const VT& t) {
  static_assert(sizeof(VD) == 2 * sizeof(VT), "floats to doubles");
#if TSL_X86_ASM
  if constexpr (Vex && sizeof(VD) >= 32) {
    asm("vcvtps2pd %1, %0" : "=v"(v) : "vm"(t));
    return;
  }
#endif
  v = __builtin_convertvector(t, VD);
}

// Loads L coordinates as double lanes: float rows are loaded at half the width and widened
// exactly. Vex: see widen; 256-bit vectors and wider are the AVX builds' except where a caller
// says otherwise.
template <typename VD, int L, typename T, bool Vex = sizeof(VD) >= 32>
__attribute__((always_inline)) inline void load_wide(VD& v, const T* p) {
  using VT = typename Vec<T, L * int(sizeof(T))>::type;
  VT t;
  load(t, p);
  if constexpr (std::is_same<T, float>::value)
    widen<Vex>(v, t);
  else
    v = __builtin_convertvector(t, VD);
}

// u - w, rounded once as the subtract rounds it, but computed as -(w * 1) + u by an FMA
// instruction: an FMA rounds the exact -(w * 1) + u = u - w once, so the bits are the subtract's.
// Why: the canonical order needs a subtract, a multiply and an add per pair and coordinate. On
// cores whose adders are separate from their multipliers (AMD Zen) the subtract and the add both
// queue on the adders while the FMA units idle; moving every other subtract to the FMA units
// balances the two (benchmarks/README.md). Written in assembly because GCC, told not to
// contract, would never emit it, and the intrinsic would tie this header to one target.
template <bool OnFma, typename V>
__attribute__((always_inline)) inline void subtract(V& t, const V& u, const V& w) {
#if TSL_X86_ASM
  if constexpr (OnFma) {
    const V one = V{} + 1;
    t = u;
    if constexpr (sizeof(t[0]) == 8)
      asm("vfnmadd231pd %2, %1, %0" : "+v"(t) : "v"(one), "vm"(w));
    else
      asm("vfnmadd231ps %2, %1, %0" : "+v"(t) : "v"(one), "vm"(w));
    return;
  }
#endif
  t = u - w;
}

// a += b and a -= b, rounded once as the add and the subtract round them, computed as b * 1 + a
// and -(b * 1) + a by an FMA instruction where OnFma (the product is exact, so the one rounding
// is the add's). An FMA overwrites one of its operands: a is the one, so only sums whose left
// operand dies there (an accumulator, a partial sum) belong here; the copy that a live operand
// would need costs an instruction of its own. Why: see subtract.
template <bool OnFma, typename V>
__attribute__((always_inline)) inline void add_into(V& a, const V& b) {
#if TSL_X86_ASM
  if constexpr (OnFma) {
    const V one = V{} + 1;
    if constexpr (sizeof(a[0]) == 8)
      asm("vfmadd231pd %1, %2, %0" : "+v"(a) : "vm"(b), "v"(one));
    else
      asm("vfmadd231ps %1, %2, %0" : "+v"(a) : "vm"(b), "v"(one));
    return;
  }
#endif
  a += b;
}
template <bool OnFma, typename V>
__attribute__((always_inline)) inline void subtract_from(V& a, const V& b) {
#if TSL_X86_ASM
  if constexpr (OnFma) {
    const V one = V{} + 1;
    if constexpr (sizeof(a[0]) == 8)
      asm("vfnmadd231pd %1, %2, %0" : "+v"(a) : "vm"(b), "v"(one));
    else
      asm("vfnmadd231ps %1, %2, %0" : "+v"(a) : "vm"(b), "v"(one));
    return;
  }
#endif
  a -= b;
}

// Keeps a loaded tile operand in a register. Left alone, GCC folds every use of an operand into
// its arithmetic as a memory operand, so the AVX2 build's 2 x 4 tile issued 10 loads per
// iteration instead of 6; on the Sapphire Rapids Xeon that loop ran at 9.7 G pair-coordinates/s
// against 12.0 with its operands pinned (a standalone copy, one thread), and the whole kernel
// 12-19 % faster (build/kernel_rates, AVX-512 and baseline builds unchanged). The empty asm
// emits nothing and changes no bit.
template <typename V>
__attribute__((always_inline)) inline void in_register(V& v) {
#if TSL_X86_ASM
  asm("" : "+v"(v));
#else
  (void)v;
#endif
}

// acc + u * w: one FMA instruction where the build has them, else a multiply and an add. Only
// for sums whose order and rounding nothing depends on (the Gram sums of the certified float32
// distances below, whose bound holds either way); the canonical sums never fuse.
template <bool Fused, typename V>
__attribute__((always_inline)) inline void multiply_add(V& acc, const V& u, const V& w) {
  static_assert(sizeof(acc[0]) == 8, "Gram sums run in double lanes");
#if TSL_X86_ASM
  if constexpr (Fused) {
    asm("vfmadd231pd %2, %1, %0" : "+v"(acc) : "v"(u), "vm"(w));
    return;
  }
#elif defined(__clang__) && __has_builtin(__builtin_elementwise_fma)
  if constexpr (Fused) {
    acc = __builtin_elementwise_fma(u, w, acc);
    return;
  }
#endif
  acc += u * w;
}

// A build's shape: Bytes of doubles per vector, so L lanes per vector and G passes (lane groups)
// to cover the eight canonical lanes.
template <int Bytes>
struct Lanes {
  using VD = typename Vec<double, Bytes>::type;
  static constexpr int L = Bytes / 8;
  static constexpr int G = kDistanceLanes / L;
  static_assert(kDistanceLanes % L == 0, "a vector must hold a whole number of lane groups");
};

// The canonical lane sums of TI x TJ pairs (xi[a], xj[b]) over the whole of dim:
// lanes[(a * TJ + b) * 8 + l]. The xi rows are already double (widened once per row block); the
// xj rows are widened as they are loaded. Coordinates past the last whole group of eight go in
// by the scalar loop, after every earlier coordinate of their lane, as the order requires.
template <typename T, int Bytes, int TI, int TJ>
__attribute__((always_inline)) inline void lane_sums_tile(const double* const* xi,
                                                          const T* const* xj, int64_t dim,
                                                          double* lanes) {
  using VD = typename Lanes<Bytes>::VD;
  constexpr int L = Lanes<Bytes>::L, G = Lanes<Bytes>::G;
  const int64_t body = dim - dim % kDistanceLanes;
  for (int g = 0; g < G; ++g) {
    VD acc[TI][TJ];
    TSL_UNROLL for (int a = 0; a < TI; ++a)
      TSL_UNROLL for (int b = 0; b < TJ; ++b) acc[a][b] = VD{};
    for (int64_t k = g * L; k < body; k += kDistanceLanes) {
      VD u[TI], w[TJ];
      TSL_UNROLL for (int a = 0; a < TI; ++a) load(u[a], xi[a] + k);
      TSL_UNROLL for (int b = 0; b < TJ; ++b) load_wide<VD, L>(w[b], xj[b] + k);
      TSL_UNROLL for (int a = 0; a < TI; ++a)
        TSL_UNROLL for (int b = 0; b < TJ; ++b) {
          const VD t = u[a] - w[b];
          acc[a][b] += t * t;
        }
    }
    TSL_UNROLL for (int a = 0; a < TI; ++a)
      TSL_UNROLL for (int b = 0; b < TJ; ++b) store(lanes + (a * TJ + b) * kDistanceLanes + g * L, acc[a][b]);
  }
  TSL_UNROLL for (int a = 0; a < TI; ++a)
    TSL_UNROLL for (int b = 0; b < TJ; ++b)
      for (int64_t k = body; k < dim; ++k) {
        const double t = xi[a][k] - static_cast<double>(xj[b][k]);
        double& lane = lanes[(a * TJ + b) * kDistanceLanes + k % kDistanceLanes];
        lane += t * t;
      }
}

// out[a * TJ + b] = |xi[a] - xj[b]|^2, canonical.
template <typename T, int Bytes, int TI, int TJ>
__attribute__((always_inline)) inline void squared_distance_tile(const double* const* xi,
                                                                 const T* const* xj,
                                                                 int64_t dim, double* out) {
  double lanes[TI * TJ * kDistanceLanes];
  lane_sums_tile<T, Bytes, TI, TJ>(xi, xj, dim, lanes);
  for (int p = 0; p < TI * TJ; ++p) out[p] = tsl::lane_tree(lanes + p * kDistanceLanes);
}

// The pairs (a, b) of rows inside a block of four: the six with b < a, then the four a = b (the
// Gram kernel's norms).
constexpr int kBlockPairA[10] = {1, 2, 2, 3, 3, 3, 0, 1, 2, 3};
constexpr int kBlockPairB[10] = {0, 0, 1, 0, 1, 2, 0, 1, 2, 3};

// The canonical lane sums of the six pairs (a, b), b < a, among four rows xi (double), side by
// side: lanes[p * 8 + l] for the pairs in kBlockPairA/B order. One pair at a time, each pair's
// sums were one chain of dependent adds: at 16 points those pairs, a fifth of all, took two fifths
// of the row kernel.
template <int Bytes>
__attribute__((always_inline)) inline void block_pair_lane_sums(const double* const* xi,
                                                                int64_t dim, double* lanes) {
  using VD = typename Lanes<Bytes>::VD;
  constexpr int L = Lanes<Bytes>::L, G = Lanes<Bytes>::G;
  const int64_t body = dim - dim % kDistanceLanes;
  for (int g = 0; g < G; ++g) {
    VD acc[6];
    TSL_UNROLL for (int p = 0; p < 6; ++p) acc[p] = VD{};
    for (int64_t k = g * L; k < body; k += kDistanceLanes) {
      VD u[4];
      TSL_UNROLL for (int a = 0; a < 4; ++a) load(u[a], xi[a] + k);
      TSL_UNROLL for (int p = 0; p < 6; ++p) {
        const VD t = u[kBlockPairA[p]] - u[kBlockPairB[p]];
        acc[p] += t * t;
      }
    }
    TSL_UNROLL for (int p = 0; p < 6; ++p) store(lanes + p * kDistanceLanes + g * L, acc[p]);
  }
  TSL_UNROLL for (int p = 0; p < 6; ++p)
    for (int64_t k = body; k < dim; ++k) {
      const double t = xi[kBlockPairA[p]][k] - xi[kBlockPairB[p]][k];
      double& lane = lanes[p * kDistanceLanes + k % kDistanceLanes];
      lane += t * t;
    }
}

// Row `row` of x as double: itself for float64, else widened into buf, in the caller's vectors
// (the plain loop, left to GCC's vectoriser, ran on 128-bit vectors in the AVX2 build and on
// split conversions in the AVX-512 one).
template <typename T, int Bytes>
__attribute__((always_inline)) inline const double* wide_row(const T* row, int64_t dim,
                                                             double* buf) {
  if constexpr (std::is_same<T, double>::value) {
    return row;
  } else {
    using VD = typename Lanes<Bytes>::VD;
    constexpr int L = Lanes<Bytes>::L;
    int64_t k = 0;
    for (; k + L <= dim; k += L) {
      VD v;
      load_wide<VD, L>(v, row + k);
      store(buf + k, v);
    }
    for (; k < dim; ++k) buf[k] = static_cast<double>(row[k]);
    return buf;
  }
}

// Squared distances of rows [i0, i1) of one cloud x (n, dim) to every earlier row (and to each
// other): sq[(i - i0) * n + j] for i0 <= i < i1 and j < i. `wide` is scratch for
// min(i1 - i0, 4) * dim doubles.
// The path of clouds too large for the whole-cloud kernel, and of few clouds' rows shared among
// the threads: a block of four rows against earlier rows two at a time (four at a time with
// AVX-512 ran no faster), the block's own six pairs side by side.
template <typename T, int Bytes>
__attribute__((always_inline)) inline void lower_rows_body(const T* x, int64_t n, int64_t dim,
                                                           int64_t i0, int64_t i1, double* sq,
                                                           double* wide) {
  constexpr int TI = 4, TJ = 2;
  for (int64_t i = i0; i < i1; i += TI) {
    const int rows = i1 - i < TI ? int(i1 - i) : TI;
    const double* xi[TI];
    xi[0] = wide_row<T, Bytes>(x + i * dim, dim, wide);
    for (int a = 1; a < TI; ++a)  // a short last block repeats its first row, never stored
      xi[a] = a < rows ? wide_row<T, Bytes>(x + (i + a) * dim, dim, wide + a * dim) : xi[0];
    double tile[TI * TJ] = {};
    int64_t j = 0;
    for (; j + TJ <= i; j += TJ) {
      const T* xj[TJ] = {x + j * dim, x + (j + 1) * dim};
      squared_distance_tile<T, Bytes, TI, TJ>(xi, xj, dim, tile);
      for (int a = 0; a < rows; ++a)
        TSL_UNROLL for (int b = 0; b < TJ; ++b) sq[(i - i0 + a) * n + j + b] = tile[a * TJ + b];
    }
    for (; j < i; ++j) {
      const T* xj[1] = {x + j * dim};
      squared_distance_tile<T, Bytes, TI, 1>(xi, xj, dim, tile);
      for (int a = 0; a < rows; ++a) sq[(i - i0 + a) * n + j] = tile[a];
    }
    if (rows > 1) {
      double lanes[6 * kDistanceLanes];
      block_pair_lane_sums<Bytes>(xi, dim, lanes);
      for (int p = 0; p < 6; ++p)
        if (kBlockPairA[p] < rows)
          sq[(i - i0 + kBlockPairA[p]) * n + i + kBlockPairB[p]] =
              tsl::lane_tree(lanes + p * kDistanceLanes);
    }
  }
}

// The whole-cloud kernel works through the coordinates in chunks of kChunk: the chunk of every
// row, widened to double, stays in L1 while all tiles of row pairs run over it, and each pair's
// eight lane sums carry over to the next chunk in `part`. Without chunks a tile streams its
// eight full rows from L2 (128 KB at D = 2048), and that, not the arithmetic, set the pace.
// kChunk is a multiple of the eight lanes, so a coordinate's lane is its offset's in the chunk.
constexpr int64_t kChunk = 128;
// A cache line of padding per row; none, and other chunk sizes (64-2048), ran within noise
// (benchmarks/README.md, "Tried and dropped").
constexpr int64_t kStride = kChunk + 8;
constexpr int64_t kBlock = 4;  // rows per block: 16 pairs per block pair, 6 inside a block

static_assert(kChunk % kDistanceLanes == 0, "a chunk must hold whole lane groups");

// Sums carried per block for its own rows: the six pairs inside it, and for Gram sums the four
// squared norms too.
constexpr int in_block_sums(bool gram) { return gram ? 10 : 6; }

// Doubles of scratch for lower_cloud_body: the chunk of n rows (padded to a whole block), then
// the eight carried lane sums of every pair of every block pair and inside every block.
inline int64_t lower_cloud_scratch(int64_t n, bool gram = false) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  return blocks * kBlock * kStride +
         (16 * blocks * (blocks - 1) / 2 + in_block_sums(gram) * blocks) * kDistanceLanes;
}

// Squared distances of all pairs j < i of one cloud x (n, dim; rows ld apart, dim by default),
// into sq[i * n + j], through scratch of lower_cloud_scratch(n, Gram) doubles. Rows past n and
// coordinates past dim are zero in the chunk, so they add exact zeros and every tile has full
// shape. A block pair's 4 x 4 pairs run as register tiles of TI x TJ, once per lane group.
// Gram: the same tiles sum products of the rows less `centre` (rounded differences) instead,
// fused where the build can, in no canonical order: with y_i = x_i - centre,
// sq[i * n + j] = y_i . y_j (j < i) and sq[i * n + i] = |y_i|^2, for certified_squares_lower.
template <typename T, int Bytes, int TI, int TJ, bool FmaSub, bool Gram = false>
__attribute__((always_inline)) inline void lower_cloud_body(const T* x, int64_t n, int64_t dim,
                                                            double* sq, double* scratch,
                                                            const T* centre = nullptr,
                                                            int64_t ld = -1) {
  if (ld < 0) ld = dim;  // elements between rows: dim, or more for a range of the coordinates
  using VD = typename Lanes<Bytes>::VD;
  constexpr int L = Lanes<Bytes>::L, E = kDistanceLanes;
  // Gram sums have no canonical lanes to keep: one pass, lane l of a vector taking every
  // coordinate k = l mod L (the carried lanes past L stay zero).
  constexpr int G = Gram ? 1 : Lanes<Bytes>::G, Step = Gram ? L : E;
  static_assert(kBlock % TI == 0 && kBlock % TJ == 0, "tiles must divide a block pair");
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  double* chunk = scratch;
  double* part = scratch + blocks * kBlock * kStride;
  constexpr int P = in_block_sums(Gram);
  constexpr bool Fused = Bytes >= 32;  // the AVX2 and AVX-512 builds have FMA
  const int64_t carried = (16 * blocks * (blocks - 1) / 2 + P * blocks) * E;
  for (int64_t v = 0; v < carried; ++v) part[v] = 0.0;
  for (int64_t k0 = 0; k0 < dim; k0 += kChunk) {
    const int64_t kc = dim - k0 < kChunk ? dim - k0 : kChunk;
    const int64_t width = (kc + E - 1) / E * E;
    for (int64_t r = 0; r < blocks * kBlock; ++r) {
      double* row = chunk + r * kStride;
      int64_t k = 0;
      if (r < n) {
        const T* src = x + r * ld + k0;
        if constexpr (Gram)
          for (; k < kc; ++k)
            row[k] = static_cast<double>(src[k]) - static_cast<double>(centre[k0 + k]);
        else
          for (; k < kc; ++k) row[k] = static_cast<double>(src[k]);
        // The next chunk of this row, requested while the tiles run over this one.
        if (k0 + kChunk < dim)
          for (int64_t q = 0; q < kChunk; q += 64 / int64_t(sizeof(T)))
            __builtin_prefetch(src + kChunk + q);
      }
      for (; k < width; ++k) row[k] = 0.0;
    }
    double* carry = part;
    for (int64_t bi = 0; bi < blocks; ++bi) {
      const double* xi = chunk + bi * kBlock * kStride;
      for (int64_t bj = 0; bj < bi; ++bj, carry += 16 * E) {
        const double* xj = chunk + bj * kBlock * kStride;
        for (int g = 0; g < G; ++g)
          for (int ta = 0; ta < kBlock; ta += TI)
            for (int tb = 0; tb < kBlock; tb += TJ) {
              VD acc[TI][TJ];
              TSL_UNROLL for (int a = 0; a < TI; ++a)
                TSL_UNROLL for (int b = 0; b < TJ; ++b)
                  load(acc[a][b], carry + ((ta + a) * kBlock + tb + b) * E + g * L);
              for (int64_t k = g * L; k < width; k += Step) {
                VD u[TI], w[TJ];
                TSL_UNROLL for (int a = 0; a < TI; ++a) {
                  load(u[a], xi + (ta + a) * kStride + k);
                  in_register(u[a]);
                }
                TSL_UNROLL for (int b = 0; b < TJ; ++b) {
                  load(w[b], xj + (tb + b) * kStride + k);
                  in_register(w[b]);
                }
                TSL_UNROLL for (int a = 0; a < TI; ++a)
                  TSL_UNROLL for (int b = 0; b < TJ; ++b) {
                    if constexpr (Gram) {
                      multiply_add<Fused>(acc[a][b], u[a], w[b]);
                      continue;
                    }
                    VD t;  // (a + b) is a constant once the loops are unrolled
                    if ((a + b) % 2 == 1)
                      subtract<FmaSub>(t, u[a], w[b]);
                    else
                      subtract<false>(t, u[a], w[b]);
                    acc[a][b] += t * t;
                  }
              }
              TSL_UNROLL for (int a = 0; a < TI; ++a)
                TSL_UNROLL for (int b = 0; b < TJ; ++b)
                  store(carry + ((ta + a) * kBlock + tb + b) * E + g * L, acc[a][b]);
            }
      }
      // The six pairs inside the block (and the four norms), side by side.
      for (int g = 0; g < G; ++g) {
        VD acc[P];
        TSL_UNROLL for (int p = 0; p < P; ++p) load(acc[p], carry + p * E + g * L);
        for (int64_t k = g * L; k < width; k += Step) {
          VD u[kBlock];
          TSL_UNROLL for (int a = 0; a < kBlock; ++a) load(u[a], xi + a * kStride + k);
          TSL_UNROLL for (int p = 0; p < P; ++p) {
            if constexpr (Gram) {
              multiply_add<Fused>(acc[p], u[kBlockPairA[p]], u[kBlockPairB[p]]);
            } else {
              const VD t = u[kBlockPairA[p]] - u[kBlockPairB[p]];
              acc[p] += t * t;
            }
          }
        }
        TSL_UNROLL for (int p = 0; p < P; ++p) store(carry + p * E + g * L, acc[p]);
      }
      carry += P * E;
    }
  }
  const double* carry = part;
  for (int64_t bi = 0; bi < blocks; ++bi) {
    for (int64_t bj = 0; bj < bi; ++bj, carry += 16 * E)
      TSL_UNROLL for (int a = 0; a < kBlock; ++a)
        TSL_UNROLL for (int b = 0; b < kBlock; ++b)
          if (bi * kBlock + a < n)
            sq[(bi * kBlock + a) * n + bj * kBlock + b] = tsl::lane_tree(carry + (a * kBlock + b) * E);
    TSL_UNROLL for (int p = 0; p < P; ++p)
      if (bi * kBlock + kBlockPairA[p] < n)
        sq[(bi * kBlock + kBlockPairA[p]) * n + bi * kBlock + kBlockPairB[p]] =
            tsl::lane_tree(carry + p * E);
    carry += P * E;
  }
}

// The lines of the next chunk's rows (points to read; for the backward, gradients to write too),
// prefetched a few per tile while the current chunk computes. Rows 2-16 KB apart are not followed
// by the hardware prefetchers (they stay within a 4 KB page), so without this every chunk began
// by waiting on DRAM for its rows and on reads-for-ownership of its gradient lines (a third of the
// backward at (64, 2048, 64), one thread); issued as one burst at the chunk's start, the
// prefetches stalled on the core's miss buffers instead. Locality 3 fetches into L1, 2 into L2
// (for chunks larger than L1).
struct RowPrefetch {
  const char* x = nullptr;  // the next line to fetch, or nullptr: nothing (left) to fetch
  const char* g = nullptr;  // its gradient line, or nullptr: points only
  int64_t stride = 0;          // bytes between rows
  int64_t rows = 0, lines = 0;  // rows left, and 64-byte lines per row
  int64_t per_tile = 0, line = 0;

  RowPrefetch() = default;
  RowPrefetch(const void* x_, const void* g_, int64_t stride_, int64_t rows_, int64_t row_bytes,
              int64_t tiles)
      : x(static_cast<const char*>(x_)), g(static_cast<const char*>(g_)), stride(stride_),
        rows(rows_), lines((row_bytes + 63) / 64) {
    per_tile = (rows * lines + tiles - 1) / (tiles > 0 ? tiles : 1);
    if (rows <= 0 || lines <= 0) x = nullptr;
  }
  template <int Locality = 3>
  __attribute__((always_inline)) inline void step() {
    for (int64_t q = 0; q < per_tile && x != nullptr; ++q) {
      __builtin_prefetch(x + line * 64, 0, Locality);
      if (g != nullptr)  // read, not prefetchw (that needs PRFCHW): the line arrives exclusive
        __builtin_prefetch(g + line * 64, 0, Locality);  // all the same
      if (++line == lines) {
        line = 0;
        --rows;
        x = rows > 0 ? x + stride : nullptr;  // never a pointer past the last row
        g = g != nullptr && rows > 0 ? g + stride : nullptr;
      }
    }
  }
};

// An L x L block of doubles transposed in registers (v[r][c] becomes v[c][r]): the off-diagonal
// half-blocks swapped at every scale, log2(L) rounds of two-vector shuffles.
constexpr int butterfly_lane(int lanes, int h, bool upper, int l) {
  return !upper ? ((l & h) == 0 ? l : lanes + l - h) : ((l & h) == 0 ? l + h : lanes + l);
}
template <int H, bool Upper, typename V, size_t... l>
__attribute__((always_inline)) inline void butterfly(V& out, const V& a, const V& b,
                                                     std::index_sequence<l...>) {
  constexpr int lanes = sizeof...(l);
#if defined(__clang__) || __GNUC__ >= 12
  out = __builtin_shufflevector(a, b, butterfly_lane(lanes, H, Upper, l)...);
#else
  typedef long long mask_t __attribute__((vector_size(sizeof(V))));
  out = __builtin_shuffle(a, b, mask_t{butterfly_lane(lanes, H, Upper, l)...});
#endif
}
template <int H = 1, typename V, int L>
__attribute__((always_inline)) inline void transpose(V (&v)[L]) {
  if constexpr (H < L) {
    TSL_UNROLL for (int r = 0; r < L; ++r)
      if ((r & H) == 0) {
        const V a = v[r], b = v[r + H];
        butterfly<H, false>(v[r], a, b, std::make_index_sequence<L>());
        butterfly<H, true>(v[r + H], a, b, std::make_index_sequence<L>());
      }
    transpose<2 * H>(v);
  }
}

constexpr int64_t kGramChunk = 128;

// Points per panel-padded row of the Gram kernel: n rounded up to whole row blocks (MR), then to
// whole panels (NR).
template <int MR, int NR>
inline int64_t gram_columns(int64_t n) {
  const int64_t rows = (n + MR - 1) / MR * MR;
  return (rows + NR - 1) / NR * NR;
}

// Doubles of scratch for gram_panel_body: one chunk's panels and the columns x columns sums.
template <int MR, int NR>
inline int64_t gram_panel_scratch(int64_t n) {
  const int64_t cols = gram_columns<MR, NR>(n);
  return cols * kGramChunk + cols * cols;
}

// One MR x (NV vectors) tile of gram_panel_body over a chunk of kc coordinates: a[k * NR + r] is
// row point r's coordinate k, b[k * NR + v * L + l] column point v * L + l's; the sums
// out[r * ld + v * L + l] start at zero (first) or carry on.
template <typename VD, int MR, int NV, int NR>
__attribute__((always_inline)) inline void gram_tile(const double* a, const double* b,
                                                     int64_t kc, bool first, double* out,
                                                     int64_t ld) {
  constexpr int L = sizeof(VD) / sizeof(double);
  VD acc[MR][NV];
  TSL_UNROLL for (int r = 0; r < MR; ++r)
    TSL_UNROLL for (int v = 0; v < NV; ++v) {
      if (first)
        acc[r][v] = VD{};
      else
        load(acc[r][v], out + r * ld + v * L);
    }
  for (int64_t k = 0; k < kc; ++k) {
    VD w[NV];
    TSL_UNROLL for (int v = 0; v < NV; ++v) {
      load(w[v], b + k * NR + v * L);
      in_register(w[v]);
    }
    TSL_UNROLL for (int r = 0; r < MR; ++r) {
      const VD u = a[k * NR + r] - VD{};  // a broadcast: x - 0 is x, where 0 + x is not for x = -0
      TSL_UNROLL for (int v = 0; v < NV; ++v) multiply_add<true>(acc[r][v], u, w[v]);
    }
  }
  TSL_UNROLL for (int r = 0; r < MR; ++r)
    TSL_UNROLL for (int v = 0; v < NV; ++v) store(out + r * ld + v * L, acc[r][v]);
}

// gram_tile with 1 or 2 (< NV <= 3) vectors.
template <typename VD, int MR, int NV, int NR>
__attribute__((always_inline)) inline void gram_part_tile(int64_t vectors, const double* a,
                                                          const double* b, int64_t kc,
                                                          bool first, double* out, int64_t ld) {
  static_assert(NV <= 3, "tiles of up to three vectors");
  if constexpr (NV == 3)
    if (vectors == 2) return gram_tile<VD, MR, 2, NR>(a, b, kc, first, out, ld);
  gram_tile<VD, MR, 1, NR>(a, b, kc, first, out, ld);
}

// Points j0 .. j0 + L - 1 of one chunk (coordinates k0 .. k0 + kc - 1) packed into their panel
// (gram_panel_body), centred and widened: L x L blocks transposed in registers. Element by
// element, the packing took 30 % of the kernel at (128, 2048) and 45 % at (32, 2048).
template <typename VD, int NR>
__attribute__((always_inline)) inline void gram_pack_points(const float* x, int64_t n,
                                                            int64_t ld, const float* centre,
                                                            int64_t k0, int64_t kc, int64_t j0,
                                                            double* panels) {
  constexpr int L = sizeof(VD) / sizeof(double);
  double* dst = panels + (j0 / NR) * kc * NR + j0 % NR;
  const int64_t kv = kc - kc % L;
  for (int64_t k = 0; k < kv; k += L) {
    VD c, v[L];
    load_wide<VD, L>(c, centre + k0 + k);
    TSL_UNROLL for (int r = 0; r < L; ++r) {
      if (j0 + r < n) {
        load_wide<VD, L>(v[r], x + (j0 + r) * ld + k0 + k);
        v[r] -= c;
      } else {
        v[r] = VD{};
      }
    }
    transpose(v);
    TSL_UNROLL for (int r = 0; r < L; ++r) store(dst + (k + r) * NR, v[r]);
  }
  for (int64_t k = kv; k < kc; ++k)
    for (int r = 0; r < L; ++r)
      dst[k * NR + r] = j0 + r < n ? static_cast<double>(x[(j0 + r) * ld + k0 + k]) -
                                         static_cast<double>(centre[k0 + k])
                                   : 0.0;
}

// Gram sums of a float32 cloud as a matrix product, for the certified route's AVX2 and AVX-512
// builds: y_i . y_j for j <= i (y = x - centre) into sq[i * n + j], the squared norms on the
// diagonal, in no canonical order (the certificate's bound holds for any). Per chunk of kGramChunk
// coordinates the centred rows are packed transposed into panels of NR points (a panel: the
// chunk's coordinates in order, NR doubles each, contiguous), and each MR x NR tile of the lower
// triangle sums its products in MR x NV registers: per coordinate NV vector loads of the column
// panel, MR broadcasts of the row points, MR x NV fused multiply-adds. The points lie across the
// lanes, so no lane sums are carried or reduced, and a tile's sums stay in registers for a whole
// chunk. Over the lane-sum tiles (lower_cloud_body<Gram>, the baseline's) this removed the
// per-chunk widened rows, the carried lane sums and the in-block pairs, which cost that kernel
// a third of its time or more (benchmarks/results/kernel_rates-amd-epyc-zen5-2c.md), for the
// packing's cost and the pairs computed above the diagonal by tiles that straddle it (unused;
// 5 % of the work at 256 points, 21 % at 32): a gain from 128 points on (gram_panels).
template <int Bytes, int MR, int NV>
__attribute__((always_inline)) inline void gram_panel_body(const float* x, int64_t n,
                                                           int64_t dim, int64_t ld, double* sq,
                                                           double* scratch,
                                                           const float* centre) {
  using VD = typename Lanes<Bytes>::VD;
  constexpr int L = Lanes<Bytes>::L, NR = NV * L;
  static_assert(NR % MR == 0, "a row block must lie in one panel");
  if (dim <= 0) {  // no chunk would start the sums
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j <= i; ++j) sq[i * n + j] = 0.0;
    return;
  }
  const int64_t cols = gram_columns<MR, NR>(n);
  double* panels = scratch;                    // panel p, coordinate k: panels + (p * kc + k) * NR
  double* sums = scratch + cols * kGramChunk;  // sums[i * cols + j], j < i + MR
  int64_t tiles = 0;
  for (int64_t i0 = 0; i0 < n; i0 += MR) tiles += (i0 + MR + NR - 1) / NR;
  for (int64_t k0 = 0; k0 < dim; k0 += kGramChunk) {
    const int64_t kc = dim - k0 < kGramChunk ? dim - k0 : kGramChunk;
    for (int64_t j0 = 0; j0 < cols; j0 += L)
      gram_pack_points<VD, NR>(x, n, ld, centre, k0, kc, j0, panels);
    // The rows' next chunk, into L2 a few lines per tile: it cut the time by 11-13 % at
    // (32, 2048, 64) and (128, 2048, 16). Packing the next chunk between the tiles instead (two
    // panel buffers) gained nothing more: the packing costs its operations, not a wait.
    const int64_t k1 = k0 + kc, kc1 = k1 < dim ? (dim - k1 < kGramChunk ? dim - k1 : kGramChunk) : 0;
    RowPrefetch pf(x + k1, nullptr, ld * int64_t(sizeof(float)), kc1 > 0 ? n : 0,
                   kc1 * int64_t(sizeof(float)), tiles);
    const bool first = k0 == 0;
    for (int64_t i0 = 0; i0 < n; i0 += MR) {
      const double* a = panels + (i0 / NR) * kc * NR + i0 % NR;
      for (int64_t j0 = 0; j0 < i0 + MR; j0 += NR) {
        pf.step<2>();
        const double* b = panels + (j0 / NR) * kc * NR;
        double* out = sums + i0 * cols + j0;
        // A panel past the diagonal block takes only the vectors that reach it.
        const int64_t reach = (i0 + MR - j0 + L - 1) / L;
        if (reach >= NV)
          gram_tile<VD, MR, NV, NR>(a, b, kc, first, out, cols);
        else
          gram_part_tile<VD, MR, NV, NR>(reach, a, b, kc, first, out, cols);
      }
    }
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j <= i; ++j) sq[i * n + j] = sums[i * cols + j];
}

// Each build's shapes, chosen by measurement (build/kernel_rates, benchmarks/README.md): the
// vector width, the register tile of the whole-cloud kernel (TI x TJ pairs per lane group) and
// whether subtracts may run on the FMA units. AVX-512 has 32 registers of 8 doubles: one pass of
// 4 x 4 tiles (16 accumulators, 8 operands). AVX2 and SSE2 have 16 registers: a 4 x 4 tile would
// spill, so they run 2 x 4 tiles (8 accumulators, 6 operands) in two or four passes.
struct Avx512Shape {
  static constexpr int bytes = 64, ti = 4, tj = 4;
  static constexpr bool fma_sub = true;
};
struct Avx2Shape {
  static constexpr int bytes = 32, ti = 2, tj = 4;
  static constexpr bool fma_sub = true;
};
struct BaseShape {  // SSE2: no FMA instructions
  static constexpr int bytes = 16, ti = 2, tj = 4;
  static constexpr bool fma_sub = false;
};
// The Gram kernel's tiles (gram_panel_body): MR rows x NV vectors of sums. AVX-512: 8 x 16
// points, 16 sums, 2 column vectors and a broadcast in flight of 32 registers. AVX2: 4 x 12,
// 12 sums and 4 operands fill its 16. nr: points per panel.
struct Avx512Gram {
  static constexpr int bytes = 64, mr = 8, nv = 2, nr = nv * bytes / 8;
};
struct Avx2Gram {
  static constexpr int bytes = 32, mr = 4, nv = 3, nr = nv * bytes / 8;
};

#ifdef TSL_X86_LEVELS
// AVX-512 and AVX2 builds of the same bodies (feature lists rather than x86-64-v4/v3 names,
// which older compilers lack; -ffp-contract=off keeps "fma" from changing a bit); the baseline
// build below serves every other CPU.
#define TSL_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define TSL_AVX2 __attribute__((target("avx2,fma")))

template <typename T>
TSL_AVX512 void lower_rows_v4(const T* x, int64_t n, int64_t dim, int64_t i0, int64_t i1,
                              double* sq, double* wide) {
  lower_rows_body<T, Avx512Shape::bytes>(x, n, dim, i0, i1, sq, wide);
}
template <typename T>
TSL_AVX2 void lower_rows_v3(const T* x, int64_t n, int64_t dim, int64_t i0, int64_t i1,
                            double* sq, double* wide) {
  lower_rows_body<T, Avx2Shape::bytes>(x, n, dim, i0, i1, sq, wide);
}

template <typename T>
TSL_AVX512 void lower_cloud_v4(const T* x, int64_t n, int64_t dim, double* sq, double* scratch) {
  using S = Avx512Shape;
  lower_cloud_body<T, S::bytes, S::ti, S::tj, S::fma_sub>(x, n, dim, sq, scratch);
}
template <typename T>
TSL_AVX2 void lower_cloud_v3(const T* x, int64_t n, int64_t dim, double* sq, double* scratch) {
  using S = Avx2Shape;
  lower_cloud_body<T, S::bytes, S::ti, S::tj, S::fma_sub>(x, n, dim, sq, scratch);
}

TSL_AVX512 inline void gram_cloud_v4(const float* x, int64_t n, int64_t dim, int64_t ld,
                                    double* sq, double* scratch, const float* centre) {
  using S = Avx512Shape;
  lower_cloud_body<float, S::bytes, S::ti, S::tj, false, true>(x, n, dim, sq, scratch, centre, ld);
}
TSL_AVX2 inline void gram_cloud_v3(const float* x, int64_t n, int64_t dim, int64_t ld,
                                  double* sq, double* scratch, const float* centre) {
  using S = Avx2Shape;
  lower_cloud_body<float, S::bytes, S::ti, S::tj, false, true>(x, n, dim, sq, scratch, centre, ld);
}
TSL_AVX512 inline void gram_panel_v4(const float* x, int64_t n, int64_t dim, int64_t ld,
                                    double* sq, double* scratch, const float* centre) {
  using S = Avx512Gram;
  gram_panel_body<S::bytes, S::mr, S::nv>(x, n, dim, ld, sq, scratch, centre);
}
TSL_AVX2 inline void gram_panel_v3(const float* x, int64_t n, int64_t dim, int64_t ld,
                                  double* sq, double* scratch, const float* centre) {
  using S = Avx2Gram;
  gram_panel_body<S::bytes, S::mr, S::nv>(x, n, dim, ld, sq, scratch, centre);
}

#endif

template <typename T>
void lower_rows_base(const T* x, int64_t n, int64_t dim, int64_t i0, int64_t i1, double* sq,
                     double* wide) {
  lower_rows_body<T, BaseShape::bytes>(x, n, dim, i0, i1, sq, wide);
}

template <typename T>
void lower_cloud_base(const T* x, int64_t n, int64_t dim, double* sq, double* scratch) {
  using S = BaseShape;
  lower_cloud_body<T, S::bytes, S::ti, S::tj, S::fma_sub>(x, n, dim, sq, scratch);
}

inline void gram_cloud_base(const float* x, int64_t n, int64_t dim, int64_t ld, double* sq,
                            double* scratch, const float* centre) {
  using S = BaseShape;
  lower_cloud_body<float, S::bytes, S::ti, S::tj, false, true>(x, n, dim, sq, scratch, centre, ld);
}

using tsl::x86_level;  // which build below to run

// Thread scratch is kept across calls (a training step would otherwise fault it in anew each
// time) up to kKeepScratch entries, and given back past that when the task or call that grew it
// ends (glue's engine workspaces too): at D = 2^25 the row kernel's four widened rows alone held
// 1 GiB per thread.
constexpr int64_t kKeepScratch = int64_t(1) << 18;

template <class Vector>
void keep_small(Vector& v) {
  if (int64_t(v.capacity()) > kKeepScratch) Vector().swap(v);
}

// The row kernel's widened float rows (up to 4 * dim doubles), the executing thread's.
inline LineVector<double>& wide_rows_scratch() {
  thread_local LineVector<double> wide;
  return wide;
}

// Called as a task of row blocks ends: gives back the thread's widened rows if large.
inline void release_row_scratch() { keep_small(wide_rows_scratch()); }

// The best build for this CPU.
template <typename T>
void squared_distance_lower_rows(const T* x, int64_t n, int64_t dim, int64_t i0, int64_t i1,
                                 double* sq) {
  LineVector<double>& wide = wide_rows_scratch();
  const int64_t need = (i1 - i0 < 4 ? i1 - i0 : 4) * dim;
  if (!std::is_same<T, double>::value && int64_t(wide.size()) < need) wide.resize(need);
  double* w = wide.data();
#ifdef TSL_X86_LEVELS
  if (x86_level() == 4) return lower_rows_v4<T>(x, n, dim, i0, i1, sq, w);
  if (x86_level() == 3) return lower_rows_v3<T>(x, n, dim, i0, i1, sq, w);
#endif
  lower_rows_base<T>(x, n, dim, i0, i1, sq, w);
}

// Whether a cloud takes the chunked whole-cloud kernel, into an n x n scratch; its carried sums
// grow as n^2 (2 MB at n = 256), so larger clouds go row block by row block.
inline bool whole_cloud_tiles(int64_t n) { return n <= 256; }

// Squared distances of all pairs j < i of one cloud x (n, dim): sq[i * n + j] (sq is n * n).
template <typename T>
void squared_distance_lower(const T* x, int64_t n, int64_t dim, double* sq) {
  if (!whole_cloud_tiles(n)) {
    for (int64_t i0 = 0; i0 < n; i0 += 4)
      squared_distance_lower_rows(x, n, dim, i0, i0 + 4 < n ? i0 + 4 : n, sq + i0 * n);
    release_row_scratch();
    return;
  }
  thread_local LineVector<double> scratch;
  if (int64_t(scratch.size()) < lower_cloud_scratch(n)) scratch.resize(lower_cloud_scratch(n));
#ifdef TSL_X86_LEVELS
  if (x86_level() == 4) return lower_cloud_v4<T>(x, n, dim, sq, scratch.data());
  if (x86_level() == 3) return lower_cloud_v3<T>(x, n, dim, sq, scratch.data());
#endif
  lower_cloud_base<T>(x, n, dim, sq, scratch.data());
}

// Whether float32 clouds of n points in dim dimensions take the certified route
// (certified_squares_lower; for few clouds glue::few_cloud_distances). Its costs
// per point (the centre, the centred copy) and per pair (two square roots, the test) left it no
// faster than the canonical kernel below 256 dimensions (Sapphire Rapids: at (64, 64) 10-25 %
// slower in every build, at (64, 256) 20 % faster with AVX2 and the baseline, about even with
// AVX-512; at (64, 4096) 1.4-1.5x faster); at 8 points it is 1.4-1.6x slower and at 16-24
// points it gains only at large D, so it starts at 32 points. Past 256 points the canonical
// sums go row block by row block, and the route (the panel kernel of AVX2 and AVX-512) ran
// 1.5-2.2x faster than they did at 300-1024 points (Zen 4 EPYC, D = 768 and 4096, two threads;
// benchmarks/README.md); the baseline's lane-sum Gram kernel, eight carried sums a pair, was
// 1.5x faster at 300 points but no faster at 512-1024, so it stops at 256. The panels' sums
// take n x n doubles of scratch per working thread (8 MB at 1024 points): the route stops
// there.
inline bool certify_float_distances(int64_t n, int64_t dim) {
  if (n < 32 || dim < 256) return false;
#ifdef TSL_X86_LEVELS
  if (x86_level() >= 3) return n <= 1024;
#endif
  return n <= 256;
}

// centre[k .. k + V * L - 1]: V vectors of L coordinates, each summed over the rows in order.
template <int Bytes, int V>
__attribute__((always_inline)) inline void centre_sums(const float* const* rows, int64_t count,
                                                       int64_t k, float* centre) {
  using VD = typename Vec<double, Bytes>::type;
  using VF = typename Vec<float, Bytes / 2>::type;
  constexpr int L = Vec<double, Bytes>::lanes;
  VD acc[V];
  TSL_UNROLL for (int v = 0; v < V; ++v) acc[v] = VD{};
  for (int64_t r = 0; r < count; ++r)
    TSL_UNROLL for (int v = 0; v < V; ++v) {
      VD d;
      load_wide<VD, L>(d, rows[r] + k + v * L);
      acc[v] += d;
    }
  const VD divisor = VD{} + double(count);
  TSL_UNROLL for (int v = 0; v < V; ++v) {
    const VF c = __builtin_convertvector(acc[v] / divisor, VF);
    const VF finite = (c - c) == VF{} ? c : VF{};  // Inf - Inf and NaN - NaN are NaN
    store(centre + k + v * L, finite);
  }
}

// The certified route's centre: coordinate k is tsl::certify_centre(x, n, dim, k) (the GPU
// kernel calls that per coordinate), summed here a vector of coordinates at a time over the rows,
// each coordinate's sum in row order as there: the same bits in every build. Per coordinate it
// ran 1.4x slower at (32, 2048), one thread (build/kernel_rates); row by row into a double array
// (a load, an add and a store per coordinate and row, two lanes) it took 14 % of the certified
// route at (32, 2048, 64) with AVX-512, 3.9-4.1 us a cloud (now 3.0).
template <int Bytes>
__attribute__((always_inline)) inline void certify_centre_body(const float* x, int64_t n,
                                                               int64_t dim, float* centre) {
  constexpr int L = Vec<double, Bytes>::lanes;
  const int64_t count = tsl::certify_centre_count(n);
  const float* rows[8];  // certify_centre_count is at most 8
  for (int64_t r = 0; r < count; ++r) rows[r] = x + tsl::certify_centre_row(r, n) * dim;
  // Four vectors of coordinates at a time: one vector's sum over the rows is a chain of
  // dependent adds, which alone left the adders idle most of the time (with the row offsets,
  // an integer division each, recomputed for every vector: perf's share of the forward at
  // (32, 2048, 64), AVX-512, one thread, 5.5 % before, 2.6 % after).
  int64_t k = 0;
  for (; k + 4 * L <= dim; k += 4 * L) centre_sums<Bytes, 4>(rows, count, k, centre);
  for (; k + L <= dim; k += L) centre_sums<Bytes, 1>(rows, count, k, centre);
  for (; k < dim; ++k) centre[k] = tsl::certify_centre(x, n, dim, k);
}

#ifdef TSL_X86_LEVELS
TSL_AVX512 inline void certify_centre_v4(const float* x, int64_t n, int64_t dim, float* centre) {
  certify_centre_body<64>(x, n, dim, centre);
}
TSL_AVX2 inline void certify_centre_v3(const float* x, int64_t n, int64_t dim, float* centre) {
  certify_centre_body<32>(x, n, dim, centre);
}
#endif

inline void certify_centre_rows(const float* x, int64_t n, int64_t dim, float* centre) {
#ifdef TSL_X86_LEVELS
  if (x86_level() == 4) return certify_centre_v4(x, n, dim, centre);
  if (x86_level() == 3) return certify_centre_v3(x, n, dim, centre);
#endif
  certify_centre_body<16>(x, n, dim, centre);
}

// Whether the AVX2 and AVX-512 builds sum a cloud's Gram products by panels (gram_panel_body)
// rather than by lane-sum tiles (lower_cloud_body<Gram>). On a Zen 5 EPYC, one thread, the
// panels' sums against the lane sums' (paired runs, a scratch driver): AVX-512 1.3x slower at
// (32, 2048), 1.04x slower at (64, 4096), 1.10-1.15x faster at (128, 2048), 1.2x at (160, 1024),
// 1.3x at (256, 768); AVX2 1.15x slower, 1.05x slower, 1.05x, 1.1x and 1.14x faster. Their
// packing (6-29 % of their time) and the pairs above the diagonal weigh most at few points.
inline bool gram_panels(int64_t n) { return n >= 128; }

// Gram sums over coordinates [k0, k0 + kc) of a cloud x (n rows, dim apart) less `centre` (dim
// values): sq[i * n + j] = y_i . y_j (j < i), sq[i * n + i] = |y_i|^2, summed in no canonical
// order, so sums over several ranges may be added in any order (the bound allows it).
inline void gram_sums_lower(const float* x, int64_t n, int64_t dim, int64_t k0, int64_t kc,
                            const float* centre, double* sq) {
  thread_local LineVector<double> scratch;
  auto room = [&](int64_t doubles) {
    if (int64_t(scratch.size()) < doubles) scratch.resize(doubles);
    return scratch.data();
  };
  x += k0;
  centre += k0;
#ifdef TSL_X86_LEVELS
  if (x86_level() == 4 && gram_panels(n))
    gram_panel_v4(x, n, kc, dim, sq, room(gram_panel_scratch<Avx512Gram::mr, Avx512Gram::nr>(n)),
                  centre);
  else if (x86_level() == 3 && gram_panels(n))
    gram_panel_v3(x, n, kc, dim, sq, room(gram_panel_scratch<Avx2Gram::mr, Avx2Gram::nr>(n)),
                  centre);
  else if (x86_level() == 4)
    gram_cloud_v4(x, n, kc, dim, sq, room(lower_cloud_scratch(n, true)), centre);
  else if (x86_level() == 3)
    gram_cloud_v3(x, n, kc, dim, sq, room(lower_cloud_scratch(n, true)), centre);
  else
#endif
    gram_cloud_base(x, n, kc, dim, sq, room(lower_cloud_scratch(n, true)), centre);
  // Kept where the canonical kernel keeps its whole-cloud scratch; past that the panels' n x n
  // sums are given back when over the kept size (past ~450 points; 8 MB at 1024).
  if (!whole_cloud_tiles(n)) keep_small(scratch);
}

constexpr double kDoubtful = -1.0;  // no square is negative

// Pairs (i, j0 .. j1 - 1) of certify_rows, one at a time.
inline int64_t certify_pairs(double* row, const double* norms, double ni, int64_t dim,
                             int64_t j0, int64_t j1) {
  int64_t count = 0;
  for (int64_t j = j0; j < j1; ++j)
    if (!tsl::certify_float_square(ni + norms[j], row[j], dim, &row[j])) {
      row[j] = kDoubtful;
      ++count;
    }
  return count;
}

#ifdef TSL_X86_LEVELS
// tsl::certify_float_square over a row, 8 or 4 pairs per vector, the same operations in the same
// order (the maxima are its "x > 0 ? x : 0", NaN included), so the same decisions and squares:
// one at a time its two square roots took a fifth of the certified route at (256, 768).
// (GCC 12 warns of its own intrinsics' undefined vectors, bug 105593.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
TSL_AVX512 inline int64_t certify_row_v4(double* row, const double* norms, double ni,
                                         int64_t dim, int64_t i) {
  const __m512d zero = _mm512_setzero_pd(), two = _mm512_set1_pd(2.0),
                doubtful = _mm512_set1_pd(kDoubtful), top = _mm512_set1_pd(3.0e76),
                vi = _mm512_set1_pd(ni), c = _mm512_set1_pd(4.0 * double(dim + 3) * 0x1p-53);
  int64_t count = 0, j = 0;
  for (; j + 8 <= i; j += 8) {
    const __m512d nn = _mm512_add_pd(vi, _mm512_loadu_pd(norms + j));
    const __m512d a = _mm512_sub_pd(nn, _mm512_mul_pd(two, _mm512_loadu_pd(row + j)));
    const __m512d e = _mm512_mul_pd(c, _mm512_add_pd(nn, _mm512_abs_pd(a)));
    const __m512d lo = _mm512_sub_pd(a, e), hi = _mm512_add_pd(a, e);
    const __m256 flo = _mm512_cvtpd_ps(_mm512_sqrt_pd(_mm512_max_pd(lo, zero)));
    const __m256 fhi = _mm512_cvtpd_ps(_mm512_sqrt_pd(hi));
    const __mmask8 ok = _mm512_cmp_pd_mask(hi, top, _CMP_LE_OQ) &
                        _mm256_cmp_ps_mask(flo, fhi, _CMP_EQ_OQ);
    _mm512_storeu_pd(row + j, _mm512_mask_blend_pd(ok, doubtful, _mm512_max_pd(a, zero)));
    count += 8 - __builtin_popcount(ok);
  }
  return count + certify_pairs(row, norms, ni, dim, j, i);
}
#pragma GCC diagnostic pop
TSL_AVX2 inline int64_t certify_row_v3(double* row, const double* norms, double ni, int64_t dim,
                                       int64_t i) {
  const __m256d zero = _mm256_setzero_pd(), two = _mm256_set1_pd(2.0),
                doubtful = _mm256_set1_pd(kDoubtful), top = _mm256_set1_pd(3.0e76),
                sign = _mm256_set1_pd(-0.0), vi = _mm256_set1_pd(ni),
                c = _mm256_set1_pd(4.0 * double(dim + 3) * 0x1p-53);
  int64_t count = 0, j = 0;
  for (; j + 4 <= i; j += 4) {
    const __m256d nn = _mm256_add_pd(vi, _mm256_loadu_pd(norms + j));
    const __m256d a = _mm256_sub_pd(nn, _mm256_mul_pd(two, _mm256_loadu_pd(row + j)));
    const __m256d e = _mm256_mul_pd(c, _mm256_add_pd(nn, _mm256_andnot_pd(sign, a)));
    const __m256d lo = _mm256_sub_pd(a, e), hi = _mm256_add_pd(a, e);
    const __m128 flo = _mm256_cvtpd_ps(_mm256_sqrt_pd(_mm256_max_pd(lo, zero)));
    const __m128 fhi = _mm256_cvtpd_ps(_mm256_sqrt_pd(hi));
    const __m256d same = _mm256_castsi256_pd(
        _mm256_cvtepi32_epi64(_mm_castps_si128(_mm_cmp_ps(flo, fhi, _CMP_EQ_OQ))));
    const __m256d ok = _mm256_and_pd(_mm256_cmp_pd(hi, top, _CMP_LE_OQ), same);
    _mm256_storeu_pd(row + j, _mm256_blendv_pd(doubtful, _mm256_max_pd(a, zero), ok));
    count += 4 - __builtin_popcount(_mm256_movemask_pd(ok));
  }
  return count + certify_pairs(row, norms, ni, dim, j, i);
}
#endif

// Rows [i0, i1) of Gram sums sq (as gram_sums_lower leaves them, over all dim coordinates; the
// squared norms of all rows in `norms`, since the diagonal is zeroed here): each pair j < i is
// replaced by a certified square (tsl::certify_float_square) or by kDoubtful, for the caller to
// sum canonically. Returns how many are doubtful.
inline int64_t certify_rows(double* sq, const double* norms, int64_t n, int64_t dim, int64_t i0,
                            int64_t i1) {
  int64_t count = 0;
  for (int64_t i = i0; i < i1; ++i) {
    double* row = sq + i * n;
#ifdef TSL_X86_LEVELS
    if (x86_level() == 4)
      count += certify_row_v4(row, norms, norms[i], dim, i);
    else if (x86_level() == 3)
      count += certify_row_v3(row, norms, norms[i], dim, i);
    else
#endif
      count += certify_pairs(row, norms, norms[i], dim, 0, i);
    row[i] = 0.0;
  }
  return count;
}

// Rows i0 .. i1 - 1 of sq (n x n, below the diagonal): each pair certify_rows left kDoubtful
// gets the canonical sum, one by one (for few such pairs: past an eighth of them the callers
// tile the canonical kernel instead).
inline void recompute_doubtful_rows(const float* x, int64_t n, int64_t dim, int64_t i0,
                                    int64_t i1, double* sq) {
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t j = 0; j < i; ++j)
      if (sq[i * n + j] == kDoubtful)
        sq[i * n + j] = tsl::squared_distance(x + i * dim, x + j * dim, dim);
}

// The float32 distances of one cloud x (n, dim) with one fused multiply-add per pair
// and coordinate (AVX2, AVX-512; a multiply and an add on the baseline) where the canonical sums
// take a subtract, a multiply and an add: 1.1-1.6x faster at 32-256 points on a Zen 5 EPYC
// (build/kernel_rates, "certified" against "forward (stream)").
// sq[i * n + j] (j < i) is a double s whose (float)sqrt(s) is bit for bit the canonical float32
// distance, (float)sqrt(tsl::squared_distance(x_i, x_j)), on every build. Returns how many pairs
// needed the canonical sum.
//
// Gram sums of the rows less a float32 centre (a rounded mean of eight rows, so that off-centre
// clouds lose no digits), each pair accepted by tsl::certify_float_square (the proof is there).
// Other pairs (duplicate points, pairs far closer than the cloud is wide, a float32 rounding
// step inside the bound, non-finite points) take the canonical sum: one by one when few, else
// from the canonical tiled kernel (a cloud with an extreme outlier, whose mean is no centre, is
// that case: slower, never wrong).
// For Gaussian clouds at D = 2048 the bound is ~1e-12 of the distance against float32 steps of
// ~6e-8, so nearly every pair certifies (csrc/native_tests/test_core.cpp checks both ways).
inline int64_t certified_squares_lower(const float* x, int64_t n, int64_t dim, double* sq) {
  if (n < 2) {
    if (n == 1) sq[0] = 0.0;
    return 0;
  }
  thread_local std::vector<float> centre;
  thread_local std::vector<double> norms;
  centre.resize(dim);
  certify_centre_rows(x, n, dim, centre.data());
  gram_sums_lower(x, n, dim, 0, dim, centre.data(), sq);
  norms.resize(n);
  for (int64_t i = 0; i < n; ++i) norms[i] = sq[i * n + i];
  const int64_t count = certify_rows(sq, norms.data(), n, dim, 0, n);
  // The scalar canonical sum ran 3.5-8.7x slower than the tiled kernel per pair: past an
  // eighth of the pairs, tile them all.
  if (count * 8 > n * (n - 1) / 2) {
    thread_local LineVector<double> canonical;
    canonical.resize(n * n);
    squared_distance_lower(x, n, dim, canonical.data());
    for (int64_t p = 0; p < n * n; ++p)
      if (sq[p] == kDoubtful) sq[p] = canonical[p];
    keep_small(canonical);
  } else if (count > 0) {
    recompute_doubtful_rows(x, n, dim, 0, n, sq);
  }
  keep_small(centre);
  return count;
}

}  // namespace cpu
}  // namespace tsloss
