"""Fake (meta) kernels and autograd for the `tsloss_cuda` ops registered in C++ (the fused
TSLoss op's autograd is in C++ too, csrc/ops.cpp).

Shapes depend only on input shapes and the capacity argument, never on values, which is what
lets the ops run under torch.compile and with no host synchronisation.
"""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (loads the TORCH_LIBRARY registrations)

ops = torch.ops.tsloss_cuda


@torch.library.register_fake("tsloss_cuda::pairwise_distance")
def _pairwise_distance_fake(x: torch.Tensor) -> torch.Tensor:
    torch._check(x.dim() == 3, lambda: f"pairwise_distance: x must be (B, N, D), got {tuple(x.shape)}")
    torch._check(x.dtype in (torch.float32, torch.float64),
                 lambda: f"pairwise_distance: x must be float32 or float64, got {x.dtype}")
    _check_max_points("pairwise_distance", x.shape[1])
    return x.new_empty((x.shape[0], x.shape[1], x.shape[1]))


def _check_engine_args(op: str, x, maxdim, max_h1) -> None:
    """The kernels' own checks, so that a direct call of the op fails alike when traced."""
    torch._check(maxdim in (0, 1), lambda: f"{op}: maxdim must be 0 or 1, got {maxdim}")
    torch._check(max_h1 >= 0, lambda: f"{op}: max_h1 must be >= 0, got {max_h1}")
    torch._check(x.dtype in (torch.float32, torch.float64),
                 lambda: f"{op}: x must be float32 or float64, got {x.dtype}")


#: The most points per cloud (tsl::kMaxPoints, csrc/core/common.h).
MAX_POINTS = 4096


def _check_max_points(op: str, n) -> None:
    """Refused where N is known to exceed MAX_POINTS: a guard N <= 4096 would break export's
    unbounded Dim("N", min=3); a dynamic N past it is the kernel's to refuse when it runs."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true
    torch._check(not statically_known_true(n > MAX_POINTS),
                 lambda: f"{op}: N = {n} points exceeds the supported maximum of {MAX_POINTS}")


def _check_cloud(op: str, x, distances: bool) -> None:
    """check_points_or_distances (csrc/checks.h) on ``(B, N, D)`` x. Each check is one
    (symbolic) condition, never a Python branch on a size that may be symbolic."""
    # Imported here, when a fake kernel first runs (under compile, export or a FakeTensorMode):
    # it brings sympy, 0.3 s that every eager user paid at import.
    from torch.fx.experimental.symbolic_shapes import sym_or
    n, d = x.shape[1], x.shape[2]
    _check_max_points(op, n)
    if distances:
        torch._check(n == d, lambda: f"{op}: a distance matrix must be square, got "
                     f"{list(x.shape)}")
    else:
        torch._check(sym_or(d >= 1, n <= 1),
                     lambda: f"{op}: points need D >= 1, got {list(x.shape)}")


@torch.library.register_fake("tsloss_cuda::vr_persistence")
def _vr_persistence_fake(x, maxdim, distances, max_h1):
    torch._check(x.dim() == 3, lambda: f"vr_persistence: x must be 3-D, got {tuple(x.shape)}")
    _check_engine_args("vr_persistence", x, maxdim, max_h1)
    _check_cloud("vr_persistence", x, distances)
    b, n = x.shape[0], x.shape[1]
    h0 = max(n - 1, 0) if isinstance(n, int) else n - 1
    k = max_h1 if maxdim >= 1 else 0
    long = dict(dtype=torch.int64, device=x.device)
    return (
        x.new_empty((b, h0, 2)),
        torch.empty((b, h0, 2), **long),
        x.new_empty((b, k, 2)),
        torch.empty((b, k, 4), **long),
        torch.empty((b,), **long),
        torch.empty((b,), dtype=torch.bool, device=x.device),
    )


@torch.library.register_fake("tsloss_cuda::pairwise_distance_backward")
def _pairwise_distance_backward_fake(grad, x, dist):
    # Without it, fake tensors ran the C++ composite (csrc/ops.cpp), whose x.size() calls fixed
    # B, N and D: a compiled step with a gradient recompiled for every new shape.
    return x.new_empty(x.shape)  # contiguous, as the composite and the CPU kernel write it


@torch.library.register_fake("tsloss_cuda::vr_persistence_backward")
def _vr_persistence_backward_fake(grad_h0, grad_h1, x, h0_edges, h1_edges, distances):
    return x.new_empty(x.shape)  # contiguous, as the kernels write it (x may be permuted)


# ---- autograd -------------------------------------------------------------------------------

def _pairwise_distance_setup(ctx, inputs, output):
    (x,) = inputs
    ctx.save_for_backward(x, output)


def _pairwise_distance_backward(ctx, grad):
    x, dist = ctx.saved_tensors
    if torch.is_grad_enabled():
        # create_graph=True (double backward): the same sum as differentiable tensor ops.
        # Unit vectors times the symmetric gradient, as the composite (csrc/ops.cpp says why).
        pos = dist > 0
        g = torch.where(pos, grad + grad.transpose(1, 2), torch.zeros_like(dist))
        unit = (x.unsqueeze(2) - x.unsqueeze(1)) / torch.where(pos, dist, torch.ones_like(dist)).unsqueeze(-1)
        return (g.unsqueeze(-1) * unit).sum(2)
    # d d_ij / d x_i = (x_i - x_j) / d_ij; coincident points contribute nothing. A fused CPU
    # kernel; elsewhere a C++ composite of bmm and elementwise ops (csrc/ops.cpp).
    return ops.pairwise_distance_backward(grad, x, dist)


torch.library.register_autograd(
    "tsloss_cuda::pairwise_distance", _pairwise_distance_backward,
    setup_context=_pairwise_distance_setup)


def _vr_persistence_setup(ctx, inputs, output):
    x, _maxdim, distances, _max_h1 = inputs
    _h0, h0_edges, _h1, h1_edges, _count, _trunc = output
    ctx.distances = distances
    ctx.save_for_backward(x, h0_edges, h1_edges)


def _vr_persistence_backward(ctx, grad_h0, _grad_h0_edges, grad_h1, *_grad_integer_outputs):
    x, h0_edges, h1_edges = ctx.saved_tensors
    if grad_h0 is None:
        grad_h0 = x.new_zeros(h0_edges.shape)
    if grad_h1 is None:
        grad_h1 = x.new_zeros(h1_edges.shape[:-1] + (2,))
    if torch.is_grad_enabled():
        # create_graph=True (double backward): the kernel's sum as differentiable tensor ops;
        # the kernel itself has no derivative, and the second derivative would silently be zero.
        grad = _bar_gradient(grad_h0, grad_h1, x, h0_edges, h1_edges, ctx.distances)
        return grad, None, None, None
    grad = ops.vr_persistence_backward(grad_h0, grad_h1, x, h0_edges, h1_edges, ctx.distances)
    return grad, None, None, None


def _bar_gradient(grad_h0, grad_h1, x, h0_edges, h1_edges, distances: bool) -> torch.Tensor:
    """The gradient on x of sum(grad_h0 * h0) + sum(grad_h1 * h1), differentiable: every bar end
    is the length of a known edge (h0 births are 0; rows past h1_count have edges -1)."""
    edges = torch.cat([h0_edges, h1_edges[..., :2], h1_edges[..., 2:]], dim=1)  # (B, E, 2)
    w = torch.cat([grad_h0[..., 1], grad_h1[..., 0], grad_h1[..., 1]], dim=1)  # (B, E)
    valid, u, v = _edge_ends(edges)
    w = torch.where(valid, w, torch.zeros_like(w))
    b, n = x.shape[0], x.shape[1]
    if n == 0:  # padding edges read as vertex 0, which an empty cloud lacks
        return x * 0  # empty, and still a function of x for a further derivative
    if distances:  # the op reads the upper triangle: entry (min, max) of each edge
        i, j = torch.minimum(u, v), torch.maximum(u, v)
        return x.new_zeros(b, n * n).scatter_add(1, i * n + j, w).view(b, n, n)
    d = x.shape[2]
    iu, iv = u.unsqueeze(-1).expand(-1, -1, d), v.unsqueeze(-1).expand(-1, -1, d)
    r, _top, pos, root = scaled_difference(x.gather(1, iu) - x.gather(1, iv))
    unit = torch.where(pos, r / root, torch.zeros_like(r))
    t = w.unsqueeze(-1) * unit
    return torch.zeros_like(x).scatter_add(1, iu, t).scatter_add(1, iv, -t)


def _edge_ends(edges: torch.Tensor):
    """``(valid, u, v)`` of ``(B, E, 2)`` edges: padding edges (-1) are invalid, read as (0, 0)."""
    valid = (edges >= 0).all(-1)
    return valid, edges[..., 0].clamp_min(0), edges[..., 1].clamp_min(0)


#: The largest |e| of the power of two 2^-e that scales a difference (by dtype): a float32
#: difference of 2^-149 (float64: 2^-1074) scales past 2^-60, whose square is a normal number,
#: one of 2^127 (2^1023) below 2^40 (2^425), whose squares sum over 8192 coordinates without
#: overflow; a tangent (forward mode) scaled by 2^-e overflows only past 2^38 (2^424).
SCALE_EXPONENT_LIMIT = {torch.float32: 90, torch.float64: 600}


def scaled_difference(diff: torch.Tensor):
    """``(r, top, pos, root)`` of differences ``(..., D)`` (float32/float64): ``r = diff / top``
    with ``top`` (keepdim) a power of two near their largest |entry|,
    ``pos`` where that entry is > 0 and ``root = |r|`` (1 where not pos): the length is
    ``top * root``, the unit vector ``r / root``. Scaled as the kernel's lengths: float64 squares
    of edges below ~1e-154 or above ~1e154 would under- or overflow, and gave those edges no
    gradient. ``top`` is detached: ``top * |diff / top|`` is ``|diff|`` for any constant
    ``top``, so every derivative is exact. It is clamped (:data:`SCALE_EXPONENT_LIMIT`) rather
    than the largest |entry| itself: forward mode divides a tangent by it, and 1 / 3e-309 is past
    float64's range. Coincident points (not pos) have no direction, as in the kernel; the sqrt
    comes after the mask (its derivative at 0 is Inf)."""
    if diff.shape[-1] == 0:  # D = 0: coincident points (amax has no empty reduction)
        big = diff.new_zeros(diff.shape[:-1] + (1,))
    else:
        big = diff.detach().abs().amax(-1, keepdim=True)
    pos = big > 0
    limit = SCALE_EXPONENT_LIMIT[diff.dtype]
    # The exponent as a float, not frexp's int32: Inductor's CPU code cannot mix an int32
    # tensor with float64 lanes (a C++ compile error under torch.compile). Any power of two
    # near the largest entry serves, so floor(log2) may be one off.
    e = torch.floor(torch.log2(torch.where(pos, big, torch.ones_like(big)))).clamp(-limit, limit)
    top = torch.exp2(e)
    r = diff * torch.exp2(-e)
    sq = (r * r).sum(-1, keepdim=True)
    return r, top, pos, torch.where(pos, sq, torch.ones_like(sq)).sqrt()


def edge_lengths(x: torch.Tensor, edges: torch.Tensor, distances: bool) -> torch.Tensor:
    """``(B, E)`` lengths of ``(B, E, 2)`` edges of ``x`` (points, or with ``distances`` the
    matrix entry (min, max), as the op reads it) as differentiable tensor ops, to any order and
    in forward mode; 0 for padding edges (-1) and coincident points. The lengths that the op
    returns as bars, up to rounding: what forward AD and torch.func transforms differentiate
    (tsloss_cuda.persistence)."""
    valid, u, v = _edge_ends(edges)
    b, n = x.shape[0], x.shape[1]
    if n == 0:  # only padding edges, and no entry (0, 0) to read for them
        return x.new_zeros(edges.shape[:2])
    if distances:
        i, j = torch.minimum(u, v), torch.maximum(u, v)
        length = x.reshape(b, n * n).gather(1, i * n + j)
    else:
        d = x.shape[2]
        iu, iv = u.unsqueeze(-1).expand(-1, -1, d), v.unsqueeze(-1).expand(-1, -1, d)
        length = difference_length(x.gather(1, iu) - x.gather(1, iv))
    return torch.where(valid, length, torch.zeros_like(length))


def difference_length(diff: torch.Tensor) -> torch.Tensor:
    """``|diff|`` over the last dimension as differentiable tensor ops, scaled as
    :func:`scaled_difference` (0 for a zero difference, with a zero derivative)."""
    _r, top, pos, root = scaled_difference(diff)
    return torch.where(pos, top * root, torch.zeros_like(root)).squeeze(-1)


torch.library.register_autograd(
    "tsloss_cuda::vr_persistence", _vr_persistence_backward, setup_context=_vr_persistence_setup)
# The GPU engine's kernels on the host warp emulation (TSLOSS_ENGINE=emulated, tests) share the
# signature. Registered here, with the op's library, so that opcheck and torch.compile find them
# before anything imports ._emulated.
torch.library.register_fake("tsloss_cuda::vr_persistence_emulated")(_vr_persistence_fake)
torch.library.register_autograd("tsloss_cuda::vr_persistence_emulated", _vr_persistence_backward,
                                setup_context=_vr_persistence_setup)


def _join_vmap(op, reduction: int = -1):
    """A vmap rule for an op whose tensors hold one entry per cloud, first: the vmapped
    dimension joins the clouds' batch, one call of the batched op, where torch's fallback
    called it once per sample and printed a warning at every call. TSLoss's ops reduce over
    the batch unless their argument ``reduction`` (its position) is 0 (none); then they are
    called once per sample, as the fallback did, without its warning."""
    def rule(info, in_dims, *args):
        v = info.batch_size
        if reduction >= 0 and args[reduction] != 0:
            if v == 0:  # no sample to call the op on, so no output shapes
                raise RuntimeError(f"{op.name()}: vmap over a dimension of size 0 needs "
                                   "reduction='none' (a batch's mean or sum runs per sample)")
            outs = [op(*(a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)))
                    for i in range(v)]
            if isinstance(outs[0], torch.Tensor):  # tsloss_backward's gradient
                return torch.stack(outs), 0
            return tuple(torch.stack(o) for o in zip(*outs)), (0,) * len(outs[0])
        b, flat = None, []
        for a, d in zip(args, in_dims):
            if isinstance(a, torch.Tensor):
                a = a.expand(v, *a.shape) if d is None else a.movedim(d, 0)
                b = a.shape[1] if b is None else b  # every tensor's: (B, ...)
                a = a.flatten(0, 1)
            flat.append(a)
        out = op(*flat)
        if isinstance(out, torch.Tensor):
            return out.unflatten(0, (v, b)), 0
        return tuple(o.unflatten(0, (v, b)) for o in out), (0,) * len(out)
    return rule


for _name in ("pairwise_distance", "pairwise_distance_backward", "vr_persistence",
              "vr_persistence_backward", "vr_persistence_emulated"):
    torch.library.register_vmap(f"tsloss_cuda::{_name}", _join_vmap(getattr(ops, _name).default))
torch.library.register_vmap("tsloss_cuda::tsloss_forward",
                            _join_vmap(ops.tsloss_forward.default, reduction=12))
torch.library.register_vmap("tsloss_cuda::tsloss_backward",
                            _join_vmap(ops.tsloss_backward.default, reduction=22))


# ---- TSLoss: one forward and one backward op ---------------------------------------------------

@torch.library.register_fake("tsloss_cuda::tsloss_forward")
def _tsloss_forward_fake(x, prev_h0, prev_h1, maxdim, max_h1, normalize, target_mode, target, p,
                         connectivity, redundancy, stability, reduction):
    torch._check(x.dim() == 3, lambda: f"tsloss_forward: x must be (B, N, D), got {tuple(x.shape)}")
    _check_engine_args("tsloss_forward", x, maxdim, max_h1)
    torch._check(reduction in (0, 1, 2), lambda: "tsloss_forward: reduction must be 0 (none), "
                 f"1 (mean) or 2 (sum), got {reduction}")
    torch._check(p > 0, lambda: f"tsloss_forward: p must be > 0, got {p:g}")
    _check_cloud("loss", x, False)  # the kernel names the public function, as here
    b, n = x.shape[0], x.shape[1]
    h0 = max(n - 1, 0) if isinstance(n, int) else n - 1
    k = max_h1 if maxdim >= 1 else 0
    _check_previous(x, prev_h0, prev_h1, h0, k)
    reduced = (b,) if reduction == 0 else ()
    long = dict(dtype=torch.int64, device=x.device)
    return (
        x.new_empty(reduced), x.new_empty(reduced), x.new_empty(reduced), x.new_empty(reduced),
        x.new_empty(reduced),
        torch.empty((b,), **long),
        x.new_empty((b, h0)), x.new_empty((b, k)),
        x.new_empty((b,)), x.new_empty((b, n, n)),
        torch.empty((b, h0, 2), **long), torch.empty((b, k, 4), **long),
    )


def _check_previous(x, prev_h0, prev_h1, h0, k) -> None:
    """check_previous (csrc/checks.h): prev_h0 ``(B, N-1)`` and prev_h1 ``(B, K)``, floating
    point on x's device, both or neither (the values are the kernel's to check)."""
    op = "tsloss_forward"
    torch._check((prev_h0 is None) == (prev_h1 is None),
                 lambda: f"{op}: prev_h0 and prev_h1 must be given together")
    if prev_h0 is None:
        return
    b = x.shape[0]
    for name, t, width, what in (("prev_h0", prev_h0, h0, "N-1"), ("prev_h1", prev_h1, k, "K")):
        def shape(name=name, t=t, width=width, what=what) -> str:
            return f"{op}: {name} must be (B, {what}) = ({b}, {width}), got {list(t.shape)}"
        torch._check(t.dim() == 2, shape)
        torch._check(t.shape[0] == b, shape)  # one symbolic equality each: guards, no branch
        torch._check(t.shape[1] == width, shape)
        torch._check(t.device == x.device, lambda: f"{op}: {name} must be on x's device "
                     f"{x.device}, got {t.device}")
        torch._check(t.is_floating_point(), lambda: f"{op}: {name} must be floating point, got "
                     f"{t.dtype}")


@torch.library.register_fake("tsloss_cuda::tsloss_backward")
def _tsloss_backward_fake(grad_loss, grad_connectivity, grad_redundancy, grad_stability,
                          grad_scale, x, *_rest):
    return x.new_empty(x.shape)  # contiguous, as the kernels write it (x may be permuted)


# tsloss_forward's autograd is registered in C++ (csrc/ops.cpp): it runs every training step, and
# a Python autograd kernel cost ~50 us a call there.
