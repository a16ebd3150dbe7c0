// The CUDA kernels that are not written on the warp contract, run on the host by cuda_host.h
// (each of a block's threads a fiber), against the host:
// - the distance kernel (csrc/cuda/pairwise_distance_kernel.cuh): its distances bit for bit
//   against the canonical ones (core/pairwise_distance.h) on both routes (float32's certified
//   Gram sums with the canonical fallback, float64's canonical sums), its Gram sums bit for bit
//   against a host sum in the kernel's stated order, its per-block partials, and its results
//   unchanged by the order the fibers run in;
// - the fused TSLoss kernels (csrc/cuda/tsloss_kernels.cuh): terms, the batch's reduction by the
//   last block to finish (blocks run in a seeded order), edge weights and incidence lists,
//   gradient, on the scalar engine's diagrams of the distance kernel's output;
// - vr_persistence's backward (csrc/cuda/vr_backward_kernel.cuh): bit for bit against the CPU
//   op's edge by edge rule (cpu/edge_gradients.h), from points and from distances.
// Run by ctest (not under the sanitizers: ASan does not follow swapcontext's stacks).
//
//   test_cuda_host
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "check.h"
#include "clouds.h"
#include "cuda_host.h"
#include "cuda/pairwise_distance_kernel.cuh"
#include "cuda/tsloss_kernels.cuh"
#include "cuda/vr_backward_kernel.cuh"
#include "cpu/edge_gradients.h"

namespace {

namespace dk = tsl::cuda::distance_kernel;
namespace tk = tsl::cuda::tsloss_kernel;
using tsl::index_t;
using tsl_test::aborts;

template <typename T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0 || (a != a && b != b);
}

// The shim itself: a block sum through shared memory and both shuffles, in any fiber order.
void test_shim() {
  for (uint64_t seed : {0u, 7u}) {
    std::vector<double> out(2, 0.0);
    std::vector<int> flags(2, 0);
    cuda_host::launch(dim3(2), dim3(96), seed, [&] {
      __shared__ double warp_sums[3];
      const unsigned t = threadIdx.x;
      double v = double(t + 1 + 1000 * blockIdx.x);
      double x = v;
      for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
      for (int off = 1; off < 32; off <<= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
      if (t % 32 == 0) warp_sums[t / 32] = v;
      __syncthreads();
      const int any = __syncthreads_or(t == 95 && blockIdx.x == 1);
      if (t == 0) {
        out[blockIdx.x] = warp_sums[0] + warp_sums[1] + warp_sums[2];
        flags[blockIdx.x] = any;
      }
      if (x != (t < 32 ? 528.0 : t < 64 ? 1552.0 : 2576.0) + 32000.0 * blockIdx.x)
        cuda_host::refuse("shfl_xor sum");
    });
    CHECK(out[0] == 4656.0 && out[1] == 4656.0 + 96000.0, "block sums %g %g", out[0], out[1]);
    CHECK(flags[0] == 0 && flags[1] == 1, "__syncthreads_or %d %d", flags[0], flags[1]);
  }
  CHECK(aborts([] {
          cuda_host::launch(dim3(1), dim3(32), 0, [] {
            if (threadIdx.x == 5) return;
            (void)__shfl_xor_sync(0xffffffffu, 1.0, 1);
          });
        }),
        "a shuffle a lane left must abort");
  CHECK(aborts([] {
          cuda_host::launch(dim3(1), dim3(32), 0,
                            [] { (void)__shfl_xor_sync(0x0000ffffu, 1.0, 1); });
        }),
        "a partial mask must abort");
  CHECK(aborts([] {
          cuda_host::launch(dim3(1), dim3(32), 0, [] {
            if (threadIdx.x < 16)
              __syncthreads();
            else
              (void)__shfl_xor_sync(0xffffffffu, 1.0, 1);
          });
        }),
        "a shuffle against a block barrier must abort");
}

// tsloss_kernels.cuh's block_sum, called back to back as the terms kernel calls it: every
// thread gets each sum, whichever warp runs ahead (its shared scratch is reused).
void check_block_sum() {
  for (uint64_t seed : {0u, 1u, 2u, 3u, 5u, 8u}) {
    int bad = 0;
    cuda_host::launch(dim3(1), dim3(tk::kTermThreads), seed, [&] {
      __shared__ double scratch[tk::kTermThreads / 32];
      const double t = threadIdx.x;
      for (int call = 0; call < 3; ++call) {
        const double v = double(call + 1) * t * double(threadIdx.x / 32 + 1);
        const double sum = tk::block_sum(v, scratch);
        double want = 0.0;  // sum over threads of (call + 1) t (t / 32 + 1), exact in double
        for (int u = 0; u < tk::kTermThreads; ++u) want += double(call + 1) * u * (u / 32 + 1);
        bad += sum != want;
      }
    });
    CHECK(bad == 0, "block_sum, seed %llu: %d wrong sums", (unsigned long long)seed, bad);
  }
}

// The kernel on B clouds of x (B, N, D); returns (out, partial), and clears *zero_word if given.
template <typename T>
void run_kernel(const std::vector<T>& x, int64_t B, int64_t N, int64_t D, uint64_t seed,
                std::vector<T>* out, std::vector<double>* partial, unsigned* zero_word = nullptr) {
  const int64_t nt = (N + dk::kBlockRows - 1) / dk::kBlockRows, tiles = nt * (nt + 1) / 2;
  out->assign(B * N * N, T(-7));
  partial->assign(B * tiles, -7.0);
  T* o = out->data();
  double* p = partial->data();
  constexpr bool gram = sizeof(T) == 4;
  cuda_host::launch(dim3(unsigned(tiles), unsigned(B)), dim3(dk::kThreads), seed, [&] {
    dk::pairwise_distance_kernel<T, gram>(x.data(), N, D, o, p, tiles, zero_word);
  });
}

// Gaussian clouds; `kind` 1 repeats points (the certified route must fall back), 2 shifts the
// cloud to 1e4 (no pair certifies without the centre), 3 puts a NaN and an Inf in, 4 (float64)
// scales to 1e-160 (squares underflow: the scaled sum), 5 is 2 with an outlier among the
// centre's rows (no centre: blocks fall back).
template <typename T>
std::vector<T> cloud(int64_t B, int64_t N, int64_t D, int kind, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  std::vector<T> x(B * N * D);
  for (auto& v : x) v = T(g(rng));
  for (int64_t b = 0; b < B; ++b) {
    T* c = x.data() + b * N * D;
    if (kind == 1 && N >= 3)
      for (int64_t i = 1; i < N; i += 3) std::memcpy(c + i * D, c + (i - 1) * D, D * sizeof(T));
    if (kind == 2 || kind == 5)
      for (int64_t k = 0; k < N * D; ++k) c[k] = T(c[k] + 1e4);
    if (kind == 5)
      for (int64_t k = 0; k < D; ++k) c[k] = T(c[k] * 1000.0);
    if (kind == 3 && N >= 4) {
      c[1 * D + D / 2] = T(NAN);
      c[3 * D] = T(INFINITY);
    }
    if (kind == 4)
      for (int64_t k = 0; k < N * D; ++k) c[k] = T(c[k] * 1e-160);
  }
  return x;
}

template <typename T>
void check_distances(int64_t B, int64_t N, int64_t D, int kind, uint64_t seed) {
  const std::vector<T> x = cloud<T>(B, N, D, kind, seed);
  std::vector<T> out, out2;
  std::vector<double> partial, partial2;
  run_kernel(x, B, N, D, 0, &out, &partial);
  run_kernel(x, B, N, D, seed + 1, &out2, &partial2);  // another fiber order
  const int64_t nt = (N + dk::kBlockRows - 1) / dk::kBlockRows, tiles = nt * (nt + 1) / 2;
  int bad = 0, order = 0;
  for (int64_t e = 0; e < B * N * N; ++e) order += !same_bits(out[e], out2[e]);
  for (int64_t e = 0; e < B * tiles; ++e) order += !same_bits(partial[e], partial2[e]);
  std::vector<double> tile_sum(B * tiles, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    const T* c = x.data() + b * N * D;
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < N; ++j) {
        const T got = out[(b * N + i) * N + j];
        const T want = i == j ? T(0) : T(tsl::point_distance(c + i * D, c + j * D, D));
        if (!same_bits(got, want) && bad++ < 3)
          std::printf("  (b, i, j) = (%lld, %lld, %lld): %.9g, canonical %.9g\n", (long long)b,
                      (long long)i, (long long)j, double(got), double(want));
        if (i > j) {
          const int64_t bi = i / dk::kBlockRows, bj = j / dk::kBlockRows;
          tile_sum[b * tiles + bi * (bi + 1) / 2 + bj] += double(want);
        }
      }
  }
  CHECK(bad == 0, "%s N=%lld D=%lld kind=%d: %d distances not the canonical ones",
        sizeof(T) == 4 ? "float32" : "float64", (long long)N, (long long)D, kind, bad);
  CHECK(order == 0, "N=%lld D=%lld kind=%d: %d values depend on the fibers' order", (long long)N,
        (long long)D, kind, order);
  for (int64_t e = 0; e < B * tiles; ++e) {
    const double want = tile_sum[e], got = partial[e];
    const bool ok = std::isfinite(want) ? std::fabs(got - want) <= 1e-12 * std::fabs(want)
                                        : !std::isfinite(got);
    CHECK(ok, "N=%lld D=%lld kind=%d: partial %lld is %.17g, the tile's distances sum to %.17g",
          (long long)N, (long long)D, kind, (long long)e, got, want);
  }
}

// The certified route's sums themselves: each thread's acc, nu and nv after tile_sums, bit for
// bit against a host sum in the order the kernel states (lane l sums the coordinates k = l
// (mod 8) by FMA in increasing k, less tsl::certify_centre; then the lane tree), where the
// distances alone cannot tell (any sums that fail certification fall back to the canonical).
void check_gram_sums(int64_t N, int64_t D, uint64_t seed) {
  const std::vector<float> x = cloud<float>(1, N, D, 2, seed);
  const int64_t nt = (N + dk::kBlockRows - 1) / dk::kBlockRows, tiles = nt * (nt + 1) / 2;
  std::vector<double> gram(N * N, NAN), norm_u(N, NAN), norm_v(N, NAN);
  cuda_host::launch(dim3(unsigned(tiles)), dim3(dk::kThreads), seed, [&] {
    __shared__ double xi[dk::kBlockRows][dk::kStride];
    __shared__ double xj[dk::kBlockRows][dk::kStride];
    __shared__ double centre_rows[dk::kPass][dk::kChunk];
    int64_t bi, bj;
    dk::tile_of(blockIdx.x, &bi, &bj);
    const int64_t i0 = bi * dk::kBlockRows, j0 = bj * dk::kBlockRows;
    const int tid = threadIdx.x, lane = tid % dk::kLanes, group = tid / dk::kLanes;
    const int ti = (group / (dk::kBlockRows / dk::kReg)) * dk::kReg;
    const int tj = (group % (dk::kBlockRows / dk::kReg)) * dk::kReg;
    double acc[dk::kReg][dk::kReg], nu[dk::kReg], nv[dk::kReg];
    dk::tile_sums<float, true>(x.data(), N, D, 0, D, i0, j0, ti, tj, lane, tid, xi, xj,
                               centre_rows, acc, nu, nv);
    for (int a = 0; a < dk::kReg; ++a)
      for (int q = 0; q < dk::kReg; ++q) {
        const int64_t i = i0 + ti + a, j = j0 + tj + q;
        if (i >= N || j >= N) continue;
        if (lane == (a * dk::kReg + q) % dk::kLanes) gram[i * N + j] = acc[a][q];
        if (q == 0 && lane == a) norm_u[i] = nu[a];
        if (a == 0 && lane == q) norm_v[j] = nv[q];
      }
  });
  std::vector<double> y(N * D);
  for (int64_t k = 0; k < D; ++k) {
    const double c = double(tsl::certify_centre(x.data(), N, D, k));
    for (int64_t i = 0; i < N; ++i) y[i * D + k] = double(x[i * D + k]) - c;
  }
  auto sum = [&](int64_t i, int64_t j) {
    double s[tsl::kDistanceLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t k = 0; k < D; ++k)
      s[k % tsl::kDistanceLanes] = std::fma(y[i * D + k], y[j * D + k], s[k % tsl::kDistanceLanes]);
    return tsl::lane_tree(s);
  };
  int bad = 0, certified = 0, pairs = 0;
  for (int64_t i = 0; i < N; ++i) {
    // Every row block is some tile's rows (bi, 0) and some tile's columns (bj, bj).
    bad += !same_bits(norm_u[i], sum(i, i)) + !same_bits(norm_v[i], sum(i, i));
    for (int64_t j = 0; j <= i; ++j) {
      if (i / dk::kBlockRows < j / dk::kBlockRows) continue;
      bad += !same_bits(gram[i * N + j], sum(i, j));
      if (j < i) {
        double s;
        certified += tsl::certify_float_square(sum(i, i) + sum(j, j), sum(i, j), D, &s);
        ++pairs;
      }
    }
  }
  CHECK(bad == 0, "Gram sums N=%lld D=%lld: %d differ from the stated order", (long long)N,
        (long long)D, bad);
  // An off-centre cloud certifies nearly all pairs (by its centre): the route the kernel is for
  // is the one taken.
  CHECK(certified * 10 >= pairs * 9, "N=%lld D=%lld: only %d of %d pairs certify", (long long)N,
        (long long)D, certified, pairs);
}


// The split kernel's two phases (pairwise_distance_kernel.cuh), launched one after the other as
// the device's grid barrier orders them, blocks in a seeded order: the one-block kernel's
// distances and partials bit for bit, the zero word cleared, and the slices' sums the tile's
// Gram sums and norms (to rounding: the certificate, not the order, makes the distances equal;
// a lost or doubled slice would pass wherever a pair then failed certification and was summed
// again canonically). slices_want: a request, cut into slices of whole chunks by cut_slices, as
// the launcher's split_plan cuts it.
void check_split(int64_t B, int64_t N, int64_t D, int kind, int slices_want, uint64_t seed) {
  const std::vector<float> x = cloud<float>(B, N, D, kind, seed);
  std::vector<float> out;
  std::vector<double> partial;
  run_kernel(x, B, N, D, 0, &out, &partial);
  const int64_t nt = (N + dk::kBlockRows - 1) / dk::kBlockRows, tiles = nt * (nt + 1) / 2;
  const int64_t chunks = (D + dk::kChunk - 1) / dk::kChunk;
  const dk::SliceCut cut = dk::cut_slices(chunks, slices_want);
  const int64_t per = cut.per_chunks;
  const int slices = cut.slices;
  CHECK((slices - 1) * per < chunks && slices * per >= chunks && slices <= slices_want,
        "cut_slices(%lld, %d): %d slices of %lld chunks", (long long)chunks, slices_want, slices,
        (long long)per);
  CHECK(slices >= 2, "split N=%lld D=%lld: %d slices (a test of nothing)", (long long)N,
        (long long)D, slices);
  std::vector<double> ws(B * tiles * slices * dk::kSliceValues, NAN);
  std::vector<float> out2(B * N * N, -7.0f);
  std::vector<double> partial2(B * tiles, -7.0);
  unsigned zero = 5;
  const dim3 grid(unsigned(tiles * slices), unsigned(B));
  cuda_host::launch(grid, dim3(dk::kThreads), seed, [&] {
    __shared__ dk::TileShared sh;
    dk::distance_slice_sums<float>(x.data(), N, D, tiles, slices, per * dk::kChunk, ws.data(), sh,
                                   &zero);
  });
  cuda_host::launch(grid, dim3(dk::kThreads), seed + 1, [&] {
    __shared__ dk::TileShared sh;
    dk::distance_finish_slices<float>(x.data(), N, D, out2.data(), partial2.data(), tiles, slices,
                                      ws.data(), sh);
  });
  int bad = 0, sums = 0;
  for (int64_t e = 0; e < B * N * N; ++e) bad += !same_bits(out[e], out2[e]);
  for (int64_t e = 0; e < B * tiles; ++e) bad += !same_bits(partial[e], partial2[e]);
  CHECK(bad == 0 && zero == 0u, "split N=%lld D=%lld kind=%d slices=%d: %d values differ from "
        "the one-block kernel's, zero word %u", (long long)N, (long long)D, kind, slices, bad,
        zero);
  // The slices' sums against the host's, from the same centred coordinates.
  if (kind == 3) return;  // non-finite sums compare as NaN
  for (int64_t b = 0; b < B; ++b) {
    const float* c = x.data() + b * N * D;
    std::vector<double> y(N * D);
    for (int64_t k = 0; k < D; ++k) {
      const double ck = double(tsl::certify_centre(c, N, D, k));
      for (int64_t i = 0; i < N; ++i) y[i * D + k] = double(c[i * D + k]) - ck;
    }
    auto dot = [&](int64_t i, int64_t j) {
      long double s = 0.0L;
      for (int64_t k = 0; k < D; ++k) s += (long double)y[i * D + k] * y[j * D + k];
      return double(s);
    };
    for (int64_t t = 0; t < tiles; ++t) {
      int64_t bi, bj;
      dk::tile_of(t, &bi, &bj);
      for (int g = 0; g < dk::kGroups; ++g) {
        const int ti = (g / (dk::kBlockRows / dk::kReg)) * dk::kReg;
        const int tj = (g % (dk::kBlockRows / dk::kReg)) * dk::kReg;
        for (int v = 0; v < dk::kSliceGroupValues; ++v) {
          const int64_t i = bi * dk::kBlockRows + ti + (v < 16 ? v / 4 : v < 20 ? v - 16 : 0);
          const int64_t j = bj * dk::kBlockRows + tj + (v < 16 ? v % 4 : v < 20 ? 0 : v - 20);
          if (i >= N || j >= N) continue;
          const double want = v < 16 ? dot(i, j) : v < 20 ? dot(i, i) : dot(j, j);
          double got = 0.0;
          for (int s = 0; s < slices; ++s)
            got += ws[((b * tiles + t) * slices + s) * dk::kSliceValues +
                      g * dk::kSliceGroupValues + v];
          const double scale = dot(i, i) + dot(j, j);
          if (!(std::fabs(got - want) <= 1e-12 * scale + 1e-300) && sums++ < 3)
            std::printf("  slice sums (b, tile, group, value) = (%lld, %lld, %d, %d): %.17g, "
                        "host %.17g\n", (long long)b, (long long)t, g, v, got, want);
        }
      }
    }
  }
  CHECK(sums == 0, "split N=%lld D=%lld kind=%d slices=%d: %d slice sums off the host's",
        (long long)N, (long long)D, kind, slices, sums);
}

// The fused TSLoss kernels (csrc/cuda/tsloss_kernels.cuh) on B clouds: the distance kernel, the
// scalar engine's diagrams, then the terms, their reduction, the edge weights with each point's
// incidence lists, and the gradient, each against the host: what the same core functions give
// element by element (bit for bit), sums in other orders (to 1e-12), and the gradient against
// a scan of every pair and reported edge in long double. Clouds are noisy rings (H1 bars);
// `dup` repeats a point in cloud 0 (zero distances: no direction), `invalid` marks cloud 1 as
// the engine marks a non-finite one.
struct TsCase {
  int64_t B, N, D, K;
  bool has_prev, normalize, target_mode;
  int reduction;
  bool dup, invalid, scale_grad;
  bool still_first = false;  // reduction none: cloud 0's upstream gradients all zero (zero
                             // weights on valid edges, which give no incidences)
  bool overflow = false;     // the last cloud's H1 outgrew the device's workspace (count -1)
  bool nan_prev = false;     // and its previous H0 row holds a NaN: relabelled invalid
};

template <typename T>
void check_tsloss(const TsCase& c, uint64_t seed) {
  const int64_t B = c.B, N = c.N, D = c.D, K = c.K, H0 = N - 1, E = H0 + K;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  std::uniform_real_distribution<double> uni(0.0, 2.0);
  std::vector<T> x(B * N * D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t k = 0; k < D; ++k) {
        const double ring = k == 0 ? std::cos(6.283185307179586 * double(i) / double(N))
                          : k == 1 ? std::sin(6.283185307179586 * double(i) / double(N))
                                   : 0.0;
        x[(b * N + i) * D + k] = T(3.0 * ring + 0.15 * g(rng));
      }
  if (c.dup) std::memcpy(&x[2 * D], &x[1 * D], D * sizeof(T));
  std::vector<T> dist;
  std::vector<double> partial;
  unsigned done = 12345u;  // the terms kernel's completion count, cleared by the distances
  run_kernel(x, B, N, D, seed, &dist, &partial, &done);
  CHECK(done == 0u, "the distance kernel left the completion count at %u", done);
  const int64_t tiles = int64_t(partial.size()) / B;

  std::vector<T> h0(B * H0 * 2), h1(B * K * 2);
  std::vector<int64_t> e0(B * H0 * 2), e1(B * K * 4), count(B);
  tsl::HostWorkspace<T> ws;
  for (int64_t b = 0; b < B; ++b) {
    tsl_test::Outputs<T> o(N, K);
    tsl::vr_persistence_cloud(dist.data() + b * N * N, N, 1, o.view(K), ws);
    std::copy(o.h0.begin(), o.h0.end(), h0.begin() + b * H0 * 2);
    std::copy(o.h1.begin(), o.h1.end(), h1.begin() + b * K * 2);
    std::copy(o.h0_edges.begin(), o.h0_edges.end(), e0.begin() + b * H0 * 2);
    std::copy(o.h1_edges.begin(), o.h1_edges.end(), e1.begin() + b * K * 4);
    count[b] = o.count;
  }
  if (c.invalid) count[1] = tsl::kInvalidInputCount;
  if (c.overflow) count[B - 1] = tsl::kH1OverflowCount;
  std::vector<T> prev0(B * H0), prev1(B * K, T(0));
  for (auto& v : prev0) v = T(uni(rng));
  if (c.nan_prev) prev0[(B - 1) * H0] = std::numeric_limits<T>::quiet_NaN();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t q = 0; q < K / 2; ++q) prev1[b * K + q] = T(uni(rng));
  const T* p0 = c.has_prev ? prev0.data() : nullptr;
  const T* p1 = c.has_prev ? prev1.data() : nullptr;
  const tsl::TermOptions o{c.normalize, c.target_mode, c.has_prev, 0.5, 2.0, 1.0, 0.7, 0.3};

  // Forward: the terms and, by the block that finishes last (a random one under a seed: blocks
  // run in a seeded order), the batch's reduction.
  std::vector<T> topo0(B * H0, T(-7)), topo1(B * K, T(-7)), scales(B, T(-7));
  std::vector<double> per_cloud(B * 5, -7.0);
  std::vector<int64_t> count_out = count;
  const int R = c.reduction == tsl::kReduceNone ? int(B) : 1;
  std::vector<T> outs(5 * R, T(-7));
  cuda_host::launch(dim3(unsigned(B)), dim3(tk::kTermThreads), seed, [&] {
    tk::tsloss_terms_kernel<T>(x.data(), N, D, partial.data(), tiles, h0.data(), h1.data(), K,
                               count_out.data(), p0, p1, o, topo0.data(), topo1.data(),
                               scales.data(), per_cloud.data(), c.reduction, &outs[0], &outs[R],
                               &outs[2 * R], &outs[3 * R], &outs[4 * R], &done);
  });
  CHECK(done == unsigned(B), "%u of %lld blocks counted themselves done", done, (long long)B);
  int bad = 0;
  auto close = [](double got, double want, double tol) {
    if (!std::isfinite(want)) return same_bits(got, want) || (got != got && want != want);
    return std::fabs(got - want) <= tol * std::max(1e-300, std::fabs(want));
  };
  for (int64_t b = 0; b < B; ++b) {
    const bool invalid = count[b] == tsl::kInvalidInputCount;
    double sum = 0.0;
    for (int64_t t = 0; t < tiles; ++t) sum += partial[b * tiles + t];
    const T raw = tsl::raw_scale<T>(sum, N);
    bool passes;
    const T s = tsl::clamp_scale<T>(raw, c.normalize, &passes);
    bad += !same_bits(scales[b], raw);
    std::vector<T> t0(H0), t1(K);
    const tsl::CloudSums want = tsl::cloud_terms(h0.data() + b * H0 * 2, N, h1.data() + b * K * 2,
                                                 K, count[b], s, p0 ? p0 + b * H0 : nullptr,
                                                 p1 ? p1 + b * K : nullptr, o, t0.data(),
                                                 t1.data());
    if (c.nan_prev && b == B - 1) {  // a non-finite previous: marked invalid, NaN loss
      bad += per_cloud[b * 5] == per_cloud[b * 5];
      bad += count_out[b] != tsl::kInvalidInputCount;
      continue;
    }
    if (invalid) {  // NaN deaths: a NaN loss, no gradient (below)
      for (int64_t r = 0; r < H0; ++r) bad += topo0[b * H0 + r] == topo0[b * H0 + r];
      bad += per_cloud[b * 5] == per_cloud[b * 5];
      bad += count_out[b] != tsl::kInvalidInputCount;
      continue;
    }
    for (int64_t r = 0; r < H0; ++r) bad += !same_bits(topo0[b * H0 + r], t0[r]);
    for (int64_t q = 0; q < K; ++q) bad += !same_bits(topo1[b * K + q], t1[q]);
    const double* v = per_cloud.data() + b * 5;
    bad += !close(v[1], want.conn, 1e-12) + !close(v[2], want.red, 1e-12) +
           !close(v[3], want.stab, 1e-12) + !same_bits(v[4], double(s));
    bad += !close(v[0], o.w_conn * want.conn + o.w_red * want.red + o.w_stab * want.stab, 1e-12);
    bad += count_out[b] != count[b];
  }
  for (int m = 0; m < 5; ++m) {
    if (c.reduction == tsl::kReduceNone) {
      for (int64_t b = 0; b < B; ++b) bad += !same_bits(outs[m * R + b], T(per_cloud[b * 5 + m]));
      continue;
    }
    double sum = 0.0;
    for (int64_t b = 0; b < B; ++b) sum += per_cloud[b * 5 + m];
    bad += !same_bits(outs[m * R], T(c.reduction == tsl::kReduceMean ? sum / double(B) : sum));
  }
  CHECK(bad == 0, "tsloss forward N=%lld D=%lld K=%lld prev=%d: %d values differ", (long long)N,
        (long long)D, (long long)K, int(c.has_prev), bad);

  // Backward: the upstream gradients, one value or B of them.
  std::vector<T> gl(R), gc(R), gr(R), gs(R), gsc(R);
  for (auto* v : {&gl, &gc, &gr, &gs, &gsc})
    for (auto& e : *v) e = T(g(rng));
  if (c.still_first)
    for (auto* v : {&gl, &gc, &gr, &gs, &gsc}) (*v)[0] = T(0);
  const T* g_scale = c.scale_grad ? gsc.data() : nullptr;
  const int64_t cap = tsl::incidence_capacity(N, K);
  std::vector<double> edge_w(B * E, -7.0), dense(B + 1, -7.0);
  std::vector<int64_t> offsets(B * (N + 1), -7), keys(B * cap, -7);
  cuda_host::launch(dim3(unsigned(B)), dim3(tk::kTermThreads), seed, [&] {
    tk::tsloss_edge_weights_kernel<T>(gl.data(), gc.data(), gr.data(), gs.data(), g_scale, B, N,
                                      scales.data(), topo0.data(), topo1.data(), K,
                                      count_out.data(), p0, p1, o,
                                      c.reduction, edge_w.data(), dense.data(), e0.data(),
                                      e1.data(), offsets.data(), keys.data());
  });
  bad = 0;
  for (int64_t b = 0; b < B; ++b) {
    const double* w = edge_w.data() + b * E;
    const int64_t* off = offsets.data() + b * (N + 1);
    if (count_out[b] == tsl::kInvalidInputCount) {
      for (int64_t r = 0; r < E; ++r) bad += w[r] != 0.0;
      for (int64_t i = 0; i <= N; ++i) bad += off[i] != 0;
      bad += dense[b] != 0.0;
      continue;
    }
    const double a = tsl::reduced_grad(gl.data(), b, B, c.reduction);
    tsl::CloudCoefficients k{a * o.w_conn + tsl::reduced_grad(gc.data(), b, B, c.reduction),
                             a * o.w_red + tsl::reduced_grad(gr.data(), b, B, c.reduction),
                             a * o.w_stab + tsl::reduced_grad(gs.data(), b, B, c.reduction),
                             tsl::reduced_grad(g_scale, b, B, c.reduction)};
    // An overflowed cloud's NaN redundancy and stability pass no gradient.
    if (count_out[b] == tsl::kH1OverflowCount) k.red = k.stab = 0.0;
    bool passes;
    const double s = double(tsl::clamp_scale<T>(scales[b], c.normalize, &passes));
    double ds = k.scale;
    const int64_t rows = p1 ? tsl::stability_rows(p1 + b * K, K, count_out[b]) : 0;
    for (int64_t r = 0; r < H0; ++r)
      bad += !same_bits(w[r], tsl::h0_death_grad(topo0[b * H0 + r], p0 ? p0[b * H0 + r] : T(0),
                                                 H0, s, o, k, &ds));
    for (int64_t q = 0; q < K; ++q)
      bad += !same_bits(w[H0 + q], tsl::h1_pers_grad(topo1[b * K + q], p1 ? p1[b * K + q] : T(0),
                                                     q, count_out[b], rows, s, o, k, &ds));
    bad += !close(dense[b], tsl::dense_pair_weight(ds, N, passes), 1e-12);
    bad += off[0] != 0;
    std::vector<int64_t> want(cap);
    for (int64_t i = 0; i < N; ++i) {
      const int64_t n = tsl::point_incidences(i, N, H0, K, w, e0.data() + b * H0 * 2,
                                              e1.data() + b * K * 4, want.data());
      bad += off[i + 1] - off[i] != n;
      for (int64_t q = 0; q < n && off[i] + q < cap; ++q)
        bad += keys[b * cap + off[i] + q] != want[q];
    }
  }
  CHECK(bad == 0, "tsloss edge weights N=%lld K=%lld: %d values differ", (long long)N,
        (long long)K, bad);

  std::vector<T> grad(B * N * D, T(-7));
  const dim3 grid(unsigned((D + tk::kGradBlockCols - 1) / tk::kGradBlockCols),
                  unsigned((N + tk::kGradBlockRows - 1) / tk::kGradBlockRows), unsigned(B));
  cuda_host::launch(grid, dim3(tk::kGradRows * tk::kGradCols), seed, [&] {
    tk::tsloss_grad_kernel<T>(x.data(), N, D, dist.data(), dense.data(), edge_w.data(), e0.data(),
                              e1.data(), K, offsets.data(), keys.data(), grad.data());
  });
  bad = 0;
  int64_t edge_terms = 0;
  for (int64_t b = 0; b < B; ++b) {
    const T* xb = x.data() + b * N * D;
    const T* db = dist.data() + b * N * N;
    for (int64_t i = 0; i < N; ++i)
      for (int64_t k = 0; k < D; ++k) {
        long double want = 0.0L, mag = 0.0L;
        auto add = [&](long double wt, int64_t j) {
          const long double d = db[i * N + j];
          if (!(d > 0)) return;
          const long double t = wt * ((long double)xb[i * D + k] - (long double)xb[j * D + k]) / d;
          want += t;
          mag += std::fabs(t);
        };
        for (int64_t j = 0; j < N; ++j)
          if (j != i) add(dense[b], j);
        const double* w = edge_w.data() + b * E;
        for (int64_t e = 0; e < E; ++e)
          for (int side = 0; side < tsl::edge_sides(e, H0); ++side) {
            const tsl::EdgeEnds p =
                tsl::edge_endpoints(e, side, H0, e0.data() + b * H0 * 2, e1.data() + b * K * 4);
            if (w[e] == 0.0 || !tsl::edge_touches(i, N, p.u, p.v)) continue;
            add(e >= H0 && side == 0 ? -w[e] : w[e], p.u == i ? p.v : p.u);
            edge_terms += k == 0;
          }
        const double got = double(grad[(b * N + i) * D + k]);
        const double tol = (sizeof(T) == 4 ? 0x1p-23 : 0x1p-50) * std::fabs(double(want)) +
                           1e-12 * double(mag) + 1e-300;
        if (!(std::fabs(got - double(want)) <= tol) && bad++ < 3)
          std::printf("  grad (b, i, k) = (%lld, %lld, %lld): %.17g, want %.17g\n",
                      (long long)b, (long long)i, (long long)k, got, double(want));
      }
  }
  CHECK(bad == 0, "tsloss gradient N=%lld D=%lld K=%lld: %d of %lld differ", (long long)N,
        (long long)D, (long long)K, bad, (long long)(B * N * D));
  CHECK(edge_terms > N, "tsloss gradient N=%lld: only %lld edge terms (a test of nothing)",
        (long long)N, (long long)edge_terms);
}
// vr_persistence's backward kernel against the CPU op's code (cpu/edge_gradients.h: lengths,
// then the scatter, edge after edge in the op's order; test_core checks it against the scalar
// rule), bit for bit, zero signs included, under several fiber and block orders. The edges are
// the op's rows: h0 rows (their death's gradient), then each h1 row's birth and death edge, with
// -1 padding rows, loops (u == v), repeated and shared endpoints, duplicate points (no
// direction), zero gradients, and tiny or huge clouds (the rescaled lengths). D past the block's
// 256 threads. From distances: the upper-triangle entry of each edge, summed in the same order.
template <typename T>
void check_vr_backward(int64_t B, int64_t N, int64_t D, int64_t K, double scale, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  const int64_t H0 = N - 1, R = H0 + 2 * K;
  std::vector<T> x(B * N * D), g0(B * H0 * 2), g1(B * K * 2);
  for (T& v : x) v = T((3.0 + normal(rng)) * scale);
  for (int64_t b = 0; b < B; ++b)  // a duplicate point
    std::copy(&x[b * N * D], &x[b * N * D] + D, &x[(b * N + N - 1) * D]);
  for (T& v : g0) v = rng() % 5 == 0 ? T(0) : T(normal(rng));
  for (T& v : g1) v = rng() % 5 == 0 ? T(0) : T(normal(rng));
  std::vector<int64_t> e0(B * H0 * 2), e1(B * K * 4);
  auto vertex = [&] { return rng() % 9 == 0 ? int64_t(-1) : int64_t(rng() % N); };
  for (int64_t& v : e0) v = vertex();
  for (int64_t& v : e1) v = vertex();
  for (bool distances : {false, true}) {
    const int64_t W = distances ? N : D;  // the input's row length
    std::vector<T> in(B * N * W);
    if (distances) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < N; ++i)
          for (int64_t j = 0; j < N; ++j)
            in[(b * N + i) * N + j] = T(tsl::point_distance(&x[(b * N + i) * D],
                                                            &x[(b * N + j) * D], D));
    } else {
      in = x;
    }
    std::vector<T> want(B * N * W, T(0));
    for (int64_t b = 0; b < B; ++b) {
      std::vector<tsloss::cpu::LiveEdge> edges;
      for (int64_t r = 0; r < R; ++r) {
        const int64_t* e = r < H0 ? &e0[(b * H0 + r) * 2]
                                  : &e1[(b * K + (r - H0) / 2) * 4 + 2 * ((r - H0) % 2)];
        const T g = r < H0 ? g0[(b * H0 + r) * 2 + 1]
                           : g1[(b * K + (r - H0) / 2) * 2 + (r - H0) % 2];
        if (g == T(0) || e[0] < 0 || e[1] < 0 || e[0] == e[1]) continue;
        if (distances)
          want[(b * N + std::min(e[0], e[1])) * N + std::max(e[0], e[1])] += g;
        else
          edges.push_back({e[0], e[1], double(g), {0.0, 1.0}});
      }
      if (distances) continue;
      const T* xb = &x[b * N * D];
      tsloss::cpu::edge_scales(xb, D, edges.data(), 0, int64_t(edges.size()));
      int64_t live = 0;
      for (const auto& e : edges)
        if (e.scale.s != 0.0) edges[live++] = e;
      tsloss::cpu::scatter_edges(xb, D, edges.data(), live, 0, D, &want[b * N * D], D);
    }
    for (uint64_t order : {uint64_t(0), seed * 4 + 1, seed * 4 + 2}) {
      std::vector<T> got(B * N * W, T(0));
      std::vector<tsl::EdgeScale> work(B * R);
      cuda_host::launch(dim3(unsigned(B)), dim3(tsl::cuda::vr_backward::kThreads), order, [&] {
        tsl::cuda::vr_backward::vr_backward_kernel<T>(g0.data(), g1.data(), in.data(), N, D,
                                                      e0.data(), H0, e1.data(), K, distances,
                                                      got.data(), work.data());
      });
      int64_t bad = 0, moved = 0;
      for (int64_t i = 0; i < B * N * W; ++i) {
        bad += std::memcmp(&got[i], &want[i], sizeof(T)) != 0;
        moved += want[i] != T(0);
      }
      CHECK(bad == 0, "vr backward %s B=%lld N=%lld D=%lld K=%lld scale %g, order %llu: %lld "
            "of %lld entries differ", distances ? "(distances)" : "(points)", (long long)B,
            (long long)N, (long long)D, (long long)K, scale, (unsigned long long)order,
            (long long)bad, (long long)(B * N * W));
      CHECK(moved > 0, "vr backward: no gradient (a test of nothing)");
    }
  }
}

}  // namespace

int main() {
  test_shim();
  check_block_sum();
  // N across tile edges (1 and 3 tiles; 65: 6), D across chunk edges.
  for (int64_t N : {1, 2, 32, 33})
    for (int64_t D : {1, 63, 64, 130}) {
      check_distances<float>(2, N, D, 0, uint64_t(N * 1000 + D));
      check_distances<double>(1, N, D, 0, uint64_t(N * 1000 + D));
    }
  for (int kind : {1, 2, 3, 5}) {
    check_distances<float>(2, 40, 200, kind, 11);
    check_distances<double>(1, 40, 200, kind, 11);
  }
  check_distances<double>(1, 33, 70, 4, 13);
  check_distances<float>(1, 65, 65, 0, 17);
  check_gram_sums(33, 200, 5);
  check_gram_sums(64, 129, 6);
  // The split kernel: 1 and 3 tiles, D past and short of whole chunks, slices of one chunk and
  // of several (the last one short), repeated points, far clusters and non-finite points (blocks
  // summing again canonically), two clouds.
  check_split(1, 64, 4096 + 40, 0, 32, 41);
  check_split(2, 33, 200, 0, 2, 42);
  check_split(1, 40, 700, 1, 5, 43);
  check_split(2, 40, 300, 2, 3, 44);
  check_split(1, 40, 300, 3, 4, 45);
  check_split(1, 40, 256, 5, 64, 46);
  check_split(1, 2, 130, 0, 3, 47);
  // TSLoss: N past a gradient block's 32 rows and past 64 (two rounds of staged weights), D not
  // a multiple of 32 (and past a block's 64 coordinates below); stability, target mode, each
  // reduction, repeated points, an invalid cloud.
  check_tsloss<float>({3, 30, 40, 64, false, true, false, tsl::kReduceMean, false, false, true}, 21);
  check_tsloss<double>({3, 30, 40, 64, true, true, true, tsl::kReduceSum, true, true, true}, 22);
  check_tsloss<double>({2, 13, 5, 32, true, false, false, tsl::kReduceNone, false, false, false}, 23);
  check_tsloss<float>({2, 130, 33, 256, true, true, false, tsl::kReduceNone, true, true, true}, 24);
  // An overflowed cloud (count -1) beside an invalid one, with and without a previous topology,
  // and with a NaN in its previous (invalid then: no gradient, not a NaN one).
  for (int prev : {0, 1, 2}) {
    TsCase c{3, 30, 40, 64, prev > 0, true, false, tsl::kReduceNone, false, true, true};
    c.overflow = true;
    c.nan_prev = prev == 2;
    check_tsloss<double>(c, 30 + prev);
  }
  // More blocks than the reduction's five threads, in index order (seed 0), reversed (25) and
  // shuffled (26); and 5 B values past the block's 256 threads (reduction none, reversed).
  for (uint64_t seed : {0, 25, 26})
    check_tsloss<double>({9, 12, 6, 32, false, true, false, seed == 26 ? tsl::kReduceNone
                                                                         : tsl::kReduceMean,
                          false, false, false}, seed);
  check_tsloss<float>({60, 5, 3, 8, false, true, false, tsl::kReduceNone, false, false, false},
                      29);
  // Past the edge-weight kernel's staged chunk of edges (E = 1,499 > 3 x 512) and past a
  // gradient block's 32 rows many times; cloud 0 with zero weights on all its edges.
  check_tsloss<float>({3, 300, 70, 1200, true, true, false, tsl::kReduceNone, false, false, true,
                       true}, 30);
  // vr_persistence's backward: one cloud and several, D short of and past the block's threads,
  // many more h1 rows than points, and float64 clouds whose lengths are subnormal or whose
  // steps would be (g / len past the normal range): rescaled by m.
  check_vr_backward<float>(3, 12, 5, 20, 1.0, 51);
  check_vr_backward<double>(2, 30, 300, 40, 1.0, 52);
  check_vr_backward<float>(1, 40, 513, 160, 1.0, 53);
  check_vr_backward<double>(2, 9, 17, 12, 1e-310, 54);
  check_vr_backward<double>(1, 9, 17, 12, 1e307, 55);
  check_vr_backward<float>(2, 9, 17, 12, 1e-30, 56);
  std::printf("%llu fiber switches\n", (unsigned long long)cuda_host::block().switches);
  return tsl_test::finish_checks("cuda_host");
}
