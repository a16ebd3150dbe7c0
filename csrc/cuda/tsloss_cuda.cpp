// CUDA kernels of the fused TSLoss ops: thin torch glue around kernels.h. The forward is the
// distance kernel (whose epilogue leaves the per-cloud distance sums and the invalid-input flag),
// the engine (launch_vr_persistence) and the terms with their reduction, one kernel (its last
// block reduces; the distance kernel clears its count); the backward is two kernels. Same results
// as the CPU op, on the current stream, workspaces from the caching allocator, no host
// synchronisation: a cloud with a non-finite distance is not reported on the host but gets NaN
// values and h1_count = -2 (INVALID_INPUT), as vr_persistence marks it.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>

#include "../checks.h"
#include "cuda_glue.h"
#include "kernels.h"

namespace tsloss {
namespace {

using namespace cuda_glue;

bool given(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

template <typename T>
const T* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return given(t) ? t->data_ptr<T>() : nullptr;
}

// An optional tensor (already checked to be on x's device) in x's dtype, contiguous (undefined
// when absent).
c10::optional<at::Tensor> like_x(const c10::optional<at::Tensor>& t, const at::Tensor& x) {
  if (!given(t)) return c10::nullopt;
  return t->to(x.scalar_type()).contiguous();
}

// check_previous's pair as the launchers take it: absent tensors as nullopt.
std::pair<c10::optional<at::Tensor>, c10::optional<at::Tensor>> previous_or_none(
    std::pair<at::Tensor, at::Tensor> prev) {
  if (!prev.first.defined()) return {c10::nullopt, c10::nullopt};
  return {std::move(prev.first), std::move(prev.second)};
}

using ForwardOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor, at::Tensor>;

ForwardOut tsloss_forward_cuda(const at::Tensor& x_in,
                               const c10::optional<at::Tensor>& prev_h0_in,
                               const c10::optional<at::Tensor>& prev_h1_in, int64_t maxdim,
                               int64_t max_h1, bool normalize, bool target_mode, double target,
                               double p, double w_conn, double w_red, double w_stab,
                               int64_t reduction) {
  // Errors name what the user called: tsloss_cuda.loss and its prompts, as on the CPU.
  check_points_or_distances(x_in, false, "loss", "prompts");
  check_tsloss_options(maxdim, max_h1, p, reduction);
  const int64_t B = x_in.size(0), N = x_in.size(1), D = x_in.size(2);
  const int64_t H0 = N > 0 ? N - 1 : 0;
  const int64_t K = maxdim >= 1 ? max_h1 : 0;
  check_h1_capacity(K, B, N, x_in.element_size(), "loss");
  // Before the guard: with x on the host and a previous topology on a GPU, the dispatcher
  // brings the call here, and the error should name the tensor.
  c10::optional<at::Tensor> prev_h0, prev_h1;  // not a structured binding: lambdas capture them
  std::tie(prev_h0, prev_h1) =
      previous_or_none(check_previous("tsloss_forward", prev_h0_in, prev_h1_in, x_in, H0, K));
  c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  const tsl::TermOptions o = term_options(prev_h0.has_value(), normalize, target_mode, target, p,
                                          w_conn, w_red, w_stab);
  auto opts = x.options();
  at::Tensor loss, conn, red, stab, scale, h1_count, topo_h0, topo_h1, scales, h0_edges, h1_edges;
  std::tie(loss, conn, red, stab, scale, h1_count, topo_h0, topo_h1, scales, h0_edges,
           h1_edges) = empty_tsloss_outputs(opts, B, N, K, reduction);
  auto dist = at::empty({B, N, N}, opts);
  // The engine's own diagrams, which the terms kernel reads (the op returns their edges).
  auto h0 = at::empty({B, H0, 2}, opts), h1 = at::empty({B, K, 2}, opts);
  auto truncated = at::empty({B}, opts.dtype(at::kBool));
  if (B == 0) {
    // Reduced over no prompts, as the CPU op (and torch.mean / torch.sum) give.
    if (reduction != tsl::kReduceNone)
      for (at::Tensor* t : {&loss, &conn, &red, &stab, &scale})
        t->fill_(reduction == tsl::kReduceMean ? std::nan("") : 0.0);
    return {loss, conn, red, stab, scale, h1_count, topo_h0, topo_h1, scales, dist,
            h0_edges, h1_edges};
  }

  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int dim = static_cast<int>(maxdim);
  // The engine as vr_persistence runs it (same settings), its workspace bounding the clouds per
  // launch; the whole batch's distances stay (the backward takes them).
  const EngineSettings engine = engine_settings();
  const EnginePlan plan = engine_plan(engine, B, N, dim, opts, 0, "tsloss");
  const int64_t chunk = plan.chunk;
  auto terms_ws = at::empty({static_cast<int64_t>(tsl::cuda::tsloss_forward_workspace_bytes(B, N))},
                            opts.dtype(at::kByte));
  const at::Tensor slices = distance_slice_workspace(engine, B, N, D, x);

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tsloss_forward_cuda", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    scalar_t* pd = dist.data_ptr<scalar_t>();
    check_cuda(tsl::cuda::launch_pairwise_distance_sum<scalar_t>(
                   px, B, N, D, pd, static_cast<double*>(terms_ws.data_ptr()), stream,
                   tsl::cuda::tsloss_terms_counter(terms_ws.data_ptr(), B, N),
                   engine.distance_slices, data_or_null(slices), bytes_or_zero(slices)),
               "tsloss_forward (distances)");
    for (int64_t b0 = 0; b0 < B; b0 += chunk) {
      const int64_t nb = std::min(chunk, B - b0);
      launch_persistence<scalar_t>(pd + b0 * N * N, b0, nb, N, dim, K, h0, h0_edges, h1,
                                   h1_edges, h1_count, truncated, plan, engine, stream,
                                   "tsloss_forward (persistence)");
    }
    check_cuda(tsl::cuda::launch_tsloss_terms<scalar_t>(
                   px, B, N, D, h0.data_ptr<scalar_t>(), h1.data_ptr<scalar_t>(), K,
                   h1_count.data_ptr<int64_t>(), ptr_or_null<scalar_t>(prev_h0),
                   ptr_or_null<scalar_t>(prev_h1), o, static_cast<int>(reduction),
                   topo_h0.data_ptr<scalar_t>(), topo_h1.data_ptr<scalar_t>(),
                   scales.data_ptr<scalar_t>(), loss.data_ptr<scalar_t>(),
                   conn.data_ptr<scalar_t>(), red.data_ptr<scalar_t>(),
                   stab.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(), terms_ws.data_ptr(),
                   stream),
               "tsloss_forward (terms)");
  });
  return {loss, conn, red, stab, scale, h1_count, topo_h0, topo_h1, scales, dist, h0_edges,
          h1_edges};
}

at::Tensor tsloss_backward_cuda(
    const c10::optional<at::Tensor>& grad_loss, const c10::optional<at::Tensor>& grad_conn,
    const c10::optional<at::Tensor>& grad_red, const c10::optional<at::Tensor>& grad_stab,
    const c10::optional<at::Tensor>& grad_scale, const at::Tensor& x_in,
    const at::Tensor& dist_in, const at::Tensor& scales_in, const at::Tensor& topo_h0_in,
    const at::Tensor& topo_h1_in, const at::Tensor& h1_count_in, const at::Tensor& h0_edges_in,
    const at::Tensor& h1_edges_in, const c10::optional<at::Tensor>& prev_h0_in,
    const c10::optional<at::Tensor>& prev_h1_in, bool normalize, bool target_mode, double target,
    double p, double w_conn, double w_red, double w_stab, int64_t reduction) {
  check_tsloss_backward_inputs(x_in, dist_in, scales_in, topo_h0_in, topo_h1_in, h1_count_in,
                               h0_edges_in, h1_edges_in, reduction,
                               {&grad_loss, &grad_conn, &grad_red, &grad_stab, &grad_scale});
  const int64_t B = x_in.size(0), N = x_in.size(1), D = x_in.size(2);
  const int64_t K = topo_h1_in.size(1);
  // Before the guard, as in the forward: the error should name the misplaced tensor.
  c10::optional<at::Tensor> prev_h0, prev_h1;
  std::tie(prev_h0, prev_h1) = previous_or_none(
      check_previous("tsloss_backward", prev_h0_in, prev_h1_in, x_in, N > 0 ? N - 1 : 0, K));
  c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  auto dist = dist_in.to(x.scalar_type()).contiguous();
  auto scales = scales_in.to(x.scalar_type()).contiguous();
  auto topo_h0 = topo_h0_in.to(x.scalar_type()).contiguous();
  auto topo_h1 = topo_h1_in.to(x.scalar_type()).contiguous();
  auto count = h1_count_in.contiguous();
  auto e0 = h0_edges_in.contiguous(), e1 = h1_edges_in.contiguous();
  auto gl = like_x(grad_loss, x), gc = like_x(grad_conn, x), gr = like_x(grad_red, x),
       gs = like_x(grad_stab, x), gsc = like_x(grad_scale, x);
  const tsl::TermOptions o = term_options(prev_h0.has_value(), normalize, target_mode, target, p,
                                          w_conn, w_red, w_stab);
  auto grad = at::empty_like(x);
  if (B == 0 || N == 0 || D == 0) return grad.zero_();
  auto workspace = at::empty(
      {static_cast<int64_t>(tsl::cuda::tsloss_backward_workspace_bytes(B, N, K))},
      x.options().dtype(at::kByte));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tsloss_backward_cuda", [&] {
    check_cuda(tsl::cuda::launch_tsloss_backward<scalar_t>(
                   ptr_or_null<scalar_t>(gl), ptr_or_null<scalar_t>(gc),
                   ptr_or_null<scalar_t>(gr), ptr_or_null<scalar_t>(gs),
                   ptr_or_null<scalar_t>(gsc), x.data_ptr<scalar_t>(), B, N, D,
                   dist.data_ptr<scalar_t>(), scales.data_ptr<scalar_t>(),
                   topo_h0.data_ptr<scalar_t>(), topo_h1.data_ptr<scalar_t>(), K,
                   count.data_ptr<int64_t>(), e0.data_ptr<int64_t>(), e1.data_ptr<int64_t>(),
                   ptr_or_null<scalar_t>(prev_h0), ptr_or_null<scalar_t>(prev_h1), o,
                   static_cast<int>(reduction), grad.data_ptr<scalar_t>(), workspace.data_ptr(),
                   stream),
               "tsloss_backward");
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(tsloss_cuda, CUDA, m) {
  m.impl("tsloss_forward", &tsloss_forward_cuda);
  m.impl("tsloss_backward", &tsloss_backward_cuda);
}

}  // namespace tsloss
