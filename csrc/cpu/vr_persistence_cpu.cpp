// CPU kernels of the tsloss_cuda ops: thin glue around the torch-free engine in csrc/core,
// parallel over the clouds of a batch.
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../core/pairwise_distance.h"
#include "../core/vr_engine.h"
#include "cloud_glue.h"
#include "distance_tiles.h"

namespace tsloss {
namespace {

using namespace glue;

const Caller kVr{"vr_persistence", "x"};

// Distances from points, exactly symmetric with an exact zero diagonal. Parallel over whole
// clouds when there are enough of them, else over balanced row blocks of all clouds, so that a
// single large cloud still keeps every thread busy. Errors are reported in the name of `op`.
at::Tensor distances_cpu(const at::Tensor& x_in, const Caller& op) {
  TSL_CHECK(x_in.dim() == 3, op.op, ": x must be (B, N, D) at the op level, got ",
              x_in.sizes());
  TSL_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
              op.op, ": x must be float32 or float64, got ", x_in.scalar_type());
  check_max_points(x_in, op.op);
  const int64_t B = x_in.size(0), N = x_in.size(1), D = x_in.size(2);
  auto out = glue::empty_written({B, N, N}, x_in.options());
  if (B == 0 || N == 0) return out;
  auto x = x_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pairwise_distance_cpu", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    check_lone_points(px, B, N, D, op);
    if (B >= 2 * at::get_num_threads()) {
      // Enough clouds for every thread: whole clouds per task (tiled from one widened copy).
      glue::parallel_for(0, B, cloud_grain(N * N * D), [&](int64_t begin, int64_t end) {
        std::vector<double> sq;
        for (int64_t b = begin; b < end; ++b)
          cloud_distances(px + b * N * D, N, D, b, sq, po + b * N * N, op);
      });
      return;
    }
    // Few clouds: the work of all of them shared out among the threads.
    const int64_t grain =
        std::max<int64_t>(1, 262144 / (2 * kRowBlock * N * std::max<int64_t>(D, 1)));
    auto rows = [&](int64_t b, int64_t i0, int64_t i1) {
      thread_local std::vector<double> sq;  // the executing thread's
      sq.resize(kRowBlock * N);
      distance_rows(px + b * N * D, N, D, i0, i1, b, sq.data(), po + b * N * N, op);
    };
    few_cloud_distances(px, B, N, D, po, op, rows, grain);
  });
  return out;
}

at::Tensor pairwise_distance_cpu(const at::Tensor& x) {
  return distances_cpu(x, {"pairwise_distance", "x"});
}

// Gradient of the distances w.r.t. the points: gx_i = sum_j w_ij (x_i - x_j) with
// w_ij = (g_ij + g_ji) / d_ij, and 0 where d_ij = 0 (coincident points have no direction), by the
// pair tiles TSLoss's backward runs (glue::pair_gradients): each unordered pair once.
at::Tensor pairwise_distance_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                          const at::Tensor& dist_in) {
  TSL_CHECK(x_in.dim() == 3 && grad_in.dim() == 3 && dist_in.dim() == 3,
              "pairwise_distance_backward: expects (B, N, N) grad and dist and (B, N, D) x");
  const int64_t B = x_in.size(0), N = x_in.size(1), D = x_in.size(2);
  TSL_CHECK(grad_in.sizes() == dist_in.sizes() && dist_in.size(0) == B &&
                  dist_in.size(1) == N && dist_in.size(2) == N,
              "pairwise_distance_backward: grad ", grad_in.sizes(), " and dist ", dist_in.sizes(),
              " must both be (B, N, N) for x ", x_in.sizes());
  auto x = x_in.contiguous();
  auto g = grad_in.to(x.scalar_type()).contiguous();
  auto dist = dist_in.to(x.scalar_type()).contiguous();
  auto out = glue::empty_written(x.sizes(), x.options());
  if (B == 0 || N == 0 || D == 0) return out;
  const int64_t n4 = (N + 3) / 4 * 4;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pairwise_distance_backward_cpu", [&] {
    const scalar_t* pg = g.data_ptr<scalar_t>();
    const scalar_t* pd = dist.data_ptr<scalar_t>();
    glue::pair_gradients<scalar_t>(x.data_ptr<scalar_t>(), B, N, D, out.data_ptr<scalar_t>(),
                                   [&](int64_t b, scalar_t* W) {
      const scalar_t* gb = pg + b * N * N;
      const scalar_t* db = pd + b * N * N;
      // (g_ij + g_ji) / d_ij, the sum in T as before.
      return glue::fill_pair_weights(N, n4, W, [&](int64_t i, int64_t j) {
        return glue::PairValue{double(gb[i * N + j] + gb[j * N + i]), double(db[i * N + j])};
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
vr_persistence_cpu(const at::Tensor& x_in, int64_t maxdim, bool distances, int64_t max_h1) {
  const int64_t K = check_vr_persistence_args(x_in, maxdim, distances, max_h1);
  const int64_t B = x_in.size(0), N = x_in.size(1);
  // With enough clouds for every thread, each task computes its clouds' distances itself: one
  // parallel region, and the matrix stays in cache. Otherwise the distances are parallel over
  // row blocks first, so that one large cloud still uses every thread.
  const bool fused = !distances && B >= 2 * at::get_num_threads();
  at::Tensor dist = distances || fused ? x_in.contiguous() : glue::distances(x_in, kVr);
  auto opts = x_in.options();
  at::Tensor h0, h0_edges, h1, h1_edges, h1_count, truncated;
  std::tie(h0, h0_edges, h1, h1_edges, h1_count, truncated) = empty_diagrams(opts, B, N, K);
  if (B == 0) return {h0, h0_edges, h1, h1_edges, h1_count, truncated};

  AT_DISPATCH_FLOATING_TYPES(x_in.scalar_type(), "vr_persistence_cpu", [&] {
    const scalar_t* pd = dist.data_ptr<scalar_t>();
    const int64_t D = fused ? x_in.size(2) : N;
    if (fused) check_lone_points(pd, B, N, D, kVr);
    // Clouds are independent. Tiny clouds are batched into one task: waking threads costs more
    // than their work, and on a loaded machine a parallel region can stall for milliseconds.
    const int64_t work = N * N * (N + (fused ? D : 0));
    // A lone cloud leaves the other threads idle: its apparent-pair sweep, a third of the
    // engine's time at N = 256, is split among them (a nested region would run serially, so
    // only when there is one cloud).
    const int64_t threads = at::get_num_threads();
    const int64_t sweep_chunks = B == 1 && N >= 64 && threads > 1 ? 4 * threads : 1;
    glue::parallel_for(0, B, cloud_grain(work), [&](int64_t begin, int64_t end) {
      tsl::HostWorkspace<scalar_t>& ws = thread_workspace<scalar_t>();
      // On 64-byte lines: N = 16k float rows then start on lines for the engine's band masks.
      cpu::LineVector<scalar_t> matrix(distances || fused ? N * N : 0);
      std::vector<double> sq;
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* cloud = pd + b * N * D;
        if (distances) {
          symmetric_from_upper(cloud, N, b, matrix.data());
          cloud = matrix.data();
        } else if (fused) {
          cloud_distances(cloud, N, D, b, sq, matrix.data(), kVr);
          cloud = matrix.data();
        }
        const auto out = cloud_output<scalar_t>(h0, h0_edges, h1, h1_edges, h1_count,
                                                 truncated, b);
        tsl::vr_persistence_cloud(cloud, N, static_cast<int>(maxdim), out, ws, sweep_chunks,
                                  ParallelChunks());
      }
      trim_thread_workspace(ws);
    });
  });
  return {h0, h0_edges, h1, h1_edges, h1_count, truncated};
}

// Scatter d(value)/d(input) for every reported edge: a bar value is the length of its edge, so
// with points it moves both endpoints along their difference, with distances it is the one
// (upper-triangle) entry that was read. Zero-length edges and padding rows (-1) get nothing.
template <typename T>
void scatter_edge(T g, int64_t u, int64_t v, bool distances, const T* x, int64_t N, int64_t D,
                  T* grad) {
  if (g == T(0) || u < 0 || v < 0 || u == v) return;
  if (distances) {
    const int64_t hi = u > v ? u : v, lo = u > v ? v : u;
    grad[lo * N + hi] += g;
    return;
  }
  const T* xu = x + u * D;
  const T* xv = x + v * D;
  const tsl::EdgeScale e = tsl::edge_scale(static_cast<double>(g), xu, xv, D);
  if (e.s == 0.0) return;
  T* gu = grad + u * D;
  T* gv = grad + v * D;
  for (int64_t k = 0; k < D; ++k) {
    const T step = static_cast<T>(
        e.s * ((static_cast<double>(xu[k]) - static_cast<double>(xv[k])) * e.m));
    gu[k] += step;
    gv[k] -= step;
  }
}

at::Tensor vr_persistence_backward_cpu(const at::Tensor& grad_h0, const at::Tensor& grad_h1,
                                       const at::Tensor& x_in, const at::Tensor& h0_edges_in,
                                       const at::Tensor& h1_edges_in, bool distances) {
  check_vr_backward_inputs(grad_h0, grad_h1, x_in, h0_edges_in, h1_edges_in, distances);
  check_edge_range("vr_persistence_backward", "h0_edges", h0_edges_in, x_in.size(1));
  check_edge_range("vr_persistence_backward", "h1_edges", h1_edges_in, x_in.size(1));
  auto x = x_in.contiguous();
  auto g0 = grad_h0.to(x.scalar_type()).contiguous();
  auto g1 = grad_h1.to(x.scalar_type()).contiguous();
  auto e0 = h0_edges_in.contiguous();
  auto e1 = h1_edges_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  const int64_t H0 = e0.size(1), K = e1.size(1);
  auto grad = glue::empty_written(x.sizes(), x.options()).zero_();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "vr_persistence_backward_cpu", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* pg0 = g0.data_ptr<scalar_t>();
    const scalar_t* pg1 = g1.data_ptr<scalar_t>();
    const int64_t* pe0 = e0.data_ptr<int64_t>();
    const int64_t* pe1 = e1.data_ptr<int64_t>();
    scalar_t* pgrad = grad.data_ptr<scalar_t>();
    glue::parallel_for(0, B, cloud_grain((H0 + 2 * K) * D), [&](int64_t begin, int64_t end) {
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

// Named in profiles as the op it computes, from vr_persistence and loss alike.
at::Tensor glue::distances(const at::Tensor& x, const Caller& op) {
  RECORD_FUNCTION("tsloss_cuda::pairwise_distance", std::vector<c10::IValue>({x}));
  return distances_cpu(x, op);
}

// For the tests (tsloss_cuda._C.output_cache_held): bytes of freed outputs the cache holds.
int64_t output_cache_held() { return static_cast<int64_t>(glue::OutputCache::instance().held()); }

TORCH_LIBRARY_IMPL(tsloss_cuda, CPU, m) {
  m.impl("pairwise_distance", &pairwise_distance_cpu);
  m.impl("pairwise_distance_backward", &pairwise_distance_backward_cpu);
  m.impl("vr_persistence", &vr_persistence_cpu);
  m.impl("vr_persistence_backward", &vr_persistence_backward_cpu);
}

}  // namespace tsloss
