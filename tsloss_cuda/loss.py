"""TSLoss: the Topological Soft Prompt Loss.

The paper (arXiv 2602.16500) rewards a prompt whose Vietoris–Rips topology is connected and
compact (H0), free of redundant loops (H1) and stable over training, without a formula we can
read. This is *our* definition. For a prompt P of N points with diagram (H0, H1):

* scale ``s``: the mean pairwise distance of P (``normalize="mean"``, differentiable, so that
  shrinking the whole prompt cannot trivially win) or 1 (``normalize="none"``);
* connectivity: mean over H0 deaths δ of ``δ/s`` (``connectivity_mode="total"``) or of
  ``|δ/s − τ|`` (``"target"``: pulls components to a common scale, as Hofer et al. 2019);
* redundancy: ``Σ_{H1 bars} ((death − birth)/s)^p``;
* stability: mean squared difference between the sorted H0 deaths/s of this call and of the
  previous one, plus the same for the sorted H1 persistences/s, over the rows that hold a bar in
  either call (the shorter list zero-padded); 0 on a first call.

``TSLoss = connectivity·C + redundancy·R + stability·S`` per prompt, then reduced over the batch.
Everything stays on the prompt's device; nothing synchronises with the host. The loss is one
registered op pair (``tsloss_cuda::tsloss_forward`` / ``tsloss_backward``) on CPU and CUDA;
tests/reference_loss.py keeps the same definition as a composition of the public ops.
"""
from __future__ import annotations

import math
import numbers
import sys
from decimal import Decimal
from types import FrameType
from typing import Literal, NamedTuple, Optional, Tuple, TypedDict, Union, cast, overload

import numpy as np
import torch
import torch.utils.checkpoint

from ._ops import ops
from .persistence import (HALF_DTYPES, check_dense, check_max_h1, check_points, default_max_h1,
                          functorch_transform_active, transform_differentiates)

_NORMALIZE = ("mean", "none")
_MODES = ("total", "target")
_REDUCTIONS = ("mean", "sum", "none")


class PromptTopology(NamedTuple):
    """A detached, scale-normalised summary of a diagram, kept for the stability term.

    h0: ``(B, N-1)`` sorted H0 deaths / s.  h1: ``(B, K)`` sorted (descending), zero-padded H1
    persistences / s.
    """

    h0: torch.Tensor
    h1: torch.Tensor


# The name torch.export.save records for it, and a type torch.load(weights_only=True) may
# rebuild (tensors only): an exported program that takes a previous topology or returns
# terms["topology"] ran but could neither be saved nor loaded.
torch.utils._pytree._register_namedtuple(PromptTopology,
                                         serialized_type_name="tsloss_cuda.PromptTopology")
torch.serialization.add_safe_globals([PromptTopology])


class Terms(TypedDict, total=False):
    """What ``loss(..., return_terms=True)`` returns beside the loss: tensors, and the topology
    (every key there; :attr:`TSLoss.last_terms` is empty before the first call)."""

    connectivity: torch.Tensor
    redundancy: torch.Tensor
    stability: torch.Tensor
    scale: torch.Tensor
    h1_count: torch.Tensor
    topology: PromptTopology


def _is_topology(previous) -> bool:
    """Whether ``previous`` can serve as a topology: tensors ``.h0`` and ``.h1`` (a
    PromptTopology, or another named tuple a checkpoint restored)."""
    return all(isinstance(getattr(previous, a, None), torch.Tensor) for a in ("h0", "h1"))


def _real(name: str, value) -> float:
    """``value`` as a finite float, or an error that names the argument. A tensor is refused:
    the op takes its options as numbers, so a tensor's value would be read back from its device
    on every call (a host synchronisation) and no gradient would reach it."""
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a Python number, got a tensor; options are constants "
                        "of the op (pass float(t) once, outside the training step)")
    # numpy's bool too: float() would take np.True_ as 1.0.
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    except OverflowError:  # an integer (or fraction) past float64's range, as Inf is
        raise ValueError(f"{name} must be finite, got {_abbreviated(value)}") from None
    if not -math.inf < number < math.inf:  # not math.isfinite: Dynamo traces a comparison
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def _abbreviated(value) -> str:
    """A number too large for a float, short: 10**400 as 1.000e+400 (not 401 digits; past
    4300 digits, str() of an int raises)."""
    if isinstance(value, numbers.Rational):
        try:
            return f"{Decimal(int(value.numerator)) / Decimal(int(value.denominator)):.3e}"
        except ArithmeticError:  # past Decimal's own exponent range (10**1000000)
            pass
    kind = type(value).__name__
    return f"{'an' if kind[0] in 'aeiouAEIOU' else 'a'} {kind} past float64's range"


def _one_of(name: str, value, choices: Tuple[str, ...]) -> None:
    # A str first: `in` on a numpy array compares elementwise and raises numpy's own error.
    if not (isinstance(value, str) and value in choices):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_options(normalize, connectivity_mode, target, p, reduction, max_h1,
                   weights: Tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
    _one_of("normalize", normalize, _NORMALIZE)
    _one_of("connectivity_mode", connectivity_mode, _MODES)
    if connectivity_mode == "target" and target is None:
        raise ValueError("connectivity_mode='target' needs target=τ (a float)")
    if connectivity_mode != "target" and target is not None:
        raise ValueError(f"target={target!r} is used only with connectivity_mode='target', got "
                         f"connectivity_mode={connectivity_mode!r}")
    if target is not None and _real("target", target) < 0:
        # |u - τ| of a death u >= 0 is u + |τ|: the "total" term plus a constant
        raise ValueError(f"target must be >= 0 (τ is compared with deaths over the scale, "
                         f"which are >= 0), got {target}")
    if not _real("p", p) > 0:
        raise ValueError(f"p must be > 0, got {p}")
    for name, w in zip(("connectivity", "redundancy", "stability"), weights):
        _real(name, w)
    _one_of("reduction", reduction, _REDUCTIONS)
    check_max_h1(max_h1)


def _check_prompts_type(prompts) -> None:
    if not isinstance(prompts, torch.Tensor):
        raise TypeError(f"prompts must be a torch.Tensor, got {type(prompts).__name__}")
    check_dense(prompts, "prompts")


def _as_prompts(prompts: torch.Tensor) -> torch.Tensor:
    _check_prompts_type(prompts)
    if prompts.dim() not in (2, 3):
        raise ValueError(f"prompts must be (N, D) or (B, N, D), got shape {tuple(prompts.shape)}")
    if prompts.shape[-1] == 0 and prompts.shape[-2] > 1:
        raise ValueError(f"prompts must have D >= 1 coordinates per point, got shape "
                         f"{tuple(prompts.shape)}")
    check_points(prompts, "prompts")
    if prompts.dtype not in (torch.float32, torch.float64) + HALF_DTYPES:
        # As vr_persistence: float8 and the like are refused, not silently widened.
        raise TypeError("prompts must be float32 or float64 (float16 and bfloat16 are computed "
                        f"in float32), got {prompts.dtype}")
    # Half precision cannot resolve near-equal distances; float64 stays float64 (gradcheck).
    compute = torch.float64 if prompts.dtype == torch.float64 else torch.float32
    x = prompts.to(compute)
    return x if x.dim() == 3 else x.unsqueeze(0)


def _match_width(t: torch.Tensor, width: int) -> torch.Tensor:
    if t.shape[-1] >= width:
        return t[..., :width]
    return torch.nn.functional.pad(t, (0, width - t.shape[-1]))


# The `reduction` codes of the tsloss ops (csrc/core/tsloss_terms.h).
_REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}


@overload
def loss(
    prompts: torch.Tensor, *, connectivity: float = ..., redundancy: float = ...,
    stability: float = ..., previous: Optional[PromptTopology] = ..., normalize: str = ...,
    connectivity_mode: str = ..., target: Optional[float] = ..., p: float = ...,
    reduction: str = ..., return_terms: Literal[False] = ..., max_h1: Optional[int] = ...,
) -> torch.Tensor: ...
@overload
def loss(
    prompts: torch.Tensor, *, connectivity: float = ..., redundancy: float = ...,
    stability: float = ..., previous: Optional[PromptTopology] = ..., normalize: str = ...,
    connectivity_mode: str = ..., target: Optional[float] = ..., p: float = ...,
    reduction: str = ..., return_terms: Literal[True], max_h1: Optional[int] = ...,
) -> Tuple[torch.Tensor, Terms]: ...
@overload
def loss(
    prompts: torch.Tensor, *, connectivity: float = ..., redundancy: float = ...,
    stability: float = ..., previous: Optional[PromptTopology] = ..., normalize: str = ...,
    connectivity_mode: str = ..., target: Optional[float] = ..., p: float = ...,
    reduction: str = ..., return_terms: bool, max_h1: Optional[int] = ...,
) -> Union[torch.Tensor, Tuple[torch.Tensor, Terms]]: ...
def loss(
    prompts: torch.Tensor,
    *,
    connectivity: float = 1.0,
    redundancy: float = 1.0,
    stability: float = 0.0,
    previous: Optional[PromptTopology] = None,
    normalize: str = "mean",
    connectivity_mode: str = "total",
    target: Optional[float] = None,
    p: float = 1.0,
    reduction: str = "mean",
    return_terms: bool = False,
    max_h1: Optional[int] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, Terms]]:
    """Topological Soft Prompt Loss of a prompt or a batch of prompts.

    Args:
        prompts: ``(N, D)`` or ``(B, N, D)`` float32/float16/bfloat16 (computed in float32) or
            float64 (computed in float64) soft-prompt embeddings, N at most 4096
            (other dtypes, float8 included, raise a TypeError).
        connectivity, redundancy, stability: weights of the three terms (finite Python
            numbers, as every option here: a tensor is refused, since the op would read it back
            from its device on every call).
        previous: the :class:`PromptTopology` of the previous call (``terms["topology"]`` of a
            call with ``return_terms=True``), a constant (no gradient flows into it), on the
            prompts' device (another device is a ValueError, not a copy that would block each
            step); None makes the stability term 0. One made under ``torch.inference_mode`` is
            fine, unless that call was compiled: evaluate compiled code under
            ``torch.no_grad()``, since a compiled training step cannot save inference tensors
            for its backward.
        normalize: ``"mean"`` (divide by the mean pairwise distance) or ``"none"``.
        connectivity_mode: ``"total"`` or ``"target"`` (needs ``target``).
        target: τ >= 0 for ``connectivity_mode="target"``.
        p: exponent of the H1 persistences in the redundancy term (finite, > 0).
        reduction: ``"mean"`` or ``"sum"`` over prompts (scalar), or ``"none"`` (``(B,)``).
            For an empty batch (B = 0) ``"mean"`` is NaN, as ``torch.mean`` of no elements.
        return_terms: also return a dict of the unweighted terms (reduced like the loss),
            ``scale`` (per prompt the mean pairwise distance, at least the dtype's smallest
            normal number so that coincident points divide by no zero, or 1 with
            ``normalize="none"``; reduced alike; NaN, and so the loss, for a float64 prompt
            whose distances sum past float64's range, ~1e305 apart at N = 64),
            ``h1_count`` ``(B,)``, and ``topology`` (detached, for ``previous``). A prompt
            whose H1 outgrew the CUDA workspace (``h1_count`` -1, see ``TSLOSS_CUDA_H1_HEAP``)
            has NaN redundancy, stability (with ``previous``) and H1 topology, so its loss is
            NaN unless both weigh 0; those terms pass it no gradient, its connectivity (from
            its exact H0) keeps its own; its topology's H1 rows are zeros (:class:`TSLoss`
            keeps the previous call's rows instead). Raise the setting rather than train on
            it.
        max_h1: H1 capacity per prompt (default 4·N, at least 8); the K most persistent bars
            are used.

    Returns:
        The loss (float32 or float64 tensor; scalar unless ``reduction="none"``), and with
        ``return_terms=True`` a tuple ``(loss, terms)``.

    The loss, the terms and the scale are differentiable once: the backward is one fused op
    (``create_graph=True`` raises a RuntimeError), in reverse mode only. It runs under
    ``torch.func.vmap``; forward-mode AD (``torch.autograd.forward_ad``, ``torch.func.jvp``,
    ``jacfwd``, ``hessian``) and ``torch.func.grad``/``vjp``/``jacrev`` raise a
    NotImplementedError (:func:`vr_persistence` supports them all).
    """
    _check_options(normalize, connectivity_mode, target, p, reduction, max_h1,
                   (connectivity, redundancy, stability))
    if not isinstance(return_terms, bool):  # "no" would be true: a tuple where one loss was due
        raise TypeError(f"return_terms must be True or False, got {return_terms!r}")
    x = _as_prompts(prompts)
    if transform_differentiates(x):
        # The fused op's autograd is C++ reverse mode only: upstream's messages blamed vmap
        # (which works) or asked for a feature request.
        raise NotImplementedError(
            "tsloss_cuda.loss supports reverse-mode autograd only (loss.backward(), "
            "torch.autograd.grad), and torch.func.vmap; not forward-mode AD "
            "(torch.autograd.forward_ad, torch.func.jvp/jacfwd/hessian) nor torch.func.grad/vjp/"
            "jacrev: use reverse mode, or compose vr_persistence, which supports them")
    b, n = x.shape[0], x.shape[1]
    k = default_max_h1(n) if max_h1 is None else int(max_h1)
    need_h1 = redundancy != 0 or stability != 0 or return_terms
    kk = k if need_h1 else 0
    prev_h0 = prev_h1 = None
    if previous is not None:
        if not _is_topology(previous):
            raise TypeError("previous must be the PromptTopology of an earlier call "
                            "(terms['topology'], with tensors .h0 and .h1), got "
                            f"{type(previous).__name__}")
        check_dense(previous.h0, "previous.h0")  # .contiguous() below refuses a sparse one
        check_dense(previous.h1, "previous.h1")
        if not (previous.h0.is_floating_point() and previous.h1.is_floating_point()):
            raise TypeError("previous must hold real floating-point tensors (a topology of an "
                            f"earlier call), got {previous.h0.dtype} and {previous.h1.dtype}")
        for name, t in (("h0", previous.h0), ("h1", previous.h1)):
            if t.device != x.device:  # a host-to-device copy here would block every step
                raise ValueError(f"previous.{name} is on {t.device}, the prompts on {x.device}: "
                                 "move the previous topology to the prompts' device once "
                                 "(PromptTopology(*(t.to(device) for t in previous)))")
        # A constant of this call: detached (no gradient flows into the previous topology), and
        # copied when it was made under torch.inference_mode, whose tensors autograd cannot save.
        prev_h0 = previous.h0.detach().to(dtype=x.dtype)
        prev_h1 = previous.h1.detach().to(dtype=x.dtype)
        h0_shape = (b, max(n - 1, 0))
        if tuple(prev_h0.shape) != h0_shape:
            raise ValueError(f"previous.h0 has shape {tuple(prev_h0.shape)}, expected "
                             f"{h0_shape} (same B and N as the previous call)")
        if prev_h1.dim() != 2 or prev_h1.shape[0] != b:
            raise ValueError(f"previous.h1 has shape {tuple(prev_h1.shape)}, expected ({b}, K) "
                             "(same B as the previous call)")
        prev_h1 = _match_width(prev_h1, kk)
        # Compiled, Dynamo cannot test is_inference(), and a copy inside the graph does not help
        # (the saved tensor is the input): the topologies `loss` returns are never inference
        # tensors when made eagerly (_topology).
        if not torch.compiler.is_compiling():
            prev_h0 = prev_h0.clone() if prev_h0.is_inference() else prev_h0
            prev_h1 = prev_h1.clone() if prev_h1.is_inference() else prev_h1
        prev_h0, prev_h1 = prev_h0.contiguous(), prev_h1.contiguous()

    # One op computes the distances once, the scale, the diagrams and every term; its backward
    # is one pass over the pairs (autograd in csrc/ops.cpp, terms in csrc/core/tsloss_terms.h).
    (out, conn, red, stab, scale, h1_count, topo_h0, topo_h1, *_saved) = ops.tsloss_forward(
        x, prev_h0, prev_h1, 1 if need_h1 else 0, k, normalize == "mean",
        connectivity_mode == "target", 0.0 if target is None else float(target), float(p),
        float(connectivity), float(redundancy), float(stability), _REDUCTION_CODES[reduction])
    if not return_terms:
        return out
    terms: Terms = {
        "connectivity": conn,
        "redundancy": red,
        "stability": stab,
        "scale": scale,
        "h1_count": h1_count,
        "topology": _topology(topo_h0, topo_h1),
    }
    return out, terms


class _Options(TypedDict):
    """TSLoss's keyword options of :func:`loss`."""

    connectivity: float
    redundancy: float
    stability: float
    normalize: str
    connectivity_mode: str
    target: Optional[float]
    p: float
    reduction: str
    max_h1: Optional[int]


def _topology(h0: torch.Tensor, h1: torch.Tensor) -> PromptTopology:
    """The summary for a later call's ``previous``. Made under ``torch.inference_mode`` (an
    evaluation step), it is copied outside that mode: autograd cannot save inference tensors,
    and a compiled training step cannot test for them (Dynamo does not trace is_inference)."""
    if not torch.compiler.is_compiling() and torch.is_inference_mode_enabled():
        with torch.inference_mode(False):
            return PromptTopology(h0.clone(), h1.clone())
    return PromptTopology(h0.detach(), h1.detach())


class TSLoss(torch.nn.Module):
    """Stateful TSLoss: keeps the previous diagram for the stability term.

    Takes the keyword options of :func:`loss` (except ``previous`` and ``return_terms``).
    ``forward(prompts)`` returns the loss; ``last_terms`` holds the detached per-term tensors
    of the last call for logging (read them at your logging interval, not every step).
    ``reset()`` forgets the previous diagram. Prompts of another shape (B or N) than the last
    call's are a ValueError with ``stability != 0``, whose term compares the two; with
    ``stability=0`` the call starts over as after ``reset()`` (its stability term is 0, as in a
    first call). Every call updates ``previous``, in any grad mode and in ``train()`` as in
    ``eval()``: a validation or logging call on the same prompts between two training steps,
    or gradient accumulation over micro-batches that share one prompt, leaves the next call's
    stability term comparing (nearly) the same prompts, 0 for equal ones. Make such calls
    with :func:`loss`, whose ``previous`` is yours to pass.
    ``state_dict()`` stays empty, so that a model holding a TSLoss saves as before
    (safetensors takes tensors only, strict loading of older checkpoints finds no missing
    key); to resume the stability term exactly, save ``previous._asdict()`` (``previous`` is
    a :class:`PromptTopology` of tensors, or None) with the checkpoint and assign
    ``PromptTopology(**saved)`` back (on any device: the next forward moves it to the
    prompts' device once). A compiled module evaluated under ``torch.inference_mode`` keeps
    an inference-tensor diagram that its next compiled training call cannot save for the
    backward: evaluate compiled code under ``torch.no_grad()`` (an eager evaluation there is
    fine: its diagram is copied out of inference mode).

    Under ``torch.utils.checkpoint`` (either ``use_reentrant``), the recomputation in the
    backward reuses the previous topology of the forward it repeats and updates no state (with
    several calls before one backward, that of the last call). Under a torch.func transform
    (vmap, grad, jvp, ...), whose tensors the state cannot keep, the call raises a
    RuntimeError: use :func:`loss` with ``previous`` there. So does ``torch.export`` with
    ``stability != 0``, which would bake in one previous topology and drop the update: export
    :func:`loss` with ``previous`` as an input and ``terms["topology"]`` as an output.
    """

    def __init__(self, *, connectivity: float = 1.0, redundancy: float = 1.0,
                 stability: float = 0.0, normalize: str = "mean",
                 connectivity_mode: str = "total", target: Optional[float] = None,
                 p: float = 1.0, reduction: str = "mean", max_h1: Optional[int] = None) -> None:
        super().__init__()
        _check_options(normalize, connectivity_mode, target, p, reduction, max_h1,
                       (connectivity, redundancy, stability))
        self.options = _Options(connectivity=connectivity, redundancy=redundancy,
                                stability=stability, normalize=normalize,
                                connectivity_mode=connectivity_mode, target=target, p=p,
                                reduction=reduction, max_h1=max_h1)
        self.previous: Optional[PromptTopology] = None
        self.last_terms: Terms = {}
        # The previous that the last forward used, for its recomputation by a checkpoint.
        self._used_previous: Optional[PromptTopology] = None

    def reset(self) -> None:
        self.previous = None
        self.last_terms = {}
        self._used_previous = None

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        _check_prompts_type(prompts)
        if functorch_transform_active():
            # The state would keep the transform's tensors (BatchedTensor, ...), which fail
            # at the next plain call.
            raise RuntimeError(
                "TSLoss keeps state between calls (previous, last_terms) and cannot run under "
                "torch.func transforms (vmap, grad, jvp, functionalize, ...): call "
                "tsloss_cuda.loss(prompts, previous=..., return_terms=True) there and keep "
                "terms['topology'] yourself")
        exporting = torch.compiler.is_exporting()
        tracing = torch.jit.is_tracing()
        if (exporting or tracing) and self.options["stability"] != 0:
            # Export or a trace would bake in this call's previous and drop the state update.
            how = "exported" if exporting else "traced (torch.jit.trace)"
            raise RuntimeError(
                f"TSLoss(stability != 0) cannot be {how}: its previous topology is state "
                "that such a program cannot keep; use tsloss_cuda.loss(prompts, "
                "stability=..., previous=PromptTopology(h0, h1), return_terms=True) with the "
                "previous topology as an input and terms['topology'] as an output instead")
        recomputing = _checkpoint_recomputation()
        previous = self._used_previous if recomputing else self.previous
        topology = _is_topology(previous)
        if topology and previous is not None and any(t.device != prompts.device
                                                      for t in (previous.h0, previous.h1)):
            # State this module owns, restored on another device (a checkpoint loaded with
            # map_location="cpu", or .to() after a CPU run): moved once, then kept there.
            previous = PromptTopology(*(t.to(prompts.device) for t in previous))
            if recomputing:
                self._used_previous = previous
            else:
                self.previous = previous
        if topology and previous is not None and prompts.dim() in (2, 3):
            # Shapes only: no host synchronisation.
            b, n = (1, prompts.shape[0]) if prompts.dim() == 2 else tuple(prompts.shape[:2])
            if (b, max(n - 1, 0)) != tuple(previous.h0.shape):
                if self.options["stability"] == 0:
                    # The term is weighed by 0: a smaller last batch or another prompt length
                    # starts over, as after reset(), instead of stopping the run.
                    previous = None
                else:
                    # Formatted here only: compiled, a size in a string is a constant, and the
                    # previous N pinned every later call's N (a recompile for each new N).
                    pb, pn = previous.h0.shape[0], previous.h0.shape[1] + 1
                    # h0 has N - 1 columns, and none for N = 0 as for N = 1.
                    was = f"N={pn}" if pn > 1 else "N=0 or 1"
                    raise ValueError(
                        f"TSLoss: prompts changed shape from B={pb}, {was} to B={b}, N={n} since "
                        "the previous call; the stability term compares prompts of one shape: "
                        "call reset() first")
        value, terms = loss(prompts, previous=previous, return_terms=True, **self.options)
        if not (recomputing or exporting or tracing):  # such programs keep no state
            self._used_previous = previous
            self.previous = _known_topology(terms["topology"], terms["h1_count"], previous)
            self.last_terms = cast(Terms, {k: v.detach() if isinstance(v, torch.Tensor) else v
                                           for k, v in terms.items()})  # the same keys
        return value

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


def _known_topology(topology: PromptTopology, h1_count: torch.Tensor,
                    previous: Optional[PromptTopology]) -> PromptTopology:
    """The topology to keep for the next call: a prompt whose H1 is unknown (``h1_count`` < 0:
    the CUDA workspace overflowed) keeps the previous call's H1 rows, where the op returns
    zeros, so that the next stability term does not count its bars as new. On the device,
    without a synchronisation."""
    if previous is None or previous.h1.shape != topology.h1.shape:
        return topology
    if not torch.compiler.is_compiling() and torch.is_inference_mode_enabled():
        # As in _topology: kept for a training step, so not made as an inference tensor.
        with torch.inference_mode(False):
            return _known_topology(topology, h1_count, previous)
    unknown = (h1_count < 0).unsqueeze(-1)
    return PromptTopology(topology.h0, torch.where(unknown, previous.h1.to(topology.h1.dtype),
                                                   topology.h1))


# Frames of torch.utils.checkpoint that rerun the checkpointed function during the backward:
# the non-reentrant variant's recompute_fn and the reentrant variant's CheckpointFunction.backward.
_CHECKPOINT_FILE = torch.utils.checkpoint.__file__
_RECOMPUTE_FRAMES = ("recompute_fn", "backward")


def _checkpoint_recomputation() -> bool:
    """Whether this call is torch.utils.checkpoint's recomputation of an earlier forward: it
    runs in the backward (a graph task is current), below one of checkpoint's recompute frames.
    A forward called in a backward hook is not one. Compiled code is not asked (its checkpoints
    recompute inside the graph); the normal route costs one call."""
    if torch.compiler.is_compiling() or torch._C._current_graph_task_id() == -1:
        return False
    frame: Optional[FrameType] = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name in _RECOMPUTE_FRAMES and code.co_filename == _CHECKPOINT_FILE:
            return True
        frame = frame.f_back
    return False
