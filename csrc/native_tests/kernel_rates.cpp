// How close each x86 build's distance kernels run to this core's limits:
//
//   kernel_rates [N D B]        (default 32 2048 64)
//
// For every build the CPU supports (baseline, AVX2, AVX-512) it prints, in billions of
// pair-coordinates per second on one thread (one pair-coordinate needs one subtract and one
// fused multiply-add, or a subtract, a multiply and an add in the canonical order):
//   - fma limit: a register-resident loop of subtract + FMA at the build's vector width, the
//     most any difference-form kernel of that width could reach (for the baseline build, which
//     has no FMA, subtract + multiply + add), in double lanes; float32 lanes have twice it;
//   - canonical: the same loop in the canonical order (subtract, multiply, add; every other
//     subtract on the FMA units), the most our bit-identical kernels could reach;
//   - forward: the whole-cloud distance kernel on B clouds of N x D float32 points, streaming
//     them from memory as the op does, and on one cloud kept in cache;
//   - certified: what the ops run on whole float32 clouds of 32-256 points in D >= 256 (AVX2
//     and AVX-512: up to 1024), streaming: Gram sums (one FMA per pair-coordinate) certified
//     against the canonical float32 distances;
//   - backward: the gradient's pair tiles (cpu/distance_grad_tiles.h) over the batch, float32 and
//     float64, counted as N x N x D pair-coordinates per cloud (two operations each: the ordered
//     pairs), so that the same fma limit applies.
// Times are the thread's CPU time, best of several passes, so a busy second core disturbs them
// less than it would wall time.
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "core/x86_level.h"
#include "cpu/distance_tiles.h"
#include "cpu/distance_grad_tiles.h"

namespace {

using tsloss::cpu::Vec;

double thread_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

template <class F>
double best_seconds(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = thread_seconds();
    f();
    best = std::min(best, thread_seconds() - t0);
  }
  return best;
}

// Subtract + FMA (or, with Fma false, subtract + multiply + add) on C independent accumulators,
// the u operands read from an L1-resident buffer as a tile reads them. Returns pair-coordinates
// per second.
enum PeakForm { kSubFma, kCanonical, kCanonicalFmaSub };

template <int Bytes, PeakForm Form>
__attribute__((always_inline)) inline double peak_body(const double* buf, int64_t iters) {
  using VD = typename Vec<double, Bytes>::type;
  constexpr int L = Bytes / 8, C = 12;
  const VD w = VD{} + 0.5;
  // Twelve named accumulators: as an array GCC kept them in memory around the asm statements.
  VD a0{}, a1{}, a2{}, a3{}, a4{}, a5{}, a6{}, a7{}, a8{}, a9{}, a10{}, a11{};
  bool odd = false;  // alternates at compile time once the steps are inlined
  auto step = [&](VD& acc, const double* p) __attribute__((always_inline)) {
    VD u, t;
    tsloss::cpu::load(u, p);
    odd = !odd;
    if (Form == kCanonicalFmaSub && odd)
      tsloss::cpu::subtract<true>(t, u, w);
    else
      t = u - w;
    if constexpr (Form == kSubFma) {
      asm("vfmadd231pd %1, %1, %0" : "+v"(acc) : "v"(t));
    } else {
      t = t * t;
      acc += t;
    }
  };
  const double t0 = thread_seconds();
  for (int64_t it = 0; it < iters; ++it) {
    const double* row = buf + (it & 15) * C * L;
    step(a0, row), step(a1, row + L), step(a2, row + 2 * L), step(a3, row + 3 * L);
    step(a4, row + 4 * L), step(a5, row + 5 * L), step(a6, row + 6 * L), step(a7, row + 7 * L);
    step(a8, row + 8 * L), step(a9, row + 9 * L), step(a10, row + 10 * L), step(a11, row + 11 * L);
  }
  const double seconds = thread_seconds() - t0;
  const VD all = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
  if (all[0] == 1.2345) std::printf(" ");  // keeps the loop alive
  return double(iters) * C * L / seconds;
}

#ifdef TSL_X86_LEVELS
template <PeakForm F>
TSL_AVX512 double peak_avx512(const double* b, int64_t n) { return peak_body<64, F>(b, n); }
template <PeakForm F>
TSL_AVX2 double peak_avx2(const double* b, int64_t n) { return peak_body<32, F>(b, n); }
#endif
double peak_base(const double* b, int64_t n) { return peak_body<16, kCanonical>(b, n); }

// The most a kernel of the build's width could reach: subtract + FMA (baseline: subtract,
// multiply, add, as it has no FMA) or, with canonical, the canonical order's three operations.
double limit(int level, bool canonical) {
  // Line-aligned, as the kernels' rows are. From a plain vector (16-byte aligned) the loads split
  // cache lines by where the allocator put it: on a Zen 5 EPYC the AVX-512 limit read 32-34 G
  // (66-68 G aligned), the AVX2 one 21.6 or 32.7 G from one N, D, B to another (32-34 aligned).
  tsloss::cpu::LineVector<double> buf(16 * 12 * 8, 0.25);
  const int64_t iters = 20000000;
  double best = 0.0;
  for (int r = 0; r < 3; ++r) {
#ifdef TSL_X86_LEVELS
    if (level == 4)
      best = std::max(best, canonical ? peak_avx512<kCanonicalFmaSub>(buf.data(), iters)
                                      : peak_avx512<kSubFma>(buf.data(), iters));
    if (level == 3)
      best = std::max(best, canonical ? peak_avx2<kCanonicalFmaSub>(buf.data(), iters)
                                      : peak_avx2<kSubFma>(buf.data(), iters));
#endif
    if (level == 0) best = std::max(best, peak_base(buf.data(), iters));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 32;
  const int64_t dim = argc > 2 ? std::atoll(argv[2]) : 2048;
  const int64_t batch = argc > 3 ? std::atoll(argv[3]) : 64;
  if (n < 2 || n > 256 || dim < 1 || batch < 1) {
    std::fprintf(stderr, "usage: %s [N D B] with 2 <= N <= 256 (the whole-cloud kernel)\n",
                 argv[0]);
    return 2;
  }
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  // Points and gradients start on a 64-byte line, as torch's CPU tensors do. From std::vector
  // (16-byte aligned) the backward's in-place rows split cache lines and read 65 G against the
  // op's ~81 G at (256, 768, 4) on the Zen 5 (AVX-512, float32, one thread).
  tsloss::cpu::LineVector<float> x(batch * n * dim);
  for (float& v : x) v = normal(rng);
  tsloss::cpu::LineVector<double> xd(x.begin(), x.end());
  std::vector<double> sq(n * n);
  tsloss::cpu::LineVector<double> scratch(tsloss::cpu::lower_cloud_scratch(n));
  // The backward's weights (every pair, so no tile is skipped), gradients and scratch.
  const int64_t n4 = (n + 3) / 4 * 4;
  std::vector<float> wf(n4 * n4, 0.5f);
  tsloss::cpu::LineVector<float> gf(batch * n * dim);
  tsloss::cpu::LineVector<float> bf(2 * n4 * tsloss::cpu::grad_chunk(4));
  std::vector<double> wd(n4 * n4, 0.5);
  tsloss::cpu::LineVector<double> gd(batch * n * dim);
  tsloss::cpu::LineVector<double> bd(2 * n4 * tsloss::cpu::grad_chunk(8));
  const double pair_coords = double(n) * double(n - 1) / 2.0 * double(dim);
  const double grad_coords = double(n) * double(n) * double(dim);
  std::printf("N=%lld D=%lld B=%lld, one thread, 1e9 pair-coordinates per second "
              "(ratio: fma limit / rate)\n",
              (long long)n, (long long)dim, (long long)batch);
  std::printf("%-9s %10s %10s %18s %18s %18s %18s %18s\n", "build", "fma limit", "canonical",
              "forward (stream)", "forward (cached)", "certified", "backward f32",
              "backward f64");
  const char* names[5] = {"baseline", "", "", "avx2", "avx512"};
  for (int level : {0, 3, 4}) {
    if (!tsl::set_x86_cap(level)) continue;
    const double fma = limit(level, false), canonical = limit(level, true);
    const double stream = best_seconds(5, [&] {
      for (int64_t b = 0; b < batch; ++b)
        tsloss::cpu::squared_distance_lower(&x[b * n * dim], n, dim, sq.data());
    }) / double(batch);
    const double certified = best_seconds(5, [&] {
      for (int64_t b = 0; b < batch; ++b)
        tsloss::cpu::certified_squares_lower(&x[b * n * dim], n, dim, sq.data());
    }) / double(batch);
    const double cached = best_seconds(5, [&] {
      for (int r = 0; r < 16; ++r) tsloss::cpu::squared_distance_lower(x.data(), n, dim, sq.data());
    }) / 16.0;
    // The backward's pair tiles over the batch, chunk by chunk, each chunk prefetching the next
    // (the next cloud's first at a cloud's end), as glue::pair_gradients runs them.
    auto grad_pass = [&](const auto* points, const auto* w, auto* g, auto* buf) {
      using T = std::remove_cv_t<std::remove_pointer_t<decltype(points)>>;
      const int64_t chunk = tsloss::cpu::grad_chunk(sizeof(T));
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t k0 = 0; k0 < dim; k0 += chunk) {
          const bool last = k0 + chunk >= dim;
          const int64_t nb = last ? b + 1 : b, nk = last ? 0 : k0 + chunk;
          const bool next = nb < batch;
          tsloss::cpu::pair_grad_chunk(points + b * n * dim, n, dim, w, n4, k0,
                                       std::min(chunk, dim - k0), buf, g + b * n * dim,
                                       next ? points + nb * n * dim + nk : nullptr,
                                       next ? g + nb * n * dim + nk : nullptr,
                                       next ? std::min(chunk, dim - nk) : 0);
        }
    };
    const double back_f =
        best_seconds(5, [&] { grad_pass(x.data(), wf.data(), gf.data(), bf.data()); }) /
        double(batch);
    const double back_d =
        best_seconds(5, [&] { grad_pass(xd.data(), wd.data(), gd.data(), bd.data()); }) /
        double(batch);
    // float32 lanes are twice as many per vector as double lanes: twice the limit.
    auto cell = [&](double rate, double lanes) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%6.2f (%4.2fx)", rate / 1e9, lanes * fma / rate);
      return std::string(buf);
    };
    std::printf("%-9s %10.2f %10.2f %18s %18s %18s %18s %18s\n", names[level], fma / 1e9,
                canonical / 1e9, cell(pair_coords / stream, 1).c_str(),
                cell(pair_coords / cached, 1).c_str(), cell(pair_coords / certified, 1).c_str(),
                cell(grad_coords / back_f, 2).c_str(),
                cell(grad_coords / back_d, 1).c_str());
  }
  tsl::set_x86_cap(-1);
  return 0;
}
