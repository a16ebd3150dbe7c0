// The one registration file: op schemas in the `tsloss_cuda` namespace. Backend kernels are
// registered next to their implementations (cpu/, cuda/); autograd and fake (meta) kernels are
// registered from Python (tsloss_cuda/_ops.py) with torch.library.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <Python.h>

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
  m.def("vr_persistence_emulated(Tensor x, int maxdim, bool distances, int max_h1) -> (Tensor h0, Tensor h0_edges, Tensor h1, Tensor h1_edges, Tensor h1_count, Tensor truncated)");
}

// Gradient of pairwise_distance w.r.t. the points, for every backend without its own kernel
// (CUDA, meta): gx_i = sum_j w_ij (x_i - x_j), w_ij = (g_ij + g_ji) / d_ij, and 0 for
// coincident points, which have no direction. The CPU kernel fuses the same sum.
static at::Tensor pairwise_distance_backward_composite(const at::Tensor& grad, const at::Tensor& x,
                                                       const at::Tensor& dist) {
  auto pos = dist > 0;
  auto w = at::where(pos, (grad + grad.transpose(1, 2)) / at::where(pos, dist, at::ones_like(dist)),
                     at::zeros_like(dist));
  return w.sum(-1, true) * x - at::bmm(w, x);
}

TORCH_LIBRARY_IMPL(tsloss_cuda, CompositeExplicitAutograd, m) {
  m.impl("pairwise_distance_backward", &pairwise_distance_backward_composite);
}

// Importing the extension module is what loads the registrations above; it has no Python API.
static struct PyModuleDef tsloss_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&tsloss_module); }
