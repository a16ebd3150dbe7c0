// CUDA kernels of the tsloss_cuda ops: thin torch glue around the torch-free launchers in
// kernels.h. Same signatures and results as the CPU kernels, on the current stream, with
// workspaces from the caching allocator and no host synchronisation.
//
// Differences from the CPU kernels, all forced by "no host sync": inputs are not scanned for
// NaN/Inf, and user distance matrices are not checked for symmetry, sign or zero diagonal (the
// upper triangle is read as on the CPU). A cloud whose H1 reduction overflows the fixed
// workspace reports h1_count = -1 and truncated = true (see kernels.h); the capacities can be
// raised with TSLOSS_CUDA_H1_HEAP / TSLOSS_CUDA_H1_COLUMNS / TSLOSS_CUDA_H1_ARENA.
//
// By default the one-block-per-cloud topology kernel (topology.cu) builds the tree and the H1
// columns and one warp per cloud reduces H1 (h1_reduce_warp.cu); TSLOSS_CUDA_TOPOLOGY=global and
// TSLOSS_CUDA_REDUCE=thread select the global passes and the one-thread reduction instead
// (cuda_glue.h's engine_settings, read by the fused TSLoss op too; tools/gpu_check.sh runs the
// CUDA tests both ways).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>

#include "../checks.h"
#include "cuda_glue.h"
#include "kernels.h"

namespace tsloss {
namespace {

using namespace cuda_glue;

at::Tensor pairwise_distance_cuda(const at::Tensor& x_in) {
  TSL_CHECK(x_in.dim() == 3, "pairwise_distance: x must be (B, N, D) at the op level, got ",
              x_in.sizes());
  TSL_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
              "pairwise_distance: x must be float32 or float64, got ", x_in.scalar_type());
  check_max_points(x_in, "pairwise_distance");
  c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  auto out = at::empty({B, N, N}, x.options());
  if (B == 0 || N == 0) return out;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const EngineSettings engine = engine_settings();
  const at::Tensor slices = distance_slice_workspace(engine, B, N, D, x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pairwise_distance_cuda", [&] {
    check_cuda(tsl::cuda::launch_pairwise_distance<scalar_t>(
                   x.data_ptr<scalar_t>(), B, N, D, out.data_ptr<scalar_t>(), stream,
                   engine.distance_slices, data_or_null(slices), bytes_or_zero(slices)),
               "pairwise_distance");
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
vr_persistence_cuda(const at::Tensor& x_in, int64_t maxdim, bool distances, int64_t max_h1) {
  const int64_t K = check_vr_persistence_args(x_in, maxdim, distances, max_h1);
  c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  auto opts = x.options();
  at::Tensor h0, h0_edges, h1, h1_edges, h1_count, truncated;
  std::tie(h0, h0_edges, h1, h1_edges, h1_count, truncated) = empty_diagrams(opts, B, N, K);
  if (B == 0) return {h0, h0_edges, h1, h1_edges, h1_count, truncated};

  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const EngineSettings engine = engine_settings();
  const int dim = static_cast<int>(maxdim);
  // A launch's distance matrices share the budget with its workspace.
  const EnginePlan plan = engine_plan(engine, B, N, dim, opts,
                                      static_cast<size_t>(N * N) * x.element_size(),
                                      "vr_persistence");
  const int64_t chunk = plan.chunk;
  auto dist = at::empty({chunk, N, N}, opts);
  // Sized for a launch of `chunk` clouds; a last, smaller launch that would take more (more
  // slices each) runs unsplit, with the same bits. Only batches far below a launch's size split.
  const at::Tensor slices =
      distances ? at::Tensor() : distance_slice_workspace(engine, chunk, N, D, x);

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "vr_persistence_cuda", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    scalar_t* pd = dist.data_ptr<scalar_t>();
    for (int64_t b0 = 0; b0 < B; b0 += chunk) {
      const int64_t nb = std::min(chunk, B - b0);
      if (distances) {
        check_cuda(tsl::cuda::launch_symmetrize_upper<scalar_t>(px + b0 * N * N, nb, N, pd,
                                                                stream),
                   "vr_persistence (distances)");
      } else {
        check_cuda(tsl::cuda::launch_pairwise_distance<scalar_t>(
                       px + b0 * N * D, nb, N, D, pd, stream, engine.distance_slices,
                       data_or_null(slices), bytes_or_zero(slices)),
                   "vr_persistence (pairwise distances)");
      }
      launch_persistence<scalar_t>(pd, b0, nb, N, dim, K, h0, h0_edges, h1, h1_edges, h1_count,
                                   truncated, plan, engine, stream, "vr_persistence");
    }
  });
  return {h0, h0_edges, h1, h1_edges, h1_count, truncated};
}

at::Tensor vr_persistence_backward_cuda(const at::Tensor& grad_h0, const at::Tensor& grad_h1,
                                        const at::Tensor& x_in, const at::Tensor& h0_edges_in,
                                        const at::Tensor& h1_edges_in, bool distances) {
  check_vr_backward_inputs(grad_h0, grad_h1, x_in, h0_edges_in, h1_edges_in, distances);
  c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  auto g0 = grad_h0.to(x.scalar_type()).contiguous();
  auto g1 = grad_h1.to(x.scalar_type()).contiguous();
  auto e0 = h0_edges_in.contiguous();
  auto e1 = h1_edges_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  const int64_t H0 = e0.size(1), K = e1.size(1);
  auto grad = at::zeros_like(x);
  if (B == 0 || N == 0) return grad;
  auto workspace = at::empty(
      {static_cast<int64_t>(tsl::cuda::vr_backward_workspace_bytes(B, H0, K))},
      x.options().dtype(at::kByte));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "vr_persistence_backward_cuda", [&] {
    check_cuda(tsl::cuda::launch_vr_backward<scalar_t>(
                   g0.data_ptr<scalar_t>(), g1.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), B,
                   N, D, e0.data_ptr<int64_t>(), H0, e1.data_ptr<int64_t>(), K, distances,
                   grad.data_ptr<scalar_t>(), workspace.data_ptr(), stream),
               "vr_persistence_backward");
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(tsloss_cuda, CUDA, m) {
  m.impl("pairwise_distance", &pairwise_distance_cuda);
  m.impl("vr_persistence", &vr_persistence_cuda);
  m.impl("vr_persistence_backward", &vr_persistence_backward_cuda);
}

}  // namespace tsloss
