// CPU kernels of the fused TSLoss ops (tsloss_forward, tsloss_backward): one parallel region
// per call over the clouds of a batch, each task computing its cloud's distances once (kept for
// the backward), the scale from their sum, the diagrams and the terms (core/tsloss_terms.h);
// the backward is one pass over the pairs with the dense scale weight and the sparse bar
// weights together.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../checks.h"
#include "../core/tsloss_terms.h"
#include "../core/vr_emulated.h"
#include "../core/vr_engine.h"
#include "cloud_glue.h"

namespace tsloss {
namespace {

using namespace glue;

// Errors about the points name the function the user called and its argument.
const Caller kOp{"loss", "prompts"};

// TSLOSS_ENGINE=emulated: the diagrams come from the GPU engine's kernels on the host warp
// emulation (core/vr_emulated.h), so that the loss suites check the device's algorithm on a
// machine without a GPU, as persistence.py does for vr_persistence. Read at every call: a test
// switches it within a process. Anything but unset, empty or "emulated" is refused: a misspelt
// switch ran the CPU engine, and a suite meant for the emulation passed without running it.
bool emulated_engine() {
  const char* e = std::getenv("TSLOSS_ENGINE");
  if (e == nullptr || *e == '\0') return false;
  TSL_CHECK(std::strcmp(e, "emulated") == 0,
            "TSLOSS_ENGINE must be unset, empty or 'emulated', got '", e, "'");
  return true;
}

// Reduces per-cloud values (double) over the batch into out (T; shape () or (B,)).
template <typename T>
void reduce_into(const std::vector<double>& v, int64_t reduction, T* out) {
  const int64_t B = static_cast<int64_t>(v.size());
  if (reduction == tsl::kReduceNone) {
    for (int64_t b = 0; b < B; ++b) out[b] = static_cast<T>(v[b]);
    return;
  }
  double s = 0.0;
  for (double e : v) s += e;
  out[0] = static_cast<T>(reduction == tsl::kReduceMean ? s / static_cast<double>(B) : s);
}

using ForwardOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor, at::Tensor>;

ForwardOut tsloss_forward_cpu(const at::Tensor& x_in, const c10::optional<at::Tensor>& prev_h0_in,
                              const c10::optional<at::Tensor>& prev_h1_in, int64_t maxdim,
                              int64_t max_h1, bool normalize, bool target_mode, double target,
                              double p, double w_conn, double w_red, double w_stab,
                              int64_t reduction) {
  check_points_or_distances(x_in, false, kOp.op, kOp.points);
  check_tsloss_options(maxdim, max_h1, p, reduction);
  const int64_t B = x_in.size(0), N = x_in.size(1), D = x_in.size(2);
  const int64_t H0 = N > 0 ? N - 1 : 0;
  const int64_t K = maxdim >= 1 ? max_h1 : 0;
  check_h1_capacity(K, B, N, x_in.element_size(), kOp.op);
  auto x = x_in.contiguous();
  auto [prev_h0, prev_h1] =
      check_previous("tsloss_forward", prev_h0_in, prev_h1_in, x, H0, K, /*values=*/true);
  const tsl::TermOptions opt = term_options(prev_h0.defined(), normalize, target_mode, target, p,
                                            w_conn, w_red, w_stab);
  auto opts = x.options();
  at::Tensor loss, conn, red, stab, scale, h1_count, topo_h0, topo_h1, scales, h0_edges, h1_edges;
  std::tie(loss, conn, red, stab, scale, h1_count, topo_h0, topo_h1, scales, h0_edges,
           h1_edges) = empty_tsloss_outputs(opts, B, N, K, reduction);
  // With enough clouds for every thread, each task computes its clouds' distances itself (one
  // parallel region; the matrix is still in cache for the engine). Otherwise the rows of the
  // few clouds are shared out first.
  const bool fused = B >= 2 * at::get_num_threads();
  at::Tensor dist = fused ? glue::empty_written({B, N, N}, opts) : glue::distances(x, kOp);

  std::vector<double> v_conn(B), v_red(B), v_stab(B), v_scale(B), v_total(B);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tsloss_forward_cpu", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    scalar_t* pd = dist.data_ptr<scalar_t>();
    const scalar_t* pp0 = prev_h0.defined() ? prev_h0.data_ptr<scalar_t>() : nullptr;
    const scalar_t* pp1 = prev_h1.defined() ? prev_h1.data_ptr<scalar_t>() : nullptr;
    scalar_t* pt0 = topo_h0.data_ptr<scalar_t>();
    scalar_t* pt1 = topo_h1.data_ptr<scalar_t>();
    scalar_t* psc = scales.data_ptr<scalar_t>();
    int64_t* pcount = h1_count.data_ptr<int64_t>();
    int64_t* pe0 = h0_edges.data_ptr<int64_t>();
    int64_t* pe1 = h1_edges.data_ptr<int64_t>();
    if (fused) check_lone_points(px, B, N, D, kOp);
    const int64_t threads = at::get_num_threads();
    const int64_t sweep_chunks = B == 1 && N >= 64 && threads > 1 ? 4 * threads : 1;
    const int64_t work = N * N * (N + (fused ? D : 0));
    const bool emulated = emulated_engine();
    const tsl::EmulationOptions emulation_opt =
        emulated ? tsl::emulation_options_from_env() : tsl::EmulationOptions{};
    glue::parallel_for(0, B, cloud_grain(work), [&](int64_t begin, int64_t end) {
      tsl::HostWorkspace<scalar_t>& ws = thread_workspace<scalar_t>();
      tsl::EmulatedWorkspace<scalar_t> emulated_ws;
      std::vector<double> sq;
      std::vector<scalar_t> h0(H0 * 2), h1(K * 2);
      bool truncated = false;
      for (int64_t b = begin; b < end; ++b) {
        scalar_t* db = pd + b * N * N;
        // One running sum in row order however the distances were made (fused: while they are
        // written), so that the scale does not depend on the batch's layout or the threads.
        double pair_sum = 0.0;
        if (fused) {
          cloud_distances(px + b * N * D, N, D, b, sq, db, kOp, &pair_sum);
        } else {
          for (int64_t i = 1; i < N; ++i)
            for (int64_t j = 0; j < i; ++j) pair_sum += static_cast<double>(db[i * N + j]);
        }
        bool passes = false;
        const scalar_t raw = tsl::raw_scale<scalar_t>(pair_sum, N);
        const scalar_t s = tsl::clamp_scale<scalar_t>(raw, normalize, &passes);
        psc[b] = raw;  // for the backward, which clamps it again
        tsl::CloudOutput<scalar_t> out{h0.data(),         pe0 + b * H0 * 2, h1.data(),
                                       pe1 + b * K * 4,   pcount + b,       &truncated,
                                       K};
        if (emulated)
          tsl::vr_persistence_cloud_emulated(db, N, static_cast<int>(maxdim), out, emulated_ws,
                                             emulation_opt);
        else
          tsl::vr_persistence_cloud(db, N, static_cast<int>(maxdim), out, ws, sweep_chunks,
                                    ParallelChunks());
        const tsl::CloudSums t = tsl::cloud_terms(
            h0.data(), N, h1.data(), K, pcount[b], s, pp0 ? pp0 + b * H0 : nullptr,
            pp1 ? pp1 + b * K : nullptr, opt, pt0 + b * H0, pt1 + b * K);
        v_conn[b] = t.conn;
        v_red[b] = t.red;
        v_stab[b] = t.stab;
        v_scale[b] = static_cast<double>(s);
        v_total[b] = tsl::loss_of(t.conn, t.red, t.stab, opt);
      }
      trim_thread_workspace(ws);
    });
    reduce_into(v_total, reduction, loss.data_ptr<scalar_t>());
    reduce_into(v_conn, reduction, conn.data_ptr<scalar_t>());
    reduce_into(v_red, reduction, red.data_ptr<scalar_t>());
    reduce_into(v_stab, reduction, stab.data_ptr<scalar_t>());
    reduce_into(v_scale, reduction, scale.data_ptr<scalar_t>());
  });
  return {loss,  conn,   red,  stab,     scale,    h1_count,
          topo_h0, topo_h1, scales, dist, h0_edges, h1_edges};
}

// An upstream gradient as a double array (nullptr when absent).
std::vector<double> grad_values(const c10::optional<at::Tensor>& g) {
  if (!g.has_value() || !g->defined()) return {};
  auto d = g->to(at::kDouble).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

at::Tensor tsloss_backward_cpu(
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
  const int64_t H0 = N > 0 ? N - 1 : 0;
  const int64_t K = topo_h1_in.size(1);
  check_edge_range("tsloss_backward", "h0_edges", h0_edges_in, N);
  check_edge_range("tsloss_backward", "h1_edges", h1_edges_in, N);
  auto x = x_in.contiguous();
  const auto st = x.scalar_type();
  auto dist = dist_in.to(st).contiguous();
  auto scales = scales_in.to(st).contiguous();
  auto topo_h0 = topo_h0_in.to(st).contiguous(), topo_h1 = topo_h1_in.to(st).contiguous();
  auto count = h1_count_in.contiguous();
  auto e0 = h0_edges_in.contiguous(), e1 = h1_edges_in.contiguous();
  auto [prev_h0, prev_h1] = check_previous("tsloss_backward", prev_h0_in, prev_h1_in, x, H0, K);
  const tsl::TermOptions opt = term_options(prev_h0.defined(), normalize, target_mode, target, p,
                                            w_conn, w_red, w_stab);
  const std::vector<double> gl = grad_values(grad_loss), gc = grad_values(grad_conn),
                            gr = grad_values(grad_red), gs = grad_values(grad_stab),
                            gsc = grad_values(grad_scale);
  auto ptr = [](const std::vector<double>& v) { return v.empty() ? nullptr : v.data(); };
  auto out = glue::empty_written(x.sizes(), x.options());
  if (B == 0 || N == 0 || D == 0) return out.zero_();

  // Per cloud: the weight on every pair (the scale's) and on each reported edge (the bars').
  const int64_t E = H0 + K;
  std::vector<double> dense(B), edge_w(B * E);
  AT_DISPATCH_FLOATING_TYPES(st, "tsloss_backward_cpu", [&] {
    const scalar_t* psc = scales.data_ptr<scalar_t>();
    const scalar_t* pt0 = topo_h0.data_ptr<scalar_t>();
    const scalar_t* pt1 = topo_h1.data_ptr<scalar_t>();
    const scalar_t* pp0 = prev_h0.defined() ? prev_h0.data_ptr<scalar_t>() : nullptr;
    const scalar_t* pp1 = prev_h1.defined() ? prev_h1.data_ptr<scalar_t>() : nullptr;
    const int64_t* pcount = count.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      const double a = tsl::reduced_grad(ptr(gl), b, B, static_cast<int>(reduction));
      const tsl::CloudCoefficients k = tsl::known_coefficients(
          {a * w_conn + tsl::reduced_grad(ptr(gc), b, B, static_cast<int>(reduction)),
           a * w_red + tsl::reduced_grad(ptr(gr), b, B, static_cast<int>(reduction)),
           a * w_stab + tsl::reduced_grad(ptr(gs), b, B, static_cast<int>(reduction)),
           tsl::reduced_grad(ptr(gsc), b, B, static_cast<int>(reduction))},
          pcount[b]);
      bool passes = false;  // the clamp of the scale passes the gradient unless the raw mean
                            // fell below it
      const double s = static_cast<double>(tsl::clamp_scale<scalar_t>(psc[b], normalize, &passes));
      double ds = k.scale;
      double* w = edge_w.data() + b * E;
      for (int64_t r = 0; r < H0; ++r)
        w[r] = tsl::h0_death_grad(pt0[b * H0 + r], pp0 ? pp0[b * H0 + r] : scalar_t(0), H0, s,
                                  opt, k, &ds);
      const int64_t rows = pp1 ? tsl::stability_rows(pp1 + b * K, K, pcount[b]) : 0;
      for (int64_t q = 0; q < K; ++q)
        w[H0 + q] = tsl::h1_pers_grad(pt1[b * K + q], pp1 ? pp1[b * K + q] : scalar_t(0), q,
                                      pcount[b], rows, s, opt, k, &ds);
      dense[b] = tsl::dense_pair_weight(ds, N, passes);
    }

    // One pass over the pairs: gx_i = sum_j W_ij (x_i - x_j), W_ij = (dense weight + the
    // weights of the reported edges {i, j}) / d_ij; coincident points have no direction.
    const int64_t n4 = (N + 3) / 4 * 4;
    const scalar_t* pd = dist.data_ptr<scalar_t>();
    const int64_t* pe0 = e0.data_ptr<int64_t>();
    const int64_t* pe1 = e1.data_ptr<int64_t>();
    // The weights summed in double (the dense weight, then each edge's in order), then divided
    // by the distance and rounded once.
    glue::pair_gradients<scalar_t>(x.data_ptr<scalar_t>(), B, N, D, out.data_ptr<scalar_t>(),
                                   [&](int64_t b, scalar_t* W) {
      thread_local std::vector<glue::PairTerm> terms;
      terms.clear();
      const double* ew = edge_w.data() + b * E;
      auto add = [&](int64_t u, int64_t v, double g, bool minus) {
        if (u < 0 || v < 0 || u == v) return;
        terms.push_back(glue::PairTerm{std::max(u, v) * n4 + std::min(u, v), g, minus});
      };
      for (int64_t r = 0; r < H0; ++r)
        add(pe0[(b * H0 + r) * 2], pe0[(b * H0 + r) * 2 + 1], ew[r], false);
      for (int64_t q = 0; q < K; ++q) {
        const int64_t* e = pe1 + (b * K + q) * 4;
        add(e[0], e[1], ew[H0 + q], true);  // the birth edge's weight counts negatively
        add(e[2], e[3], ew[H0 + q], false);
      }
      return glue::fill_uniform_pair_weights(N, n4, W, dense[b], pd + b * N * N, terms);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(tsloss_cuda, CPU, m) {
  m.impl("tsloss_forward", &tsloss_forward_cpu);
  m.impl("tsloss_backward", &tsloss_backward_cpu);
}

}  // namespace tsloss
