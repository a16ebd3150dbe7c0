"""The fused TSLoss op on CUDA; every test is skipped without a CUDA device.

tests/test_tsloss_op.py already runs every option combination against the reference
composition on CUDA when a device is present; this file adds what only the device path has:
the distance kernel's canonical bits, the CPU op as a second reference, invalid input marked
without a host check, the launch count, no host synchronisation, and CUDA-graph capture.
"""
from __future__ import annotations

import os

import pytest
import torch

import tsloss_cuda as T
from distance_utils import canonical_distances
from reference_loss import reference_loss

ops = torch.ops.tsloss_cuda

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def cloud(b, n, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,n,d", [(3, 5, 3), (2, 33, 70), (2, 64, 129), (1, 97, 16), (4, 1, 8)])
def test_distance_kernel_has_the_canonical_bits(dtype, b, n, d):
    x = cloud(b, n, d, seed=n, dtype=dtype)
    got = ops.pairwise_distance(x.cuda()).cpu()
    assert torch.equal(got, canonical_distances(x))
    assert torch.equal(got, got.transpose(1, 2))


def test_float32_distances_that_do_not_certify_are_canonical():
    """float32 clouds take certified Gram sums on the GPU; a block with a pair the bound cannot
    certify sums its tile again canonically (csrc/cuda/pairwise_distance_kernel.cuh).
    Duplicates, two tight clusters far apart and a NaN point force that; integer ties, an
    off-centre cloud, an outlier, tiny magnitudes and all points equal mostly certify. One
    batch, beside a Gaussian cloud, several blocks per cloud; every bit compared."""
    g = torch.Generator().manual_seed(5)
    n, d = 70, 300
    base = torch.randn(9, n, d, generator=g, dtype=torch.float64)
    x = base.clone()
    x[1, 1::2] = x[1, 0::2]                                              # duplicates
    x[2] = torch.where(torch.arange(n)[:, None] % 2 == 1, 1e3, -1e3) * (
        1 + 0.01 * torch.arange(d)) + 1e-3 * base[2]                     # far clusters
    x[3, n // 2, 0] = float("nan")                                       # a NaN point
    x[4] = torch.randint(-2, 3, (n, d), generator=g)                     # integer ties
    x[5] = 1000.0 + base[5]                                              # off-centre
    x[6] = 1e-18 * base[6]                                               # tiny magnitudes
    x[7] = x[7, :1]                                                      # all points equal
    x[8, 0] += 100.0                                                     # an outlier first
    x = x.float()
    got = ops.pairwise_distance(x.cuda()).cpu()
    want = canonical_distances(x)
    want.diagonal(dim1=1, dim2=2).zero_()  # the op's diagonal is an exact 0, NaN points too
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan].view(torch.int32), want[~nan].view(torch.int32))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("b,n,d", [(4, 16, 64), (3, 40, 300), (1, 70, 33), (64, 64, 128)])
@pytest.mark.parametrize("kw", [dict(), dict(normalize="none", p=2.0, reduction="none"),
                                dict(connectivity_mode="target", target=0.4, reduction="sum")])
def test_cuda_equals_cpu_op(dtype, tol, b, n, d, kw):
    x = cloud(b, n, d, seed=b + n, dtype=dtype)
    out = {}
    for dev in ("cpu", "cuda"):
        xr = x.to(dev).requires_grad_()
        # A previous prompt that differs in shape, not only in scale: under normalize="mean" a
        # scaled copy has the same topology, and its stability term is rounding noise that a
        # 1-ulp scale difference between backends (csrc/core/tsloss_terms.h) changes by 5-90 %.
        noise = cloud(b, n, d, seed=99, dtype=dtype).to(dev)
        prev = T.loss(xr.detach() + 0.05 * noise, return_terms=True, **kw)[1]["topology"]
        value, terms = T.loss(xr, stability=0.5, previous=prev, return_terms=True, **kw)
        (grad,) = torch.autograd.grad(value.sum() + terms["redundancy"].sum(), xr)
        out[dev] = [value, terms["connectivity"], terms["redundancy"], terms["stability"],
                    terms["scale"], terms["topology"].h0, terms["topology"].h1, grad]
        out[dev + "_count"] = terms["h1_count"]
    assert torch.equal(out["cpu_count"], out["cuda_count"].cpu())
    for c, g in zip(out["cpu"], out["cuda"]):
        g = g.detach().cpu().double()
        c = c.detach().double()
        assert float((g - c).abs().max()) <= tol * float(c.abs().max().clamp_min(1e-30))


def test_gradcheck_on_cuda():
    x = cloud(2, 9, 4, dtype=torch.float64).cuda().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: T.loss(x, p=2.0), (x,))


def test_invalid_cloud_is_marked_not_raised():
    x = cloud(3, 12, 5).cuda()
    x[1, 4, 2] = float("nan")
    value, terms = T.loss(x, reduction="none", return_terms=True)
    assert torch.isnan(value[1]) and torch.isfinite(value[[0, 2]]).all()
    assert int(terms["h1_count"][1]) == -2
    ref = reference_loss(x, reduction="none")
    torch.testing.assert_close(value[[0, 2]], ref[[0, 2]], rtol=1e-5, atol=1e-6)


def test_non_finite_previous_is_marked_not_raised():
    """The CPU refuses a NaN or Inf previous by name; CUDA cannot look without a host sync, so
    that cloud is marked invalid (h1_count -2) with a NaN loss and no gradient, the others as
    without it."""
    x = cloud(3, 12, 5, dtype=torch.float64).cuda()
    prev = T.loss(x, stability=1.0, reduction="none", return_terms=True)[1]["topology"]
    h0 = prev.h0.clone()
    h0[1, 2] = float("nan")
    xg = (x + 0.01).requires_grad_(True)
    value, terms = T.loss(xg, stability=1.0, previous=T.PromptTopology(h0, prev.h1),
                          reduction="none", return_terms=True)
    assert torch.isnan(value[1]) and torch.isfinite(value[[0, 2]]).all()
    assert int(terms["h1_count"][1]) == -2 and (terms["h1_count"][[0, 2]] >= 0).all()
    value.nansum().backward()
    assert (xg.grad[1] == 0).all() and xg.grad[[0, 2]].abs().sum() > 0
    ref = T.loss((x + 0.01)[[0, 2]], stability=1.0, reduction="none",
                 previous=T.PromptTopology(prev.h0[[0, 2]], prev.h1[[0, 2]]))
    torch.testing.assert_close(value[[0, 2]], ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kw", [{}, {"normalize": "none"}, {"connectivity_mode": "target",
                                                           "target": 0.5}])
def test_invalid_cloud_gets_no_gradient(kw):
    """An invalid cloud's loss is NaN; its gradient is zero, as the reference composition gives
    (its bars are masked), not what a tree built on NaN distances would give; the others are
    as on the CPU."""
    x = cloud(3, 12, 5, dtype=torch.float64)
    bad = x.clone()
    bad[1, 4, 2] = float("nan")
    xg2 = bad.cuda().requires_grad_(True)
    T.loss(xg2, reduction="none", **kw).sum().backward()  # a NaN sum: every cloud's grad is 1
    assert (xg2.grad[1] == 0).all()
    xc = x[[0, 2]].clone().requires_grad_(True)
    T.loss(xc, reduction="none", **kw).sum().backward()
    torch.testing.assert_close(xg2.grad[[0, 2]].cpu(), xc.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_gradient_of_float64_prompts_far_from_unit_scale(scale):
    """Weights over distances (~1/s^2) leave double's range here; the gradient must not."""
    x = cloud(2, 10, 4, dtype=torch.float64) * scale
    xc = x.clone().requires_grad_(True)
    T.loss(xc).backward()
    xg = x.cuda().requires_grad_(True)
    T.loss(xg).backward()
    assert torch.isfinite(xg.grad).all()
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-10, atol=0)


def test_gradient_with_a_subnormal_float64_distance():
    """Two points 1e-310 apart: 1/d overflows double, and Inf times a zero difference made both
    rows NaN; the CPU op scales such weights, so the two must still agree."""
    x = torch.tensor([[[0.0, 0.0], [1e-310, 0.0], [1.0, 0.5], [0.3, 2.0]]], dtype=torch.float64)
    xc = x.clone().requires_grad_(True)
    T.loss(xc).backward()
    xg = x.cuda().requires_grad_(True)
    T.loss(xg).backward()
    assert torch.isfinite(xc.grad).all() and torch.isfinite(xg.grad).all()
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-10, atol=1e-14)


def test_distances_summing_past_float64_are_valid():
    """Finite distances whose sum overflows: the CPU takes the cloud (valid diagrams, a NaN
    scale), so must the fused op (it once flagged a non-finite sum as invalid input)."""
    x = torch.tensor([[[0.0], [8e307], [-8e307]]], dtype=torch.float64)
    cpu = T.loss(x, reduction="none", return_terms=True)
    gpu = T.loss(x.cuda(), reduction="none", return_terms=True)
    assert int(gpu[1]["h1_count"][0]) == int(cpu[1]["h1_count"][0]) >= 0
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], equal_nan=True)


def _kernels(fn):
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    # cudaDeviceSynchronize is not counted: the synchronize above and the profiler's own exit
    # make one. A sync of ours would be a stream sync or a copy to the host (as CUB's was).
    syncs = [e.name for e in events
             if e.name == "cudaStreamSynchronize" or ("Memcpy" in e.name and "DtoH" in e.name)]
    return kernels, syncs


def test_launches_and_no_host_sync():
    x = cloud(64, 64, 256).cuda()
    xr = x.clone().requires_grad_()

    def step():
        xr.grad = None
        T.loss(xr).backward()

    engine, _ = _kernels(lambda: ops.vr_persistence(x, 1, False, 256))
    loss, syncs = _kernels(step)
    # Ours: the distance kernel (which the engine count above includes), the terms with the
    # batch's reduction in their last block, the two backward kernels; plus the autograd
    # engine's own seed of ones. Issue 19's budget of 8 counts every kernel the profiler sees;
    # it is the default engine's (the first one, which gpu_check's global_tests phase runs this
    # file on, launches 8 for the forward alone).
    ours = [e.name for e in loss if "FillFunctor" not in e.name]
    print(f"vr_persistence forward: {len(engine)} kernels; TSLoss forward+backward: {len(ours)} "
          f"and {len(loss) - len(ours)} seed fill(s)")
    default_engine = (os.environ.get("TSLOSS_CUDA_TOPOLOGY", "block") == "block"
                      and os.environ.get("TSLOSS_CUDA_REDUCE", "warp") == "warp")
    if default_engine:
        assert len(loss) <= 8, [e.name for e in loss]
    assert len(loss) <= len(engine) + 4, [e.name for e in loss]
    assert not syncs, syncs


def test_no_host_sync_past_cubs_segment_threshold():
    # 600 clouds in one launch: CUB's segmented sort reads group sizes back to the host above
    # 500 segments, so the engine sorts at most 256 clouds a call (h1_reduce.cu).
    x = cloud(600, 16, 8)
    xc = x.cuda()  # outside the profile: a copy from pageable memory synchronises
    _, syncs = _kernels(lambda: ops.vr_persistence(xc, 1, False, 16))
    assert not syncs, syncs
    got = T.vr_persistence(xc)
    want = T.vr_persistence(x)
    for a, b in ((got.h0, want.h0), (got.h1, want.h1), (got.h1_count, want.h1_count)):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=0)


def test_nan_cloud_rows_are_deterministic():
    # A NaN point makes NaN edges; the bars are placed by rank, which needs a strict order.
    x = cloud(4, 40, 6).cuda()
    x[2, 7, 1] = float("nan")
    runs = [ops.vr_persistence(x, 1, False, 40) for _ in range(3)]
    for r in runs[1:]:
        for a, b in zip(runs[0], r):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    h0_edges = runs[0][1]
    assert (h0_edges[2] >= 0).all()  # every row written (each a real tree edge)


def test_backward_refuses_a_tensor_on_another_device():
    # Any CUDA argument sends the call to the CUDA kernel; a CPU tensor among them would hand
    # it a host pointer.
    x = cloud(2, 10, 3).cuda()
    h0, h0_edges, h1, h1_edges, _, _ = ops.vr_persistence(x, 1, False, 8)
    with pytest.raises(RuntimeError, match=r"grad_h0 must be on x's device"):
        ops.vr_persistence_backward(torch.ones_like(h0).cpu(), torch.ones_like(h1), x,
                                    h0_edges, h1_edges, False)


def test_loss_ops_refuse_tensors_on_another_device():
    # The CUDA glue copied a host-side previous topology or gradient to the device: a blocking
    # copy in the training step that breaks CUDA-graph capture. It now refuses it, as
    # vr_persistence_backward does, and with x on the host and the topology on the device (the
    # dispatcher then picks the CUDA kernel) the error names the tensor too.
    from test_tsloss_op import _direct_calls
    x = cloud(2, 9, 4, dtype=torch.float64).cuda()
    forward, backward, (p0, p1) = _direct_calls(x)
    for name, call in (("tsloss_forward", forward), ("tsloss_backward", backward)):
        with pytest.raises(RuntimeError, match=rf"^{name}: prev_h0 must be on x's device cuda:0, got cpu"):
            call(p0.cpu(), p1.cpu())
        with pytest.raises(RuntimeError, match=rf"^{name}: prev_h1 must be on x's device cuda:0, got cpu"):
            call(p0, p1.cpu())
    with pytest.raises(RuntimeError, match=r"^tsloss_backward: an output gradient must be on x's device"):
        backward(p0, p1, grad=torch.ones((), dtype=x.dtype))
    xc = x.cpu()
    with pytest.raises(RuntimeError, match=r"^tsloss_forward: prev_h0 must be on x's device cpu, got cuda:0"):
        ops.tsloss_forward(xc, p0, p1, 1, 36, True, False, 0.0, 1.0, 1.0, 1.0, 0.5, 1)
    # The backward too: its check used to come after the device guard, which refused a CPU x
    # with c10's message instead.
    _, backward_cpu, (q0, q1) = _direct_calls(xc)
    with pytest.raises(RuntimeError, match=r"^tsloss_backward: prev_h0 must be on x's device cpu, got cuda:0"):
        backward_cpu(q0.cuda(), q1.cuda())


def test_loss_op_errors_name_loss_and_prompts():
    # As on the CPU: the user called tsloss_cuda.loss on prompts, not vr_persistence on x.
    bad = torch.zeros(3, 4, device="cuda")
    with pytest.raises(RuntimeError, match=r"^loss: prompts must be \(B, N, D\) points"):
        ops.tsloss_forward(bad, None, None, 1, 8, True, False, 0.0, 1.0, 1.0, 1.0, 0.0, 1)
    x = cloud(1, 4, 3).cuda()
    with pytest.raises(RuntimeError, match=r"^loss: max_h1 = "):
        ops.tsloss_forward(x.expand(4096, 4, 3), None, None, 1, 10 ** 7, True, False, 0.0, 1.0,
                           1.0, 1.0, 0.0, 1)


def test_empty_batch_reductions():
    x = torch.zeros(0, 5, 3, device="cuda")
    assert torch.isnan(T.loss(x)).item() and T.loss(x, reduction="sum").item() == 0


def test_cuda_graph_capture_and_replay():
    x = cloud(8, 32, 64).cuda()
    static = x.clone().requires_grad_()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):  # warm-up outside the capture (allocator, workspaces)
            static.grad = None
            T.loss(static).backward()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    static.grad = None
    with torch.cuda.graph(graph):
        value = T.loss(static)
        value.backward()
    new = cloud(8, 32, 64, seed=3).cuda()
    with torch.no_grad():
        static.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    xr = new.clone().requires_grad_()
    ref = T.loss(xr)
    ref.backward()
    torch.testing.assert_close(value, ref, rtol=0, atol=0)
    torch.testing.assert_close(static.grad, xr.grad, rtol=0, atol=0)
