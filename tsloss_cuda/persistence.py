"""Batched Vietoris–Rips persistence (H0, H1) of point clouds or distance matrices."""
from __future__ import annotations

import numbers
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch._C._functorch import TransformType, peek_interpreter_stack
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

from ._ops import MAX_POINTS, difference_length, edge_lengths, ops

#: Default H1 capacity per cloud is ``H1_CAPACITY_PER_POINT * N`` (at least ``H1_MIN_CAPACITY``).
#: Gaussian clouds in high dimension give up to about 2.6·N H1 pairs (at N = 256), so clouds of
#: N <= 256 do not truncate in practice; ``truncated`` reports it whenever they do.
H1_CAPACITY_PER_POINT = 4
H1_MIN_CAPACITY = 8


#: Input dtypes computed in float32 (results are float32; gradients flow back to the input).
HALF_DTYPES = (torch.float16, torch.bfloat16)

#: ``h1_count`` of a cloud whose H1 reduction outgrew its fixed CUDA workspace.
H1_OVERFLOW = -1
#: ``h1_count`` of a cloud whose input was invalid on CUDA, where checking on the host would
#: synchronise (see :func:`vr_persistence`).
INVALID_INPUT = -2




def check_max_h1(max_h1) -> Optional[int]:
    """An H1 capacity argument: None (the default) or an integer >= 0 (numpy's too) that fits
    int64, returned as an int; errors name ``max_h1``. (The op refuses what would not fit in
    memory, naming what suffices.)"""
    if max_h1 is None:
        return None
    if isinstance(max_h1, (bool, np.bool_)) or not isinstance(max_h1, numbers.Integral):
        raise TypeError(f"max_h1 must be an int or None, got {max_h1!r}")
    if max_h1 < 0:
        raise ValueError(f"max_h1 must be >= 0, got {max_h1}")
    if int(max_h1) >= 1 << 63:  # numbers.Integral defines no __ge__
        raise ValueError(f"max_h1 must be below 2**63 (an int64), got {max_h1}")
    return int(max_h1)


def default_max_h1(n: int) -> int:
    """The default H1 capacity K for clouds of ``n`` points (an int; under ``torch.jit.trace``
    also the 0-dim integer tensor that a size is there). A trace keeps the traced N's K: run
    on clouds of another N, its ``h1`` has that many rows (``truncated`` reports a cloud with
    more bars)."""
    if _traced_size(n):
        # The ops take K as an int, which a trace records as a constant (the tracer warns).
        n = int(n)
    if not isinstance(n, torch.SymInt):  # a size under torch.compile is valid, kept symbolic
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise TypeError(f"n must be an integer (points per cloud), got {n!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0 (points per cloud), got {n}")
        n = int(n)
    return max(H1_CAPACITY_PER_POINT * n, H1_MIN_CAPACITY)


def _traced_size(n) -> bool:
    """Whether ``n`` is a size as torch.jit.trace gives it: a 0-dim integer tensor."""
    return (isinstance(n, torch.Tensor) and torch.jit.is_tracing() and n.dim() == 0
            and not (n.is_floating_point() or n.is_complex() or n.dtype == torch.bool))


@dataclass
class Diagrams:
    """Persistence diagrams of a batch of B clouds of N points, as fixed-capacity tensors.

    Attributes:
        h0: ``(B, N-1, 2)`` float, rows ``(birth=0, death)`` sorted by death (ties: filtration
            order: the larger edge index C(v, 2) + u first). The one infinite H0 bar
            of each cloud is implicit and not stored.
        h0_edges: ``(B, N-1, 2)`` int64, vertices ``(u < v)`` of the edge whose length is the
            death.
        h1: ``(B, K, 2)`` float, rows ``(birth, death)`` ordered by decreasing persistence
            (ties: the later birth in filtration order first, i.e. a larger birth, or an equal
            one with the smaller birth-edge index; this decides which tied bars a truncation
            to K keeps). Rows ``>= min(h1_count, K)`` are padding ``(0, 0)``.
        h1_edges: ``(B, K, 4)`` int64, ``(i, j, k, l)``: birth edge ``(i < j)`` and death edge
            ``(k < l)``, the longest edge of the triangle that kills the class. Padding is -1.
        h1_count: ``(B,)`` int64, the true number of H1 pairs (zero-persistence pairs excluded;
            0 with ``maxdim=0``, where H1 is not computed).
            On CUDA only, two negative codes: -1 (``H1_OVERFLOW``) marks a cloud whose H1
            reduction outgrew its fixed device workspace (its H1 rows are all padding,
            ``truncated`` is True, H0 is exact; raise ``TSLOSS_CUDA_H1_HEAP`` /
            ``TSLOSS_CUDA_H1_ARENA`` / ``TSLOSS_CUDA_H1_COLUMNS``), and -2 (``INVALID_INPUT``)
            a cloud with invalid input: NaN or Inf values, a bad matrix, or finite points
            whose distance overflows the dtype (its ``h0`` and ``h1`` values are NaN).
        truncated: ``(B,)`` bool, whether ``h1_count > K`` (then the K most persistent are kept).
        num_points: N, where known (``h0`` cannot tell N = 0 from N = 1).
        maxdim: the ``maxdim`` of the call: 0 when H1 was not computed.

    ``h0`` and ``h1`` carry gradients to the input points (or distance matrix).
    """

    h0: torch.Tensor
    h0_edges: torch.Tensor
    h1: torch.Tensor
    h1_edges: torch.Tensor
    h1_count: torch.Tensor
    truncated: torch.Tensor
    num_points: Optional[int] = None
    maxdim: int = 1

    def to_numpy(self) -> List[List[np.ndarray]]:
        """Per cloud, ``[H0, H1]`` float64 arrays in ripser.py's format (``[H0]`` with
        ``maxdim=0``, as ripser.py gives).

        H0 includes its ``(0, inf)`` row (none for an empty cloud) and leaves zero-length bars
        out, as ripser.py does. A truncated cloud (``h1_count > K``) has only its K most
        persistent H1 bars, with a warning naming it: pass a larger ``max_h1`` for all.
        This copies to the host: use it for analysis, not inside a training step.
        """
        h0 = self.h0.detach().double().cpu().numpy()
        h1 = self.h1.detach().double().cpu().numpy()
        counts = self.h1_count.cpu().numpy()
        if (counts == INVALID_INPUT).any():
            raise RuntimeError(
                f"clouds {np.flatnonzero(counts == INVALID_INPUT).tolist()} had invalid input "
                "(NaN or Inf, points whose distances overflow the dtype, or a distance matrix "
                "that is not a symmetric, non-negative matrix with zero diagonal); their "
                "diagrams are NaN")
        if (counts < 0).any():
            raise RuntimeError(
                f"H1 of clouds {np.flatnonzero(counts < 0).tolist()} overflowed the CUDA "
                "workspace; raise TSLOSS_CUDA_H1_HEAP / TSLOSS_CUDA_H1_ARENA / "
                "TSLOSS_CUDA_H1_COLUMNS and recompute (one array of a cloud holds at most "
                "2^31 - 1 entries, whatever the settings)")
        if (counts > h1.shape[1]).any():
            warnings.warn(
                f"H1 of clouds {np.flatnonzero(counts > h1.shape[1]).tolist()} has more bars than "
                f"max_h1 = {h1.shape[1]}; only the {h1.shape[1]} most persistent are returned "
                "(pass a larger max_h1 for all)", stacklevel=2)
        counts = np.minimum(counts, h1.shape[1])
        out = []
        for b in range(h0.shape[0]):
            bars0 = h0[b][h0[b, :, 1] > 0]
            if self.num_points != 0:
                bars0 = np.concatenate([bars0, [[0.0, np.inf]]], axis=0)
            out.append([bars0] if self.maxdim == 0 else [bars0, h1[b, : counts[b]].copy()])
        return out


_TENSORS = ("h0", "h0_edges", "h1", "h1_edges", "h1_count", "truncated")


def _diagrams_leaves(d: Diagrams):
    # A symbolic N (torch.export's dynamic shapes; dynamo takes a SymInt for an int) would be
    # baked into the program's output spec as a stale symbol that cannot be saved: N is then
    # read from the outputs instead, but for N = 0, which h0's rows cannot tell from N = 1.
    n = d.num_points
    symbolic = type(n) is not int or (torch.compiler.is_compiling() and not n == 0)
    return [getattr(d, k) for k in _TENSORS], (None if symbolic else n, d.maxdim)


def _diagrams_from_leaves(leaves, context) -> Diagrams:
    n, maxdim = context
    h0 = leaves[0]  # not always a tensor: vmap unflattens its out_dims too
    if n is None and isinstance(h0, torch.Tensor) and h0.dim() >= 2:
        rows = h0.shape[-2]  # N - 1 finite H0 bars, or 0 for N = 0 and 1
        n = rows + 1 if isinstance(rows, int) and rows > 0 else None
    return Diagrams(**dict(zip(_TENSORS, leaves)), num_points=n, maxdim=maxdim)


# A pytree node (its tensors the leaves, N and maxdim the context), so that torch.func.vmap and
# the other transforms take vr_persistence itself, not only a function returning its tensors.
torch.utils._pytree.register_pytree_node(Diagrams, _diagrams_leaves, _diagrams_from_leaves,
                                         serialized_type_name="tsloss_cuda.Diagrams")
# Tensors and two ints: torch.load's default weights_only=True may rebuild it (a saved
# diagram, an exported program's example inputs).
torch.serialization.add_safe_globals([Diagrams])


def check_dense(x: torch.Tensor, name: str) -> None:
    """The ops read strided memory: a sparse or nested tensor is refused by name, not by the
    dispatcher's message about backends."""
    if x.is_nested:
        raise TypeError(f"{name} must be a dense (strided) tensor, got a nested tensor; clouds "
                        "of different sizes take one call each (x.unbind())")
    if x.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {x.layout}; "
                        "convert it first (.to_dense())")


def check_points(x: torch.Tensor, name: str) -> None:
    """At most MAX_POINTS points a cloud, a shape error naming ``name``. Only in eager calls:
    traced (torch.compile, torch.export), N may be symbolic and a test here would guard every
    graph on it (Dynamo passes a symbolic N as an int), so the op's fake kernel refuses it."""
    n = x.shape[-2]
    if not torch.compiler.is_compiling() and isinstance(n, int) and n > MAX_POINTS:
        raise ValueError(f"{name} must have at most {MAX_POINTS} points a cloud, got shape "
                         f"{tuple(x.shape)}")


def _as_batch(x: torch.Tensor, name: str, *, square: bool) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    check_dense(x, name)
    what = ("(N, N) or (B, N, N) distance matrix (distances=True)" if square
            else "(N, D) or (B, N, D) tensor of points")
    if x.dim() not in (2, 3):
        raise ValueError(f"{name} must be a {what}, got shape {tuple(x.shape)}")
    # Checked here, where the caller's own shape is known (the op sees the batched one).
    if square and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{name} must be a {what}, got shape {tuple(x.shape)}: not square")
    check_points(x, name)
    if x.dtype in HALF_DTYPES:
        # As tsloss_cuda.loss does: half precision cannot resolve near-equal distances.
        x = x.float()
    elif x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64 (float16 and bfloat16 are computed "
                        f"in float32), got {x.dtype}")
    return x if x.dim() == 3 else x.unsqueeze(0)


def pairwise_distance(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances within each cloud.

    Args:
        x: ``(N, D)`` or ``(B, N, D)`` float32/float64 points, at most 4096 a cloud (a
            ValueError otherwise); float16/bfloat16 are computed in float32.

    Returns:
        ``(B, N, N)`` distances in x's dtype, float32 for half-precision input (B = 1 for 2-D
        input): exactly symmetric, exact zero diagonal, by the difference form (no Gram-form
        cancellation for close points). float32 rows are widened and summed in float64, so
        each float32 distance is the float64 distance rounded once; float64 pairs whose
        squares would under- or overflow are recomputed with scaling. ripser.py given points
        computes its distances by sklearn's Gram form: in float32 up to the last bit apart
        from these, in float64 far more for points close together relative to their norms.
        Give it this matrix (``distance_matrix=True``) to compare diagrams exactly.
        Differentiable: reverse mode, forward mode (``torch.autograd.forward_ad``) and the
        torch.func transforms (grad, jacrev, jvp, jacfwd, hessian, vmap); under forward AD and
        the transforms other than vmap the distances are also built as tensor ops, with the
        op's values (B·N·N·D memory).

    On the CPU, NaN or Inf coordinates, and finite points whose distance overflows the dtype,
    raise a RuntimeError naming the point; on CUDA they are not checked on the host (which
    would synchronise) and give non-finite distances.
    """
    xb = _as_batch(x, "x", square=False)
    if not transform_differentiates(xb):
        return _run(ops.pairwise_distance, xb)
    # The differences' lengths as tensor ops (B·N·N·D memory): with the op's values.
    return _with_derivatives(ops.pairwise_distance(xb.detach()),
                             difference_length(xb.unsqueeze(2) - xb.unsqueeze(1)))


def vr_persistence(
    x: torch.Tensor,
    maxdim: int = 1,
    *,
    distances: bool = False,
    max_h1: Optional[int] = None,
) -> Diagrams:
    """Vietoris–Rips persistence diagrams H0 and H1 of a batch of clouds, in one call.

    Equal to ripser.py's diagrams (Z/2 coefficients, same tie-breaking: diameter, then index)
    for float32 input, on the same distance matrix; ripser.py computes in float32, so float64
    diagrams equal a float64 Rips computation (GUDHI's) instead and may hold or lack a bar one
    float32 step long.

    Args:
        x: points ``(N, D)`` / ``(B, N, D)``, or with ``distances=True`` a distance matrix
            ``(N, N)`` / ``(B, N, N)`` (read through its upper triangle, as ripser.py reads
            it). At most 4096 points per cloud; a single cloud gives outputs with B = 1.
            float32 or float64;
            float16 and bfloat16 are widened to float32 first (as :func:`tsloss_cuda.loss`
            does: half precision cannot tell near-equal distances apart), so their diagrams
            are float32 and gradients flow back to the half-precision input.
        maxdim: 1 for H0 and H1, 0 for H0 only (``h1`` then has K = 0 rows).
        distances: whether ``x`` is a distance matrix.
        max_h1: capacity K of the H1 outputs; default :func:`default_max_h1` (4·N, at least 8).

    Returns:
        :class:`Diagrams` on x's device, in x's dtype (float32 for half-precision input);
        ``h0``/``h1`` are differentiable w.r.t. ``x``: in reverse mode (twice, with
        ``create_graph=True``), in forward mode (``torch.autograd.forward_ad``) and under the
        torch.func transforms (grad, jacrev, jvp, jacfwd, hessian, vmap). Under forward AD and
        the transforms other than vmap, the op runs on the detached points and each bar end
        is rebuilt as the length of its edge in tensor ops, which carry the derivatives (the
        values stay the op's).

    Invalid values (NaN or Inf; with ``distances=True`` also a matrix that is not symmetric to
    1e-4 relative, has a negative entry or a non-zero diagonal) raise a RuntimeError naming the
    entry on the CPU. On CUDA they are not checked on the host, which would synchronise the
    training step: such a cloud, and one of finite points whose distance overflows the dtype
    (the CPU raises there too), gets NaN ``h0``/``h1`` values and ``h1_count = -2``
    (``INVALID_INPUT``), so a loss built on it is NaN and :meth:`Diagrams.to_numpy` raises.
    """
    if isinstance(maxdim, (bool, np.bool_)) or not isinstance(maxdim, numbers.Integral):
        raise TypeError(f"maxdim must be an int (0 or 1), got {maxdim!r}")
    if maxdim not in (0, 1):
        raise ValueError(f"maxdim must be 0 or 1, got {maxdim}")
    if not isinstance(distances, (bool, np.bool_)):
        raise TypeError(f"distances must be a bool, got {distances!r}")
    maxdim, distances = int(maxdim), bool(distances)
    xb = _as_batch(x, "x", square=distances)
    n = xb.shape[1]
    if not distances and xb.shape[2] == 0 and n > 1:
        # R^0 has one point, so such a cloud has no edges to filter (pairwise_distance allows it).
        raise ValueError(f"x must have D >= 1 coordinates per point, got shape {tuple(x.shape)}")
    max_h1 = check_max_h1(max_h1)
    if max_h1 is None:
        max_h1 = default_max_h1(n)
    if not transform_differentiates(xb):
        out = _run(_engine(xb), xb, maxdim, distances, max_h1)
    else:
        # The op on constant points, and every bar end again as the length of its edge in
        # tensor ops, which forward AD and torch.func differentiate (to any order).
        h0, h0_edges, h1, h1_edges, count, truncated = _engine(xb)(
            xb.detach(), maxdim, distances, max_h1)
        deaths = edge_lengths(xb, h0_edges, distances)
        h1_ends = torch.stack([edge_lengths(xb, h1_edges[..., :2], distances),
                               edge_lengths(xb, h1_edges[..., 2:], distances)], -1)
        out = (_with_derivatives(h0, torch.stack([torch.zeros_like(deaths), deaths], -1)),
               h0_edges, _with_derivatives(h1, h1_ends), h1_edges, count, truncated)
    if xb.is_cuda:
        # The input's own NaN/Inf and bad matrices, and (count -2 from the engine) distances
        # that overflowed from finite points.
        out = mark_invalid_clouds(out, invalid_clouds(xb, distances) | (out[4] == INVALID_INPUT))
    return Diagrams(*out, num_points=n, maxdim=maxdim)


#: Dispatch below the Autograd keys (what torch.library's autograd kernel does itself when no
#: gradient is needed); a module attribute, so that a test can see that calls take this route.
_BELOW_AUTOGRAD = torch._C._AutoDispatchBelowAutograd


def _run(op: Callable[..., Any], x: torch.Tensor, *args: Any) -> Any:
    """``op(x, *args)``, straight to its backend kernel when no gradient can be recorded (grad
    mode off, or ``x`` needs none): the ops' autograd is registered in Python
    (``torch.library.register_autograd``), whose kernel only redispatches below itself then, at
    ~6 µs a call: a fifth of a (8, 768) prompt's ``vr_persistence``. Not while compiling,
    tracing or under a torch.func transform, which see the op through their own dispatch, nor
    where ``__torch_function__`` code (a mode, a subclass) would run inside the guard: its own
    differentiable work would go unrecorded."""
    if ((torch.is_grad_enabled() and x.requires_grad) or torch.compiler.is_compiling()
            or torch.jit.is_tracing() or functorch_transform_active()
            or torch._C._is_torch_function_mode_enabled()
            or torch._C._has_torch_function_unary(x)):
        return op(x, *args)
    with _BELOW_AUTOGRAD():
        return op(x, *args)


def transform_differentiates(x: torch.Tensor) -> bool:
    """Whether derivatives of ``x`` are taken in forward mode (a forward-AD tangent) or by a
    torch.func transform other than vmap (jvp, jacfwd, grad, vjp, jacrev, hessian). The ops'
    autograd (torch.library.register_autograd) serves plain reverse mode only: it dropped
    tangents (silently zero derivatives) and refused torch.func.grad. vmap alone runs the op
    through torch's batching fallback. A few attribute reads on the normal route."""
    if _differentiating_transform():
        return True
    return fwAD._current_level >= 0 and fwAD.unpack_dual(x).tangent is not None


def _constant_to_dynamo(fn: Callable[[], bool]) -> Callable[[], bool]:
    """``torch.compiler.assume_constant_result(fn)`` without its import of torch._dynamo
    (0.7 s at every ``import tsloss_cuda``, for users who never compile): that decorator only
    sets this attribute, which Dynamo reads when it traces a call. tests/test_torch_features.py
    checks that the decorator still sets exactly it."""
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


@_constant_to_dynamo
def _differentiating_transform() -> bool:
    """Whether a torch.func jvp or grad transform is active. A constant to Dynamo, which cannot
    trace the interpreter stack: compiled code runs under a transform only when it applies the
    transform itself (torch refuses torch.func.grad(compiled_fn)), and Dynamo then guards on
    the stack."""
    if peek_interpreter_stack() is None:
        return False
    return any(i.key() in (TransformType.Grad, TransformType.Jvp)
               for i in retrieve_all_functorch_interpreters())


@_constant_to_dynamo
def functorch_transform_active() -> bool:
    """Whether any torch.func transform (vmap, grad, jvp, functionalize) is active. A constant
    to Dynamo, as :func:`_differentiating_transform`."""
    return peek_interpreter_stack() is not None


def _with_derivatives(value: torch.Tensor, rebuilt: torch.Tensor) -> torch.Tensor:
    """The op's ``value`` (constant) with the derivatives of ``rebuilt``, the same numbers up to
    rounding: ``rebuilt - rebuilt.detach()`` is exactly 0, so the values are the op's bits."""
    return value + (rebuilt - rebuilt.detach())


def _engine(x: torch.Tensor):
    """The op for ``x``: TSLOSS_ENGINE=emulated runs CPU tensors through the GPU engine's kernels
    on the host warp emulation (tests and CI without a GPU); otherwise ``vr_persistence``.
    There, TSLOSS_EMULATED_POOL_BYTES fixes the reduction's memory pool as the device's is fixed,
    so that a cloud exhausting it is reported (``h1_count`` -1) as on the device. Any other
    value is refused (a misspelt switch ran this engine unsaid). Read when the call runs; a
    compiled function keeps the engine it was traced with."""
    engine = os.environ.get("TSLOSS_ENGINE", "")
    if engine not in ("", "emulated"):
        raise ValueError(f"TSLOSS_ENGINE must be unset, empty or 'emulated', got {engine!r}")
    if engine == "emulated" and not x.is_cuda:
        from ._emulated import op
        return op
    return ops.vr_persistence


def invalid_clouds(x: torch.Tensor, distances: bool) -> torch.Tensor:
    """``(B,)`` bool: which clouds of ``x`` (``(B, N, D)`` points or ``(B, N, N)`` matrices)
    the CPU op would reject. Device tensor ops only: no host synchronisation."""
    bad = ~torch.isfinite(x).flatten(1).all(1)
    if distances and x.shape[1] > 0:
        lo = torch.tril(x, -1)
        up = torch.tril(x.transpose(1, 2), -1)
        asym = (lo - up).abs() > 1e-4 * torch.maximum(lo.abs(), up.abs())
        diag = torch.diagonal(x, dim1=1, dim2=2)
        bad = bad | (diag != 0).any(1) | (lo < 0).flatten(1).any(1) | asym.flatten(1).any(1)
    return bad


def mark_invalid_clouds(out, bad: torch.Tensor):
    """The op's outputs with the clouds flagged in ``bad`` made NaN, count ``INVALID_INPUT``."""
    h0, h0_edges, h1, h1_edges, count, truncated = out
    nan = torch.full((), float("nan"), dtype=h0.dtype, device=h0.device)
    flag = bad[:, None, None]
    return (torch.where(flag, nan, h0), h0_edges, torch.where(flag, nan, h1), h1_edges,
            torch.where(bad, torch.full_like(count, INVALID_INPUT), count), truncated)
