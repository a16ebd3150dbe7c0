"""Gradients of the persistence op, TSLoss terms, op registration and torch.compile."""
import math

import numpy as np
import pytest
import torch
from torch.library import opcheck

import tsloss_cuda as T
from reference_loss import reference_loss

ops = torch.ops.tsloss_cuda


def generic_cloud(b=2, n=10, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, dtype=torch.float64, generator=g)


def noisy_circle(n=24, d=16, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    c = torch.stack([t.cos(), t.sin()], 1) + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=g, dtype=torch.float64))
    return c @ q.T


# ---- gradients -------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["h0", "h1"])
def test_gradcheck_diagram_values(field):
    x = generic_cloud().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: getattr(T.vr_persistence(x), field), (x,))


def _matrix(up, lo, n):
    """An (n, n) distance matrix whose strict upper triangle is ``up`` and strict lower
    (transposed) ``lo``: two autograd leaves, so that a gradient written to the wrong triangle
    shows (the op reads the upper one; the lower one must get exactly zero). Equal values keep
    the matrix symmetric, as the op requires (to 1e-4 relative), under gradcheck's steps too."""
    rows, cols = torch.triu_indices(n, n, offset=1)
    return torch.zeros(n, n, dtype=up.dtype).index_put((rows, cols), up).index_put((cols, rows), lo)


def _triangles(x, n):
    """The strict upper triangle of the distances of points ``x``, as two separate leaves."""
    rows, cols = torch.triu_indices(n, n, offset=1)
    up = T.pairwise_distance(x)[0][rows, cols]
    return up.clone().requires_grad_(), up.clone().requires_grad_()


def test_gradcheck_from_distance_matrix():
    # Perturb only the strictly off-diagonal entries; the matrix stays a valid distance matrix
    # with zero diagonal. The upper and lower triangles are separate inputs: the lower one's
    # numerical derivative is zero, and so must the analytical one be.
    up, lo = _triangles(generic_cloud(b=1, n=9), 9)

    def diagram(up, lo):
        dg = T.vr_persistence(_matrix(up, lo, 9), distances=True)
        return dg.h0, dg.h1

    assert torch.autograd.gradcheck(diagram, (up, lo))


def test_distance_matrix_gradient_is_the_same_with_create_graph():
    # create_graph=True takes the differentiable formula (_ops._bar_gradient), which must put
    # the gradient where the kernel puts it: on the upper-triangle entry that the op reads.
    D = T.pairwise_distance(noisy_circle(n=12, d=3))[0].clone().requires_grad_()

    def value():
        dg = T.vr_persistence(D, distances=True)
        return dg.h0.sum() + dg.h1.sum()

    kernel, = torch.autograd.grad(value(), D)
    differentiable, = torch.autograd.grad(value(), D, create_graph=True)
    assert torch.count_nonzero(torch.triu(kernel, 1)) > 11  # the tree's edges and a loop
    assert torch.count_nonzero(torch.tril(kernel)) == 0
    assert torch.equal(differentiable, kernel)


@pytest.mark.parametrize("distances", [False, True])
def test_double_backward_through_vr_persistence(distances):
    # Gradient penalties differentiate the gradient: with create_graph=True the backward runs as
    # differentiable tensor ops (the kernel has no derivative; the second derivative was silently
    # zero before). Both orders checked numerically, and the first order equals the kernel's.
    x = generic_cloud(b=1, n=8, d=3)
    if distances:  # the two strict triangles as separate variables, as in the test above
        inputs = _triangles(x, 8)
    else:
        inputs = (x.requires_grad_(),)

    def bars(*inputs):
        dg = T.vr_persistence(_matrix(*inputs, 8) if distances else inputs[0],
                              distances=distances)
        return dg.h0, dg.h1

    assert torch.autograd.gradgradcheck(bars, inputs)

    def value(*inputs):
        h0, h1 = bars(*inputs)
        return (h0[..., 1] ** 2).sum() + h1.sum()

    g0 = torch.autograd.grad(value(*inputs), inputs)
    g1 = torch.autograd.grad(value(*inputs), inputs, create_graph=True)
    for a, b in zip(g1, g0):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    if distances:  # the lower triangle is not read
        assert torch.count_nonzero(g0[1]) == 0 and torch.count_nonzero(g1[1]) == 0
    g2, = torch.autograd.grad(sum((g ** 2).sum() for g in g1), inputs[0])
    assert g2.abs().max() > 0
    # Empty clouds: their padding edges read as vertex 0, which they lack.
    e = torch.zeros(2, 0, 0 if distances else 3, dtype=torch.float64, requires_grad=True)
    dg = T.vr_persistence(e, distances=distances)
    g, = torch.autograd.grad((dg.h0[..., 1] ** 2).sum() + dg.h1.sum(), e, create_graph=True)
    gg, = torch.autograd.grad((g ** 2).sum(), e)
    assert g.shape == gg.shape == e.shape


@pytest.mark.parametrize("scale", [1e-200, 1e-310, 1e200])
def test_double_backward_at_extreme_float64_scales(scale):
    """The differentiable gradient (create_graph=True) squared raw differences: edges below
    ~1e-154 or above ~1e154 got a zero gradient where the first-order one was a unit vector."""
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(7, 3, dtype=torch.float64, generator=g)

    def grads(s):
        x = (x0 * s).requires_grad_()
        dg = T.vr_persistence(x)
        value = dg.h0[..., 1].sum() + dg.h1.sum()
        first, = torch.autograd.grad(value, x, retain_graph=True)
        differentiable, = torch.autograd.grad(value, x, create_graph=True)
        return first, differentiable

    first, differentiable = grads(scale)
    ref, _ = grads(1.0)
    tol = 1e-6 if scale < 1e-300 else 1e-12  # subnormal coordinates carry few bits
    torch.testing.assert_close(differentiable, first, rtol=0, atol=1e-12)
    torch.testing.assert_close(first, ref, rtol=0, atol=tol)


def test_gradcheck_pairwise_distance():
    x = generic_cloud(n=7).requires_grad_()
    assert torch.autograd.gradcheck(T.pairwise_distance, (x,))


@pytest.mark.parametrize("kw", [
    dict(connectivity=1.0, redundancy=0.0),
    dict(connectivity=1.0, redundancy=0.0, connectivity_mode="target", target=0.4),
    dict(connectivity=0.0, redundancy=1.0),
    dict(connectivity=0.0, redundancy=1.0, p=2.0),
    dict(connectivity=0.0, redundancy=1.0, normalize="none"),
])
def test_gradcheck_loss_terms(kw):
    x = generic_cloud().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: T.loss(x, **kw), (x,))


@pytest.mark.parametrize("normalize", ["none", "mean"])
def test_target_mode_gradient_is_zero_at_the_kink(normalize):
    """|δ/s - τ| at δ/s = τ exactly: the gradient is 0 there, as torch.abs's (and the
    reference's); gradcheck cannot see this, its finite differences step over the kink."""
    x = torch.tensor([[0.0], [0.5]], dtype=torch.float64, requires_grad=True)
    target = 0.5 if normalize == "none" else 1.0  # two points: s is their distance
    T.loss(x, normalize=normalize, connectivity_mode="target", target=target,
           redundancy=0.0).backward()
    assert x.grad.abs().max() == 0, x.grad
    ref = x.detach().clone().requires_grad_()
    reference_loss(ref, normalize=normalize, connectivity_mode="target", target=target,
                   redundancy=0.0).backward()
    assert torch.equal(x.grad, ref.grad)


def test_target_zero_is_the_total_mode():
    """τ = 0 is allowed (τ >= 0): |δ/s - 0| is the "total" term, to the bit."""
    x = generic_cloud()
    got = T.loss(x, connectivity_mode="target", target=0.0, reduction="none")
    assert torch.equal(got, T.loss(x, reduction="none"))


def test_gradcheck_stability_term():
    x0 = generic_cloud()
    _, terms = T.loss(x0, return_terms=True)
    x = (x0 + 0.01 * generic_cloud(seed=1)).requires_grad_()
    f = lambda x: T.loss(x, connectivity=0, redundancy=0, stability=1, previous=terms["topology"])
    assert torch.autograd.gradcheck(f, (x,))


def reference_values(x, dg):
    """Bar values recomputed in pure PyTorch: cdist gathered at the returned edges."""
    d = torch.cdist(x, x)
    b = torch.arange(x.shape[0])[:, None]
    h0 = d[b, dg.h0_edges[..., 0], dg.h0_edges[..., 1]]
    e = dg.h1_edges.clamp_min(0)
    valid = dg.h1_edges[..., 0] >= 0
    birth = torch.where(valid, d[b, e[..., 0], e[..., 1]], 0)
    death = torch.where(valid, d[b, e[..., 2], e[..., 3]], 0)
    return h0, birth, death


def test_gradient_matches_pure_pytorch_reference():
    x = generic_cloud(b=3, n=16, d=6).requires_grad_()
    dg = T.vr_persistence(x)
    g = torch.Generator().manual_seed(3)
    w0 = torch.randn(dg.h0.shape[:-1], dtype=x.dtype, generator=g)
    w1 = torch.randn(dg.h1.shape, dtype=x.dtype, generator=g)
    ours = torch.autograd.grad((dg.h0[..., 1] * w0).sum() + (dg.h1 * w1).sum(), x)[0]

    xr = x.detach().clone().requires_grad_()
    h0, birth, death = reference_values(xr, dg)
    torch.testing.assert_close(h0.detach(), dg.h0[..., 1].detach(), rtol=0, atol=1e-12)
    ref = torch.autograd.grad((h0 * w0).sum() + (birth * w1[..., 0]).sum() + (death * w1[..., 1]).sum(), xr)[0]
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_zero_length_edges_and_padding_give_zero_gradient():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64,
                     requires_grad=True)
    dg = T.vr_persistence(x, max_h1=8)
    (dg.h0.sum() + dg.h1.sum()).backward()
    assert torch.isfinite(x.grad).all()
    # the duplicate pair only joins at length 0; padding rows carry nothing
    assert dg.h0[0, 0, 1] == 0
    g = torch.zeros_like(dg.h1)
    g[0, int(dg.h1_count[0]):] = 1.0  # gradient placed only on padding rows
    grad = torch.autograd.grad(T.vr_persistence(x, max_h1=8).h1, x, g)[0]
    assert torch.count_nonzero(grad) == 0


# ---- behaviour of the terms ------------------------------------------------------------------

def h1_total_persistence(x):
    dg = T.vr_persistence(x)
    return float((dg.h1[..., 1] - dg.h1[..., 0]).sum())


def test_redundancy_descent_removes_the_loop():
    x = noisy_circle().float().requires_grad_()
    start = h1_total_persistence(x.detach())
    opt = torch.optim.Adam([x], lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        T.loss(x, connectivity=0.0, redundancy=1.0).backward()
        opt.step()
    end = h1_total_persistence(x.detach())
    scale = float(T.pairwise_distance(x.detach()).mean())
    assert start > 0.5
    assert end / scale < 0.02 * start / scale + 1e-3


def test_connectivity_descent_lowers_relative_h0_deaths():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 24, 8, generator=g).requires_grad_()
    _, before = T.loss(x.detach(), return_terms=True)
    opt = torch.optim.Adam([x], lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        T.loss(x, connectivity=1.0, redundancy=0.0).backward()
        opt.step()
    _, after = T.loss(x.detach(), return_terms=True)
    assert float(after["connectivity"]) < 0.8 * float(before["connectivity"])


def test_stability_zero_when_unchanged_positive_after_change():
    x = generic_cloud().float()
    module = T.TSLoss(stability=1.0)
    module(x)
    assert float(module.last_terms["stability"]) == 0.0  # first call
    module(x)
    assert float(module.last_terms["stability"]) == 0.0  # unchanged prompt
    module(x + 0.3 * torch.randn_like(x))
    assert float(module.last_terms["stability"]) > 0.0
    module.reset()
    module(x)
    assert float(module.last_terms["stability"]) == 0.0


def test_last_terms_are_detached():
    # Kept for logging until the next call: a tensor that required grad would hold the whole
    # step's graph alive.
    module = T.TSLoss(stability=1.0)
    x = generic_cloud().requires_grad_()
    module(x)
    module(x)
    terms = module.last_terms
    assert {"connectivity", "redundancy", "stability", "scale", "h1_count"} <= set(terms)
    tensors = [v for v in terms.values() if isinstance(v, torch.Tensor)]
    assert not any(t.requires_grad for t in tensors)


def test_reset_forgets_the_last_terms():
    # A reset module (a new run, or a prompt of another shape) must not log the terms of the
    # prompt it had before.
    module = T.TSLoss(stability=1.0)
    module(generic_cloud())
    assert module.last_terms and module.previous is not None
    module.reset()
    assert module.last_terms == {} and module.previous is None


@pytest.mark.parametrize("second", [(2, 9, 3), (3, 8, 3), (9, 3)], ids=["N", "B", "2-D"])
def test_module_names_a_change_of_prompt_shape(second):
    # The module checks the shape itself, before `loss` would refuse previous.h0's shape: its
    # message says what changed and what to do (reset()); afterwards the new shape is fine.
    module = T.TSLoss(stability=1.0)
    module(torch.randn(2, 8, 3))
    b, n = (1, second[0]) if len(second) == 2 else second[:2]
    with pytest.raises(ValueError, match=rf"prompts changed shape from B=2, N=8 to B={b}, "
                                         rf"N={n} .*call reset\(\) first"):
        module(torch.randn(*second))
    module.reset()
    assert math.isfinite(float(module(torch.randn(*second))))


@pytest.mark.parametrize("second", [(2, 9, 3), (3, 8, 3), (9, 3)], ids=["N", "B", "2-D"])
def test_module_without_stability_takes_a_new_prompt_shape(second):
    # With stability=0 nothing compares the two prompts: a smaller last batch or another
    # prompt length starts over, as after reset(), with the loss of a fresh module.
    torch.manual_seed(0)
    first, x = torch.randn(2, 8, 3), torch.randn(*second)
    module = T.TSLoss()
    module(first)
    got = module(x)
    assert float(module.last_terms["stability"]) == 0.0
    assert torch.equal(got, T.TSLoss()(x))
    assert torch.equal(module.previous.h0, T.loss(x, return_terms=True)[1]["topology"].h0)
    # and back: the shape it had first is new again
    assert torch.equal(module(first), T.TSLoss()(first))


def test_previous_diagram_saved_by_hand_resumes_exactly(tmp_path):
    """As the docstring says: state_dict() stays empty (a model holding a TSLoss must still
    save with safetensors and load older checkpoints strictly), and ``previous`` saved and
    assigned back gives a resumed run the stability term of one not stopped."""
    g = torch.Generator().manual_seed(3)
    p1, p2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    running = T.TSLoss(stability=1.0)
    running(p1)
    assert running.state_dict() == {}
    torch.save(running.previous._asdict(), tmp_path / "previous.pt")  # tensors: weights_only
    resumed = T.TSLoss(stability=1.0)
    resumed.previous = T.PromptTopology(**torch.load(tmp_path / "previous.pt"))
    expected, fresh = running(p2), T.TSLoss(stability=1.0)(p2)
    assert torch.equal(resumed(p2), expected) and not torch.equal(fresh, expected)


@pytest.mark.parametrize("kw", [
    dict(redundancy=0.0, stability=1.0),  # no redundancy, but the stability term needs H1
    dict(redundancy=0.0, stability=0.0),  # no term needs H1: the previous H1 goes unused
    dict(connectivity_mode="target", target=0.3),
], ids=["stability-without-redundancy", "connectivity-only", "target"])
def test_value_only_calls_equal_the_reference(kw):
    """Without return_terms the op skips H1 when no weighted term needs it: each such call,
    against a previous prompt with a loop (so that its H1 counts), and the target mode, must
    give the reference's value."""
    x0 = noisy_circle().unsqueeze(0)
    prev = T.loss(x0, return_terms=True)[1]["topology"]
    assert float(prev.h1.sum()) > 0
    g = torch.Generator().manual_seed(1)
    x = x0 + 0.05 * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    torch.testing.assert_close(T.loss(x, previous=prev, **kw),
                               reference_loss(x, previous=prev, **kw), rtol=1e-12, atol=0)


def test_previous_from_inference_mode_is_a_constant():
    """A topology made under torch.inference_mode (an evaluation step) feeds the next training
    step's stability term: autograd cannot save inference tensors, so the loss copies them."""
    x = generic_cloud().float()
    module = T.TSLoss(stability=1.0)
    with torch.inference_mode():
        module(x)
    z = (x + 0.1).requires_grad_(True)
    module(z).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert float(module.last_terms["stability"]) > 0.0
    # A previous topology that requires grad is a constant: no gradient reaches it.
    _, terms = T.loss(x, return_terms=True)
    prev = type(terms["topology"])(terms["topology"].h0.clone().requires_grad_(True),
                                   terms["topology"].h1)
    value = T.loss(z.detach().requires_grad_(True), stability=1.0, previous=prev)
    value.backward()
    assert prev.h0.grad is None


@pytest.mark.parametrize("which", ["h0", "h1", "both"])
def test_previous_holding_inference_tensors_is_copied(which):
    """A PromptTopology built by hand under torch.inference_mode (not by `loss`, whose
    topologies are copied out of it): `loss` must copy each inference tensor, h0 and h1 alike,
    or the backward cannot save it."""
    torch.manual_seed(0)
    z = torch.randn(2, 8, 3)
    with torch.inference_mode():
        h0, h1 = torch.rand(2, 7), torch.zeros(2, 32)  # K = 4·N: h1 is used as it is
    if which != "both":  # the other one an ordinary tensor
        h0, h1 = (h0, h1.clone()) if which == "h0" else (h0.clone(), h1)
    assert h0.is_inference() == (which != "h1") and h1.is_inference() == (which != "h0")
    z.requires_grad_()
    T.loss(z, stability=1.0, previous=T.PromptTopology(h0, h1)).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_previous_from_inference_mode_feeds_a_compiled_step():
    """An eager evaluation step under torch.inference_mode, then a compiled training step: the
    topology it returned must not be an inference tensor, which a compiled graph would save for
    its backward (Dynamo cannot test for one, so `loss` cannot copy it there)."""
    x = generic_cloud().float()
    with torch.inference_mode():
        _, terms = T.loss(x, return_terms=True)
        module = T.TSLoss(stability=1.0)
        module(x)
    prev = terms["topology"]
    assert not prev.h0.is_inference() and not prev.h1.is_inference()
    assert not module.previous.h0.is_inference()
    step = torch.compile(lambda p, pv: T.loss(p, previous=pv, stability=1.0), fullgraph=True)
    grads = []
    for fn in (step, lambda p, pv: T.loss(p, previous=pv, stability=1.0)):
        z = (x + 0.1).requires_grad_(True)
        fn(z, prev).backward()
        grads.append(z.grad)
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0
    z = (x + 0.1).requires_grad_(True)
    torch.compile(module, fullgraph=True)(z).backward()
    assert torch.isfinite(z.grad).all() and float(module.last_terms["stability"]) > 0.0


def test_module_evaluated_under_inference_mode_after_training_keeps_normal_state():
    """The module's second call (a previous topology held, whose H1 rows it may keep), made
    eagerly under torch.inference_mode, and then a compiled training step: the kept H1 must
    not be an inference tensor, as after a first call."""
    x = generic_cloud().float()
    module = T.TSLoss(stability=1.0)
    step = torch.compile(module, fullgraph=True)
    z = (x + 0.1).requires_grad_(True)
    step(z).backward()
    with torch.inference_mode():
        module(x)
    assert not module.previous.h0.is_inference() and not module.previous.h1.is_inference()
    z = (x + 0.1).requires_grad_(True)
    step(z).backward()
    assert torch.isfinite(z.grad).all() and float(module.last_terms["stability"]) > 0.0


def test_previous_of_the_wrong_kind_or_shape_is_refused():
    x = generic_cloud().float()
    _, terms = T.loss(x, return_terms=True)
    top = terms["topology"]
    with pytest.raises(TypeError, match="previous must be the PromptTopology"):
        T.loss(x, stability=1.0, previous=(top.h0, top.h1))
    # A complex topology was cast to real with only a warning; no topology is integer.
    for bad in (top.h0.to(torch.complex64), top.h0.long()):
        with pytest.raises(TypeError, match="previous must hold real floating-point"):
            T.loss(x, stability=1.0, previous=type(top)(bad, top.h1))
        with pytest.raises(TypeError, match="previous must hold real floating-point"):
            T.loss(x, stability=1.0, previous=type(top)(top.h0, bad.new_zeros(top.h1.shape)))
    with pytest.raises(ValueError, match="previous.h1 has shape"):
        T.loss(x, stability=1.0, previous=type(top)(top.h0, top.h1[0]))
    # h1 of another batch than h0's: named here, not the op's own error.
    xb = torch.randn(2, 10, 5, generator=torch.Generator().manual_seed(0))
    tb = T.loss(xb, return_terms=True)[1]["topology"]
    with pytest.raises(ValueError, match=r"previous.h1 has shape \(3, \d+\), expected \(2, K\)"):
        T.loss(xb, stability=1.0, previous=type(tb)(tb.h0, torch.cat([tb.h1, tb.h1[:1]])))
    # On another device: refused, not copied (a host-to-device copy would block every step).
    with pytest.raises(ValueError, match="previous.h0 is on meta, the prompts on cpu"):
        T.loss(x, stability=1.0, previous=type(top)(top.h0.to("meta"), top.h1))
    with pytest.raises(ValueError, match="previous.h1 is on meta"):
        T.loss(x, stability=1.0, previous=type(top)(top.h0, top.h1.to("meta")))
    # Sparse: refused by name, where it failed in .contiguous() ("unsupported memory format").
    with pytest.raises(TypeError, match="previous.h0 must be a dense"):
        T.loss(x, stability=1.0, previous=type(top)(top.h0.to_sparse(), top.h1))
    with pytest.raises(TypeError, match="previous.h1 must be a dense"):
        T.loss(x, stability=1.0, previous=type(top)(top.h0, top.h1.to_sparse_csr()))
    # The module's state restored without PromptTopology(**saved): the same named TypeError.
    module = T.TSLoss(stability=1.0)
    for wrong in (top._asdict(), tuple(top)):
        module.previous = wrong
        with pytest.raises(TypeError, match="previous must be the PromptTopology"):
            module(x)


def test_the_module_moves_its_restored_previous_to_the_prompts_device(monkeypatch):
    """TSLoss owns its previous topology: one restored on another device (loaded with
    map_location="cpu" for a CUDA run) is moved once, where the functional loss refuses it."""
    x = generic_cloud().float()
    module = T.TSLoss(stability=1.0)
    module(x)
    want = module.previous
    moved = []

    class Elsewhere(torch.Tensor):  # a CPU tensor that reports another device until moved
        @property
        def device(self):
            return torch.device("meta")

        def to(self, *args, **kwargs):
            moved.append(args)
            return torch.Tensor(self).clone()
    for elsewhere in ((0, 1), (1,)):  # both tensors, or h1 alone
        moved.clear()
        module.previous = T.PromptTopology(*(t.as_subclass(Elsewhere) if i in elsewhere else t
                                             for i, t in enumerate(want)))
        torch.testing.assert_close(module(x), T.loss(x, stability=1.0, previous=want))
        assert len(moved) == len(elsewhere) and type(module.previous.h1) is torch.Tensor
        module.previous = want


def test_scale_normalisation_makes_loss_scale_invariant():
    x = generic_cloud().float()
    torch.testing.assert_close(T.loss(x), T.loss(3.0 * x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(T.loss(x, normalize="none"), T.loss(3.0 * x, normalize="none"))


def test_reduction_and_terms():
    x = generic_cloud(b=3).float()
    per = T.loss(x, reduction="none")
    assert per.shape == (3,)
    torch.testing.assert_close(T.loss(x), per.mean())
    torch.testing.assert_close(T.loss(x, reduction="sum"), per.sum())
    value, terms = T.loss(x, return_terms=True, stability=0.5)
    assert set(terms) >= {"connectivity", "redundancy", "stability", "scale", "h1_count", "topology"}
    torch.testing.assert_close(value, terms["connectivity"] + terms["redundancy"])


def test_empty_batch_reduces_as_torch_does():
    # B = 0: "mean" is NaN (torch.mean of nothing, as the docstring says), "sum" is 0, "none"
    # is empty; the gradient is an empty tensor, not an error.
    x = torch.zeros(0, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.isnan(T.loss(x)) and T.loss(x, reduction="sum") == 0
    assert T.loss(x, reduction="none").shape == (0,)
    T.loss(x, reduction="sum").backward()
    assert x.grad.shape == (0, 5, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    x = generic_cloud().to(dtype).requires_grad_()
    value = T.loss(x)
    assert value.dtype == torch.float32
    value.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()


def test_bad_loss_options_name_the_argument():
    x = generic_cloud().float()
    with pytest.raises(ValueError, match="normalize"):
        T.loss(x, normalize="max")
    with pytest.raises(ValueError, match="target"):
        T.loss(x, connectivity_mode="target")
    with pytest.raises(ValueError, match="reduction"):
        T.loss(x, reduction="avg")
    with pytest.raises(ValueError, match="p must be"):
        T.loss(x, p=0)
    with pytest.raises(TypeError, match="prompts"):
        T.loss(torch.ones(3, 4, dtype=torch.int64))
    # Non-finite options gave a NaN or Inf loss, or (p = inf) a redundancy of 0.
    for name, bad in [("connectivity", float("nan")), ("redundancy", float("inf")),
                      ("stability", -float("inf")), ("p", float("inf"))]:
        with pytest.raises(ValueError, match=f"{name} must be finite"):
            T.loss(x, **{name: bad})
        with pytest.raises(ValueError, match=f"{name} must be finite"):
            T.TSLoss(**{name: bad})
    with pytest.raises(ValueError, match="target must be finite"):
        T.loss(x, connectivity_mode="target", target=float("nan"))
    # An integer past float64's range raised a bare OverflowError naming no argument.
    for name in ("connectivity", "redundancy", "stability", "p"):
        with pytest.raises(ValueError, match=rf"^{name} must be finite, got 1.000e\+400$"):
            T.loss(x, **{name: 10**400})
        with pytest.raises(ValueError, match=f"{name} must be finite, got -1.000e"):
            T.TSLoss(**{name: -10**400})
    with pytest.raises(ValueError, match="target must be finite, got 1.000e\\+5000"):
        T.loss(x, connectivity_mode="target", target=10**5000)  # str() of it would raise
    with pytest.raises(ValueError, match="p must be finite, got an int past float64's range"):
        T.loss(x, p=10**1000000)  # past Decimal's exponent range too
    # A tensor option was read back to the host on every call, and silently got no gradient.
    with pytest.raises(TypeError, match="connectivity must be a Python number"):
        T.loss(x, connectivity=torch.tensor(0.5, requires_grad=True))
    assert torch.isfinite(T.loss(x, connectivity=np.float64(0.5), p=np.int64(2)))
    # The same error on a TSLoss's later call as on its first.
    module = T.TSLoss()
    for _ in range(2):
        with pytest.raises(TypeError, match="prompts must be a torch.Tensor"):
            module([[0.0, 1.0], [1.0, 0.0]])
        module(x)


# ---- registration: opcheck and torch.compile -------------------------------------------------

def test_opcheck_all_ops():
    x = torch.randn(3, 12, 4, requires_grad=True)
    opcheck(ops.pairwise_distance.default, (x,))
    opcheck(ops.vr_persistence.default, (x, 1, False, 48))
    opcheck(ops.vr_persistence.default, (x, 0, False, 48))
    d = T.pairwise_distance(x.detach()).requires_grad_()
    opcheck(ops.vr_persistence.default, (d, 1, True, 48))
    opcheck(ops.pairwise_distance_backward.default,
            (torch.randn(3, 12, 12), x.detach(), T.pairwise_distance(x.detach())))
    dg = T.vr_persistence(x.detach())
    opcheck(ops.vr_persistence_backward.default,
            (torch.randn(3, 11, 2), torch.randn(3, 48, 2), x.detach(), dg.h0_edges, dg.h1_edges, False))
    # Points that are not contiguous: the fake's gradient has the kernel's contiguous strides.
    xp = torch.randn(3, 4, 12).transpose(1, 2)
    dp = T.vr_persistence(xp.contiguous())
    opcheck(ops.vr_persistence_backward.default,
            (torch.randn(3, 11, 2), torch.randn(3, 48, 2), xp, dp.h0_edges, dp.h1_edges, False))


def test_torch_compile_fullgraph_training_step():
    torch.manual_seed(0)
    prompt = torch.nn.Parameter(torch.randn(2, 16, 32))
    opt = torch.optim.SGD([prompt], lr=0.05)

    def objective(p):
        value, terms = T.loss(p, stability=0.5, return_terms=True)
        return value, terms["redundancy"]

    compiled = torch.compile(objective, fullgraph=True)  # fails on any host sync / graph break
    for _ in range(2):
        opt.zero_grad()
        value, red = compiled(prompt)
        value.backward()
        opt.step()
    eager, _ = objective(prompt)
    compiled_value, _ = compiled(prompt)
    torch.testing.assert_close(compiled_value, eager, rtol=1e-5, atol=1e-6)
    assert prompt.grad is not None and torch.isfinite(prompt.grad).all()


@pytest.mark.parametrize("dtype,rel", [(torch.float32, 1e-6), (torch.float64, 1e-13)], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(3, 7, 5), (2, 16, 768), (1, 33, 259), (2, 1, 3), (2, 2, 1)])
def test_pairwise_distance_backward_kernel(dtype, rel, shape):
    # The fused CPU kernel against the plain difference-form sum, with a duplicated point (no
    # direction: contributes 0), far from the origin (where a rowsum(w) x - w x form cancels).
    g = torch.Generator().manual_seed(1)
    x = 100.0 + torch.randn(shape, dtype=dtype, generator=g)
    x[0, -1] = x[0, 0]
    d = ops.pairwise_distance(x)
    grad = torch.randn(d.shape, dtype=dtype, generator=g)
    pos = d > 0
    w = torch.where(pos, (grad + grad.transpose(1, 2)) / torch.where(pos, d, torch.ones_like(d)),
                    torch.zeros_like(d))
    ref = (w.double().unsqueeze(-1) * (x.double().unsqueeze(2) - x.double().unsqueeze(1))).sum(2)
    got = ops.pairwise_distance_backward(grad, x, d)
    assert got.dtype == dtype and got.shape == x.shape
    scale = ref.abs().max().clamp_min(1e-30)
    assert float((got.double() - ref).abs().max() / scale) <= rel


def test_double_backward_through_pairwise_distance():
    # create_graph=True takes the differentiable formula; the fused kernel has no autograd.
    x = torch.randn(2, 7, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradgradcheck(lambda t: T.pairwise_distance(t).pow(3).sum(), (x,))
