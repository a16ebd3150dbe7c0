// The terms of TSLoss for one cloud and their derivatives, shared by the CPU op
// (cpu/tsloss_cpu.cpp) and the CUDA kernels (cuda/tsloss_kernels.cuh), so the CPU tests
// exercise the arithmetic the GPU runs. Definitions (tsloss_cuda/loss.py): for a cloud of n
// points with scale s, H0 deaths D_r (n - 1 of them) and H1 bars (b_q, d_q) (K rows, `count`
// real ones):
//
//   u_r = D_r / s,  v_q = (d_q - b_q) / s for q < count, else 0 (padding)
//   connectivity C = mean_r u_r                      ("total")
//                  = mean_r |u_r - target|           ("target")
//   redundancy   R = sum_{q < count} v_q^p
//   stability    S = mean_r (u_r - prev0_r)^2 + mean_{q < M} (v_q - prev1_q)^2   (with a previous
//                    call; M = stability_rows: the rows holding a bar now or then)
//   L = w_C C + w_R R + w_S S      (a term weighed 0 left out: loss_of)
//
// A cloud whose H1 is unknown (count < 0: the device's reduction ran out of memory, or the
// input was invalid) has R = NaN and S = NaN with a previous call: its loss is NaN wherever
// those terms count, never a plausible number without its loops. They pass no gradient
// (known_coefficients); an overflowed cloud's connectivity, from its exact H0, keeps its own.
// Its topology's H1 rows are zeros (h1_unit).
//
// The per-element pieces are separate functions so that the host can loop over a cloud while a
// CUDA block gives each element a thread and reduces in a fixed order. u and v are rounded to T
// exactly as the Python composition rounds them (T division of T values): given the same scale
// s, the detached topology the stability term keeps is the same on every backend. Sums run in
// double. What is not bit-identical across backends, all compared by the CUDA tests to 1e-12
// relative in float64 (1e-5 in float32):
// - the scale: the CPU sums the distances in row order, the CUDA distance kernel per tile and
//   then over tiles, so s may differ in its last bit;
// - the sums of the terms (C, R, S) and of ds in the backward: a CUDA block adds strided
//   partial sums and then reduces them, where the host adds element by element;
// - a point's gradient: the CUDA kernel adds the dense scale term and the bar terms
//   separately, w * sum_j (x_i - x_j) / d_ij + sum_bars g (x_i - x_other) / d, where the host
//   multiplies each pair's difference once by the pair's total weight;
// - p other than 1 and 2: the device's pow is within 2 ulp, glibc's within 1.
#pragma once

#include <math.h>

#include "common.h"

namespace tsl {

// Codes of the `reduction` argument of the tsloss ops.
enum TsReduction : int { kReduceNone = 0, kReduceMean = 1, kReduceSum = 2 };

struct TermOptions {
  bool normalize;    // s = mean pairwise distance (else s = 1)
  bool target_mode;  // connectivity |u - target| (else u)
  bool has_prev;     // a previous topology is given: the stability term is on
  double target;
  double p;
  double w_conn, w_red, w_stab;
};

// The limits from the compiler's own macros (GCC, Clang; nvcc passes its host compiler's), not
// <float.h>'s: macOS's math.h takes float.h for INFINITY alone (__need_infinity_nan), and under
// libc++ in C++20 (no transitive include of the whole float.h first) the wrapper's guard then
// hides FLT_MIN and the rest (tests/test_portability.py, arm64 macOS).
template <typename T>
TSL_HD T tiny_of() {
  return sizeof(T) == 4 ? (T)__FLT_MIN__ : (T)__DBL_MIN__;
}

template <typename T>
TSL_HD T max_of() {
  return sizeof(T) == 4 ? (T)__FLT_MAX__ : (T)__DBL_MAX__;
}

// The raw scale of a cloud from the sum of its distances over unordered pairs {i > j}: their
// mean over the n(n-1) ordered pairs. The forward saves it for the backward, which clamps it
// again: the clamped value alone cannot tell a mean at the bound (the gradient passes) from one
// below it (it does not).
// The sum over ordered pairs is rounded to T first, as the composition it replaced summed in T.
// Where that sum outgrows T but the mean does not (float32 distances above ~1e35 at N = 64),
// the mean is taken from the double sum instead: rounded to T, the sum was Inf, every term 0
// and the gradient 0, a silently dead loss. A sum past float64's range (float64 distances above
// ~1e305 at N = 64) leaves no mean to take: the scale is NaN, and so the loss.
template <typename T>
TSL_HD T raw_scale(double pair_sum, index_t n) {
  const double ordered = n > 1 ? (double)(n * (n - 1)) : 1.0;
  if (!(pair_sum <= max_of<double>())) return (T)NAN;  // NaN in, NaN out too
  const T total = (T)(2.0 * pair_sum);
  if (total > max_of<T>()) return (T)(2.0 * (pair_sum / ordered));
  return (T)(total / (T)ordered);
}

// The scale from the raw mean: clamped to the dtype's smallest normal so that a cloud of equal
// points divides by something, 1 without normalize. `grad_passes` says whether d s / d distances
// is non-zero (torch's clamp_min passes the gradient where the input is >= the bound).
template <typename T>
TSL_HD T clamp_scale(T raw, bool normalize, bool* grad_passes) {
  if (!normalize) {
    *grad_passes = false;
    return T(1);
  }
  *grad_passes = raw >= tiny_of<T>();
  if (raw != raw) return raw;  // NaN passes through, as through torch's clamp_min
  return *grad_passes ? raw : tiny_of<T>();
}

TSL_HD double conn_value(double u, const TermOptions& o) {
  return o.target_mode ? fabs(u - o.target) : u;
}

// d conn_value / d u; 0 at the kink, as torch's abs.
TSL_HD double conn_slope(double u, const TermOptions& o) {
  if (!o.target_mode) return 1.0;
  const double t = u - o.target;
  return t > 0.0 ? 1.0 : (t < 0.0 ? -1.0 : 0.0);
}

TSL_HD double red_value(double v, const TermOptions& o) {
  if (o.p == 1.0) return v;
  if (o.p == 2.0) return v * v;
  return pow(v, o.p);
}

TSL_HD double red_slope(double v, const TermOptions& o) {
  if (o.p == 1.0) return 1.0;
  if (o.p == 2.0) return 2.0 * v;
  return o.p * pow(v, o.p - 1.0);
}

// H0 row r: u_r, rounded to T.
template <typename T>
TSL_HD T h0_unit(T death, T s) {
  return death / s;
}

// H1 row q: v_q (rounded to T), 0 for padding rows and for every row of a cloud whose count is
// negative (the CUDA overflow / invalid-input codes: no bar is known; the terms built on them
// are NaN, redundancy_of and stability_of). Zeros rather than NaN in the topology, which a later
// call takes as its previous one, where NaN is refused (TSLoss keeps the last known rows).
template <typename T>
TSL_HD T h1_unit(T birth, T death, T s, index_t q, int64_t count) {
  return q < count ? (T)(death - birth) / s : T(0);
}

// The rows the stability term's H1 part averages over: those holding a bar of this call
// (count, at most K) or of the previous one (its last non-zero row: a topology keeps no count,
// and a bar's persistence is never 0). Rows past both are zero in both and add nothing.
// Averaged over all K rows, as before, the term shrank as max_h1 grew although no bar was
// truncated (K/M times smaller).
template <typename T>
TSL_HD index_t stability_rows(const T* prev_h1, index_t K, int64_t count) {
  const index_t now = count < 0 ? 0 : (count < (int64_t)K ? (index_t)count : K);
  for (index_t q = K; q > now; --q)
    if (prev_h1[q - 1] != T(0)) return q;  // NaN too: it must reach the term
  return now;
}

// Per-cloud sums of the three terms, before the weights.
struct CloudSums {
  double conn, red, stab;
};

// The redundancy and stability of a cloud from their sums: NaN where the cloud's H1 is unknown
// (count < 0), the stability only with a previous call (without one it is 0 by definition).
TSL_HD double redundancy_of(double r, int64_t count) { return count < 0 ? (double)NAN : r; }
TSL_HD double stability_of(double h0_part, double h1_part, int64_t count, bool has_prev) {
  if (!has_prev) return 0.0;
  return count < 0 ? (double)NAN : h0_part + h1_part;
}

// A cloud's loss: a term weighed 0 is left out, so that an unknown (NaN) term makes the loss
// NaN only where it counts (redundancy 0 without stability: H1 does not enter the loss).
TSL_HD double loss_of(double conn, double red, double stab, const TermOptions& o) {
  double v = 0.0;
  if (o.w_conn != 0.0) v += o.w_conn * conn;
  if (o.w_red != 0.0) v += o.w_red * red;
  if (o.w_stab != 0.0) v += o.w_stab * stab;
  return v;
}

// All terms of one cloud, serially (the host's loop; a CUDA block computes the same per element
// and reduces). h0: (n-1, 2) rows (0, death); h1: (K, 2) rows (birth, death); prev_h0: (n-1),
// prev_h1: (K), both read only when o.has_prev. Writes the detached topology: topo_h0 (n-1) =
// u, topo_h1 (K) = v.
template <typename T>
TSL_HD CloudSums cloud_terms(const T* h0, index_t n, const T* h1, index_t K, int64_t count, T s,
                             const T* prev_h0, const T* prev_h1, const TermOptions& o,
                             T* topo_h0, T* topo_h1) {
  CloudSums out{0.0, 0.0, 0.0};
  const index_t H0 = n > 0 ? n - 1 : 0;
  double c = 0.0, s0 = 0.0, r = 0.0, s1 = 0.0;
  for (index_t i = 0; i < H0; ++i) {
    const T u = h0_unit(h0[2 * i + 1], s);
    topo_h0[i] = u;
    c += conn_value((double)u, o);
    if (o.has_prev) {
      const double t = (double)u - (double)prev_h0[i];
      s0 += t * t;
    }
  }
  for (index_t q = 0; q < K; ++q) {
    const T v = h1_unit(h1[2 * q], h1[2 * q + 1], s, q, count);
    topo_h1[q] = v;
    if (q < count) r += red_value((double)v, o);
    if (o.has_prev) {
      const double t = (double)v - (double)prev_h1[q];
      s1 += t * t;
    }
  }
  out.conn = H0 > 0 ? c / (double)H0 : 0.0;
  out.red = redundancy_of(r, count);
  const index_t rows = o.has_prev ? stability_rows(prev_h1, K, count) : 0;
  out.stab = stability_of(H0 > 0 ? s0 / (double)H0 : 0.0, rows > 0 ? s1 / (double)rows : 0.0,
                          count, o.has_prev);
  return out;
}

// Per-cloud multipliers of the backward: the upstream gradient reaching each term of this cloud
// (weight times the loss's gradient, plus any gradient on the returned term itself).
struct CloudCoefficients {
  double conn, red, stab, scale;  // d out / d C, d R, d S, and d out / d s directly
};

// The coefficients that reach a cloud's points: an unknown (NaN) redundancy or stability term
// (count < 0) passes none, as torch.where passes none to the branch it does not take. (An
// invalid cloud, kInvalidInputCount, gets no gradient at all: its tree was built on NaN.)
TSL_HD CloudCoefficients known_coefficients(CloudCoefficients k, int64_t count) {
  if (count < 0) k.red = k.stab = 0.0;
  return k;
}

// d out / d D_r (the H0 death) for row r, given u_r; adds -(d out / d u_r) u_r / s to *ds.
template <typename T>
TSL_HD double h0_death_grad(T u, T prev, index_t H0, double s, const TermOptions& o,
                            const CloudCoefficients& k, double* ds) {
  double g = k.conn * conn_slope((double)u, o);
  // Not by a zero coefficient: 0 times a non-finite previous would be NaN (known_coefficients).
  if (o.has_prev && k.stab != 0.0) g += k.stab * 2.0 * ((double)u - (double)prev);
  g /= (double)H0;
  *ds -= g * (double)u / s;
  return g / s;
}

// d out / d (d_q - b_q) for H1 row q, given v_q; adds -(d out / d v_q) v_q / s to *ds. Padding
// rows carry nothing: their v is the constant 0. rows: stability_rows of the cloud (at least
// q + 1 for a bar's row q).
template <typename T>
TSL_HD double h1_pers_grad(T v, T prev, index_t q, int64_t count, index_t rows, double s,
                           const TermOptions& o, const CloudCoefficients& k, double* ds) {
  if (q >= count) return 0.0;
  double g = k.red * red_slope((double)v, o);
  if (o.has_prev && k.stab != 0.0) g += k.stab * 2.0 * ((double)v - (double)prev) / (double)rows;
  *ds -= g * (double)v / s;
  return g / s;
}

// The weight on every unordered pair {i, j} from d out / d s: s is the mean of the n(n-1)
// ordered distances, and both d_ij and d_ji are the one distance.
TSL_HD double dense_pair_weight(double ds, index_t n, bool grad_passes) {
  if (!grad_passes) return 0.0;
  const double ordered = n > 1 ? (double)(n * (n - 1)) : 1.0;
  return 2.0 * ds / ordered;
}

// Multiplier of a cloud's upstream gradient under the batch reduction: g is the gradient of a
// reduced output (one value, or B values with kReduceNone).
template <typename G>
TSL_HD double reduced_grad(const G* g, index_t b, index_t B, int reduction) {
  if (g == nullptr) return 0.0;
  if (reduction == kReduceNone) return (double)g[b];
  return reduction == kReduceMean ? (double)g[0] / (double)B : (double)g[0];
}

}  // namespace tsl
