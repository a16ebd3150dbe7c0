// CPU kernels of the tsloss_cuda ops: thin glue around the torch-free engine in csrc/core,
// parallel over the clouds of a batch.
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../core/edge_incidence.h"
#include "../core/pairwise_distance.h"
#include "../core/vr_engine.h"
#include "cloud_glue.h"
#include "distance_tiles.h"
#include "edge_gradients.h"

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

// d(value)/d(input) for every reported edge: a bar value is the length of its edge, so with
// distances it is the one (upper-triangle) entry that was read, and with points it moves both
// endpoints along their difference (cpu/edge_gradients.h). f(g, u, v) for each edge of one cloud
// that has a gradient, in the op's order (core/edge_incidence.h: the h0 rows, then each h1 row's
// birth and death edge); zero gradients, loops and padding rows (-1) give nothing. g0, g1, e0
// and e1 are the cloud's rows of grad_h0 (H0, 2), grad_h1 (K, 2), h0_edges and h1_edges.
template <typename T, class F>
void each_edge_with_gradient(const T* g0, const T* g1, const int64_t* e0, const int64_t* e1,
                             int64_t H0, int64_t K, const F& f) {
  for (int64_t e = 0; e < H0 + K; ++e)
    for (int side = 0; side < tsl::edge_sides(e, H0); ++side) {
      const tsl::EdgeEnds p = tsl::edge_endpoints(e, side, H0, e0, e1);
      const T g = e < H0 ? g0[2 * e + 1] : g1[2 * (e - H0) + side];
      if (g != T(0) && p.u >= 0 && p.v >= 0 && p.u != p.v) f(g, p.u, p.v);
    }
}

// Drops the edges whose scale is zero, keeping the order.
inline int64_t compact(std::vector<cpu::LiveEdge>& edges) {
  int64_t n = 0;
  for (const cpu::LiveEdge& e : edges)
    if (e.scale.s != 0.0) edges[n++] = e;
  return n;
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
  const int64_t H0 = e0.size(1), K = e1.size(1), R = H0 + 2 * K;
  auto grad = glue::empty_written(x.sizes(), x.options()).zero_();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "vr_persistence_backward_cpu", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    scalar_t* pgrad = grad.data_ptr<scalar_t>();
    // Cloud b's edges with a gradient, in order, to f(g, u, v).
    auto each_edge = [&](int64_t b, const auto& f) {
      each_edge_with_gradient(g0.data_ptr<scalar_t>() + b * H0 * 2,
                              g1.data_ptr<scalar_t>() + b * K * 2,
                              e0.data_ptr<int64_t>() + b * H0 * 2,
                              e1.data_ptr<int64_t>() + b * K * 4, H0, K, f);
    };
    // Cloud b's edges with a gradient, as edges to scale (their scales still to come).
    auto live_edges = [&](int64_t b, std::vector<cpu::LiveEdge>& out) {
      out.clear();
      each_edge(b, [&](scalar_t g, int64_t u, int64_t v) {
        out.push_back({u, v, static_cast<double>(g), {0.0, 1.0}});
      });
    };
    if (distances) {
      glue::parallel_for(0, B, cloud_grain(R), [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          scalar_t* gb = pgrad + b * N * N;
          each_edge(b, [&](scalar_t g, int64_t u, int64_t v) {
            gb[std::min(u, v) * N + std::max(u, v)] += g;
          });
        }
      });
      return;
    }
    const int64_t threads = at::get_num_threads();
    if (B >= 2 * threads) {  // whole clouds per task
      glue::parallel_for(0, B, cloud_grain(R * D), [&](int64_t begin, int64_t end) {
        std::vector<cpu::LiveEdge> edges;
        for (int64_t b = begin; b < end; ++b) {
          const scalar_t* xb = px + b * N * D;
          live_edges(b, edges);
          cpu::edge_scales(xb, D, edges.data(), 0, int64_t(edges.size()));
          cpu::scatter_edges(xb, D, edges.data(), compact(edges), 0, D, pgrad + b * N * D, D);
        }
      });
      return;
    }
    // Few clouds: each cloud's lengths, then its coordinate ranges, shared out. A task takes
    // ~2^16 edge-coordinates at least (fewer ran slower shared than on one thread).
    std::vector<cpu::LiveEdge> edges;
    const int64_t edge_grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, D));
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t* xb = px + b * N * D;
      live_edges(b, edges);
      glue::parallel_for(0, int64_t(edges.size()), edge_grain, [&](int64_t r0, int64_t r1) {
        cpu::edge_scales(xb, D, edges.data(), r0, r1);
      });
      const int64_t count = compact(edges);
      constexpr int64_t kSpan = 64;  // coordinates a task unit: whole vectors of every build
      const int64_t spans = (D + kSpan - 1) / kSpan;
      const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, count * kSpan));
      glue::parallel_for(0, spans, grain, [&](int64_t s0, int64_t s1) {
        const int64_t k0 = s0 * kSpan, k1 = std::min(D, s1 * kSpan), w = k1 - k0;
        scalar_t* gb = pgrad + b * N * D;
        if (w == D) {  // the whole cloud in one task: in place
          cpu::scatter_edges(xb, D, edges.data(), count, 0, D, gb, D);
          return;
        }
        cpu::LineVector<scalar_t> block(N * w, scalar_t(0));
        cpu::scatter_edges(xb, D, edges.data(), count, k0, k1, block.data(), w);
        for (int64_t r = 0; r < N; ++r)
          std::copy(block.data() + r * w, block.data() + (r + 1) * w, gb + r * D + k0);
      });
    }
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
