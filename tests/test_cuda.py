"""CUDA kernels against the CPU engine; every test is skipped without a CUDA device.

H0 must match exactly (values and edges) when both engines read the same distance matrix;
H1 values match up to float rounding and the counts exactly. From points both engines sum the
distances in the canonical order (csrc/core/pairwise_distance.h), so their distances are equal
bit for bit: test_distance_slices_match_cpu here and test_cuda_tsloss.py's
test_distance_kernel_has_the_canonical_bits require that; test_families_match_cpu's
from-points diagrams are compared with a tolerance only.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tsloss_cuda  # noqa: F401  (registers the ops)
from cases import all_clouds, hard_clouds

ops = torch.ops.tsloss_cuda

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

K = 16


def _cpu_dist(x: torch.Tensor) -> torch.Tensor:
    return ops.pairwise_distance(x.cpu())


def _forward(x, distances, k=K):
    return ops.vr_persistence(x, 1, distances, k)


def _assert_same(cpu, gpu, exact: bool, rtol: float):
    h0c, e0c, h1c, e1c, nc, tc = [t.cpu() for t in cpu]
    h0g, e0g, h1g, e1g, ng, tg = [t.cpu() for t in gpu]
    assert torch.equal(nc, ng), (nc, ng)
    assert torch.equal(tc, tg)
    if exact:
        assert torch.equal(h0c, h0g)
        assert torch.equal(e0c, e0g)
        assert torch.equal(e1c, e1g)
    else:
        torch.testing.assert_close(h0g, h0c, rtol=rtol, atol=rtol)
    torch.testing.assert_close(h1g, h1c, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,idx,cloud", list(all_clouds()), ids=lambda v: str(v) if not isinstance(v, np.ndarray) else "")
def test_families_match_cpu(name, idx, cloud, dtype):
    x = torch.as_tensor(cloud, dtype=dtype)[None]
    d = _cpu_dist(x)
    cpu = _forward(d, True)
    gpu = _forward(d.cuda(), True)
    _assert_same(cpu, gpu, exact=True, rtol=1e-6 if dtype == torch.float32 else 1e-12)
    # From points: H1 counts and values still agree; H0 values to rounding.
    cpu_p = _forward(x, False)
    gpu_p = _forward(x.cuda(), False)
    torch.testing.assert_close(gpu_p[0].cpu(), cpu_p[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(gpu_p[4].cpu(), cpu_p[4]), (gpu_p[4], cpu_p[4])
    torch.testing.assert_close(gpu_p[2].cpu(), cpu_p[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("B,N,D", [(1, 64, 32), (64, 64, 16), (256, 128, 8), (1024, 256, 4)])
def test_random_batches_match_cpu(B, N, D):
    g = torch.Generator().manual_seed(B * 1000 + N)
    x = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    d = _cpu_dist(x)
    _assert_same(_forward(d, True), _forward(d.cuda(), True), exact=True, rtol=1e-12)


def test_float32_random_batch_matches_cpu():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(128, 96, 12, generator=g, dtype=torch.float32)
    d = _cpu_dist(x)
    _assert_same(_forward(d, True), _forward(d.cuda(), True), exact=True, rtol=1e-6)


def test_pairwise_distance_matches_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 100, 300, generator=g, dtype=torch.float64)
    ref = torch.cdist(x, x)
    ref.diagonal(dim1=1, dim2=2).zero_()
    out = ops.pairwise_distance(x.cuda()).cpu()
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-9)
    out32 = ops.pairwise_distance(x.float().cuda()).cpu().double()
    torch.testing.assert_close(out32, ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(out32, out32.transpose(1, 2))


def test_pairwise_distance_backward_is_accurate_for_close_pairs():
    # A pair 1e-4 apart in a cloud far from the origin: w ~ 1/d is largest on that pair, where
    # the Gram form rowsum(w) x - w x loses ~1e-2 relative in float32. CUDA runs the composite.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 64, 768, generator=g, dtype=torch.float64)
    x[:, 1] = x[:, 0] + 1e-4 / 27 * torch.randn(3, 768, generator=g, dtype=torch.float64)
    x = (x + 1e4).float()
    grad = torch.randn(3, 64, 64, generator=g)
    xd = x.double()
    ref = ops.pairwise_distance_backward(grad.double(), xd, ops.pairwise_distance(xd))
    xc = x.cuda()
    out = ops.pairwise_distance_backward(grad.cuda(), xc, ops.pairwise_distance(xc)).cpu()
    assert (out.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_maxdim0_and_tiny():
    for n in (0, 1, 2, 3):
        x = torch.randn(3, n, 2, dtype=torch.float64)
        for maxdim in (0, 1):
            cpu = ops.vr_persistence(x, maxdim, False, 4)
            gpu = ops.vr_persistence(x.cuda(), maxdim, False, 4)
            for a, b in zip(cpu, gpu):
                assert a.shape == b.shape
            _assert_same(cpu, gpu, exact=False, rtol=1e-12)


def test_no_sync_during_forward_and_backward():
    x = torch.randn(16, 48, 8, device="cuda", dtype=torch.float64, requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        h0, _, h1, _, _, _ = ops.vr_persistence(x, 1, False, 8)
        (h0[..., 1].sum() + (h1[..., 1] - h1[..., 0]).sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert x.grad is not None


def test_non_default_stream_and_determinism():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(64, 80, 6, generator=g, dtype=torch.float32).cuda()
    ref = ops.vr_persistence(x, 1, False, K)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        outs = [ops.vr_persistence(x, 1, False, K) for _ in range(3)]
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    for out in outs:
        for a, b in zip(ref, out):
            assert torch.equal(a, b)


@pytest.mark.parametrize("distances", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_matches_cpu(distances, dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 40, 5, generator=g, dtype=dtype)
    if distances:
        x = _cpu_dist(x)
    _, e0, _, e1, _, _ = ops.vr_persistence(x, 1, distances, 8)
    g0 = torch.randn(e0.shape[:-1] + (2,), generator=g, dtype=dtype)
    g1 = torch.randn(e1.shape[:-1] + (2,), generator=g, dtype=dtype)
    cpu = ops.vr_persistence_backward(g0, g1, x, e0, e1, distances)
    gpu = ops.vr_persistence_backward(g0.cuda(), g1.cuda(), x.cuda(), e0.cuda(), e1.cuda(), distances)
    assert torch.equal(gpu.cpu(), cpu)
    again = ops.vr_persistence_backward(g0.cuda(), g1.cuda(), x.cuda(), e0.cuda(), e1.cuda(), distances)
    assert torch.equal(gpu, again)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matrix_symmetric_up_to_rounding_reads_the_upper_triangle(dtype):
    # As the CPU (and ripser.py, giotto-ph) read it: every upper entry nudged up by 5e-5
    # relative, within the accepted asymmetry, so a lower-triangle reading gives other values.
    g = torch.Generator().manual_seed(6)
    d = _cpu_dist(torch.randn(4, 30, 3, generator=g, dtype=dtype))
    d = d + torch.triu(d, 1) * 5e-5
    cpu = _forward(d, True)
    _assert_same(cpu, _forward(d.cuda(), True), exact=True, rtol=0)
    e0, e1 = cpu[1], cpu[3]
    g0 = torch.randn(e0.shape[:-1] + (2,), generator=g, dtype=dtype)
    g1 = torch.randn(e1.shape[:-1] + (2,), generator=g, dtype=dtype)
    grad = ops.vr_persistence_backward(g0.cuda(), g1.cuda(), d.cuda(), e0.cuda(), e1.cuda(), True)
    assert torch.count_nonzero(torch.tril(grad)) == 0
    assert torch.equal(grad.cpu(), ops.vr_persistence_backward(g0, g1, d, e0, e1, True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_negative_zero_entries_read_as_zero_on_cuda(dtype):
    # Duplicated points at distance -0 (both triangles): +0 on both devices, so no -0 death.
    pts = torch.tensor([[[0.0], [0.0], [1.0], [3.0]]], dtype=dtype)
    d = _cpu_dist(pts)
    d[0, 0, 1] = d[0, 1, 0] = -0.0
    cpu, gpu = _forward(d, True), _forward(d.cuda(), True)
    _assert_same(cpu, gpu, exact=True, rtol=0)
    assert not torch.signbit(gpu[0]).any() and not torch.signbit(cpu[0]).any()


def test_invalid_input_is_flagged_not_raised():
    # No host check on CUDA: the bad cloud gets NaN values and count -2, the others are exact.
    x = torch.randn(3, 10, 4, device="cuda")
    x[1, 2, 3] = float("nan")
    dg = tsloss_cuda.vr_persistence(x)
    assert dg.h1_count.tolist()[1] == tsloss_cuda.persistence.INVALID_INPUT
    assert torch.isnan(dg.h0[1]).all() and torch.isfinite(dg.h0[[0, 2]]).all()
    assert torch.isnan(tsloss_cuda.loss(x, reduction="none")[1])
    with pytest.raises(RuntimeError, match="invalid input"):
        dg.to_numpy()


@pytest.mark.parametrize("block", [False, True])
def test_overflowing_distances_of_finite_points_are_flagged(block, monkeypatch):
    """Finite points whose distance overflows the dtype: the CPU raises; CUDA, which does not
    check on the host, must flag the cloud (count -2, NaN values), the clouds beside it exact."""
    monkeypatch.setenv("TSLOSS_CUDA_TOPOLOGY", "block" if block else "global")
    monkeypatch.setenv("TSLOSS_CUDA_REDUCE", "warp" if block else "thread")
    for dtype, big in ((torch.float64, 1e308), (torch.float32, 3e38)):
        g = torch.Generator().manual_seed(5)
        x = torch.randn(3, 12, 4, generator=g, dtype=dtype)
        x[1, 0, 0], x[1, 5, 0] = big, -big
        with pytest.raises(RuntimeError, match="range|overflows"):
            tsloss_cuda.vr_persistence(x)
        dg = tsloss_cuda.vr_persistence(x.cuda())
        ref = tsloss_cuda.vr_persistence(x[[0, 2]])
        assert dg.h1_count.tolist()[1] == tsloss_cuda.persistence.INVALID_INPUT
        assert torch.isnan(dg.h0[1]).all()
        assert torch.equal(dg.h0[[0, 2]].cpu(), ref.h0) and torch.equal(dg.h1[[0, 2]].cpu(), ref.h1)
        assert torch.isnan(tsloss_cuda.loss(x.cuda(), reduction="none")[1])


@pytest.mark.parametrize("name, value", [("TSLOSS_CUDA_TOPOLOGY", "Block"),
                                         ("TSLOSS_CUDA_REDUCE", "warps")])
def test_misspelt_engine_switch_is_refused(name, value, monkeypatch):
    """A switch with an unknown value names itself and its values, rather than running the
    default engine it may have meant to avoid."""
    monkeypatch.setenv(name, value)
    x = torch.randn(2, 8, 3, device="cuda")
    with pytest.raises(RuntimeError, match=f"{name} must be .* or .*, got '{value}'"):
        tsloss_cuda.vr_persistence(x)
    with pytest.raises(RuntimeError, match=name):
        tsloss_cuda.loss(x)


@pytest.mark.parametrize("warps", ["2", "5", "9", "16", "0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_reduction_matches_cpu(warps, dtype, monkeypatch):
    """TSLOSS_CUDA_REDUCE_WARPS: a block of warps per cloud committing columns in order
    (core/h1_reduce_block.h; 0 picks the count from B) gives the CPU engine's pairs exactly
    (9 warps: the first count whose shared memory, static included, passes the 48 KB a kernel
    gets unasked),
    on Gaussian batches of 1 to 64 clouds and on tie-heavy clouds whose sets grow from the
    pool. No other test runs the block kernel on a device."""
    monkeypatch.setenv("TSLOSS_CUDA_TOPOLOGY", "block")
    monkeypatch.setenv("TSLOSS_CUDA_REDUCE", "warp")
    monkeypatch.setenv("TSLOSS_CUDA_REDUCE_WARPS", warps)
    monkeypatch.setenv("TSLOSS_CUDA_H1_HEAP", str(1 << 17))  # the capacity is not under test
    g = torch.Generator().manual_seed(int(warps) + 40)
    batches = [torch.randn(b, n, d, generator=g, dtype=dtype)
               for n, d, b in ((16, 768, 1), (64, 4096, 1), (64, 32, 3), (100, 8, 64),
                               (256, 64, 2))]
    batches += [torch.as_tensor(c, dtype=dtype)[None] for _, c in list(hard_clouds())[:4]]
    for x in batches:
        d = _cpu_dist(x)
        k = 4 * x.shape[1]
        cpu = ops.vr_persistence(d, 1, True, k)
        gpu = ops.vr_persistence(d.cuda(), 1, True, k)
        assert int(cpu[4].sum()) > 0  # H1 bars exist, so the reduction did work
        _assert_same(cpu, gpu, exact=True, rtol=0.0)
    # The setting reaches the block kernel (one cloud: the automatic count is a block too).
    d = _cpu_dist(batches[0]).cuda()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        ops.vr_persistence(d, 1, True, 64)
        torch.cuda.synchronize()
    assert any("reduce_block_kernel" in e.name for e in prof.events())


@pytest.mark.parametrize("name, value",
                         [("TSLOSS_CUDA_REDUCE_WARPS", v) for v in ("17", "-1", "four", " 5", "+5")]
                         + [("TSLOSS_CUDA_DISTANCE_SLICES", v)
                            for v in ("65", "-1", "auto", " 2", "+2")])
def test_count_setting_is_checked(name, value, monkeypatch):
    """A count setting (warps per cloud, distance slices) out of range or unreadable names
    itself, in every op that reads the engine's settings."""
    monkeypatch.setenv(name, value)
    x = torch.randn(1, 8, 300, device="cuda")
    for op in (tsloss_cuda.vr_persistence, ops.pairwise_distance, tsloss_cuda.loss):
        with pytest.raises(RuntimeError, match=f"{name} must be 0"):
            op(x)


def _slice_clouds() -> list[torch.Tensor]:
    """float32 batches the distance kernel splits: 1 and 3 tiles, D past whole chunks, repeated
    points and a far cluster (blocks that sum again canonically), a batch of 3."""
    g = torch.Generator().manual_seed(61)
    xs = [torch.randn(b, n, d, generator=g) for b, n, d in
          ((1, 64, 4096), (1, 64, 4136), (2, 33, 200), (3, 16, 768), (1, 100, 1000))]
    dup = torch.randn(1, 40, 700, generator=g)
    dup[:, 1::3] = dup[:, 0:-1:3]
    far = torch.randn(1, 40, 300, generator=g) + 1e4
    return xs + [dup, far]


@pytest.mark.parametrize("slices", ["0", "2", "7", "64"])
def test_distance_slices_match_cpu(slices, monkeypatch):
    """TSLOSS_CUDA_DISTANCE_SLICES: each distance tile's coordinates summed over several blocks
    that a grid barrier joins (pairwise_distance_kernel.cuh) gives the CPU's distances bit for
    bit, and the same diagrams and TSLoss value and gradient as the one-block kernel."""
    for x in _slice_clouds():
        xc = x.cuda()
        monkeypatch.setenv("TSLOSS_CUDA_DISTANCE_SLICES", slices)
        d = ops.pairwise_distance(xc)
        split = [t.cpu() for t in ops.vr_persistence(xc, 1, False, K)]
        xg = xc.clone().requires_grad_(True)
        value = tsloss_cuda.loss(xg)
        value.backward()
        monkeypatch.setenv("TSLOSS_CUDA_DISTANCE_SLICES", "1")
        assert torch.equal(d.cpu(), _cpu_dist(x)), x.shape
        whole = [t.cpu() for t in ops.vr_persistence(xc, 1, False, K)]
        _assert_same(whole, split, exact=True, rtol=0.0)
        xw = xc.clone().requires_grad_(True)
        ref = tsloss_cuda.loss(xw)
        ref.backward()
        assert torch.equal(value, ref) and torch.equal(xg.grad, xw.grad), x.shape
    # The setting reaches the split kernel: one cloud of 64 points in 4,096 dimensions splits.
    monkeypatch.setenv("TSLOSS_CUDA_DISTANCE_SLICES", slices)
    x = _slice_clouds()[0].cuda()
    for op in (ops.pairwise_distance, lambda x: ops.vr_persistence(x, 1, False, K),
               tsloss_cuda.loss):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            op(x)
            torch.cuda.synchronize()
        names = [e.name for e in prof.events()]
        assert any("pairwise_distance_split_kernel" in n for n in names), names


def test_distance_slices_in_chunked_launches(monkeypatch):
    """A batch that vr_persistence runs as several launches (a 1 MB workspace budget) splits
    each launch's distances with the workspace sized for the first: the same diagrams."""
    g = torch.Generator().manual_seed(62)
    x = torch.randn(5, 64, 300, generator=g).cuda()
    monkeypatch.setenv("TSLOSS_CUDA_WORKSPACE_MB", "1")
    monkeypatch.setenv("TSLOSS_CUDA_DISTANCE_SLICES", "1")
    whole = [t.cpu() for t in ops.vr_persistence(x, 1, False, K)]
    monkeypatch.setenv("TSLOSS_CUDA_DISTANCE_SLICES", "0")
    split = [t.cpu() for t in ops.vr_persistence(x, 1, False, K)]
    _assert_same(whole, split, exact=True, rtol=0.0)
    cpu = ops.vr_persistence(x.cpu(), 1, False, K)
    _assert_same(cpu, split, exact=True, rtol=0.0)


def test_warp_reduction_grows_from_its_pool(monkeypatch):
    """The warp reduction's arrays grow from a pool the launch shares: a bare regular 512-gon,
    whose working set peaks at 215 k entries (the default heap is 65 k per cloud), comes out
    exact under the default capacities, alone and beside Gaussian clouds."""
    monkeypatch.setenv("TSLOSS_CUDA_TOPOLOGY", "block")
    monkeypatch.setenv("TSLOSS_CUDA_REDUCE", "warp")
    t = torch.arange(512, dtype=torch.float64) * (2 * np.pi / 512)
    ring = torch.stack([t.cos(), t.sin(), torch.zeros_like(t)], 1)
    g = torch.Generator().manual_seed(8)
    x = torch.stack([ring, torch.randn(512, 3, generator=g, dtype=torch.float64)])
    d = _cpu_dist(x)
    k = 4 * 512
    cpu = ops.vr_persistence(d, 1, True, k)
    for batch in (d[:1], d):
        gpu = ops.vr_persistence(batch.cuda(), 1, True, k)
        ref = [t[: len(batch)] for t in cpu]
        assert int(gpu[4][0]) == int(ref[4][0]) > 0
        _assert_same(ref, gpu, exact=True, rtol=0.0)


def test_invalid_distance_matrices_end_and_are_flagged():
    """Matrices the CPU refuses (a few NaN entries, negative entries) run on CUDA unchecked:
    they must end (the warp reduction once looped forever on negative ones) and come back
    flagged, the valid cloud beside them exact."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 40, 5, generator=g, dtype=torch.float64)
    d = ops.pairwise_distance(x)
    d[0, 7, 3] = d[0, 3, 7] = float("nan")
    d[0, 20, 11] = d[0, 11, 20] = float("nan")
    d[2] = torch.round(8 * (d[2] - 2)) / 8  # about half the entries negative, in eighths
    d[2].fill_diagonal_(0)
    dg = tsloss_cuda.vr_persistence(d.cuda(), distances=True)
    assert dg.h1_count.tolist()[0] == dg.h1_count.tolist()[2] == tsloss_cuda.persistence.INVALID_INPUT
    ref = tsloss_cuda.vr_persistence(d[1:2], distances=True)
    assert int(dg.h1_count[1]) == int(ref.h1_count[0])
    assert torch.equal(dg.h1[1].cpu(), ref.h1[0]) and torch.equal(dg.h0[1].cpu(), ref.h0[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_and_gradient_match_cpu(dtype):
    g = torch.Generator().manual_seed(21)
    x = torch.randn(6, 24, 32, generator=g, dtype=dtype)
    prev = None
    for step in range(2):  # the second call exercises the stability term against `previous`
        kw = dict(stability=0.5, previous=prev, return_terms=True)
        xc = x.clone().requires_grad_(True)
        xg = x.cuda().requires_grad_(True)
        vc, tc = tsloss_cuda.loss(xc, **kw)
        vg, tg = tsloss_cuda.loss(xg, **{**kw, "previous": None if prev is None else
                                         type(prev)(*[t.cuda() for t in prev])})
        vc.backward()
        vg.backward()
        tol = 1e-5 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(vg.cpu(), vc, rtol=tol, atol=tol)
        torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=tol, atol=tol)
        assert torch.equal(tg["h1_count"].cpu(), tc["h1_count"])
        prev = tc["topology"]
        x = x + 0.05 * torch.randn(x.shape, generator=g, dtype=dtype)


def test_gradient_of_far_scaled_float64_edges():
    """As the CPU (tests/test_inputs.py), bit for bit: subnormal edge lengths, and weights whose
    g / length leaves the normal range, get g times the unit vector, not +-Inf, NaN or 0."""
    cases = [(1e-310, 0.0, 1.0), (5e-324, 0.0, 1.0), (1e-320, 1.0, 1.0), (3e-320, 1 / 3, 1.0),
             (3e300, 4 / 3, 1e-30), (3e-270, 4 / 3, 1e40), (6e-311, 4 / 3, 1e300),
             (6e307, 4 / 3, 1e-318)]
    for gap, slope, weight in cases:
        grads = []
        for device in ("cpu", "cuda"):
            x = torch.tensor([[0.0, 0.0], [gap, gap * slope]], dtype=torch.float64,
                             device=device, requires_grad=True)
            (tsloss_cuda.vr_persistence(x).h0[..., 1].sum() * weight).backward()
            grads.append(x.grad.cpu())
        assert torch.isfinite(grads[0]).all() and torch.equal(grads[0], grads[1]), (gap, grads)


def test_training_step_has_no_host_sync():
    # A whole TSLoss step (forward, backward, optimizer) under sync-debug "error": any .item(),
    # .cpu() or data-dependent host branch on the loss path raises.
    torch.manual_seed(0)
    prompt = torch.nn.Parameter(torch.randn(4, 32, 256, device="cuda"))
    opt = torch.optim.Adam([prompt], lr=1e-2, capturable=True)
    ts = tsloss_cuda.TSLoss(stability=0.1)
    for _ in range(2):  # warm-up: lazy initialisation may sync once
        opt.zero_grad(set_to_none=True)
        ts(prompt).backward()
        opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            v = ts(prompt)
            v.backward()
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(v).item() and torch.isfinite(prompt).all().item()


@pytest.mark.parametrize("slices, shape", [("1", (8, 32, 64)), ("0", (1, 64, 512))])
def test_cuda_graph_replay_equals_eager(slices, shape, monkeypatch):
    # Forward+backward of the loss captured once, replayed on new inputs: no host sync or
    # allocation outside the graph's pool may happen inside, and replays must equal eager. The
    # second case captures the split distance kernel's cooperative launch.
    monkeypatch.setenv("TSLOSS_CUDA_DISTANCE_SLICES", slices)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g).cuda().requires_grad_(True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            x.grad = None
            tsloss_cuda.loss(x).backward()
    torch.cuda.current_stream().wait_stream(side)
    x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        value = tsloss_cuda.loss(x)
        value.backward()
    if slices == "0":  # the captured graph holds the split kernel
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            graph.replay()
            torch.cuda.synchronize()
        assert any("pairwise_distance_split_kernel" in e.name for e in prof.events())
    for _ in range(3):
        new = torch.randn(shape, generator=g).cuda()
        with torch.no_grad():
            x.copy_(new)
        graph.replay()
        ref = new.clone().requires_grad_(True)
        ref_value = tsloss_cuda.loss(ref)
        ref_value.backward()
        torch.cuda.synchronize()
        assert torch.equal(value, ref_value)
        assert torch.equal(x.grad, ref.grad)


@pytest.mark.parametrize("per_warp", ["1", "3", "32"])
def test_reduce_mapping_does_not_change_results(monkeypatch, per_warp):
    """The reduce kernel's clouds-per-warp mapping (automatic, or the tuning knob) is invisible."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(37, 24, 16, generator=g).cuda()  # 37: a partial last warp for every mapping
    auto = [t.cpu() for t in _forward(x, False)]
    monkeypatch.setenv("TSLOSS_CUDA_REDUCE_CLOUDS_PER_WARP", per_warp)
    mapped = [t.cpu() for t in _forward(x, False)]
    for a, b in zip(auto, mapped):
        assert torch.equal(a, b)
    monkeypatch.setenv("TSLOSS_CUDA_REDUCE_CLOUDS_PER_WARP", "33")
    with pytest.raises(RuntimeError, match="TSLOSS_CUDA_REDUCE_CLOUDS_PER_WARP"):
        _forward(x, False)



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,cloud", list(hard_clouds()), ids=lambda v: v if isinstance(v, str) else "")
def test_tie_heavy_clouds_match_cpu(monkeypatch, name, cloud, dtype):
    """Clouds whose H1 working set runs to thousands of entries (the warp reduction's sorted
    runs, merges and compaction all run; gpu_check.sh's global_tests phase reruns this file on
    the first engine, TSLOSS_CUDA_TOPOLOGY=global TSLOSS_CUDA_REDUCE=thread) give the CPU engine's
    pairs exactly."""
    monkeypatch.setenv("TSLOSS_CUDA_H1_HEAP", str(1 << 17))  # the capacity is not under test
    x = torch.as_tensor(cloud, dtype=dtype)[None]
    d = _cpu_dist(x)
    k = 4 * x.shape[1]
    cpu = ops.vr_persistence(d, 1, True, k)
    gpu = ops.vr_persistence(d.cuda(), 1, True, k)
    assert int(cpu[4]) > 0  # H1 bars exist, so the reduction did work
    _assert_same(cpu, gpu, exact=True, rtol=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clouds_past_1024_points_match_cpu(dtype):
    """N = 1300: Prim's kernel gives each thread several vertices past 1024, and the topology
    kernel (TSLOSS_CUDA_TOPOLOGY=block, the default) keeps its state in global scratch
    instead of shared memory past ~1190 points; no other test reaches either path."""
    g = torch.Generator().manual_seed(1300)
    x = torch.randn(2, 1300, 3, generator=g, dtype=dtype)
    d = _cpu_dist(x)
    cpu = ops.vr_persistence(d, 1, True, 1024)
    gpu = ops.vr_persistence(d.cuda(), 1, True, 1024)
    assert (cpu[4] > 0).all() and not cpu[5].any()  # H1 bars, none cut off
    _assert_same(cpu, gpu, exact=True, rtol=0.0)


@pytest.mark.parametrize("distances", [False, True])
def test_forward_mode_and_torch_func_on_cuda(distances):
    """jacfwd (bars rebuilt from their edges in tensor ops) and the op's reverse Jacobian on
    CUDA agree, and with the CPU's; the values stay the op's."""
    import tsloss_cuda as T
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 10, 3, dtype=torch.float64, generator=g)
    if distances:
        x = T.pairwise_distance(x)

    def bars(t):
        dg = T.vr_persistence(t, distances=distances)
        return torch.cat([dg.h0.flatten(1), dg.h1.flatten(1)], 1)
    xc = x.cuda()
    fwd = torch.func.jacfwd(bars)(xc)
    rev = torch.autograd.functional.jacobian(bars, xc)
    assert rev.abs().sum() > 1
    torch.testing.assert_close(fwd, rev, rtol=0, atol=1e-12)
    torch.testing.assert_close(fwd.cpu(), torch.func.jacfwd(bars)(x), rtol=0, atol=1e-12)
    assert torch.equal(torch.func.jvp(bars, (xc,), (torch.ones_like(xc),))[0], bars(xc))
