// The one registration file: op schemas in the `tsloss_cuda` namespace. Backend kernels are
// registered next to their implementations (cpu/, cuda/). Fake (meta) kernels and the autograd
// of pairwise_distance and vr_persistence are registered from Python (tsloss_cuda/_ops.py) with
// torch.library; tsloss_forward's autograd is here, since it runs every training step. The
// backward ops have no autograd of their own (pairwise_distance's double backward is a
// composition of tensor ops in _ops.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <torch/autograd.h>
#include <torch/library.h>
#include <Python.h>

#include "core/vr_emulated.h"
#include "core/x86_level.h"

TORCH_LIBRARY(tsloss_cuda, m) {
  m.def("pairwise_distance(Tensor x) -> Tensor");
  m.def(
      "vr_persistence(Tensor x, int maxdim, bool distances, SymInt max_h1) -> "
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
  //   then, for the backward: scales (B,) (the raw mean distances, before the clamp),
  //   dist (B, N, N), h0_edges (B, N-1, 2) int64, h1_edges (B, K, 4) int64.
  //
  // tsloss_backward: the gradient (B, N, D) on x given the gradients of the five reduced
  //   outputs (absent = zero), the forward's saved outputs and the same options.
  m.def(
      "tsloss_forward(Tensor x, Tensor? prev_h0, Tensor? prev_h1, int maxdim, SymInt max_h1, "
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
      "vr_persistence_emulated(Tensor x, int maxdim, bool distances, SymInt max_h1) -> "
      "(Tensor h0, Tensor h0_edges, Tensor h1, Tensor h1_edges, Tensor h1_count, "
      "Tensor truncated)");
}

// Gradient of pairwise_distance w.r.t. the points, for every backend without its own kernel
// (CUDA, meta): gx_i = sum_j (g_ij + g_ji) u_ij with the unit vector u_ij = (x_i - x_j) / d_ij,
// and 0 for coincident points, which have no direction. The CPU kernel fuses the same sum. Unit
// vectors, not weights (g_ij + g_ji) / d_ij: a weight overflows where the gradient does not (TSLoss
// at its scale clamp, two points half the smallest normal apart: g ~ 1/tiny over d ~ tiny gave
// inf on the H200; the CPU kernel scales its weights instead). By the difference form, as the CPU:
// the Gram form loses ~1e-2 relative in float32 on a pair 1e-4 apart and ~1e-3 on clouds far from
// the origin. The (B, N, c, D) differences go in column chunks of at most 256 MB.
static at::Tensor pairwise_distance_backward_composite(const at::Tensor& grad, const at::Tensor& x,
                                                       const at::Tensor& dist) {
  auto pos = dist > 0;
  auto g = at::where(pos, grad + grad.transpose(1, 2), at::zeros_like(dist));
  auto d = at::where(pos, dist, at::ones_like(dist));
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  auto out = at::zeros_like(x, at::MemoryFormat::Contiguous);
  if (B == 0 || N == 0 || D == 0) return out;
  const int64_t per_column = B * N * D * static_cast<int64_t>(x.element_size());
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(256) << 20) / per_column));
  for (int64_t j0 = 0; j0 < N; j0 += chunk) {
    const int64_t c = std::min(chunk, N - j0);
    auto unit = (x.unsqueeze(2) - x.narrow(1, j0, c).unsqueeze(1)).div_(d.narrow(2, j0, c).unsqueeze(-1));
    out.add_((g.narrow(2, j0, c).unsqueeze(-1) * unit).sum(2));  // unit: (B, N, c, D)
  }
  return out;
}

TORCH_LIBRARY_IMPL(tsloss_cuda, CompositeExplicitAutograd, m) {
  m.impl("pairwise_distance_backward", &pairwise_distance_backward_composite);
}

// Autograd of tsloss_forward in C++. Registered from Python (torch.library.register_autograd), the
// op paid ~50 us of Python per forward with grad (68 against 17 us for one N = 8 prompt) and ~8
// more per backward, every training step. The gradient flows from the five reduced outputs only;
// the topology and the tensors saved for the backward come out detached, so that a gradient
// asked of them is an error rather than a silent zero.
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;

constexpr int kTSLossInputs = 13;

class TSLossFunction : public torch::autograd::Function<TSLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptTensor& prev_h0,
                               const OptTensor& prev_h1, int64_t maxdim, c10::SymInt max_h1,
                               bool normalize, bool target_mode, double target, double p,
                               double w_conn, double w_red, double w_stab, int64_t reduction) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("tsloss_cuda::tsloss_forward", "")
                               .typed<Forward>();
    Outputs out;
    {  // Not over the detach below: under this guard it would take a version counter of its own
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      out = op.call(x, prev_h0, prev_h1, maxdim, max_h1, normalize, target_mode, target, p,
                    w_conn, w_red, w_stab, reduction);
    }
    variable_list outs{std::get<0>(out), std::get<1>(out), std::get<2>(out), std::get<3>(out),
                       std::get<4>(out), std::get<5>(out), std::get<6>(out), std::get<7>(out),
                       std::get<8>(out), std::get<9>(out), std::get<10>(out), std::get<11>(out)};
    // Detached aliases (the same storage and version counter), not this Function's outputs: a
    // saved output reaches a saved-tensors pack hook with its grad_fn, this node, and the hook's
    // holder of non-reentrant checkpointing (torch.utils.checkpoint, use_reentrant=False) then
    // kept the node alive through its own saved variables: 17 tensors leaked every step.
    ctx->save_for_backward({x, outs[9].detach(), outs[8].detach(), outs[6].detach(),
                            outs[7].detach(), outs[5].detach(), outs[10].detach(),
                            outs[11].detach(), prev_h0.value_or(at::Tensor()),
                            prev_h1.value_or(at::Tensor())});
    ctx->saved_data["normalize"] = normalize;
    ctx->saved_data["target_mode"] = target_mode;
    ctx->saved_data["target"] = target;
    ctx->saved_data["p"] = p;
    ctx->saved_data["connectivity"] = w_conn;
    ctx->saved_data["redundancy"] = w_red;
    ctx->saved_data["stability"] = w_stab;
    ctx->saved_data["reduction"] = reduction;
    // Absent upstream gradients stay undefined: the op treats them as zero without a zeros
    // tensor (one kernel launch each on CUDA).
    ctx->set_materialize_grads(false);
    return outs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "tsloss_cuda.loss: double backward (create_graph=True) is not supported by the "
                "fused TSLoss op: its backward is one kernel without a derivative of its own. Its "
                "first-order gradient is exact; for higher orders differentiate the composition "
                "of tsloss_cuda.pairwise_distance and tsloss_cuda.vr_persistence yourself.");
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("tsloss_cuda::tsloss_backward", "")
                               .typed<Backward>();
    const auto saved = ctx->get_saved_variables();
    auto opt = [](const at::Tensor& t) { return t.defined() ? OptTensor(t) : OptTensor(); };
    const auto& d = ctx->saved_data;
    at::Tensor grad = op.call(
        opt(grads[0]), opt(grads[1]), opt(grads[2]), opt(grads[3]), opt(grads[4]), saved[0],
        saved[1], saved[2], saved[3], saved[4], saved[5], saved[6], saved[7], opt(saved[8]),
        opt(saved[9]), d.at("normalize").toBool(), d.at("target_mode").toBool(),
        d.at("target").toDouble(), d.at("p").toDouble(), d.at("connectivity").toDouble(),
        d.at("redundancy").toDouble(), d.at("stability").toDouble(), d.at("reduction").toInt());
    variable_list out(kTSLossInputs);
    out[0] = grad;
    return out;
  }

  using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                             at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                             at::Tensor, at::Tensor>;
  using Forward = Outputs(const at::Tensor&, const OptTensor&, const OptTensor&, int64_t,
                          c10::SymInt, bool, bool, double, double, double, double, double,
                          int64_t);
  using Backward = at::Tensor(const OptTensor&, const OptTensor&, const OptTensor&,
                              const OptTensor&, const OptTensor&, const at::Tensor&,
                              const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, const OptTensor&, const OptTensor&, bool, bool,
                              double, double, double, double, double, int64_t);
};

TSLossFunction::Outputs tsloss_forward_autograd(const at::Tensor& x, const OptTensor& prev_h0,
                                                const OptTensor& prev_h1, int64_t maxdim,
                                                c10::SymInt max_h1, bool normalize,
                                                bool target_mode, double target, double p,
                                                double w_conn, double w_red, double w_stab,
                                                int64_t reduction) {
  auto o = TSLossFunction::apply(x, prev_h0, prev_h1, maxdim, max_h1, normalize, target_mode,
                                 target, p, w_conn, w_red, w_stab, reduction);
  // Detached rather than marked non-differentiable in the Function: compiled autograd asserts
  // that a C++ node has no non-differentiable outputs. They share the version counter still.
  return {o[0], o[1], o[2], o[3], o[4], o[5], o[6].detach(), o[7].detach(), o[8].detach(),
          o[9].detach(), o[10], o[11]};
}

}  // namespace

TORCH_LIBRARY_IMPL(tsloss_cuda, Autograd, m) {
  m.impl("tsloss_forward", &tsloss_forward_autograd);
}

// Importing the extension module is what loads the registrations above. Its Python API is the
// x86 level of the CPU kernels (tsloss_cuda/cpu_isa.py wraps it), the digest of the sources it
// was built from and a count for the emulation's tests: not ops, because they configure or
// observe the process rather than compute on tensors.
static PyObject* cpu_levels(PyObject*, PyObject*) {
  return Py_BuildValue("(ii)", tsl::detected_x86_level(), tsl::x86_level());
}

// Whether at::parallel_for spreads a batch over torch's threads in this build: torch's inline
// OpenMP backend works only in code compiled with OpenMP, which setup.py leaves out (with a
// warning) where the compiler has none. The CPU ops' translation units include the same headers
// with the same flags as this one.
static PyObject* parallel_build(PyObject*, PyObject*) {
#ifdef INTRA_OP_PARALLEL
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

static PyObject* set_cpu_level(PyObject*, PyObject* arg) {
  const long level = PyLong_AsLong(arg);
  if (level == -1 && PyErr_Occurred()) return nullptr;
  return PyBool_FromLong(tsl::set_x86_cap(static_cast<int>(level)));
}

static PyObject* emulated_clouds(PyObject*, PyObject*) {
  return PyLong_FromLongLong(tsl::emulated_cloud_count().load());
}

static PyObject* emulated_block_reductions(PyObject*, PyObject*) {
  return PyLong_FromLongLong(tsl::emulated_block_reductions().load());
}

namespace tsloss {
int64_t output_cache_held();  // cpu/vr_persistence_cpu.cpp
}

static PyObject* output_cache_held(PyObject*, PyObject*) {
  try {
    return PyLong_FromLongLong(tsloss::output_cache_held());
  } catch (const std::exception& e) {  // the setting is read here first, and may be refused
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

// The digest setup.py computed of the sources it compiled (tsloss_cuda/build_info.py); a build
// made some other way has none.
#if __has_include("generated/source_digest.h")
#include "generated/source_digest.h"
#endif
#ifndef TSL_SOURCE_DIGEST
#define TSL_SOURCE_DIGEST "unknown"
#endif

static PyObject* source_digest(PyObject*, PyObject*) {
  return PyUnicode_FromString(TSL_SOURCE_DIGEST);
}

static PyMethodDef tsloss_methods[] = {
    {"cpu_levels", cpu_levels, METH_NOARGS,
     "(detected, active) x86 levels of the CPU kernels: 0 baseline, 3 AVX2, 4 AVX-512."},
    {"parallel_build", parallel_build, METH_NOARGS,
     "Whether the CPU ops spread a batch over torch's threads (False: built without OpenMP)."},
    {"set_cpu_level", set_cpu_level, METH_O,
     "Caps the CPU kernels' x86 level at 0, 3 or 4 (-1 lifts the cap); False if the CPU lacks it."},
    {"source_digest", source_digest, METH_NOARGS,
     "Digest of the sources the extension was compiled from (tsloss_cuda.build_info)."},
    {"emulated_clouds", emulated_clouds, METH_NOARGS,
     "Clouds run through the host warp emulation so far (tests of TSLOSS_ENGINE=emulated)."},
    {"emulated_block_reductions", emulated_block_reductions, METH_NOARGS,
     "Of those, H1 reductions run on an emulated block of warps (TSLOSS_EMULATED_REDUCE_WARPS)."},
    {"output_cache_held", output_cache_held, METH_NOARGS,
     "Bytes of freed CPU outputs kept for reuse (TSLOSS_CPU_OUTPUT_CACHE_MB; for the tests)."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef tsloss_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                           tsloss_methods};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&tsloss_module); }
