"""The fused TSLoss op pair (tsloss_forward / tsloss_backward) against the composition of the
public ops it replaced (tests/reference_loss.py): values, terms, topology and gradients for
every option combination, on CPU and (when present) CUDA; gradcheck, the double-backward error,
opcheck, torch.compile and the edge cases."""
import itertools
import math

import pytest
import torch
from torch.library import opcheck

import tsloss_cuda as T
from reference_loss import reference_loss

ops = torch.ops.tsloss_cuda

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def cloud(b=3, n=12, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g, dtype=torch.float64).to(dtype)


def rel_err(got, ref):
    """Largest difference relative to the reference's largest magnitude; NaN where the
    reference is NaN and nowhere else (else inf)."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    if got.shape != ref.shape or not torch.equal(got.isnan(), ref.isnan()):
        return float("inf")
    got, ref = got[~ref.isnan()], ref[~ref.isnan()]
    if ref.numel() == 0:
        return 0.0
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def both(x, seed_w=1, **kw):
    """(value, terms, grad of a random mix of the loss and its terms) of the fused op and of the
    reference, on the same leaf."""
    out = []
    for fn in (T.loss, reference_loss):
        xr = x.detach().clone().requires_grad_()
        value, terms = fn(xr, return_terms=True, **kw)
        g = torch.Generator().manual_seed(seed_w)
        mix = sum(torch.randn(v.shape, generator=g, dtype=torch.float64).to(v) * v
                  for v in (value, terms["connectivity"], terms["redundancy"],
                            terms["stability"], terms["scale"]))
        grad = torch.autograd.grad(mix.sum(), xr, allow_unused=True)[0]
        out.append((value, terms, torch.zeros_like(xr) if grad is None else grad))
    return out


def assert_same(fused, ref, tol):
    (v, t, g), (vr, tr, gr) = fused, ref
    assert v.shape == vr.shape and v.dtype == vr.dtype
    assert rel_err(v, vr) <= tol, (v, vr)
    for k in ("connectivity", "redundancy", "stability", "scale"):
        assert t[k].shape == tr[k].shape, k
        assert rel_err(t[k], tr[k]) <= tol, (k, t[k], tr[k])
    assert torch.equal(t["h1_count"].cpu(), tr["h1_count"].cpu())
    assert t["topology"].h0.shape == tr["topology"].h0.shape
    assert t["topology"].h1.shape == tr["topology"].h1.shape
    assert rel_err(t["topology"].h0, tr["topology"].h0) <= tol
    assert rel_err(t["topology"].h1, tr["topology"].h1) <= tol
    assert rel_err(g, gr) <= tol, rel_err(g, gr)


OPTIONS = list(itertools.product(["mean", "none"], ["total", "target"], [1.0, 0.5, 2.0],
                                 ["mean", "sum", "none"], [False, True]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("normalize,mode,p,reduction,stab", OPTIONS,
                         ids=lambda v: str(v))
def test_fused_equals_reference(device, dtype, normalize, mode, p, reduction, stab):
    kw = dict(normalize=normalize, connectivity_mode=mode, target=0.3 if mode == "target" else None,
              p=p, reduction=reduction, connectivity=0.7, redundancy=1.3,
              stability=0.9 if stab else 0.0)
    x0 = cloud(dtype=dtype).to(device)
    x1 = x0 + 0.05 * cloud(seed=7, dtype=dtype).to(device)
    if stab:
        # Each side's own previous topology, from a first call on x0.
        prev = T.loss(x0, return_terms=True, **kw)[1]["topology"]
        prev_ref = reference_loss(x0, return_terms=True, **kw)[1]["topology"]
        assert rel_err(prev.h1, prev_ref.h1) <= TOL[dtype]
        fused = both(x1, previous=prev, **kw)[0]
        ref = both(x1, previous=prev_ref, **kw)[1]
        assert float(fused[1]["stability"].detach().abs().sum()) > 0  # the term is really on
    else:
        fused, ref = both(x1, **kw)
    assert_same(fused, ref, TOL[dtype])
    assert fused[0].device.type == device


@pytest.mark.parametrize("device", DEVICES)
def test_larger_clouds_and_batch_paths(device):
    # B >= 2 threads takes the per-cloud fused path, B = 1 the row-parallel distances and the
    # split sweep (N >= 64); both must equal the reference.
    for b, n, d in [(8, 24, 40), (1, 70, 33), (2, 40, 300)]:
        x = cloud(b, n, d, seed=n).to(device)
        fused, ref = both(x, stability=0.0)
        assert_same(fused, ref, 1e-12)
        xf = x.float()
        fused, ref = both(xf)
        assert_same(fused, ref, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_clouds(device, n):
    x = cloud(2, n, 4, seed=n).to(device)
    fused, ref = both(x)
    assert_same(fused, ref, 1e-12)
    value, terms = fused[0], fused[1]
    assert torch.isfinite(value) and torch.isfinite(fused[2]).all()
    assert terms["topology"].h0.shape == (2, n - 1)
    assert int(terms["h1_count"].max()) == 0  # a loop needs four points
    prev = terms["topology"]
    fused, ref = both(x + 0.1 * cloud(2, n, 4, seed=9).to(device), previous=prev, stability=1.0)
    assert_same(fused, ref, 1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32],
                         ids=["f16", "bf16", "f32"])
@pytest.mark.parametrize("batched", [True, False], ids=["3-D", "2-D"])
def test_half_precision_and_single_prompts_equal_the_reference(device, dtype, batched):
    # The reference widens the prompts itself (half precision computed in float32) and makes a
    # 2-D prompt a batch of one: the fused op must have done the same, values and gradients.
    x = cloud(2, 10, 4, seed=5).to(dtype).to(device)
    fused, ref = both(x if batched else x[0], stability=0.0)
    assert fused[0].dtype == torch.float32 and fused[2].dtype == dtype
    assert_same(fused, ref, TOL[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
def test_all_points_equal(device):
    x = torch.full((2, 6, 3), 1.5, dtype=torch.float64, device=device)
    fused, ref = both(x)
    assert_same(fused, ref, 1e-12)
    v, terms, grad = fused
    assert float(v.detach()) == 0.0
    # The scale is clamped to the smallest normal, and coincident points have no direction.
    assert float(terms["scale"]) == torch.finfo(torch.float64).tiny
    assert torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_scale_clamp_at_and_below_the_bound(device, dtype, fraction):
    # Two points the dtype's smallest normal apart: a mean distance at the clamp's bound, where
    # the gradient passes (the normalised loss is constant: zero gradient), and half of it, held
    # by the clamp (the scale a constant: a gradient of ~1/tiny). The clamped scale is the same
    # in both, so the backward must not decide from it.
    tiny = torch.finfo(dtype).tiny
    x = torch.tensor([[0.0], [tiny * fraction]], dtype=dtype, device=device)
    grads = []
    for fn in (T.loss, reference_loss):
        xr = x.clone().requires_grad_()
        value, terms = fn(xr, return_terms=True, redundancy=0.0)
        assert float(terms["scale"].detach()) == tiny
        grads.append(torch.autograd.grad(value, xr)[0])
    g, gr = grads
    assert torch.isfinite(g).all() and torch.equal(g, gr), (g, gr)
    assert (torch.count_nonzero(g) == 0) == (fraction == 1.0), g


@pytest.mark.parametrize("device", DEVICES)
def test_a_float32_prompt_whose_distances_sum_past_float32(device):
    """Finite distances whose float32 sum overflows (mean ~2e36 at N = 64): the scale is the
    mean all the same, so the loss is the one of the prompt shrunk by 1e36 and so, scaled, is its
    gradient. Rounded to float32 first, the sum was Inf: every term 0, the gradient 0."""
    x = cloud(1, 64, 3, seed=4, dtype=torch.float32).to(device)
    assert float(T.pairwise_distance(x * 1e36).double().sum()) > torch.finfo(torch.float32).max
    got, want = [], []
    for prompt, out in ((x * 1e36, got), (x, want)):
        xr = prompt.clone().requires_grad_()
        value, terms = T.loss(xr, return_terms=True)
        out += [value.detach(), terms["scale"].detach(), torch.autograd.grad(value, xr)[0]]
    assert torch.isfinite(got[1]) and float(got[1]) == pytest.approx(1e36 * float(want[1]),
                                                                     rel=1e-6)
    assert float(got[0]) == pytest.approx(float(want[0]), rel=1e-5) and float(want[0]) > 0
    torch.testing.assert_close(got[2] * 1e36, want[2], rtol=1e-4, atol=1e-6)
    fused, ref = both(x * 1e36)
    assert_same(fused, ref, TOL[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
def test_distances_summing_past_float64_give_a_nan_loss(device):
    """Finite float64 distances whose sum overflows float64: the diagrams are valid, but no mean
    distance can be formed from the sum, so the scale and the loss are NaN (loud), not Inf
    (every term 0: a loss that silently stops)."""
    x = torch.tensor([[[0.0], [8e307], [-8e307]]], dtype=torch.float64, device=device)
    value, terms = T.loss(x, reduction="none", return_terms=True)
    assert int(terms["h1_count"][0]) == 0
    assert torch.isnan(terms["scale"]).all() and torch.isnan(value).all()
    plain = T.loss(x, normalize="none", reduction="none")  # no scale, a finite loss
    assert torch.isfinite(plain).all()
    # With a previous topology too: NaN, the count kept (CUDA once marked the cloud invalid).
    prev = T.loss(x * 1e-300, return_terms=True)[1]["topology"]
    xr = x.clone().requires_grad_()
    value, terms = T.loss(xr, previous=prev, stability=1.0, reduction="none", return_terms=True)
    assert torch.isnan(value).all() and int(terms["h1_count"][0]) == 0
    value.sum().backward()
    assert torch.isnan(xr.grad).all()


def test_gradient_with_a_subnormal_float64_distance():
    """Two points 1e-310 apart: 1/d overflows double, and Inf times a zero difference made both
    rows NaN; the op scales such weights (CUDA against this: tests/test_cuda_tsloss.py).
    The gradient is the reference's: finite and not zero there is not enough, since zeroing the
    two rows or flipping the sign would pass that."""
    pts = [[[0.0, 0.0], [1e-310, 0.0], [1.0, 0.5], [0.3, 2.0]]]
    x = torch.tensor(pts, dtype=torch.float64).requires_grad_(True)
    T.loss(x).backward()
    r = torch.tensor(pts, dtype=torch.float64).requires_grad_(True)
    reference_loss(r).backward()
    # The reference differentiates through pairwise_distance's backward, finite at this input.
    assert torch.isfinite(r.grad).all()
    # The file's float64 tolerance; the entries are ~0.1, so atol=1e-14 is ~1e-13 of them.
    torch.testing.assert_close(x.grad, r.grad, rtol=TOL[torch.float64], atol=1e-14)
    # The rows that the overflowing 1/d made NaN: finite, and carrying their H0 edge's weight.
    pair = x.grad[0, :2]
    assert torch.isfinite(pair).all() and bool((pair.abs().sum(-1) > 1e-3).all()), pair


@pytest.mark.parametrize("device", DEVICES)
def test_no_h1_bars(device):
    # Points on a line: a tree, no loops.
    t = torch.linspace(0, 1, 9, dtype=torch.float64)
    x = torch.stack([t, 2 * t, -t], 1)[None].repeat(2, 1, 1).to(device)
    x[1] += 0.01 * cloud(1, 9, 3, seed=3)[0].to(device)
    fused, ref = both(x, stability=0.5)
    assert_same(fused, ref, 1e-12)
    assert fused[1]["h1_count"].tolist() == [0, 0]
    # No H1 bar: the redundancy term is exactly 0, and so is its gradient (no bar, no edge).
    assert float(fused[1]["redundancy"]) == 0.0
    xr = x.clone().requires_grad_()
    red = T.loss(xr, return_terms=True)[1]["redundancy"]
    g, = torch.autograd.grad(red, xr, allow_unused=True)
    assert g is None or torch.count_nonzero(g) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_tied_h1_persistences_with_stability(device):
    """Integer clouds have H1 bars of equal persistence: the stability term's gradient at such a
    tie is the subgradient of one order (rows kept in order, as the op sorts), which the
    reference matched only once its sort was made stable."""
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 3, (3, 15, 3), generator=g).double().to(device)
    prev = torch.randint(0, 3, (3, 15, 3), generator=g).double().to(device)
    _, terms = T.loss(prev, return_terms=True)
    dg = T.vr_persistence(x)
    pers = [(h[:int(c), 1] - h[:int(c), 0]).tolist() for h, c in zip(dg.h1, dg.h1_count)]
    assert any(len(set(row)) < len(row) for row in pers)  # ties there are
    fused, ref = both(x, stability=1.0, previous=terms["topology"])
    assert_same(fused, ref, 1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_h1", [0, 1, 3])
def test_truncated_h1(device, max_h1):
    x = cloud(2, 30, 16, seed=4).to(device)
    fused, ref = both(x, max_h1=max_h1)
    assert_same(fused, ref, 1e-12)
    counts = fused[1]["h1_count"]
    assert int(counts.min()) > max_h1  # really truncated: more bars than rows
    assert fused[1]["topology"].h1.shape == (2, max_h1)
    # The previous topology of another capacity is cut or padded to this one.
    prev = T.loss(x, return_terms=True, max_h1=5)[1]["topology"]
    prev_ref = reference_loss(x, return_terms=True, max_h1=5)[1]["topology"]
    x1 = x + 0.1 * cloud(2, 30, 16, seed=5).to(device)  # not a rescaling: the topology moves
    fused = both(x1, previous=prev, stability=1.0, max_h1=max_h1)[0]
    ref = both(x1, previous=prev_ref, stability=1.0, max_h1=max_h1)[1]
    assert_same(fused, ref, 1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_stability_does_not_depend_on_the_capacity_unless_it_truncates(device):
    """max_h1 is a capacity: at any width that holds every bar, now and in the previous
    topology, the stability term (and its gradient) is the same; its H1 part is the mean over
    the rows that hold a bar in either call, which here is the explicit sum over the bars."""
    x0 = cloud(2, 20, 2, seed=6).to(device)
    x1 = x0 + 0.1 * cloud(2, 20, 2, seed=7).to(device)
    prev = T.loss(x0, return_terms=True, max_h1=200)[1]["topology"]
    got = []
    for k in (20, 48, 200):
        xr = x1.clone().requires_grad_()
        _, terms = T.loss(xr, previous=prev, stability=1.0, return_terms=True, max_h1=k,
                          reduction="none")
        got.append((terms["stability"].detach(),
                    torch.autograd.grad(terms["stability"].sum(), xr)[0]))
        now = terms["topology"].h1
    counts = (now != 0).sum(-1), (prev.h1 != 0).sum(-1)
    assert int(torch.maximum(*counts).max()) <= 20  # none truncated at any width
    assert counts[0].tolist() == [1, 4] and counts[1].tolist() == [2, 2]  # fewer bars, then more
    for s, g in got[1:]:
        torch.testing.assert_close(s, got[0][0], rtol=1e-14, atol=0)
        torch.testing.assert_close(g, got[0][1], rtol=1e-12, atol=1e-15)
    rows = torch.maximum(*counts)
    h0_part = ((terms["topology"].h0 - prev.h0) ** 2).mean(-1)
    h1_part = ((now - prev.h1) ** 2).sum(-1) / rows
    torch.testing.assert_close(got[0][0], h0_part + h1_part, rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", [(0, 3), (2, 0, 3), (1, 4), (2, 1, 4), (1, 0), (3, 1, 0)])
def test_module_calls_again_on_clouds_of_zero_or_one_point(shape):
    # One point needs no coordinates ((1, 0): loss 0, as vr_persistence takes it); two do.
    # h0 has N - 1 columns, none for N = 0 as for N = 1; a second call once read N = 0 as a change.
    m = T.TSLoss(stability=1.0)
    for _ in range(2):
        assert float(m(torch.randn(*shape))) == 0.0


def test_backward_reads_a_strided_output_gradient():
    """The per-cloud losses' gradient as torch.stack's backward hands it on: a column of a
    (B, 2) gradient, stride 2."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 9, 4, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.rand(3, 2, dtype=torch.float64, generator=g) + 0.5
    per_cloud = T.loss(x, reduction="none")
    got, = torch.autograd.grad((torch.stack([per_cloud, per_cloud.detach()], 1) * w).sum(), x)
    want, = torch.autograd.grad((T.loss(x, reduction="none") * w[:, 0].contiguous()).sum(), x)
    assert torch.equal(got, want)


def test_previous_of_another_shape_is_refused():
    x = cloud()
    prev = T.loss(x, return_terms=True)[1]["topology"]
    with pytest.raises(ValueError, match="previous.h0"):
        T.loss(cloud(n=11), previous=prev, stability=1.0)


def test_non_finite_points_name_the_point():
    x = cloud(4, 8, 3)
    x[2, 5, 1] = float("nan")
    with pytest.raises(RuntimeError, match="point 5 of cloud 2"):
        T.loss(x)
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        T.loss(x[2:3])


def test_errors_name_loss_whatever_the_batch_and_threads():
    # Few clouds take the row-parallel distances, many the fused path: the message is the same.
    big = torch.zeros(2, 2, 3)
    big[:, 0, 0], big[:, 1, 0] = -3e38, 3e38  # finite points 6e38 apart: over float32
    messages = set()
    for b in (1, 2):
        for threads in (1, 2):
            with _threads(threads), pytest.raises(RuntimeError) as err:
                T.loss(big[:b])
            messages.add(str(err.value).splitlines()[0])
    assert len(messages) == 1 and next(iter(messages)).startswith("loss: the distance between")


def test_scale_is_the_same_bits_for_any_batch_layout_and_threads():
    # N > 256 takes row-block distances; their per-block sums once made the scale (and so the
    # loss and gradient) depend on whether the cloud ran fused and on the thread count.
    torch.manual_seed(8)
    x = torch.randn(4, 300, 3, dtype=torch.float64)
    seen = set()
    for threads in (1, 2):
        with _threads(threads):
            for part, row in ((x, 1), (x[1:2], 0), (x[:2], 1)):  # cloud 1 in each
                out = ops.tsloss_forward(part, None, None, 1, 64, True, False, 0.0, 1.0, 1.0,
                                         1.0, 0.0, 0)
                seen.add((out[8][row].item(), out[0][row].item()))
    assert len(seen) == 1, seen


class _threads:
    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(normalize="none", p=2.0),
    dict(connectivity_mode="target", target=0.4, reduction="sum"),
    dict(p=0.5, reduction="none"),
])
def test_gradcheck(kw):
    x = cloud(2, 9, 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: T.loss(x, **kw), (x,))


def test_gradcheck_stability_and_terms():
    x0 = cloud(2, 9, 4)
    prev = T.loss(x0, return_terms=True)[1]["topology"]
    x = (x0 + 0.01 * cloud(2, 9, 4, seed=1)).requires_grad_()

    def f(x):
        value, terms = T.loss(x, stability=0.8, previous=prev, return_terms=True)
        return value, terms["connectivity"], terms["redundancy"], terms["stability"], terms["scale"]

    assert torch.autograd.gradcheck(f, (x,))


def test_double_backward_is_a_clear_error():
    x = cloud(2, 9, 4).requires_grad_()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.gradgradcheck(lambda x: T.loss(x), (x,))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(T.loss(x), x, create_graph=True)


@pytest.mark.parametrize("device", DEVICES)
def test_only_the_reduced_outputs_carry_gradients(device):
    # The backward takes the gradients of loss, the three terms and the scale; the topology and
    # the tensors saved for the backward are non-differentiable, so asking their gradient is an
    # error, not a silent zero.
    x = cloud(2, 9, 4).to(device).requires_grad_()
    out = ops.tsloss_forward(x, None, None, 1, 36, True, False, 0.0, 1.0, 1.0, 1.0, 0.0, 1)
    assert all(out[i].requires_grad for i in range(5))
    assert not any(out[i].requires_grad for i in range(5, 12))
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.autograd.grad(out[6].sum(), x)
    # Only the scale's gradient asked: the other upstream gradients stay absent, and the
    # scale's reaches x as the reference composition's does.
    g, = torch.autograd.grad(out[4], x)
    ref, = torch.autograd.grad(reference_loss(x, return_terms=True)[1]["scale"], x)
    assert rel_err(g, ref) <= 1e-12


def test_compiled_autograd_runs_the_backward():
    # Compiled autograd traces the backward graph; it refuses C++ autograd nodes that mark
    # outputs non-differentiable, which is why the topology outputs come out detached instead.
    # A C++ node runs eagerly inside the traced backward (a graph break: not fullgraph).
    from torch._dynamo import compiled_autograd
    x = cloud(2, 9, 4)
    xe = x.clone().requires_grad_()
    T.loss(xe).backward()
    xc = x.clone().requires_grad_()
    torch._dynamo.reset()
    with compiled_autograd._enable(torch.compile(backend="eager")):
        T.loss(xc).backward()
    assert torch.equal(xc.grad, xe.grad)


def test_a_cloud_whose_h1_overflows_the_device_pool(monkeypatch):
    # The device reports a cloud whose H1 reduction exhausts its memory pool (h1_count -1, H1
    # rows padding, H0 exact): its loops are unknown, so its redundancy, its stability and its
    # loss are NaN (it was a plausible loss without its loops: 0.049 for the ring's 1.363), and
    # so are the H1 rows of its topology (a later call's stability compares with them); its
    # connectivity is exact, and with redundancy and stability weighed 0 so is its loss. The
    # CPU engine grows its buffers instead; the emulation of the device's kernels takes the
    # device's path with a fixed pool (24 KB: the 100-gon's ties need over 32 KB, the Gaussian
    # cloud under 16 KB).
    t = torch.arange(100, dtype=torch.float64) * (2 * math.pi / 100)
    ring = torch.stack([t.cos(), t.sin()], 1)
    g = torch.Generator().manual_seed(0)
    x = torch.stack([ring, torch.randn(100, 2, generator=g, dtype=torch.float64)])
    exact = T.vr_persistence(x)
    exact_conn = T.loss(x, return_terms=True, reduction="none")[1]["connectivity"]
    monkeypatch.setenv("TSLOSS_ENGINE", "emulated")
    monkeypatch.setenv("TSLOSS_EMULATED_POOL_BYTES", "24576")
    dg = T.vr_persistence(x)
    assert dg.h1_count.tolist() == [-1, int(exact.h1_count[1])]
    assert dg.truncated.tolist() == [True, False]
    assert not dg.h1[0].any() and (dg.h1_edges[0] == -1).all()
    assert torch.equal(dg.h0, exact.h0) and torch.equal(dg.h1[1], exact.h1[1])
    prev = T.loss(x + 0.05 * torch.randn(x.shape, generator=g, dtype=x.dtype),
                  return_terms=True)[1]["topology"]
    for kw in ({}, {"stability": 0.5, "previous": prev}):
        fused, ref = both(x, reduction="none", **kw)
        assert_same(fused, ref, TOL[torch.float64])
        (value, terms, grad) = fused
        assert value[0].isnan() and terms["redundancy"][0].isnan() and value[1].isfinite()
        assert terms["stability"][0].isnan() == ("previous" in kw)
        assert not terms["topology"].h1[0].any() and terms["topology"].h1[1].any()
        assert torch.equal(terms["connectivity"], exact_conn)
        assert torch.isfinite(grad).all()
    # The mean over the batch is NaN: the loss does not pass for a number without the ring.
    assert T.loss(x).isnan() and T.TSLoss()(x).isnan()
    # TSLoss keeps the last known H1 rows of the ring across the overflow, the Gaussian's new
    # ones; the next call with room is finite again.
    crit = T.TSLoss(stability=0.5)
    monkeypatch.setenv("TSLOSS_EMULATED_POOL_BYTES", "4000000")
    crit(x)
    known = crit.previous.h1.clone()
    monkeypatch.setenv("TSLOSS_EMULATED_POOL_BYTES", "24576")
    y = x + 1e-3 * torch.randn(x.shape, generator=g, dtype=x.dtype)
    assert crit(y).isnan() and crit.last_terms["h1_count"].tolist()[0] == -1
    assert torch.equal(crit.previous.h1[0], known[0]) and known[0].any()
    assert torch.equal(crit.previous.h1[1], T.loss(y, return_terms=True)[1]["topology"].h1[1])
    monkeypatch.setenv("TSLOSS_EMULATED_POOL_BYTES", "4000000")
    assert crit(y).isfinite()
    # H1 weighed 0: the overflowed cloud's loss is its exact connectivity, with its gradient.
    fused, ref = both(x, reduction="none", redundancy=0.0)
    assert_same(fused, ref, TOL[torch.float64])
    assert fused[0].isfinite().all() and fused[2][0].abs().sum() > 0


def _direct_calls(x):
    """tsloss_forward and tsloss_backward called directly (as autograd never calls them) with a
    previous topology (prev_h0, prev_h1) of the caller's choosing, and a valid pair."""
    args = (x, None, None, 1, 36, True, False, 0.0, 1.0, 1.0, 1.0, 0.0, 1)
    out = ops.tsloss_forward(*args)
    saved = (x, out[9], out[8], out[6], out[7], out[5], out[10], out[11])
    g = torch.ones((), dtype=x.dtype, device=x.device)

    def forward(p0, p1):
        return ops.tsloss_forward(x, p0, p1, 1, 36, True, False, 0.0, 1.0, 1.0, 1.0, 0.5, 1)

    def backward(p0, p1, grad=g):
        return ops.tsloss_backward(grad, None, None, None, None, *saved, p0, p1, True, False,
                                   0.0, 1.0, 1.0, 1.0, 0.5, 1)

    return forward, backward, (out[6] * 1.1, out[7])


@pytest.mark.parametrize("device", DEVICES)
def test_direct_calls_check_the_previous_topology(device):
    # Autograd hands the backward the forward's checked tensors; a direct call may not. The
    # CUDA backward did not check them: given prev_h0 alone it read prev_h1 through a null
    # pointer, and of another shape out of bounds.
    x = cloud(2, 9, 4).to(device)
    forward, backward, (p0, p1) = _direct_calls(x)
    for name, call in (("tsloss_forward", forward), ("tsloss_backward", backward)):
        for a, b in ((p0, None), (None, p1)):
            with pytest.raises(RuntimeError, match=rf"^{name}: prev_h0 and prev_h1 must be given together"):
                call(a, b)
        with pytest.raises(RuntimeError, match=rf"^{name}: prev_h1 must be \(B, K\) = \(2, 36\), got \[2, 5\]"):
            call(p0, p1[:, :5])
        with pytest.raises(RuntimeError, match=rf"^{name}: prev_h0 must be \(B, N-1\) = \(2, 8\), got \[1, 8\]"):
            call(p0[:1], p1)
        with pytest.raises(RuntimeError, match=rf"^{name}: prev_h0 must be floating point, got Long"):
            call(p0.long(), p1)
    # Another floating dtype is taken in x's (float32 here, as the forward saw it).
    torch.testing.assert_close(backward(p0.float(), p1.float()), backward(p0, p1), rtol=1e-6, atol=1e-7)


def test_opcheck():
    x = cloud(3, 10, 4).float().requires_grad_()
    args = (x, None, None, 1, 40, True, False, 0.0, 1.0, 1.0, 1.0, 0.0, 1)
    opcheck(ops.tsloss_forward.default, args)
    out = ops.tsloss_forward(*args)
    prev_h0, prev_h1 = out[6].detach() * 1.1, out[7].detach()
    for reduction in (0, 2):
        opcheck(ops.tsloss_forward.default,
                (x, prev_h0, prev_h1, 1, 40, False, True, 0.3, 2.0, 0.5, 1.5, 0.7, reduction))
    opcheck(ops.tsloss_forward.default, (x, None, None, 0, 40, True, False, 0.0, 1.0, 1.0, 0.0,
                                         0.0, 1))
    xd = x.detach()
    g = torch.ones(())
    saved = (xd, out[9], out[8], out[6], out[7], out[5], out[10], out[11])
    opcheck(ops.tsloss_backward.default,
            (g, None, None, None, None) + saved + (None, None, True, False, 0.0, 1.0, 1.0, 1.0,
                                                    0.0, 1))
    opcheck(ops.tsloss_backward.default,
            (g, g, g, g, g) + saved + (prev_h0, prev_h1, True, True, 0.2, 0.5, 1.0, 1.0, 1.0, 1))


def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    x = torch.randn(3, 14, 24)
    prev = T.loss(x * 1.05, return_terms=True)[1]["topology"]

    def objective(p):
        value, terms = T.loss(p, stability=0.5, previous=prev, return_terms=True,
                              connectivity_mode="target", target=0.5, p=2.0)
        return value, terms["redundancy"], terms["topology"].h1

    compiled = torch.compile(objective, fullgraph=True)
    xe = x.clone().requires_grad_()
    xc = x.clone().requires_grad_()
    ve, re_, he = objective(xe)
    vc, rc, hc = compiled(xc)
    torch.testing.assert_close(vc, ve, rtol=1e-6, atol=0)
    torch.testing.assert_close(rc, re_, rtol=1e-6, atol=0)
    torch.testing.assert_close(hc, he, rtol=0, atol=0)
    (ve + re_).backward()
    (vc + rc).backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n", [0, 1])
def test_torch_compile_of_clouds_of_zero_or_one_point(n):
    # h0 has max(N - 1, 0) columns: the fake kernel's static width for N = 0 must not be -1.
    # Static shapes (dynamic=False, after a reset): a symbolic N takes another branch.
    torch._dynamo.reset()
    x = torch.randn(2, n, 3)
    eager, terms = T.loss(x, return_terms=True)
    compiled, cterms = torch.compile(lambda p: T.loss(p, return_terms=True), fullgraph=True,
                                     dynamic=False)(x)
    assert float(eager) == 0.0 and float(compiled) == 0.0
    assert cterms["topology"].h0.shape == terms["topology"].h0.shape == (2, 0)


def test_dynamic_shapes_compile_once_for_every_number_of_points():
    # The H1 capacity (default 4N) is a SymInt: as an int, every new N specialised the graph
    # and recompiled, prompt lengths and batch sizes alike. (Without the on-disk caches: an
    # entry compiled by another version of the ops brings its guards along.)
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    with torch.compiler.config.patch(force_disable_caches=True):
        loss = torch.compile(lambda p: T.loss(p, return_terms=True), dynamic=True,
                             fullgraph=True)
        diagram = torch.compile(lambda p: T.vr_persistence(p).h1, dynamic=True, fullgraph=True)
        for b, n in ((2, 10), (3, 12), (2, 17)):
            x = cloud(b, n, 3, seed=n, dtype=torch.float32)
            xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
            (vc, tc), (ve, _) = loss(xc), T.loss(xe, return_terms=True)
            torch.testing.assert_close(vc, ve, rtol=1e-6, atol=0)
            assert tc["topology"].h1.shape == (b, 4 * n)
            vc.backward()
            ve.backward()
            torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-6, atol=1e-9)
            assert torch.equal(diagram(x), T.vr_persistence(x).h1)
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])


def test_pairwise_distance_with_a_gradient_compiles_once_for_every_shape():
    """Its backward had no fake kernel: fake tensors ran the C++ composite, whose sizes fixed
    B, N and D, so a compiled training step recompiled for every new shape and, fullgraph,
    failed at the recompile limit."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    w = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)

    def step(x):
        T.pairwise_distance(x @ w).mean().backward()
        return w.grad

    with torch.compiler.config.patch(force_disable_caches=True):
        compiled = torch.compile(step, dynamic=True, fullgraph=False)
        for b, n in ((2, 5), (3, 7), (4, 6), (5, 9)):
            x = cloud(b, n, 3, seed=n)
            w.grad = None
            got = compiled(x).clone()
            w.grad = None
            torch.testing.assert_close(got, step(x), rtol=1e-12, atol=0)
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])


def test_module_keeps_previous_and_matches_reference():
    x = cloud(2, 12, 6)
    module = T.TSLoss(stability=1.0, connectivity_mode="target", target=0.5)
    first = module(x)
    second = module(x * 1.2 + 0.1 * cloud(2, 12, 6, seed=2))
    prev = reference_loss(x, stability=1.0, connectivity_mode="target", target=0.5,
                          return_terms=True)[1]["topology"]
    ref = reference_loss(x * 1.2 + 0.1 * cloud(2, 12, 6, seed=2), stability=1.0,
                         connectivity_mode="target", target=0.5, previous=prev)
    assert rel_err(second, ref) <= 1e-12
    assert float(module.last_terms["stability"]) > 0 and math.isfinite(float(first))
