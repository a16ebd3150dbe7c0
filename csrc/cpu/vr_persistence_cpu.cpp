// CPU kernels of the tsloss_cuda ops: thin glue around the torch-free engine in csrc/core,
// parallel over the clouds of a batch.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../checks.h"
#include "../core/pairwise_distance.h"
#include "../core/vr_engine.h"

namespace tsloss {
namespace {

// Clouds per parallel task so that each task does at least ~32k units of work.
int64_t cloud_grain(int64_t work_per_cloud) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_cloud));
}

template <typename T>
void check_finite(const T* p, int64_t count, const char* what) {
  for (int64_t k = 0; k < count; ++k)
    TORCH_CHECK(std::isfinite(p[k]), what, " contains NaN or Inf (first at flat index ", k,
                "); persistence of non-finite points is undefined");
}

// Squared distances from xi (already in double) to each of the `count` rows of `rows` (all of
// length dim), by the difference form in double: no cancellation, so close points keep their
// digits. float rows are widened in registers rather than copied, halving memory traffic. Eight
// independent accumulators let the compiler vectorise without reassociating a reduction;
// target_clones picks AVX2 at load time where the CPU has it.
template <typename R>
__attribute__((always_inline)) inline void squared_distance_row_body(
    const double* xi, const R* rows, int64_t count, int64_t dim, double* out) {
  for (int64_t j = 0; j < count; ++j) {
    const R* xj = rows + j * dim;
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t k = 0;
    for (; k + 8 <= dim; k += 8)
      for (int l = 0; l < 8; ++l) {
        const double t = xi[k + l] - static_cast<double>(xj[k + l]);
        acc[l] += t * t;
      }
    double s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; k < dim; ++k) {
      const double t = xi[k] - static_cast<double>(xj[k]);
      s += t * t;
    }
    out[j] = s;
  }
}

__attribute__((target_clones("avx2", "default")))
void squared_distance_row(const double* xi, const float* rows, int64_t count, int64_t dim,
                          double* out) {
  squared_distance_row_body(xi, rows, count, dim, out);
}

__attribute__((target_clones("avx2", "default")))
void squared_distance_row(const double* xi, const double* rows, int64_t count, int64_t dim,
                          double* out) {
  squared_distance_row_body(xi, rows, count, dim, out);
}

// Distances from points, exactly symmetric with an exact zero diagonal. Parallel over rows of
// all clouds: a batch of small clouds and a single large cloud both keep every thread busy.
at::Tensor pairwise_distance_cpu(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() == 3, "pairwise_distance: x must be (B, N, D) at the op level, got ",
              x_in.sizes());
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
              "pairwise_distance: x must be float32 or float64, got ", x_in.scalar_type());
  const int64_t B = x_in.size(0), N = x_in.size(1), D = x_in.size(2);
  auto out = at::empty({B, N, N}, x_in.options());
  if (B == 0 || N == 0) return out;
  auto x = x_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pairwise_distance_cpu", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    check_finite(px, x.numel(), "pairwise_distance: x");
    scalar_t* po = out.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, N * D));
    at::parallel_for(0, B * N, grain, [&](int64_t begin, int64_t end) {
      std::vector<double> row(N), xi(D);
      for (int64_t bi = begin; bi < end; ++bi) {
        const int64_t b = bi / N, i = bi % N;
        const scalar_t* xb = px + b * N * D;
        scalar_t* ob = po + b * N * N;
        for (int64_t k = 0; k < D; ++k) xi[k] = static_cast<double>(xb[i * D + k]);
        squared_distance_row(xi.data(), xb, i, D, row.data());
        ob[i * N + i] = scalar_t(0);
        for (int64_t j = 0; j < i; ++j) {
          const scalar_t v = static_cast<scalar_t>(std::sqrt(row[j]));
          TORCH_CHECK(std::isfinite(v), "pairwise_distance: the distance between points ", j,
                      " and ", i, " of cloud ", b, " overflows ", x_in.scalar_type(),
                      "; pass float64 points");
          ob[i * N + j] = v;
          ob[j * N + i] = v;
        }
      }
    });
  });
  return out;
}

// A user's distance matrix is read through its lower triangle (as ripser.py does); it must be
// finite, non-negative, zero on the diagonal and symmetric up to rounding.
template <typename T>
void symmetric_from_lower(const T* in, int64_t n, T* out) {
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(in[i * n + i] == T(0), "vr_persistence: distance matrix has non-zero diagonal ",
                "entry ", in[i * n + i], " at (", i, ", ", i, ")");
    out[i * n + i] = T(0);
    for (int64_t j = 0; j < i; ++j) {
      const T lo = in[i * n + j], up = in[j * n + i];
      TORCH_CHECK(std::isfinite(lo) && std::isfinite(up),
                  "vr_persistence: distance matrix contains NaN or Inf at (", i, ", ", j, ")");
      TORCH_CHECK(lo >= T(0), "vr_persistence: distance matrix has negative entry ", lo, " at (",
                  i, ", ", j, ")");
      const T scale = std::abs(lo) > std::abs(up) ? std::abs(lo) : std::abs(up);
      TORCH_CHECK(std::abs(lo - up) <= T(1e-4) * scale,
                  "vr_persistence: distance matrix is not symmetric: entry (", i, ", ", j,
                  ") = ", lo, " but (", j, ", ", i, ") = ", up);
      out[i * n + j] = lo;
      out[j * n + i] = lo;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
vr_persistence_cpu(const at::Tensor& x_in, int64_t maxdim, bool distances, int64_t max_h1) {
  check_points_or_distances(x_in, distances);
  check_max_h1(max_h1);
  TORCH_CHECK(maxdim == 0 || maxdim == 1, "vr_persistence: maxdim must be 0 or 1, got ", maxdim);
  const int64_t B = x_in.size(0), N = x_in.size(1);
  const int64_t K = maxdim >= 1 ? max_h1 : 0;
  at::Tensor dist = distances ? x_in.contiguous() : pairwise_distance_cpu(x_in);
  auto opts = x_in.options();
  auto iopts = opts.dtype(at::kLong);
  const int64_t H0 = N > 0 ? N - 1 : 0;
  auto h0 = at::empty({B, H0, 2}, opts);
  auto h0_edges = at::empty({B, H0, 2}, iopts);
  auto h1 = at::empty({B, K, 2}, opts);
  auto h1_edges = at::empty({B, K, 4}, iopts);
  auto h1_count = at::empty({B}, iopts);
  auto truncated = at::empty({B}, opts.dtype(at::kBool));
  if (B == 0) return {h0, h0_edges, h1, h1_edges, h1_count, truncated};

  AT_DISPATCH_FLOATING_TYPES(x_in.scalar_type(), "vr_persistence_cpu", [&] {
    const scalar_t* pd = dist.data_ptr<scalar_t>();
    // Clouds are independent. Tiny clouds are batched into one task: waking threads costs more
    // than their work, and on a loaded machine a parallel region can stall for milliseconds.
    at::parallel_for(0, B, cloud_grain(N * N), [&](int64_t begin, int64_t end) {
      tsl::HostWorkspace<scalar_t> ws;
      std::vector<scalar_t> sym(distances ? N * N : 0);
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* cloud = pd + b * N * N;
        if (distances) {
          symmetric_from_lower(cloud, N, sym.data());
          cloud = sym.data();
        }
        tsl::CloudOutput<scalar_t> out{h0.data_ptr<scalar_t>() + b * H0 * 2,
                                       h0_edges.data_ptr<int64_t>() + b * H0 * 2,
                                       h1.data_ptr<scalar_t>() + b * K * 2,
                                       h1_edges.data_ptr<int64_t>() + b * K * 4,
                                       h1_count.data_ptr<int64_t>() + b,
                                       truncated.data_ptr<bool>() + b,
                                       K};
        tsl::vr_persistence_cloud(cloud, N, static_cast<int>(maxdim), out, ws);
      }
    });
  });
  return {h0, h0_edges, h1, h1_edges, h1_count, truncated};
}

// Scatter d(value)/d(input) for every reported edge: a bar value is the length of its edge, so
// with points it moves both endpoints along their difference, with distances it is the one
// (lower-triangle) entry that was read. Zero-length edges and padding rows (-1) get nothing.
template <typename T>
void scatter_edge(T g, int64_t u, int64_t v, bool distances, const T* x, int64_t N, int64_t D,
                  T* grad) {
  if (g == T(0) || u < 0 || v < 0 || u == v) return;
  if (distances) {
    const int64_t hi = u > v ? u : v, lo = u > v ? v : u;
    grad[hi * N + lo] += g;
    return;
  }
  const T* xu = x + u * D;
  const T* xv = x + v * D;
  const double len = std::sqrt(tsl::squared_distance(xu, xv, D));
  if (len == 0.0) return;
  const double s = static_cast<double>(g) / len;
  T* gu = grad + u * D;
  T* gv = grad + v * D;
  for (int64_t k = 0; k < D; ++k) {
    const T step = static_cast<T>(s * (static_cast<double>(xu[k]) - static_cast<double>(xv[k])));
    gu[k] += step;
    gv[k] -= step;
  }
}

at::Tensor vr_persistence_backward_cpu(const at::Tensor& grad_h0, const at::Tensor& grad_h1,
                                       const at::Tensor& x_in, const at::Tensor& h0_edges_in,
                                       const at::Tensor& h1_edges_in, bool distances) {
  auto x = x_in.contiguous();
  auto g0 = grad_h0.to(x.scalar_type()).contiguous();
  auto g1 = grad_h1.to(x.scalar_type()).contiguous();
  auto e0 = h0_edges_in.contiguous();
  auto e1 = h1_edges_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  const int64_t H0 = e0.size(1), K = e1.size(1);
  auto grad = at::zeros_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "vr_persistence_backward_cpu", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* pg0 = g0.data_ptr<scalar_t>();
    const scalar_t* pg1 = g1.data_ptr<scalar_t>();
    const int64_t* pe0 = e0.data_ptr<int64_t>();
    const int64_t* pe1 = e1.data_ptr<int64_t>();
    scalar_t* pgrad = grad.data_ptr<scalar_t>();
    at::parallel_for(0, B, cloud_grain((H0 + 2 * K) * D), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* xb = px + b * N * D;
        scalar_t* gb = pgrad + b * N * D;
        for (int64_t r = 0; r < H0; ++r) {
          const int64_t* e = pe0 + (b * H0 + r) * 2;
          scatter_edge(pg0[(b * H0 + r) * 2 + 1], e[0], e[1], distances, xb, N, D, gb);
        }
        for (int64_t r = 0; r < K; ++r) {
          const int64_t* e = pe1 + (b * K + r) * 4;
          const scalar_t* g = pg1 + (b * K + r) * 2;
          scatter_edge(g[0], e[0], e[1], distances, xb, N, D, gb);
          scatter_edge(g[1], e[2], e[3], distances, xb, N, D, gb);
        }
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(tsloss_cuda, CPU, m) {
  m.impl("pairwise_distance", &pairwise_distance_cpu);
  m.impl("vr_persistence", &vr_persistence_cpu);
  m.impl("vr_persistence_backward", &vr_persistence_backward_cpu);
}

}  // namespace tsloss
