// The one registration file: op schemas in the `tsloss_cuda` namespace. Backend kernels are
// registered next to their implementations (cpu/, cuda/); autograd and fake (meta) kernels are
// registered from Python (tsloss_cuda/_ops.py) with torch.library.
#include <ATen/ATen.h>
#include <algorithm>
#include <torch/library.h>
#include <Python.h>

#include "core/vr_emulated.h"
#include "core/x86_level.h"

TORCH_LIBRARY(tsloss_cuda, m) {
  m.def("pairwise_distance(Tensor x) -> Tensor");
  m.def(
      "vr_persistence(Tensor x, int maxdim, bool distances, int max_h1) -> "
      "(Tensor h0, Tensor h0_edges, Tensor h1, Tensor h1_edges, Tensor h1_count, "
      "Tensor truncated)");
  m.def("pairwise_distance_backward(Tensor grad, Tensor x, Tensor dist) -> Tensor");
  m.def(
      "vr_persistence_backward(Tensor grad_h0, Tensor grad_h1, Tensor x, Tensor h0_edges, "
      "Tensor h1_edges, bool distances) -> Tensor");
  // TSLoss in one op pair (tsloss_cuda/loss.py defines the terms, core/tsloss_terms.h computes
  // them; tsloss_cuda.loss is the Python entry point).
  //
  // tsloss_forward
  //   x:        (B, N, D) float32/float64 points
  //   prev_h0:  (B, N-1) x.dtype, prev_h1: (B, K) x.dtype: the previous topology (both or
  //             neither; the stability term is on when given)
  //   maxdim:   1 computes H1 (K = max_h1 rows), 0 H0 only (K = 0)
  //   normalize (scale = mean distance, else 1), target_mode (connectivity |u - target|, else
  //   u), target, p, connectivity / redundancy / stability weights, reduction (0 none, 1 mean,
  //   2 sum over the batch)
  // Returns, in x.dtype unless said: loss, connectivity_term, redundancy_term, stability_term,
  //   scale: () or (B,) with reduction 0; h1_count (B,) int64 (CUDA: -1 overflow, -2 invalid
  //   input); topo_h0 (B, N-1) and topo_h1 (B, K): the topology for the next call's previous;
  //   then, for the backward: scales (B,), dist (B, N, N), h0_edges (B, N-1, 2) int64,
  //   h1_edges (B, K, 4) int64.
  //
  // tsloss_backward: the gradient (B, N, D) on x given the gradients of the five reduced
  //   outputs (absent = zero), the forward's saved outputs and the same options.
  m.def(
      "tsloss_forward(Tensor x, Tensor? prev_h0, Tensor? prev_h1, int maxdim, int max_h1, "
      "bool normalize, bool target_mode, float target, float p, float connectivity, "
      "float redundancy, float stability, int reduction) -> "
      "(Tensor loss, Tensor connectivity_term, Tensor redundancy_term, Tensor stability_term, "
      "Tensor scale, Tensor h1_count, Tensor topo_h0, Tensor topo_h1, Tensor scales, "
      "Tensor dist, Tensor h0_edges, Tensor h1_edges)");
  m.def(
      "tsloss_backward(Tensor? grad_loss, Tensor? grad_connectivity, Tensor? grad_redundancy, "
      "Tensor? grad_stability, Tensor? grad_scale, Tensor x, Tensor dist, Tensor scales, "
      "Tensor topo_h0, Tensor topo_h1, Tensor h1_count, Tensor h0_edges, Tensor h1_edges, "
      "Tensor? prev_h0, Tensor? prev_h1, bool normalize, bool target_mode, float target, "
      "float p, float connectivity, float redundancy, float stability, int reduction) -> Tensor");
  // The CPU engine run through the warp kernels on the host emulation (TSLOSS_ENGINE=emulated).
  m.def(
      "vr_persistence_emulated(Tensor x, int maxdim, bool distances, int max_h1) -> "
      "(Tensor h0, Tensor h0_edges, Tensor h1, Tensor h1_edges, Tensor h1_count, "
      "Tensor truncated)");
}

// Gradient of pairwise_distance w.r.t. the points, for every backend without its own kernel
// (CUDA, meta): gx_i = sum_j w_ij (x_i - x_j), w_ij = (g_ij + g_ji) / d_ij, and 0 for
// coincident points, which have no direction. The CPU kernel fuses the same sum. By the
// difference form, as the CPU: the Gram form rowsum(w) x_i - (w x)_i loses ~1e-2 relative in
// float32 on a pair 1e-4 apart (w ~ 1/d is largest exactly there) and ~1e-3 on clouds far from the
// origin. The (B, N, c, D) differences go in column chunks of at most 256 MB.
static at::Tensor pairwise_distance_backward_composite(const at::Tensor& grad, const at::Tensor& x,
                                                       const at::Tensor& dist) {
  auto pos = dist > 0;
  auto w = at::where(pos, (grad + grad.transpose(1, 2)) / at::where(pos, dist, at::ones_like(dist)),
                     at::zeros_like(dist));
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  auto out = at::zeros_like(x, at::MemoryFormat::Contiguous);
  if (B == 0 || N == 0 || D == 0) return out;
  const int64_t per_column = B * N * D * static_cast<int64_t>(x.element_size());
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(256) << 20) / per_column));
  for (int64_t j0 = 0; j0 < N; j0 += chunk) {
    const int64_t c = std::min(chunk, N - j0);
    auto diff = x.unsqueeze(2) - x.narrow(1, j0, c).unsqueeze(1);  // (B, N, c, D)
    out.add_((w.narrow(2, j0, c).unsqueeze(-1) * diff).sum(2));
  }
  return out;
}

TORCH_LIBRARY_IMPL(tsloss_cuda, CompositeExplicitAutograd, m) {
  m.impl("pairwise_distance_backward", &pairwise_distance_backward_composite);
}

// Importing the extension module is what loads the registrations above. Its Python API is the
// x86 level of the CPU kernels (tsloss_cuda/cpu_isa.py wraps it) and a count for the emulation's
// tests: not ops, because they configure or observe the process rather than compute on tensors.
static PyObject* cpu_levels(PyObject*, PyObject*) {
  return Py_BuildValue("(ii)", tsl::detected_x86_level(), tsl::x86_level());
}

static PyObject* set_cpu_level(PyObject*, PyObject* arg) {
  const long level = PyLong_AsLong(arg);
  if (level == -1 && PyErr_Occurred()) return nullptr;
  return PyBool_FromLong(tsl::set_x86_cap(static_cast<int>(level)));
}

static PyObject* emulated_clouds(PyObject*, PyObject*) {
  return PyLong_FromLongLong(tsl::emulated_cloud_count().load());
}

static PyMethodDef tsloss_methods[] = {
    {"cpu_levels", cpu_levels, METH_NOARGS,
     "(detected, active) x86 levels of the CPU kernels: 0 baseline, 3 AVX2, 4 AVX-512."},
    {"set_cpu_level", set_cpu_level, METH_O,
     "Caps the CPU kernels' x86 level at 0, 3 or 4 (-1 lifts the cap); False if the CPU lacks it."},
    {"emulated_clouds", emulated_clouds, METH_NOARGS,
     "Clouds run through the host warp emulation so far (tests of TSLOSS_ENGINE=emulated)."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef tsloss_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                           tsloss_methods};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&tsloss_module); }
