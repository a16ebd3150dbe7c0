// Argument checks and empty outputs shared by the CPU and CUDA glue. Messages name the argument
// and what was expected, because they surface in Python as the user's error.
#pragma once

#include <torch/types.h>

#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "core/common.h"
#include "core/tsloss_terms.h"

namespace tsloss {

// TSL_CHECK(cond, parts...) is TORCH_CHECK with the message built by to_string/snprintf rather
// than by iostreams. An extension carrying its own static libstdc++ has iostream/locale state
// that clashes with torch's shared libstdc++: with LDFLAGS=-static-libstdc++ on Ubuntu 24.04,
// every TORCH_CHECK of ours that streamed a number segfaulted, as it did on the H200 host. The
// text is TORCH_CHECK's for the argument types used here; chars are refused (they would print
// as numbers) and a message is required.
namespace detail {
inline void put(std::string& s, const char* v) { s += v; }
inline void put(std::string& s, const std::string& v) { s += v; }
template <typename I, std::enable_if_t<std::is_integral<I>::value, int> = 0>
inline void put(std::string& s, I v) {
  static_assert(!std::is_same<I, char>::value && !std::is_same<I, signed char>::value &&
                    !std::is_same<I, unsigned char>::value,
                "TSL_CHECK prints integers; pass a string for a character");
  s += std::to_string(v);
}
inline void put(std::string& s, double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);  // ostream's default: %g, 6 significant digits
  s += buf;
}
inline void put(std::string& s, float v) { put(s, static_cast<double>(v)); }
inline void put(std::string& s, c10::IntArrayRef v) {
  s += '[';
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(v[i]);
  }
  s += ']';
}
inline void put(std::string& s, at::ScalarType t) { s += c10::toString(t); }
inline void put(std::string& s, const c10::Device& d) { s += d.str(); }

template <typename... Parts>
std::string message(const Parts&... parts) {
  static_assert(sizeof...(Parts) > 0, "TSL_CHECK needs a message that names the argument");
  std::string s;
  (put(s, parts), ...);
  return s;
}
}  // namespace detail

#define TSL_CHECK(cond, ...)                                                         \
  do {                                                                               \
    if (C10_UNLIKELY(!(cond))) {                                                     \
      ::c10::detail::torchCheckFail(__func__, __FILE__, static_cast<uint32_t>(__LINE__), \
                                    ::tsloss::detail::message(__VA_ARGS__));         \
    }                                                                                \
  } while (0)

// Every op on clouds refuses more than kMaxPoints points a cloud, pairwise_distance too (which
// could compute more): a traced call with a dynamic N reaches the kernel unchecked, and should
// fail as the eager call does.
inline void check_max_points(const at::Tensor& x, const char* op) {
  TSL_CHECK(x.size(1) <= tsl::kMaxPoints, op, ": N = ", x.size(1),
            " points exceeds the supported maximum of ", tsl::kMaxPoints);
}

// `op` and `arg` name what the user called and its argument (tsloss_cuda.loss's points are
// `prompts`).
inline void check_points_or_distances(const at::Tensor& x, bool distances,
                                      const char* op = "vr_persistence", const char* arg = "x") {
  TSL_CHECK(x.dim() == 3, op, ": ", arg, " must be ",
            distances ? "(B, N, N) distances" : "(B, N, D) points", " at the op level, got shape ",
            x.sizes());
  TSL_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": ", arg,
            " must be float32 or float64, got ", x.scalar_type());
  check_max_points(x, op);
  if (distances) {
    TSL_CHECK(x.size(1) == x.size(2), op, ": a distance matrix must be square, got ", x.sizes());
  } else {
    TSL_CHECK(x.size(2) >= 1 || x.size(1) <= 1, op, ": points need D >= 1, got ", x.sizes());
  }
}

// tsloss_forward's options, on every backend.
inline void check_tsloss_options(int64_t maxdim, int64_t max_h1, double p, int64_t reduction) {
  TSL_CHECK(maxdim == 0 || maxdim == 1, "tsloss_forward: maxdim must be 0 or 1, got ", maxdim);
  TSL_CHECK(max_h1 >= 0, "tsloss_forward: max_h1 must be >= 0, got ", max_h1);
  TSL_CHECK(p > 0, "tsloss_forward: p must be > 0, got ", p);
  TSL_CHECK(reduction >= 0 && reduction <= 2,
            "tsloss_forward: reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
}

// The previous topology of the stability term: prev_h0 (B, N-1) and prev_h1 (B, K) on x's
// device, both or neither; returned in x's dtype and contiguous (undefined when absent). Both
// backends' forward and backward index them at those shapes (a CUDA kernel given prev_h0 alone
// would read prev_h1 through a null pointer), and a tensor on another device is refused rather
// than copied: a copy from the host would block the step and break CUDA-graph capture.
// With `values` (the forward's call), CPU values are checked too: a NaN or Inf previous made
// the stability term, and the loss, NaN or Inf with no error. On CUDA that scan would
// synchronise: the terms kernel marks such a cloud h1_count = -2 (INVALID_INPUT) instead.
inline std::pair<at::Tensor, at::Tensor> check_previous(const char* op,
                                                        const c10::optional<at::Tensor>& prev_h0,
                                                        const c10::optional<at::Tensor>& prev_h1,
                                                        const at::Tensor& x, int64_t H0,
                                                        int64_t K, bool values = false) {
  const bool h0 = prev_h0.has_value() && prev_h0->defined();
  const bool h1 = prev_h1.has_value() && prev_h1->defined();
  TSL_CHECK(h0 == h1, op, ": prev_h0 and prev_h1 must be given together");
  if (!h0) return {at::Tensor(), at::Tensor()};
  const int64_t B = x.size(0);
  TSL_CHECK(prev_h0->dim() == 2 && prev_h0->size(0) == B && prev_h0->size(1) == H0, op,
            ": prev_h0 must be (B, N-1) = (", B, ", ", H0, "), got ", prev_h0->sizes());
  TSL_CHECK(prev_h1->dim() == 2 && prev_h1->size(0) == B && prev_h1->size(1) == K, op,
            ": prev_h1 must be (B, K) = (", B, ", ", K, "), got ", prev_h1->sizes());
  for (const at::Tensor* t : {&*prev_h0, &*prev_h1}) {
    TSL_CHECK(t->device() == x.device(), op, ": ", t == &*prev_h0 ? "prev_h0" : "prev_h1",
              " must be on x's device ", x.device(), ", got ", t->device());
    TSL_CHECK(at::isFloatingType(t->scalar_type()), op, ": ",
              t == &*prev_h0 ? "prev_h0" : "prev_h1", " must be floating point, got ",
              t->scalar_type());
  }
  auto h0v = prev_h0->to(x.scalar_type()).contiguous();
  auto h1v = prev_h1->to(x.scalar_type()).contiguous();
  if (values && x.device().is_cpu()) {
    // After the conversion: a float64 previous beyond float32's range is Inf for float32 x.
    for (const at::Tensor* t : {&h0v, &h1v}) {
      const int64_t cols = t->size(1);
      AT_DISPATCH_FLOATING_TYPES(t->scalar_type(), "check_previous", [&] {
        const scalar_t* p = t->data_ptr<scalar_t>();
        for (int64_t k = 0; k < t->numel(); ++k)
          TSL_CHECK(std::isfinite(p[k]), op, ": ", t == &h0v ? "prev_h0" : "prev_h1",
                    " contains NaN or Inf (cloud ", k / cols, ", column ", k % cols,
                    "); previous must be the finite topology of an earlier call");
      });
    }
  }
  return {h0v, h1v};
}

// A capacity beyond the number of edges can never fill; when it would also cost over 1 GiB of
// outputs (failing in the allocator, or with overcommit killed while padding them), refuse it
// while the message can still name the argument. Small surplus capacity stays legal, and so does
// any capacity up to the edge count: a large batch asked for it.
inline void check_h1_capacity(int64_t max_h1, int64_t B, int64_t N, int64_t value_bytes,
                              const char* op = "vr_persistence") {
  const int64_t edges = N * (N - 1) / 2;
  // At least one cloud's: with B = 0, a max_h1 past the edges overflowed torch's strides.
  const double bytes = double(B > 1 ? B : 1) * double(max_h1) * double(2 * value_bytes + 4 * 8);
  TSL_CHECK(max_h1 <= edges || bytes <= double(1ull << 30), op, ": max_h1 = ",
              max_h1, " asks for ", bytes / double(1ull << 30), " GiB of H1 outputs, but a ",
              "cloud of ", N, " points has at most ", edges, " H1 bars; pass max_h1 <= ",
              edges);
}

// vr_persistence's arguments, on every backend; returns the H1 capacity K of its outputs (0
// when maxdim is 0).
inline int64_t check_vr_persistence_args(const at::Tensor& x, int64_t maxdim, bool distances,
                                         int64_t max_h1) {
  check_points_or_distances(x, distances);
  TSL_CHECK(max_h1 >= 0, "vr_persistence: max_h1 must be >= 0, got ", max_h1);
  TSL_CHECK(maxdim == 0 || maxdim == 1, "vr_persistence: maxdim must be 0 or 1, got ", maxdim);
  const int64_t K = maxdim >= 1 ? max_h1 : 0;
  check_h1_capacity(K, x.size(0), x.size(1), x.element_size());
  return K;
}

// A tensor of the given shape and dtype on x's device, or an error naming it: the backward ops
// index their saved tensors by x's sizes, so a mismatch would read or write out of bounds, and
// the dispatcher picks the CUDA kernel when any argument is on a GPU, so a tensor elsewhere
// would hand the kernel a foreign pointer.
inline void check_saved(const char* op, const char* name, const at::Tensor& t,
                        c10::IntArrayRef shape, const char* shape_text, bool integer,
                        const at::Tensor& x) {
  TSL_CHECK(t.defined() && t.sizes() == shape, op, ": ", name, " must be ", shape_text, " = ",
            shape, " for x of that batch and size, got ",
            t.defined() ? t.sizes() : c10::IntArrayRef{});
  TSL_CHECK(t.device() == x.device(), op, ": ", name, " must be on x's device ", x.device(),
            ", got ", t.device());
  TSL_CHECK(integer ? t.scalar_type() == at::kLong : at::isFloatingType(t.scalar_type()), op,
            ": ", name, " must be ", integer ? "int64" : "floating point", ", got ",
            t.scalar_type());
}

// vr_persistence_backward's inputs: x as the forward's (its checks), h0_edges (B, N-1, 2) and h1_edges
// (B, K, 4) int64, grad_h0 (B, N-1, 2) and grad_h1 (B, K, 2).
inline void check_vr_backward_inputs(const at::Tensor& grad_h0, const at::Tensor& grad_h1,
                                     const at::Tensor& x, const at::Tensor& h0_edges,
                                     const at::Tensor& h1_edges, bool distances) {
  const char* op = "vr_persistence_backward";
  check_points_or_distances(x, distances, op);
  const int64_t B = x.size(0), N = x.size(1), H0 = N > 0 ? N - 1 : 0;
  TSL_CHECK(h1_edges.dim() == 3, op, ": h1_edges must be (B, K, 4), got ", h1_edges.sizes());
  const int64_t K = h1_edges.size(1);
  check_saved(op, "h0_edges", h0_edges, {B, H0, 2}, "(B, N-1, 2)", true, x);
  check_saved(op, "h1_edges", h1_edges, {B, K, 4}, "(B, K, 4)", true, x);
  check_saved(op, "grad_h0", grad_h0, {B, H0, 2}, "(B, N-1, 2)", false, x);
  check_saved(op, "grad_h1", grad_h1, {B, K, 2}, "(B, K, 2)", false, x);
}

// tsloss_backward's saved tensors against x (B, N, D): dist (B, N, N), scales (B,), topo_h0
// (B, N-1), topo_h1 (B, K), h1_count (B,), h0_edges (B, N-1, 2), h1_edges (B, K, 4); and each
// given upstream gradient () or (B,) as the reduction made the outputs.
inline void check_tsloss_backward_inputs(
    const at::Tensor& x, const at::Tensor& dist, const at::Tensor& scales,
    const at::Tensor& topo_h0, const at::Tensor& topo_h1, const at::Tensor& h1_count,
    const at::Tensor& h0_edges, const at::Tensor& h1_edges, int64_t reduction,
    std::initializer_list<const c10::optional<at::Tensor>*> grads) {
  const char* op = "tsloss_backward";
  check_points_or_distances(x, false, op);
  TSL_CHECK(reduction >= 0 && reduction <= 2, op,
            ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
  const int64_t B = x.size(0), N = x.size(1), H0 = N > 0 ? N - 1 : 0;
  TSL_CHECK(topo_h1.dim() == 2, op, ": topo_h1 must be (B, K), got ", topo_h1.sizes());
  const int64_t K = topo_h1.size(1);
  check_saved(op, "dist", dist, {B, N, N}, "(B, N, N)", false, x);
  check_saved(op, "scales", scales, {B}, "(B,)", false, x);
  check_saved(op, "topo_h0", topo_h0, {B, H0}, "(B, N-1)", false, x);
  check_saved(op, "topo_h1", topo_h1, {B, K}, "(B, K)", false, x);
  check_saved(op, "h1_count", h1_count, {B}, "(B,)", true, x);
  check_saved(op, "h0_edges", h0_edges, {B, H0, 2}, "(B, N-1, 2)", true, x);
  check_saved(op, "h1_edges", h1_edges, {B, K, 4}, "(B, K, 4)", true, x);
  const int64_t values = reduction == 0 ? B : 1;
  for (const c10::optional<at::Tensor>* g : grads) {
    if (!g->has_value() || !(*g)->defined()) continue;
    TSL_CHECK((*g)->numel() == values, op, ": an output gradient must have ",
              reduction == 0 ? "B values (reduction none)" : "one value (reduced outputs)",
              ", got shape ", (*g)->sizes());
    TSL_CHECK((*g)->device() == x.device(), op, ": an output gradient must be on x's device ",
              x.device(), ", got ", (*g)->device());
  }
}

// On the CPU, where it costs no synchronisation: every edge endpoint is a point of the cloud
// (negative marks a padding row). The CUDA kernels skip an endpoint >= N instead.
inline void check_edge_range(const char* op, const char* name, const at::Tensor& edges,
                             int64_t N) {
  const at::Tensor e = edges.contiguous();
  const int64_t* p = e.data_ptr<int64_t>();
  for (int64_t k = 0; k < e.numel(); ++k)
    TSL_CHECK(p[k] < N, op, ": ", name, " names point ", p[k], " of a cloud of ", N, " points");
}

// vr_persistence's six outputs, uninitialised, for B clouds of N points and H1 capacity K:
// h0 (B, N-1, 2) and h1 (B, K, 2) of the input's dtype, h0_edges (B, N-1, 2), h1_edges
// (B, K, 4) and h1_count (B,) int64, truncated (B,) bool. Every backend's kernel fills them.
using Diagrams6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                             at::Tensor>;
inline Diagrams6 empty_diagrams(const at::TensorOptions& opts, int64_t B, int64_t N, int64_t K) {
  const int64_t H0 = N > 0 ? N - 1 : 0;
  const auto iopts = opts.dtype(at::kLong);
  return {at::empty({B, H0, 2}, opts), at::empty({B, H0, 2}, iopts),
          at::empty({B, K, 2}, opts),  at::empty({B, K, 4}, iopts),
          at::empty({B}, iopts),       at::empty({B}, opts.dtype(at::kBool))};
}

// tsloss_forward's outputs but the distances, uninitialised, for B clouds of N points and H1
// capacity K: loss, conn, red, stab and scale ((B,) with reduction none, else ()), h1_count
// (B,) int64, topo_h0 (B, N-1), topo_h1 (B, K) and scales (B,) of the input's dtype, h0_edges
// (B, N-1, 2) and h1_edges (B, K, 4) int64. Every backend's forward fills them.
using TSLossOutputs11 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                   at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                   at::Tensor>;
inline TSLossOutputs11 empty_tsloss_outputs(const at::TensorOptions& opts, int64_t B, int64_t N,
                                            int64_t K, int64_t reduction) {
  const int64_t H0 = N > 0 ? N - 1 : 0;
  const auto iopts = opts.dtype(at::kLong);
  const std::vector<int64_t> reduced =
      reduction == tsl::kReduceNone ? std::vector<int64_t>{B} : std::vector<int64_t>{};
  return {at::empty(reduced, opts), at::empty(reduced, opts),      at::empty(reduced, opts),
          at::empty(reduced, opts), at::empty(reduced, opts),      at::empty({B}, iopts),
          at::empty({B, H0}, opts), at::empty({B, K}, opts),       at::empty({B}, opts),
          at::empty({B, H0, 2}, iopts), at::empty({B, K, 4}, iopts)};
}

// TSLoss's term options in the kernels' struct, on every backend.
inline tsl::TermOptions term_options(bool has_prev, bool normalize, bool target_mode,
                                     double target, double p, double w_conn, double w_red,
                                     double w_stab) {
  return tsl::TermOptions{normalize, target_mode, has_prev, target, p, w_conn, w_red, w_stab};
}

}  // namespace tsloss
