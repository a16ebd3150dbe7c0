// The one registration file: op schemas in the `tsloss_cuda` namespace. Backend kernels are
// registered next to their implementations (cpu/, cuda/); autograd and fake (meta) kernels are
// registered from Python (tsloss_cuda/_ops.py) with torch.library.
#include <torch/library.h>
#include <Python.h>

TORCH_LIBRARY(tsloss_cuda, m) {
  m.def("pairwise_distance(Tensor x) -> Tensor");
  m.def(
      "vr_persistence(Tensor x, int maxdim, bool distances, int max_h1) -> "
      "(Tensor h0, Tensor h0_edges, Tensor h1, Tensor h1_edges, Tensor h1_count, "
      "Tensor truncated)");
  m.def(
      "vr_persistence_backward(Tensor grad_h0, Tensor grad_h1, Tensor x, Tensor h0_edges, "
      "Tensor h1_edges, bool distances) -> Tensor");
}

// Importing the extension module is what loads the registrations above; it has no Python API.
static struct PyModuleDef tsloss_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&tsloss_module); }
