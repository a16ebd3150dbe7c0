// tsloss_cuda::vr_persistence_emulated on the CPU: vr_persistence with the GPU engine's
// warp-cooperative kernels run through the host warp emulation (core/vr_emulated.h), so that the
// Python suites (ripser.py parity, loss, gradients) can run the device's algorithm on a machine
// without a GPU: TSLOSS_ENGINE=emulated (tsloss_cuda/persistence.py). Same signature, outputs,
// checks and messages as the CPU op; lanes run in order (no shuffling: the native tests do that).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <vector>

#include "../checks.h"
#include "../core/vr_emulated.h"
#include "cloud_glue.h"

namespace tsloss {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
vr_persistence_emulated_cpu(const at::Tensor& x_in, int64_t maxdim, bool distances,
                            int64_t max_h1) {
  const int64_t K = check_vr_persistence_args(x_in, maxdim, distances, max_h1);
  const int64_t B = x_in.size(0), N = x_in.size(1);
  // From points, the CPU op's distances, checked in vr_persistence's name as the CPU op checks.
  const at::Tensor dist =
      distances ? x_in.contiguous() : glue::distances(x_in, {"vr_persistence", "x"});
  auto opts = x_in.options();
  at::Tensor h0, h0_edges, h1, h1_edges, h1_count, truncated;
  std::tie(h0, h0_edges, h1, h1_edges, h1_count, truncated) = empty_diagrams(opts, B, N, K);
  if (B == 0) return {h0, h0_edges, h1, h1_edges, h1_count, truncated};
  AT_DISPATCH_FLOATING_TYPES(x_in.scalar_type(), "vr_persistence_emulated_cpu", [&] {
    const scalar_t* pd = dist.data_ptr<scalar_t>();
    const tsl::EmulationOptions opt = tsl::emulation_options_from_env();
    glue::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      tsl::EmulatedWorkspace<scalar_t> ws;
      std::vector<scalar_t> matrix(distances ? N * N : 0);
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* cloud = pd + b * N * N;
        if (distances) {
          glue::symmetric_from_upper(cloud, N, b, matrix.data());
          cloud = matrix.data();
        }
        const auto out = glue::cloud_output<scalar_t>(h0, h0_edges, h1, h1_edges, h1_count,
                                                       truncated, b);
        tsl::vr_persistence_cloud_emulated(cloud, N, static_cast<int>(maxdim), out, ws, opt);
      }
    });
  });
  return {h0, h0_edges, h1, h1_edges, h1_count, truncated};
}

}  // namespace

TORCH_LIBRARY_IMPL(tsloss_cuda, CPU, m) {
  m.impl("vr_persistence_emulated", &vr_persistence_emulated_cpu);
}

}  // namespace tsloss
