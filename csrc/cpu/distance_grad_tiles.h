// The backward of the distances over the pairs of one cloud on the CPU, for pairwise_distance
// and for TSLoss alike (glue::pair_gradients drives it over a batch):
//
//   gx_i = sum_{j != i} W_ij (x_i - x_j),   W symmetric (the pair weights over the distances)
//
// in x's dtype (float32 points get float32 sums, at twice the lanes of double), by the
// difference form (the Gram form rowsum(W) x_i - (W x)_i cancels for close points, where
// W_ij ~ 1/d_ij is largest). Each unordered pair is visited once and its term
// t = W_ij (x_i - x_j) goes to both rows: four operations per pair and coordinate (subtract,
// multiply, add, subtract; where the build has FMA, the multiply and one of the other three run
// on the FMA units: FmaOps), two per ordered pair, where a row-by-row form spends three (it ran
// 1.4-3.0x off the FMA limit in build/kernel_rates; the pair tiles 0.9-1.4x at 128 points or
// more, 1.3-2.0x below, where they stream memory: benchmarks/README.md). Work is cut by
// coordinate chunks: the chunk of every row and of its gradient stay in L1/L2 while all 4 x 4
// tiles of row blocks run over it, and chunks are independent, so several threads can share one
// cloud without write conflicts. Tiles whose sixteen weights are all zero are skipped (sparse
// upstream gradients; normalize="none": only the bars' edges weigh). Sums run in a fixed order
// (nothing fused: an FMA by one rounds as the add or subtract does): the result does not depend
// on the build, the thread count or the batch. NaN results excepted in their sign and payload:
// when both operands are NaN, a subtract passes on its first and an FMA its multiplied one's.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "distance_tiles.h"

namespace tsloss {
namespace cpu {

// Coordinates per chunk: 512 bytes a row (128 floats, 64 doubles), whatever the cloud's size.
// Wider rows at 16-32 points (the rows and their gradients filling 64 KB, as before) ran
// 1.1-1.2x slower: the chunk no longer fit the 48 KB L1 (build/kernel_rates, (16, 768) and
// (32, 2048)). Narrower rows at 128-256 points, which would fit it, cost up to 1.4x in per-tile
// work (sixteen weights, the loop) over so short a row; those tiles run from L2. A multiple of
// 16 (a vector of floats).
inline int64_t grad_chunk(int64_t value_bytes) { return 512 / value_bytes; }

// w = W's 4 x 4 block at `block` (rows n4 apart) plus zero, so that -0 weighs as +0 (as the
// broadcast VD{} + w did); whether any is nonzero. Four row vectors rather than sixteen scalars:
// one at a time, the weights' adds, compares and broadcasts took ~100 instructions a tile.
template <typename A>
__attribute__((always_inline)) inline bool tile_weights(const A* block, int64_t n4, A (&w)[4][4]) {
  using V4 = typename Vec<A, 4 * int(sizeof(A))>::type;
  using M4 = typename Vec<std::conditional_t<sizeof(A) == 4, int32_t, int64_t>,
                          4 * int(sizeof(A))>::type;
  M4 nonzero = M4{};
  TSL_UNROLL for (int a = 0; a < 4; ++a) {
    V4 r;
    load(r, block + a * n4);
    r += V4{};
    store(w[a], r);
    nonzero |= r != V4{};
  }
  return (nonzero[0] | nonzero[1] | nonzero[2] | nonzero[3]) != 0;
}

// Stores the C values of the first `rows` rows of row block blk of src (rows Ss apart) to dst
// (rows Sd apart); with src nullptr, zeros.
template <typename A, int Bytes>
__attribute__((always_inline)) inline void store_block(A* dst, int64_t Sd, const A* src,
                                                       int64_t Ss, int64_t blk, int64_t C,
                                                       int rows = 4) {
  using VD = typename Vec<A, Bytes>::type;
  constexpr int L = Vec<A, Bytes>::lanes;
  for (int a = 0; a < rows; ++a)
    for (int64_t k = 0; k < C; k += L) {
      VD v = VD{};
      if (src != nullptr) load(v, src + (blk * 4 + a) * Ss + k);
      memcpy(dst + (blk * 4 + a) * Sd + k, &v, sizeof(VD));
    }
}

// Where pair_grad_chunk_body's split sums go as they finish: to g, rows `stride` apart. A cloud
// that does not fill its last row block has that block's points in last_x (4 rows of C,
// zero-padded; nullptr: in xs with the others), and only its last_rows real rows are stored.
template <typename A>
struct FinishedSums {
  A* g = nullptr;
  int64_t stride = 0;
  const A* last_x = nullptr;
  int last_rows = 4;
};

// The pair terms of rows xs (n4 rows of C, rows Sx apart; padding rows and coordinates zero)
// under W (n4 x n4, read below the diagonal; zero for padding rows), summed into gs. C is a
// multiple of 16. pf: the next chunk's lines, a few per tile.
//   - Split false: gs holds the result, zero on entry, rows Sx apart (Sg and out unused).
//   - Split true: gs is scratch (rows Sg apart), zeroed here one row block at a time as the
//     blocks come in, and the sums go to out as they finish: the last row block's tiles are the
//     last to touch each block. For rows a multiple of 2 KB apart, and clouds that do not fill
//     their last block (pair_grad_chunk). A template argument, so that the other paths compile
//     as before (a run-time choice cost the AVX2 build 3-10 % in place at (16, 768) and
//     (256, 768)).
//
// Which of a tile's operations run on the FMA units as FMAs by one (subtract, add_into,
// subtract_from: each the plain operation's bits). Per pair and vector a tile does a subtract, a
// multiply and two adds; where the adders are units of their own (AMD Zen), the multiply alone
// leaves the FMA units half idle.
//   - subtracts: each term's subtract, so the FMA units take two operations and the adders two.
//     Each costs a register copy (an FMA overwrites an operand and u[a] lives on).
//   - column_sums: the adds of the column sums into gb instead, into operands that die there: the
//     same balance with no copy. AVX-512 (Zen 5, float32 tiles): 1.02-1.09x faster than
//     subtracts at 128-256 points, within noise below (benchmarks/README.md); the AVX2 build,
//     with half the registers, ran 0.87x as fast that way, so it keeps subtracts.
enum class FmaOps { none, subtracts, column_sums };

template <typename A, int Bytes, FmaOps Fma, bool Split>
__attribute__((always_inline)) inline void pair_grad_chunk_body(const A* xs, int64_t Sx,
                                                                const A* W, int64_t n4, int64_t C,
                                                                A* gs, int64_t Sg_,
                                                                const FinishedSums<A>& out,
                                                                RowPrefetch& pf) {
  const int64_t Sg = Split ? Sg_ : Sx;
  A* const gf = out.g;
  const int64_t Sf = out.stride;
  using VD = typename Vec<A, Bytes>::type;
  constexpr int L = Vec<A, Bytes>::lanes;
  const int64_t steps = C / L, blocks = n4 / 4;
  const int ia[6] = {1, 2, 2, 3, 3, 3}, ib[6] = {0, 0, 1, 0, 1, 2};
  for (int64_t bi = 0; bi < blocks; ++bi) {
    // The last row block's tiles finish each earlier block's sums: they store them to gf.
    const bool last = Split && bi == blocks - 1;
    const bool own_x = last && out.last_x != nullptr;
    const A* xi = own_x ? out.last_x : xs + bi * 4 * Sx;
    const int64_t Sxi = own_x ? C : Sx;
    const int rows = last ? out.last_rows : 4;
    A* gi = gs + bi * 4 * Sg;
    if (Split) store_block<A, Bytes>(gs, Sg, nullptr, 0, bi, C);
    for (int64_t bj = 0; bj < bi; ++bj) {
      pf.step();
      alignas(64) A w[4][4];
      if (!tile_weights(W + bi * 4 * n4 + bj * 4, n4, w)) {
        if (last) store_block<A, Bytes>(gf, Sf, gs, Sg, bj, C);
        continue;
      }
      const A* xj = xs + bj * 4 * Sx;
      A* gj = gs + bj * 4 * Sg;
      A* const gj_out = last ? gf + bj * 4 * Sf : gj;
      const int64_t Sj_out = last ? Sf : Sg;
      for (int64_t s = 0; s < steps; ++s) {
        VD u[4], v[4], ga[4], gb[4];
        TSL_UNROLL for (int a = 0; a < 4; ++a) {
          load(u[a], xi + a * Sxi + s * L);
          load(ga[a], gi + a * Sg + s * L);
        }
        TSL_UNROLL for (int b = 0; b < 4; ++b) {
          load(v[b], xj + b * Sx + s * L);
          load(gb[b], gj + b * Sg + s * L);
        }
        // All sixteen terms first, then short sums into the gradients: chains of one add per
        // row rather than four dependent ones.
        VD t[4][4];
        TSL_UNROLL for (int a = 0; a < 4; ++a)
          TSL_UNROLL for (int b = 0; b < 4; ++b) {
            subtract<Fma == FmaOps::subtracts>(t[a][b], u[a], v[b]);
            t[a][b] *= w[a][b] - VD{};  // a broadcast (w - 0 is w)
          }
        TSL_UNROLL for (int a = 0; a < 4; ++a) ga[a] += (t[a][0] + t[a][1]) + (t[a][2] + t[a][3]);
        // gb[b] -= (t[0][b] + t[1][b]) + (t[2][b] + t[3][b]), the terms' second use, in place.
        constexpr bool adds = Fma == FmaOps::column_sums;
        TSL_UNROLL for (int b = 0; b < 4; ++b) {
          add_into<adds>(t[0][b], t[1][b]);
          add_into<adds>(t[2][b], t[3][b]);
          add_into<adds>(t[0][b], t[2][b]);
          subtract_from<adds>(gb[b], t[0][b]);
        }
        TSL_UNROLL for (int a = 0; a < 4; ++a) memcpy(gi + a * Sg + s * L, &ga[a], sizeof(VD));
        TSL_UNROLL for (int b = 0; b < 4; ++b)
          memcpy(gj_out + b * Sj_out + s * L, &gb[b], sizeof(VD));
      }
    }
    // The six pairs inside the block.
    pf.step();
    A w[6];
    bool any = false;
    TSL_UNROLL for (int p = 0; p < 6; ++p) {
      w[p] = W[(bi * 4 + ia[p]) * n4 + bi * 4 + ib[p]];
      any |= w[p] != A(0);
    }
    if (!any) {
      if (last) store_block<A, Bytes>(gf, Sf, gs, Sg, bi, C, rows);
      continue;
    }
    A* const gi_out = last ? gf + bi * 4 * Sf : gi;  // the last block's own pairs finish it
    const int64_t Si_out = last ? Sf : Sg;
    for (int64_t s = 0; s < steps; ++s) {
      VD u[4], g[4];
      TSL_UNROLL for (int a = 0; a < 4; ++a) {
        load(u[a], xi + a * Sxi + s * L);
        load(g[a], gi + a * Sg + s * L);
      }
      TSL_UNROLL for (int p = 0; p < 6; ++p) {
        VD t;
        subtract<Fma != FmaOps::none>(t, u[ia[p]], u[ib[p]]);
        t *= VD{} + w[p];
        g[ia[p]] += t;
        g[ib[p]] -= t;
      }
      TSL_UNROLL for (int a = 0; a < 4; ++a)
        if (a < rows) memcpy(gi_out + a * Si_out + s * L, &g[a], sizeof(VD));
    }
  }
}

#ifdef TSL_X86_LEVELS
template <typename A, bool Split>
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void pair_grad_chunk_v4(
    const A* xs, int64_t Sx, const A* W, int64_t n4, int64_t C, A* gs, int64_t Sg,
    const FinishedSums<A>& out, RowPrefetch& pf) {
  pair_grad_chunk_body<A, 64, FmaOps::column_sums, Split>(xs, Sx, W, n4, C, gs, Sg, out, pf);
}
template <typename A, bool Split>
__attribute__((target("avx2,fma"))) void pair_grad_chunk_v3(
    const A* xs, int64_t Sx, const A* W, int64_t n4, int64_t C, A* gs, int64_t Sg,
    const FinishedSums<A>& out, RowPrefetch& pf) {
  pair_grad_chunk_body<A, 32, FmaOps::subtracts, Split>(xs, Sx, W, n4, C, gs, Sg, out, pf);
}
#endif

template <typename A, bool Split>
void pair_grad_chunk_base(const A* xs, int64_t Sx, const A* W, int64_t n4, int64_t C, A* gs,
                          int64_t Sg, const FinishedSums<A>& out, RowPrefetch& pf) {
  pair_grad_chunk_body<A, 16, FmaOps::none, Split>(xs, Sx, W, n4, C, gs, Sg, out, pf);
}

template <typename T, bool Split>
void pair_grad_dispatch(const T* xs, int64_t Sx, const T* W, int64_t n4, int64_t C, T* gs,
                        int64_t Sg, const FinishedSums<T>& out, RowPrefetch& pf) {
#ifdef TSL_X86_LEVELS
  if (x86_level() == 4) return pair_grad_chunk_v4<T, Split>(xs, Sx, W, n4, C, gs, Sg, out, pf);
  if (x86_level() == 3) return pair_grad_chunk_v3<T, Split>(xs, Sx, W, n4, C, gs, Sg, out, pf);
#endif
  pair_grad_chunk_base<T, Split>(xs, Sx, W, n4, C, gs, Sg, out, pf);
}

// rows x width values at dst, row after row: the first `real` rows copied from src (kc <= width
// values each, rows src_stride apart) and zero-padded, the rest zero.
template <typename T>
void copy_rows_zero_padded(T* dst, int64_t rows, int64_t width, const T* src, int64_t src_stride,
                           int64_t real, int64_t kc) {
  for (int64_t r = 0; r < rows; ++r) {
    T* row = dst + r * width;
    int64_t k = 0;
    if (r < real) {
      memcpy(row, src + r * src_stride, sizeof(T) * kc);
      k = kc;
    }
    for (; k < width; ++k) row[k] = T(0);
  }
}

// gx[:, k0:k0+kc] of one cloud x (n, dim) under W (n4 x n4, see pair_grad_chunk_body). When the
// chunk fills its vectors (kc % 16 == 0) and the rows start on cache lines (x, gx and the row
// length multiples of 64 bytes), the tiles read x in place. They add into gx in place too when
// the cloud fills its row blocks (n % 4 == 0) and its rows are not a multiple of 2 KB apart.
// Rows 2 KB apart (D = 2048 or 4096 floats) would put the sixteen rows a tile touches in the
// same L1 sets (x and gx in place ran 0.8x as fast as through scratch at (64, 4096, 16)); there,
// and for clouds that leave padding rows in their last block (whose points then come from
// scratch), the sums run in scratch of (n4 + 4) * kc values and are stored to gx as they finish.
// Rows off the lines (D = 2047 or 2050 doubles) split a load or store in every vector: 1.5-2.0x
// slower than through scratch at (64, 2047), AVX-512 (benchmarks/README.md, "Backward rows off
// the cache lines"). Those, and chunks that do not fill their vectors, run through scratch of
// 2 * n4 * C values (C: kc rounded up to 16), zero-padded. next_x, next_g, next_kc: where the
// chunk that comes after this one starts (rows dim apart, as here; nullptr if none), prefetched
// meanwhile.
template <typename T>
void pair_grad_chunk(const T* x, int64_t n, int64_t dim, const T* W, int64_t n4, int64_t k0,
                     int64_t kc, T* scratch, T* gx, const T* next_x = nullptr,
                     const T* next_g = nullptr, int64_t next_kc = 0) {
  const int64_t blocks = n4 / 4;
  RowPrefetch pf;
  if (next_x != nullptr)
    pf = RowPrefetch(next_x, next_g, dim * int64_t(sizeof(T)), n, next_kc * int64_t(sizeof(T)),
                     blocks * (blocks + 1) / 2);
  const int64_t row_bytes = dim * int64_t(sizeof(T));
  const bool lines = row_bytes % 64 == 0 && reinterpret_cast<uintptr_t>(x + k0) % 64 == 0 &&
                     reinterpret_cast<uintptr_t>(gx + k0) % 64 == 0;
  if (kc % 16 == 0 && lines) {
    if (n == n4 && row_bytes % 2048 != 0) {
      for (int64_t r = 0; r < n; ++r) memset(gx + r * dim + k0, 0, sizeof(T) * kc);
      pair_grad_dispatch<T, false>(x + k0, dim, W, n4, kc, gx + k0, 0, {}, pf);
      return;
    }
    FinishedSums<T> out{gx + k0, dim};
    if (n != n4) {  // the last block's points, zero-padded, after the sums
      T* last_x = scratch + n4 * kc;
      out.last_x = last_x;
      out.last_rows = int(n - (n4 - 4));
      copy_rows_zero_padded(last_x, 4, kc, x + (n4 - 4) * dim + k0, dim, out.last_rows, kc);
    }
    pair_grad_dispatch<T, true>(x + k0, dim, W, n4, kc, scratch, kc, out, pf);
    return;
  }
  const int64_t C = (kc + 15) & ~int64_t(15);
  T* xs = scratch;
  T* gs = scratch + n4 * C;
  copy_rows_zero_padded(xs, n4, C, x + k0, dim, n, kc);
  for (int64_t v = 0; v < n4 * C; ++v) gs[v] = T(0);
  pair_grad_dispatch<T, false>(xs, C, W, n4, C, gs, 0, {}, pf);
  for (int64_t r = 0; r < n; ++r) memcpy(gx + r * dim + k0, gs + r * C, sizeof(T) * kc);
}

// Rows i = 1 .. n - 1 of the pair weights of a uniform numerator: W[i * n4 + j] = T(w / d_ij)
// for j < i where d_ij > 0 (d: n x n, T), +0 where not (W's zero there, as glue::pair_gradients
// hands it); returns the largest |w / d_ij| over the pairs with d_ij > 0. The quotient is taken
// in double and rounded to T once, as glue::fill_pair_weights takes it (a vector division rounds
// as the scalar one), so the same bits; the maximum keeps its "a > top ? a : top" (a NaN quotient
// leaves it). TSLoss's dense weight over all pairs: one scalar division per pair took a third of
// its backward at (256, 16, 4).
template <typename T, int Bytes>
__attribute__((always_inline)) inline double uniform_weight_rows_body(int64_t n, int64_t n4,
                                                                      const T* d, double w,
                                                                      T* W) {
  using VD = typename Vec<double, Bytes>::type;
  using VT = typename Vec<T, Bytes * int(sizeof(T)) / 8>::type;
  constexpr int L = Vec<double, Bytes>::lanes;
  VD top = VD{};
  double top1 = 0.0;
  const VD wv = w - VD{}, zero = VD{};  // a broadcast that keeps -0 (w - 0 is w; -0 + 0 is +0)
  for (int64_t i = 1; i < n; ++i) {
    const T* di = d + i * n;
    T* Wi = W + i * n4;
    int64_t j = 0;
    for (; j + L <= i; j += L) {
      VD dv;
      load_wide<VD, L>(dv, di + j);
      const auto pos = dv > zero;
      const VD q = pos ? wv / dv : zero;
      const VT qt = __builtin_convertvector(q, VT);
      store(Wi + j, qt);
      const VD a = pos ? (q < zero ? -q : q) : zero;
      top = a > top ? a : top;
    }
    for (; j < i; ++j) {
      const double dj = static_cast<double>(di[j]);
      if (!(dj > 0.0)) continue;
      const double q = w / dj, a = std::fabs(q);
      Wi[j] = static_cast<T>(q);
      top1 = a > top1 ? a : top1;
    }
  }
  for (int l = 0; l < L; ++l) top1 = top[l] > top1 ? top[l] : top1;
  return top1;
}

#ifdef TSL_X86_LEVELS
template <typename T>
__attribute__((target("avx512f,avx512vl,avx2,fma"))) double uniform_weight_rows_v4(
    int64_t n, int64_t n4, const T* d, double w, T* W) {
  return uniform_weight_rows_body<T, 64>(n, n4, d, w, W);
}
template <typename T>
__attribute__((target("avx2,fma"))) double uniform_weight_rows_v3(int64_t n, int64_t n4,
                                                                  const T* d, double w, T* W) {
  return uniform_weight_rows_body<T, 32>(n, n4, d, w, W);
}
#endif

template <typename T>
double uniform_weight_rows(int64_t n, int64_t n4, const T* d, double w, T* W) {
#ifdef TSL_X86_LEVELS
  if (x86_level() == 4) return uniform_weight_rows_v4<T>(n, n4, d, w, W);
  if (x86_level() == 3) return uniform_weight_rows_v3<T>(n, n4, d, w, W);
#endif
  return uniform_weight_rows_body<T, 16>(n, n4, d, w, W);
}

}  // namespace cpu
}  // namespace tsloss
