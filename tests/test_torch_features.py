"""torch features beyond plain reverse mode: forward-mode AD, torch.func transforms, activation
checkpointing, torch.export and dynamic shapes, with the ops and the stateful TSLoss."""
from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.export import Dim
from torch.utils.checkpoint import checkpoint

import tsloss_cuda as T
from tsloss_cuda._ops import edge_lengths


def circle(b: int = 2, n: int = 12, d: int = 3, seed: int = 0) -> torch.Tensor:
    """Noisy circles in R^d: every cloud has an H1 bar, so h1 carries derivatives too."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 2 * math.pi, n + 1, dtype=torch.float64)[:n]
    c = torch.zeros(b, n, d, dtype=torch.float64)
    c[..., 0], c[..., 1] = t.cos(), t.sin()
    return c + 0.1 * torch.randn(b, n, d, dtype=torch.float64, generator=g)


def bars(x: torch.Tensor, distances: bool = False) -> torch.Tensor:
    dg = T.vr_persistence(x, distances=distances)
    return torch.cat([dg.h0.flatten(1), dg.h1.flatten(1)], 1)


def reverse_jacobian(f, x: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(f, x)  # the ops' registered (reverse) autograd


# ---- forward mode and torch.func (differentiated by rebuilding the bars from their edges) -----

@pytest.mark.parametrize("distances", [False, True])
def test_jacfwd_and_jacrev_equal_the_reverse_jacobian(distances):
    # jacfwd gave an all-zero Jacobian (tangents dropped); jacrev raised about setup_context.
    x = circle()
    if distances:
        x = T.pairwise_distance(x)
    f = lambda t: bars(t, distances)  # noqa: E731
    ref = reverse_jacobian(f, x)
    assert ref.abs().sum() > 1 and (ref[:, 2 * 11:] != 0).any()  # h1 has derivatives too
    torch.testing.assert_close(torch.func.jacfwd(f)(x), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.func.jacrev(f)(x), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype,scale", [(torch.float64, 1e-309), (torch.float64, 1e300),
                                         (torch.float32, 1e-39), (torch.float32, 1e37)])
def test_jacfwd_at_far_scales_equals_jacrev(dtype, scale):
    """Forward mode divided each tangent by the largest coordinate difference: at a subnormal
    one (1 / 3e-309 is past float64's range) the Jacobian was Inf and NaN where reverse mode
    gave the unit vectors. The scale is now a clamped power of two."""
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    x = (x * scale).to(dtype)
    f = lambda t: T.vr_persistence(t).h0[..., 1].sum()  # noqa: E731
    want = torch.tensor([[-1.0, -1.0], [1.0, 0.0], [0.0, 1.0]], dtype=dtype)
    torch.testing.assert_close(torch.func.jacrev(f)(x), want, rtol=1e-6, atol=0)
    torch.testing.assert_close(torch.func.jacfwd(f)(x), want, rtol=1e-6, atol=0)
    moved = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=dtype)  # point 1 along x
    tangent = torch.func.jvp(T.pairwise_distance, (x,), (moved,))[1]
    torch.testing.assert_close(tangent[0, 0], torch.tensor([0.0, 1.0, 0.0], dtype=dtype))


def test_jvp_of_pairwise_distance():
    x, t = circle(), circle(seed=1)
    value, tangent = torch.func.jvp(T.pairwise_distance, (x,), (t,))
    ref = torch.autograd.functional.jvp(T.pairwise_distance, x, t)[1]
    assert torch.equal(value, T.pairwise_distance(x))
    assert ref.abs().sum() > 1
    torch.testing.assert_close(tangent, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.func.jacrev(T.pairwise_distance)(x),
                               reverse_jacobian(T.pairwise_distance, x), rtol=0, atol=1e-12)


def test_forward_ad_dual_tensors():
    x, t = circle(), circle(seed=1)
    with fwAD.dual_level():
        out = fwAD.unpack_dual(bars(fwAD.make_dual(x, t)))
    assert out.tangent is not None
    assert torch.equal(out.primal, bars(x))  # the op's values, bit for bit
    ref = torch.autograd.functional.jvp(bars, x, t)[1]
    torch.testing.assert_close(out.tangent, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("distances", [False, True])
def test_gradcheck_forward_mode(distances):
    x = circle(b=1, n=8)
    if distances:
        # The strict upper and lower triangles as separate variables (equal values: a valid
        # matrix), as in test_loss: the op reads the upper one, so the lower one's derivatives
        # must be exactly zero, which one variable written to both triangles could not show.
        rows, cols = torch.triu_indices(8, 8, offset=1)
        v = T.pairwise_distance(x)[0][rows, cols]
        f = lambda up, lo: bars(torch.zeros(8, 8, dtype=up.dtype)  # noqa: E731
                                .index_put((rows, cols), up).index_put((cols, rows), lo), True)
        inputs = (v.clone().requires_grad_(), v.clone().requires_grad_())
    else:
        f, inputs = bars, (x.requires_grad_(),)
    assert torch.autograd.gradcheck(f, inputs, check_forward_ad=True,
                                    check_batched_forward_grad=True)


def test_func_grad_and_hessian_equal_autograd():
    x = circle()
    f = lambda t: T.vr_persistence(t).h1.sum() + T.vr_persistence(t).h0.square().sum()  # noqa
    xr = x.clone().requires_grad_()
    f(xr).backward()
    torch.testing.assert_close(torch.func.grad(f)(x), xr.grad, rtol=0, atol=1e-12)
    ref = torch.autograd.functional.hessian(f, x)  # the double backward of the op
    assert ref.abs().sum() > 1
    torch.testing.assert_close(torch.func.hessian(f)(x), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("distances", [False, True])
def test_rebuilt_bars_equal_the_op(distances):
    # What the transforms differentiate: every bar end as the length of its edge.
    x = circle(b=3, n=16, d=5)
    if distances:
        x = T.pairwise_distance(x)
    dg = T.vr_persistence(x, distances=distances)
    torch.testing.assert_close(edge_lengths(x, dg.h0_edges, distances), dg.h0[..., 1],
                               rtol=1e-14, atol=0)
    rebuilt = torch.stack([edge_lengths(x, dg.h1_edges[..., :2], distances),
                           edge_lengths(x, dg.h1_edges[..., 2:], distances)], -1)
    torch.testing.assert_close(rebuilt, dg.h1, rtol=1e-14, atol=0)


@pytest.mark.parametrize("shape", [(2, 0, 3), (2, 1, 3), (0, 5, 3), (2, 4, 0), (2, 1, 0)])
def test_transforms_on_degenerate_shapes(shape):
    # No points (only padding edges), one point, no clouds, no coordinates.
    x = torch.randn(*shape, dtype=torch.float64)
    fs = [T.pairwise_distance, lambda t: bars(T.pairwise_distance(t), True)]
    if shape[2] > 0 or shape[1] <= 1:  # the op refuses D = 0 for two or more points
        fs.append(bars)
    for f in fs:
        value, tangent = torch.func.jvp(f, (x,), (torch.ones_like(x),))
        assert torch.equal(value, f(x)) and tangent.shape == value.shape
        assert torch.func.jacrev(f)(x).shape == value.shape + x.shape


def test_vmap_runs_the_op_with_eager_values():
    x = circle(b=3)
    h1 = torch.func.vmap(lambda t: T.vr_persistence(t).h1)(x.unsqueeze(1)).squeeze(1)
    assert torch.equal(h1, T.vr_persistence(x).h1)
    assert torch.equal(torch.func.vmap(T.pairwise_distance)(x.unsqueeze(1)).squeeze(1),
                       T.pairwise_distance(x))
    loss = torch.func.vmap(lambda t: T.loss(t))(x.unsqueeze(1))
    torch.testing.assert_close(loss, T.loss(x, reduction="none"), rtol=1e-15, atol=0)


@pytest.mark.parametrize("in_dim", [0, 1])
def test_vmap_folds_into_the_ops_batch(in_dim, capfd):
    """vr_persistence itself under vmap (Diagrams is a pytree; it was refused as no Tensor),
    the vmapped dimension joined to the op's batch: the values and gradients of one batched
    call, without torch's per-sample fallback and its warning at every call."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 9, 5, dtype=torch.float64, generator=g)  # (V, B, N, D)
    xv, flat = x.movedim(0, in_dim), x.flatten(0, 1)
    got, want = torch.func.vmap(T.vr_persistence, in_dims=in_dim)(xv), T.vr_persistence(flat)
    assert isinstance(got, T.Diagrams) and (got.num_points, got.maxdim) == (9, 1)
    for k in ("h0", "h0_edges", "h1", "h1_edges", "h1_count", "truncated"):
        assert torch.equal(getattr(got, k), getattr(want, k).unflatten(0, (4, 3))), k
    assert torch.equal(torch.func.vmap(T.pairwise_distance, in_dims=in_dim)(xv),
                       T.pairwise_distance(flat).unflatten(0, (4, 3)))
    xg, xr = xv.clone().requires_grad_(), flat.clone().requires_grad_()
    f = lambda t: T.vr_persistence(t).h1.sum() + T.pairwise_distance(t).sum()  # noqa: E731
    torch.func.vmap(f, in_dims=in_dim)(xg).sum().backward()
    f(xr).backward()
    assert torch.equal(xg.grad.movedim(in_dim, 0), xr.grad.unflatten(0, (4, 3)))
    # An unbatched argument beside a batched one (expanded to every sample).
    d = want
    grads = torch.randn(4, *d.h0.shape, dtype=torch.float64, generator=g)
    op = lambda gh0: torch.ops.tsloss_cuda.vr_persistence_backward(  # noqa: E731
        gh0, torch.ones_like(d.h1), flat, d.h0_edges, d.h1_edges, False)
    assert torch.equal(torch.func.vmap(op)(grads), torch.stack([op(gh0) for gh0 in grads]))
    # TSLoss: per cloud (reduction none) joined to the batch; reduced, once per sample.
    for reduction in ("none", "mean", "sum"):
        fl = lambda t: T.loss(t, reduction=reduction, stability=0.5,  # noqa: E731
                              previous=T.loss(t.detach(), return_terms=True)[1]["topology"])
        xg, xs = xv.clone().requires_grad_(), x.clone().requires_grad_()
        got = torch.func.vmap(fl, in_dims=in_dim)(xg)
        want = torch.stack([fl(c) for c in xs])
        assert torch.equal(got, want), reduction
        got.sum().backward()
        want.sum().backward()
        assert torch.equal(xg.grad.movedim(in_dim, 0), xs.grad), reduction
    assert "batching rule" not in capfd.readouterr().err


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_vmap_over_cotangents_and_over_nothing(reduction):
    """vmap of autograd.grad over cotangents runs tsloss_backward under vmap (a reduced loss:
    once per cotangent, whose one output the rule first took for a tuple of outputs); a vmap
    over zero samples of a reduced loss names the reduction (a bare IndexError was raised)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 7, 4, dtype=torch.float64, generator=g).requires_grad_()
    out = T.loss(x, reduction=reduction)
    vs = torch.randn(5, *out.shape, dtype=torch.float64, generator=g)
    grad = lambda v: torch.autograd.grad(out, x, v, retain_graph=True)[0]  # noqa: E731
    assert torch.equal(torch.func.vmap(grad)(vs), torch.stack([grad(v) for v in vs]))
    empty = torch.func.vmap(lambda t: T.loss(t, reduction=reduction))
    if reduction == "none":
        assert empty(torch.randn(0, 3, 7, 4)).shape == (0, 3)
    else:
        with pytest.raises(RuntimeError, match="size 0 needs reduction='none'"):
            empty(torch.randn(0, 3, 7, 4))


@pytest.mark.parametrize("strict", [False, True])
def test_export_returns_diagrams_of_a_dynamic_n(strict, tmp_path):
    """A symbolic N in Diagrams' pytree context was baked into the program as a stale symbol
    (num_points came back as it, and the program could not be saved); N is read from the
    outputs instead."""
    class M(torch.nn.Module):
        def forward(self, x):
            return T.vr_persistence(x)

    g = torch.Generator().manual_seed(5)
    ep = torch.export.export(M(), (torch.randn(2, 7, 3, generator=g),),
                             dynamic_shapes=({1: Dim("N", min=3, max=64)},), strict=strict)
    x = torch.randn(2, 11, 3, generator=g)
    got, want = ep.module()(x), T.vr_persistence(x)
    assert isinstance(got, T.Diagrams) and got.num_points == 11 and got.maxdim == 1
    assert torch.equal(got.h1, want.h1) and torch.equal(got.h0_edges, want.h0_edges)
    torch.export.save(ep, tmp_path / "m.pt2")
    # Empty clouds: N = 0 is kept (read from h0, it gave None, and to_numpy an H0 bar).
    x = torch.randn(2, 0, 3)
    got = torch.export.export(M(), (x,), strict=strict).module()(x)
    listed = lambda d: [[a.tolist() for a in c] for c in d.to_numpy()]  # noqa: E731
    assert got.num_points == 0 and listed(got) == listed(T.vr_persistence(x)) == [[[], []]] * 2


def test_jvp_of_vmap_rebuilds_the_bars():
    """jvp outside vmap: inside, the points are batched tensors whose tangent unpack_dual cannot
    see, so only the transform stack's Jvp level sends them to the rebuilt bars (without it:
    "Batching rule not implemented for aten::_unpack_dual")."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 2, dtype=torch.float64, generator=g)
    t = torch.randn(x.shape, dtype=torch.float64, generator=g)
    f = lambda q: T.vr_persistence(q).h0[..., 1].sum()  # noqa: E731
    _, tangent = torch.func.jvp(torch.func.vmap(f), (x,), (t,))
    jac = torch.func.jacrev(lambda q: torch.stack([f(c) for c in q]))(x)
    torch.testing.assert_close(tangent, (jac * t).sum((1, 2, 3)), rtol=1e-12, atol=1e-12)


def test_compile_fullgraph_keeps_one_graph_and_compiles_transforms():
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    x, t = circle(), circle(seed=1)
    f = lambda q: T.vr_persistence(q).h1.sum() + T.pairwise_distance(q).sum() + T.loss(q)  # noqa
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.compile(f, fullgraph=True)(xc).backward()
    f(xe).backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-12, atol=1e-12)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    g = lambda q: torch.func.jvp(bars, (q,), (t,))[1]  # noqa: E731
    torch.testing.assert_close(torch.compile(g, fullgraph=True)(x), g(x), rtol=0, atol=1e-12)
    h = torch.func.grad(lambda q: T.vr_persistence(q).h1.sum())
    torch.testing.assert_close(torch.compile(h, fullgraph=True)(x), h(x), rtol=0, atol=1e-12)


def test_compile_of_forward_mode_on_float64_clouds_of_several_widths():
    """The rebuilt lengths' power-of-two scale once came from frexp's int32 exponent, which
    Inductor's CPU code could not mix with float64 lanes: a C++ compile error at D = 1 and 8
    (circle()'s D = 2 compiled)."""
    g = torch.Generator().manual_seed(3)
    for d in (1, 8):
        torch._dynamo.reset()
        x = torch.randn(7, d, generator=g, dtype=torch.float64)
        t = torch.randn(7, d, generator=g, dtype=torch.float64)
        f = lambda q: torch.func.jvp(T.pairwise_distance, (q,), (t,))[1]  # noqa: E731
        torch.testing.assert_close(torch.compile(f, fullgraph=True)(x), f(x), rtol=0,
                                   atol=1e-12)


def test_loss_names_what_it_does_not_support():
    # It raised upstream's messages ("cannot use C++ torch::autograd::Function with functorch
    # transforms (vmap, ...)", although vmap works; "please open a feature request").
    x, t = circle(), circle(seed=1)
    with pytest.raises(NotImplementedError, match="reverse-mode autograd only"):
        torch.func.jvp(T.loss, (x,), (t,))
    with pytest.raises(NotImplementedError, match="reverse-mode autograd only"):
        torch.func.grad(T.loss)(x)
    with fwAD.dual_level(), pytest.raises(NotImplementedError, match="forward-mode AD"):
        T.loss(fwAD.make_dual(x, t))


# ---- TSLoss: activation checkpointing, torch.func, torch.export --------------------------------

def prompt_steps():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 8, 6, dtype=torch.float64, generator=g) for _ in range(3)]


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpoint_recomputation_uses_the_forwards_previous(use_reentrant):
    # The recomputation in the backward ran forward again against `previous` already replaced
    # by this step's own topology: a zero stability gradient from the second step on.
    plain, ckpt = T.TSLoss(stability=10.0), T.TSLoss(stability=10.0)
    for step, p in enumerate(prompt_steps()):
        pp, pc = p.clone().requires_grad_(), p.clone().requires_grad_()
        plain(pp).backward()
        checkpoint(ckpt, pc, use_reentrant=use_reentrant).backward()
        torch.testing.assert_close(pc.grad, pp.grad, rtol=1e-12, atol=1e-15)
        assert torch.equal(ckpt.last_terms["stability"], plain.last_terms["stability"])
        assert step == 0 or float(plain.last_terms["stability"]) > 0
    assert torch.equal(ckpt.previous.h0, plain.previous.h0)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpoint_recomputation_leaves_the_modules_state_alone(use_reentrant):
    """Two checkpointed calls before one backward: each recomputation must not move
    `previous` back to its own call's topology (a recomputation that updated the state left
    the first call's, and the next step's stability term measured against it)."""
    a, b = prompt_steps()[:2]
    m = T.TSLoss(stability=1.0)
    pa, pb = a.clone().requires_grad_(), b.clone().requires_grad_()
    (checkpoint(m, pa, use_reentrant=use_reentrant)
     + checkpoint(m, pb, use_reentrant=use_reentrant)).backward()
    _, terms = T.loss(b, stability=1.0, return_terms=True)
    assert torch.equal(m.previous.h0, terms["topology"].h0)
    assert torch.equal(m.previous.h1, terms["topology"].h1)


@pytest.mark.parametrize("name", ["TSLoss", "loss", "pairwise_distance", "vr_persistence"])
def test_non_reentrant_checkpointing_leaks_nothing(name):
    """The fused op saved four of its own outputs for the backward; under non-reentrant
    checkpointing the pack hook's holder then kept each step's node alive (17 tensors and
    ~116 KB a step at (16, 768), without end). No more tensors are alive after 50 more steps
    than before them (fewer where an earlier test's are collected meanwhile)."""
    import gc
    fn = {"TSLoss": T.TSLoss(stability=0.3), "loss": lambda r: T.loss(r, stability=0.0),
          "pairwise_distance": lambda r: T.pairwise_distance(r).sum(),
          "vr_persistence": lambda r: T.vr_persistence(r).h0.sum()}[name]
    x = torch.randn(2, 8, 6, generator=torch.Generator().manual_seed(0))
    live = []
    for steps in (5, 50):
        for _ in range(steps):
            checkpoint(fn, x.clone().requires_grad_(), use_reentrant=False).backward()
        gc.collect()
        live.append(sum(isinstance(o, torch.Tensor) for o in gc.get_objects()))
    assert live[1] <= live[0], live


@pytest.mark.parametrize("edit", ["topology.h0", "topology.h1", "h1_count"])
def test_a_saved_output_edited_in_place_before_backward_is_an_error(edit):
    """The op saves detached aliases of its outputs (the leak test above); taken under the
    dispatch guard of the op call, they had version counters of their own, and an output edited
    in place before backward gave a wrong gradient where autograd's error was due."""
    g = torch.Generator().manual_seed(0)
    _, first = T.loss(torch.randn(9, 5, dtype=torch.float64, generator=g), return_terms=True)
    x = torch.randn(9, 5, dtype=torch.float64, generator=g, requires_grad=True)
    out, terms = T.loss(x, stability=1.0, previous=first["topology"], return_terms=True)
    part, _, field = edit.partition(".")
    target = getattr(terms[part], field) if field else terms[part]
    with torch.no_grad():
        target.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


def test_forward_in_a_backward_hook_is_not_a_recomputation():
    steps = prompt_steps()
    hooked, plain = T.TSLoss(stability=1.0), T.TSLoss(stability=1.0)
    hooked(steps[0])
    plain(steps[0])
    seen = {}

    def hook(grad):
        seen["value"] = hooked(steps[1])
        return grad

    y = steps[2].clone().requires_grad_() * 2
    y.register_hook(hook)
    y.sum().backward()
    assert torch.equal(seen["value"], plain(steps[1]))
    assert torch.equal(hooked.previous.h1, plain.previous.h1)


def test_module_refuses_torch_func_and_keeps_its_state():
    # Under vmap its state kept BatchedTensors, and the next plain call failed.
    x = prompt_steps()[0]
    m = T.TSLoss(stability=1.0)
    first = m(x)
    previous = m.previous
    with pytest.raises(RuntimeError, match="cannot run under torch.func transforms"):
        torch.func.vmap(m)(x.unsqueeze(1))
    with pytest.raises(RuntimeError, match="cannot run under torch.func transforms"):
        torch.func.grad(m)(x)
    assert m.previous is previous
    assert torch.equal(m(x), first)  # same prompts, same previous: stability 0


class _Holder(torch.nn.Module):
    def __init__(self, stability: float) -> None:
        super().__init__()
        self.criterion = T.TSLoss(stability=stability)

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        return self.criterion(prompts)


@pytest.mark.parametrize("strict", [False, True])
def test_export_refuses_a_stateful_module(strict):
    # Exported, it kept previous=None and dropped the update: 0.6765 where eager gave 0.7207.
    x = prompt_steps()[0]
    with pytest.raises(RuntimeError, match="cannot be exported"):
        torch.export.export(_Holder(1.0), (x,), strict=strict)
    exported = torch.export.export(_Holder(0.0), (x,), strict=strict).module()
    torch.testing.assert_close(exported(x), T.loss(x), rtol=1e-15, atol=0)


def test_jit_trace_refuses_a_stateful_module():
    # Traced, it kept the previous topology of the tracing call for good (0.72606 where eager
    # gave 0.69722), or none at all when traced fresh, which dropped the stability term.
    steps = prompt_steps()
    holder = _Holder(1.0)
    holder(steps[0])
    with pytest.raises(RuntimeError, match=r"cannot be traced \(torch.jit.trace\)"):
        torch.jit.trace(holder, (steps[1],), check_trace=False)
    stateless = _Holder(0.0)
    traced = torch.jit.trace(stateless, (steps[0],), check_trace=False)
    assert stateless.criterion.previous is None  # nothing kept from the tracing call
    torch.testing.assert_close(traced(steps[1]), T.loss(steps[1]), rtol=1e-15, atol=0)


def test_export_the_functional_loss_with_previous_as_input():
    # What the error points to: previous in, topology out, the same values as TSLoss.
    class Step(torch.nn.Module):
        def forward(self, prompts, prev_h0, prev_h1):
            value, terms = T.loss(prompts, stability=1.0, return_terms=True,
                                  previous=T.PromptTopology(prev_h0, prev_h1))
            return value, terms["topology"].h0, terms["topology"].h1

    steps = prompt_steps()
    topology = T.loss(steps[0], return_terms=True)[1]["topology"]
    exported = torch.export.export(Step(), (steps[1], topology.h0, topology.h1)).module()
    m = T.TSLoss(stability=1.0)
    m(steps[0])
    value, _h0, _h1 = exported(steps[1], topology.h0, topology.h1)
    torch.testing.assert_close(value, m(steps[1]), rtol=1e-15, atol=0)


def test_an_exported_loss_taking_and_returning_a_topology_saves(tmp_path):
    # torch.export.save refused it: PromptTopology had no serialized pytree name.
    class Step(torch.nn.Module):
        def forward(self, prompts, previous):
            value, terms = T.loss(prompts, stability=1.0, return_terms=True, previous=previous)
            return value, terms["topology"]

    steps = prompt_steps()
    topology = T.loss(steps[0], return_terms=True)[1]["topology"]
    program = torch.export.export(Step(), (steps[1], topology))
    torch.export.save(program, tmp_path / "step.pt2")
    loaded = torch.export.load(tmp_path / "step.pt2").module()
    value, after = loaded(steps[1], topology)
    want, terms = T.loss(steps[1], stability=1.0, return_terms=True, previous=topology)
    assert isinstance(after, T.PromptTopology)
    assert torch.equal(value, want) and torch.equal(after.h1, terms["topology"].h1)
    # And with torch.load's default weights_only=True, as a diagram is.
    diagrams = T.vr_persistence(steps[1])
    torch.save({"previous": topology, "diagrams": diagrams}, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt")
    assert isinstance(state["previous"], T.PromptTopology)
    assert torch.equal(state["previous"].h0, topology.h0)
    assert state["diagrams"].num_points == diagrams.num_points
    assert torch.equal(state["diagrams"].h1, diagrams.h1)


# ---- shapes and inputs -----------------------------------------------------------------------

def test_dynamic_shapes_share_a_graph_from_three_points():
    # N - 1 (h0's rows) is a size that torch's tracer specialises at 1: export takes
    # Dim("N", min=3), and dynamic=True gives N = 1, N = 2 and B = 0, 1 graphs of their own.
    from torch._dynamo.utils import counters

    class Loss(torch.nn.Module):
        def forward(self, x):
            return T.loss(x), T.vr_persistence(x).h1

    # Strict export traces with Dynamo, where a symbolic N reads as an int: the eager N <= 4096
    # check once made a guard there that the unbounded Dim refused.
    for strict in (False, True):
        ep = torch.export.export(Loss(), (torch.randn(3, 8, 4),), strict=strict,
                                 dynamic_shapes={"x": {0: Dim("B", min=1), 1: Dim("N", min=3)}})
        for b, n in ((1, 3), (4, 3), (2, 20)):
            x = torch.randn(b, n, 4)
            value, h1 = ep.module()(x)
            torch.testing.assert_close(value, T.loss(x), rtol=1e-6, atol=0)
            assert torch.equal(h1, T.vr_persistence(x).h1)
    torch._dynamo.reset()
    counters.clear()
    with torch.compiler.config.patch(force_disable_caches=True):
        f = torch.compile(lambda p: T.loss(p), dynamic=True, fullgraph=True)
        for b, n in ((2, 10), (3, 12), (2, 3)):
            f(torch.randn(b, n, 3))
        assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("fn", [T.pairwise_distance, lambda x: T.vr_persistence(x).h1, T.loss],
                         ids=["pairwise_distance", "vr_persistence", "loss"])
def test_a_dynamic_n_past_the_maximum_is_refused_when_it_runs(fn):
    """Traced with a dynamic N, no check can refuse 4097 points before the call: the kernel
    does, as the eager call does (pairwise_distance's kernel once computed them)."""
    torch._dynamo.reset()
    f = torch.compile(fn, backend="aot_eager", dynamic=True, fullgraph=True)
    for n in (5, 7):
        f(torch.randn(n, 2))
    with pytest.raises(RuntimeError, match="N = 4097 points exceeds the supported maximum of 4096"):
        f(torch.zeros(4097, 1))
    with pytest.raises(ValueError, match="at most 4096 points"):
        fn(torch.zeros(4097, 1))


@pytest.mark.parametrize("stability", [0.0, 1.0])
def test_compiled_module_shares_a_graph_across_prompt_lengths(stability):
    """The module formatted the previous N into a message on every call, which pinned N in the
    graph: each new N recompiled, and past 8 recompiles the module silently ran eagerly. Now a
    first call, a call with a previous topology and (stability 0) one that starts over."""
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    counter = CompileCounter()
    module, eager = T.TSLoss(stability=stability), T.TSLoss(stability=stability)
    compiled = torch.compile(module, backend=counter, dynamic=True, fullgraph=True)
    g = torch.Generator().manual_seed(0)
    last = None
    for n in (10, 10, 11, 11, 12, 12, 13, 13):
        if stability and n != last:  # the stability term compares prompts of one shape
            module.reset()
            eager.reset()
        last = n
        x = torch.randn(2, n, 3, dtype=torch.float64, generator=g)
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-12, atol=0)
        torch.testing.assert_close(module.last_terms["stability"], eager.last_terms["stability"],
                                   rtol=1e-12, atol=0)
    assert counter.frame_count == (3 if stability == 0 else 2)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_jit_trace_with_the_default_capacity_equals_eager():
    """torch.jit.trace gives x.shape[1] as a 0-dim tensor, which default_max_h1 refused (a
    TypeError). The trace keeps the traced N's K, the op's constant."""
    x, y = circle(), circle(seed=1)
    persistence = torch.jit.trace(lambda q: T.vr_persistence(q).h1, (x,))
    value = torch.jit.trace(lambda q: T.loss(q), (x,))
    for q in (x, y):
        assert torch.equal(persistence(q), T.vr_persistence(q).h1)
        assert torch.equal(value(q), T.loss(q))
    assert persistence(circle(n=16)).shape[1] == T.default_max_h1(12)


def test_loss_refuses_float8_as_vr_persistence_does():
    x = torch.randn(2, 6, 3).to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match="prompts must be float32 or float64"):
        T.loss(x)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        T.vr_persistence(x)


def test_docstrings_state_the_limits():
    for f in (T.vr_persistence, T.loss):
        assert "4096" in f.__doc__ and "4·N, at least 8" in f.__doc__
    assert "RuntimeError" in T.pairwise_distance.__doc__


def test_non_finite_previous_raises():
    """A NaN or Inf previous made the loss NaN or Inf with no error (the prompts are checked);
    a float64 previous beyond float32's range is Inf for float32 prompts."""
    nan = T.PromptTopology(torch.full((2, 5), float("nan")), torch.zeros(2, 24))
    with pytest.raises(RuntimeError, match=r"prev_h0 contains NaN or Inf \(cloud 0, column 0\)"):
        T.loss(torch.randn(2, 6, 3), stability=1.0, previous=nan)
    h1 = torch.zeros(2, 24, dtype=torch.float64)
    h1[1, 3] = 1e300
    big = T.PromptTopology(torch.zeros(2, 5, dtype=torch.float64), h1)
    with pytest.raises(RuntimeError, match=r"prev_h1 contains NaN or Inf \(cloud 1, column 3\)"):
        T.loss(torch.randn(2, 6, 3), stability=1.0, previous=big)
    h1[1, 3] = 1e100  # finite in float64, and its square too
    assert torch.isfinite(T.loss(torch.randn(2, 6, 3, dtype=torch.float64), stability=1.0,
                                 previous=T.PromptTopology(big.h0, h1)))


def test_plain_calls_take_the_op_route():
    """The rebuilt route is for forward AD and torch.func's differentiating transforms only:
    plain reverse mode and vmap keep the op's own autograd (and its speed)."""
    from tsloss_cuda.persistence import transform_differentiates
    x = circle()
    assert not transform_differentiates(x)
    assert not transform_differentiates(x.requires_grad_())
    seen = []
    torch.func.vmap(lambda t: seen.append(transform_differentiates(t)) or t.sum())(x)
    assert seen == [False]
    torch.func.grad(lambda t: seen.append(transform_differentiates(t)) or t.sum())(x.detach())
    assert seen == [False, True]


def _forward(x, prev=(None, None), maxdim=1, max_h1=8, p=1.0, reduction=1):
    return torch.ops.tsloss_cuda.tsloss_forward(x, *prev, maxdim, max_h1, True, 0, 0.0, p, 1.0,
                                                1.0, 0.0, reduction)


def _persistence(x, maxdim=1, distances=False, max_h1=8):
    return torch.ops.tsloss_cuda.vr_persistence(x, maxdim, distances, max_h1)


def _pairwise(x):
    return torch.ops.tsloss_cuda.pairwise_distance(x)


#: An input the kernels refuse: x's shape and dtype, the op calls given it, the message.
REFUSED = {
    "maxdim": ((2, 5, 3), torch.float32, [lambda x: _forward(x, maxdim=2),
                                          lambda x: _persistence(x, maxdim=2)],
               "maxdim must be 0 or 1, got 2"),
    "max_h1": ((2, 5, 3), torch.float32, [lambda x: _forward(x, max_h1=-1),
                                          lambda x: _persistence(x, max_h1=-1)],
               "max_h1 must be >= 0, got -1"),
    "dtype": ((2, 5, 3), torch.int64, [_forward, _persistence, _pairwise],
              "must be float32 or float64, got"),
    "float16": ((2, 5, 3), torch.float16, [_forward, _persistence, _pairwise],
                "must be float32 or float64, got"),
    "reduction": ((2, 5, 3), torch.float32, [lambda x: _forward(x, reduction=3)],
                  "reduction must be 0 (none), 1 (mean) or 2 (sum), got 3"),
    "N": ((1, 4097, 1), torch.float32, [_forward, _persistence, _pairwise],
          "N = 4097 points exceeds the supported maximum of 4096"),
    "D": ((2, 3, 0), torch.float32, [_forward, _persistence], "points need D >= 1, got [2, 3, 0]"),
    "square": ((2, 3, 4), torch.float32, [lambda x: _persistence(x, distances=True)],
               "a distance matrix must be square, got [2, 3, 4]"),
    "p": ((2, 5, 3), torch.float32, [lambda x: _forward(x, p=0.0)], "p must be > 0, got 0"),
    "prev_alone": ((2, 5, 3), torch.float32,
                   [lambda x: _forward(x, prev=(x.new_zeros(2, 4), None)),
                    lambda x: _forward(x, prev=(None, x.new_zeros(2, 8)))],
                   "prev_h0 and prev_h1 must be given together"),
    "prev_h0": ((2, 5, 3), torch.float32,
                [lambda x: _forward(x, prev=(x.new_zeros(2, 5), x.new_zeros(2, 8)))],
                "prev_h0 must be (B, N-1) = (2, 4), got [2, 5]"),
    "prev_h1": ((2, 5, 3), torch.float32,
                [lambda x: _forward(x, prev=(x.new_zeros(2, 4), x.new_zeros(3, 8)))],
                "prev_h1 must be (B, K) = (2, 8), got [3, 8]"),
}


@pytest.mark.parametrize("bad", REFUSED)
def test_fake_kernels_refuse_what_the_kernels_refuse(bad):
    """A direct call of an op, traced (fake tensors, as torch.compile runs it), fails with the
    kernel's own message instead of building a graph that fails only when it runs."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    shape, dtype, calls, want = REFUSED[bad]
    for call in calls:
        with FakeTensorMode():
            with pytest.raises(RuntimeError, match=re.escape(want)):
                call(torch.ones(shape, dtype=dtype))
        with pytest.raises(RuntimeError, match=re.escape(want.split(", got")[0].split(" (")[0])):
            call(torch.ones(shape, dtype=dtype))  # the kernel's own check, eagerly


def test_fake_kernels_accept_what_the_kernels_accept():
    """The edges of the checks above: N = 4096, a point in R^0, max_h1 = 0 (K = 0 rows) and
    reductions 0, 1 and 2 trace as they run."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    ops = torch.ops.tsloss_cuda

    def forward(x, k, r):
        return ops.tsloss_forward(x, None, None, 1, k, True, 0, 0.0, 1.0, 1.0, 1.0, 0.0, r)

    with FakeTensorMode():  # the largest N, and one point in R^0 (no edge, so no D needed)
        assert tuple(ops.pairwise_distance(torch.ones(1, 4096, 1)).shape) == (1, 4096, 4096)
        assert tuple(ops.vr_persistence(torch.ones(1, 1, 0), 1, False, 8)[0].shape) == (1, 0, 2)
    assert tuple(ops.vr_persistence(torch.ones(1, 1, 0), 1, False, 8)[0].shape) == (1, 0, 2)
    calls = [lambda x: ops.vr_persistence(x, 1, False, 0)[2], lambda x: forward(x, 0, 1)[7]]
    for call in calls:
        assert tuple(call(torch.randn(2, 5, 3)).shape)[:2] == (2, 0)
        with FakeTensorMode():
            assert tuple(call(torch.ones(2, 5, 3)).shape)[:2] == (2, 0)
    for r in (0, 1, 2):
        want = [o.shape for o in forward(torch.randn(2, 5, 3), 8, r)]
        with FakeTensorMode():
            assert [o.shape for o in forward(torch.ones(2, 5, 3), 8, r)] == want


def test_the_dynamo_constant_mark_is_the_one_torch_sets():
    """persistence marks its transform probes constant to Dynamo by the attribute that
    torch.compiler.assume_constant_result sets, without importing torch._dynamo (0.7 s at every
    import). Should torch's decorator change what it sets, this fails rather than the mark
    silently doing nothing."""
    from tsloss_cuda import persistence

    def probe() -> bool:
        return False
    assert torch.compiler.assume_constant_result(probe) is probe
    assert vars(probe) == {"_dynamo_marked_constant": True}
    for fn in (persistence._differentiating_transform, persistence.functorch_transform_active):
        assert vars(fn) == vars(probe), fn.__name__


def test_import_leaves_dynamo_and_sympy_unloaded():
    """``import tsloss_cuda`` took 1.1 s beyond torch's own import: torch._dynamo (0.7 s) for a
    decorator, sympy (0.3 s) for the fake kernels' symbolic checks. An eager user, a --help and
    every DataLoader worker paid it."""
    code = ("import sys, tsloss_cuda; "
            "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", out


def test_calls_without_a_gradient_skip_the_autograd_kernel(monkeypatch):
    """Where no gradient can be recorded, the wrappers call the op below its Python-registered
    autograd kernel (a fifth of a small prompt's call): same bits, nothing recorded; with a
    gradient, under vmap and while compiling they go through it."""
    import contextlib
    import tsloss_cuda.persistence as P
    entered = []

    @contextlib.contextmanager
    def counting():
        entered.append(1)
        with torch._C._AutoDispatchBelowAutograd():
            yield

    monkeypatch.setattr(P, "_BELOW_AUTOGRAD", counting)
    x = torch.randn(3, 11, 6, dtype=torch.float64, requires_grad=True)
    with_grad = T.vr_persistence(x), T.pairwise_distance(x)
    assert entered == [] and with_grad[0].h1.requires_grad and with_grad[1].requires_grad
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            d, p = T.vr_persistence(x), T.pairwise_distance(x)
        assert not (d.h0.requires_grad or d.h1.requires_grad or p.requires_grad)
        for name in ("h0", "h0_edges", "h1", "h1_edges", "h1_count", "truncated"):
            assert torch.equal(getattr(d, name), getattr(with_grad[0], name)), name
        assert torch.equal(p, with_grad[1])
    assert len(entered) == 4
    T.vr_persistence(x.detach())  # grad mode on, nothing to differentiate
    assert len(entered) == 5
    with torch.no_grad():
        v = torch.vmap(T.pairwise_distance)(x)
    assert len(entered) == 5 and torch.equal(v.squeeze(1), with_grad[1])  # (N, D) in: B = 1

    # A mode's handler runs before the op's dispatch, with grad mode as the caller left it:
    # its own differentiable work (here a learnable scale of the distances) is recorded.
    w = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    class ScaleDistances(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            return out * w if func is torch.ops.tsloss_cuda.pairwise_distance else out

    with ScaleDistances():
        scaled = T.pairwise_distance(x.detach())
    scaled.sum().backward()
    assert len(entered) == 5 and torch.equal(w.grad, with_grad[1].detach().sum())
