"""The GPU engine's warp kernels, run on the CPU through the host warp emulation
(``tsloss_cuda::vr_persistence_emulated``), equal the CPU engine bit for bit on every test
family, from points and from distances, and the TSLOSS_ENGINE=emulated switch routes
:func:`tsloss_cuda.vr_persistence` through them (with gradients).

The whole ripser.py-parity and loss suites run through the emulated kernels with
``TSLOSS_ENGINE=emulated python -m pytest -q tests/test_engine.py tests/test_loss.py``.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import tsloss_cuda
from cases import all_clouds, hard_clouds
from tsloss_cuda import _emulated  # the TSLOSS_ENGINE switch's module, spied on below

ops = torch.ops.tsloss_cuda

CLOUDS = list(all_clouds())
IDS = [f"{name}-{idx}" for name, idx, _ in CLOUDS]


def _same(a, b):
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        if x.is_floating_point():  # bits, not values: -0.0 and NaN payloads would show
            assert torch.equal(x.view(torch.int64 if x.dtype == torch.float64 else torch.int32),
                               y.view(torch.int64 if y.dtype == torch.float64 else torch.int32))
        else:
            assert torch.equal(x, y)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,idx,cloud", CLOUDS, ids=IDS)
def test_emulated_equals_cpu(name, idx, cloud, dtype):
    x = torch.as_tensor(cloud, dtype=dtype)[None]
    k = 4 * max(x.shape[1], 2)
    _same(ops.vr_persistence_emulated(x, 1, False, k), ops.vr_persistence(x, 1, False, k))
    d = ops.pairwise_distance(x)
    _same(ops.vr_persistence_emulated(d, 1, True, k), ops.vr_persistence(d, 1, True, k))
    _same(ops.vr_persistence_emulated(x, 0, False, k), ops.vr_persistence(x, 0, False, k))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,cloud", list(hard_clouds()), ids=lambda v: v if isinstance(v, str) else "")
def test_emulated_equals_cpu_on_tie_heavy_clouds(name, cloud, dtype):
    """Working sets of thousands of entries: the warp reduction seals its tail into sorted runs
    and merges them (csrc/core/h1_reduce_warp.h), with the CPU engine's bits."""
    x = torch.as_tensor(cloud, dtype=dtype)[None]
    d = ops.pairwise_distance(x)
    k = 4 * x.shape[1]
    out = ops.vr_persistence_emulated(d, 1, True, k)
    assert int(out[4]) > 0
    _same(out, ops.vr_persistence(d, 1, True, k))


def test_switch_routes_through_emulation(monkeypatch):
    calls = []
    real = ops.vr_persistence_emulated

    def spy(*args):
        calls.append(args[1:])
        return real(*args)

    monkeypatch.setattr(_emulated, "op", spy)
    monkeypatch.setenv("TSLOSS_ENGINE", "emulated")
    x = torch.randn(3, 20, 5, dtype=torch.float64, requires_grad=True)
    dg = tsloss_cuda.vr_persistence(x)
    assert calls == [(1, False, 80)]
    (dg.h0.sum() + dg.h1.sum()).backward()
    monkeypatch.delenv("TSLOSS_ENGINE")
    x2 = x.detach().clone().requires_grad_(True)
    ref = tsloss_cuda.vr_persistence(x2)
    (ref.h0.sum() + ref.h1.sum()).backward()
    assert len(calls) == 1
    assert torch.equal(x.grad, x2.grad)


def test_emulated_errors_match_cpu():
    bad = torch.zeros(1, 4, 4)
    bad[0, 2, 1] = -1.0
    bad[0, 1, 2] = -1.0
    for op in (ops.vr_persistence, ops.vr_persistence_emulated):
        with pytest.raises(RuntimeError, match="negative entry"):
            op(bad, 1, True, 8)
    x = torch.randn(1, 5, 3)
    x[0, 2, 1] = float("nan")
    for op in (ops.vr_persistence, ops.vr_persistence_emulated):
        with pytest.raises(RuntimeError, match="NaN or Inf"):
            op(x, 1, False, 8)


@pytest.mark.parametrize("value", ["-1", "1e6", "abc", "18446744073709551615", str(2**40 + 1)])
def test_bad_pool_setting_is_an_error_naming_it(monkeypatch, value):
    """strtoull read these silently: -1 and 2^64 - 1 as sizes that wrapped to an empty pool
    (every cloud reported -1, as if the device had run out), 1e6 as 1 byte, abc as 0."""
    t = 2 * np.pi * np.arange(40) / 40
    x = torch.as_tensor(np.stack([np.cos(t), np.sin(t)], 1))[None]
    monkeypatch.setenv("TSLOSS_EMULATED_POOL_BYTES", value)
    with pytest.raises(Exception, match="TSLOSS_EMULATED_POOL_BYTES must be a whole number"):
        ops.vr_persistence_emulated(x, 1, False, 160)
    monkeypatch.setenv("TSLOSS_EMULATED_POOL_BYTES", "4000000")  # a pool this cloud fits in
    _same(ops.vr_persistence_emulated(x, 1, False, 160), ops.vr_persistence(x, 1, False, 160))


def test_opcheck_emulated():
    from torch.library import opcheck
    x = torch.randn(2, 12, 3, dtype=torch.float64, requires_grad=True)
    opcheck(ops.vr_persistence_emulated.default, (x, 1, False, 48))
    opcheck(ops.vr_persistence_emulated.default, (x, 0, False, 48))
    d = ops.pairwise_distance(x.detach()).requires_grad_(True)
    opcheck(ops.vr_persistence_emulated.default, (d, 1, True, 48))


def test_emulated_op_is_complete_once_the_package_is_imported():
    """Its fake kernel and autograd were registered by tsloss_cuda._emulated, imported only by
    the TSLOSS_ENGINE switch: opcheck of the op failed in a session that had not used it."""
    code = ("import sys, torch, tsloss_cuda\n"
            "torch.library.opcheck(torch.ops.tsloss_cuda.vr_persistence_emulated.default,\n"
            "                      (torch.randn(2, 8, 3, requires_grad=True), 1, False, 32))\n"
            "assert 'tsloss_cuda._emulated' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@pytest.mark.parametrize("value", ["Emulated", "emulated ", "emulate", "cpu"])
def test_a_misspelt_engine_switch_is_refused(monkeypatch, value):
    """Any value but unset, empty or "emulated" ran the CPU engine unsaid: a suite meant for
    the emulation passed without running it."""
    monkeypatch.setenv("TSLOSS_ENGINE", value)
    x = torch.randn(2, 6, 3)
    for call in (lambda: tsloss_cuda.vr_persistence(x), lambda: tsloss_cuda.loss(x)):
        with pytest.raises((ValueError, RuntimeError),
                           match="TSLOSS_ENGINE must be unset, empty or 'emulated', got"):
            call()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_switch_routes_fused_loss_through_emulation(monkeypatch, dtype):
    # The fused TSLoss op reads the switch in C++; the emulation's cloud count shows it ran, and
    # the loss, its terms and the gradient are the CPU engine's bits.
    from tsloss_cuda import _C
    torch.manual_seed(3)
    x = torch.randn(5, 24, 6, dtype=dtype)
    kw = dict(stability=0.5, previous=None, return_terms=True)
    results = []
    for engine in ("emulated", ""):
        monkeypatch.setenv("TSLOSS_ENGINE", engine)
        before = _C.emulated_clouds()
        xi = x.clone().requires_grad_(True)
        loss, terms = tsloss_cuda.loss(xi, **kw)
        loss.backward()
        results.append((before, _C.emulated_clouds(), loss.detach(), terms, xi.grad))
    (b0, a0, l0, t0, g0), (b1, a1, l1, t1, g1) = results
    assert a0 - b0 == 5 and a1 == b1
    assert torch.equal(l0, l1) and torch.equal(g0, g1)
    assert t0.keys() == t1.keys()
    for k in t0:
        pairs = zip(t0[k], t1[k]) if k == "topology" else [(t0[k], t1[k])]
        assert all(torch.equal(a, b) for a, b in pairs), k


@pytest.mark.parametrize("warps", ["3", "16"])
def test_block_reduction_through_the_ops(monkeypatch, warps):
    """TSLOSS_EMULATED_REDUCE_WARPS: the emulated op reduces H1 on a block of warps
    (block_reduce, the kernel TSLOSS_CUDA_REDUCE_WARPS runs) with the CPU engine's bits, on a
    batch with ties (a ring) and Gaussian clouds."""
    t = 2 * np.pi * np.arange(40) / 40
    ring = torch.as_tensor(np.stack([np.cos(t), np.sin(t), 0 * t], 1))
    x = torch.cat([ring[None], torch.randn(3, 40, 3, generator=torch.Generator().manual_seed(3),
                                           dtype=torch.float64)])
    from tsloss_cuda import _C
    before = _C.emulated_block_reductions()
    ops.vr_persistence_emulated(x, 1, False, 160)
    assert _C.emulated_block_reductions() == before  # one warp unless asked
    monkeypatch.setenv("TSLOSS_EMULATED_REDUCE_WARPS", warps)
    out = ops.vr_persistence_emulated(x, 1, False, 160)
    assert _C.emulated_block_reductions() == before + 4  # every cloud on a block
    assert int(out[4].sum()) > 0
    _same(out, ops.vr_persistence(x, 1, False, 160))


@pytest.mark.parametrize("value", ["0", "17", "x", "-2", "100"])
def test_bad_reduce_warps_setting_is_an_error_naming_it(monkeypatch, value):
    monkeypatch.setenv("TSLOSS_EMULATED_REDUCE_WARPS", value)
    x = torch.randn(1, 12, 3, dtype=torch.float64)
    with pytest.raises(Exception, match="TSLOSS_EMULATED_REDUCE_WARPS must be 1..16"):
        ops.vr_persistence_emulated(x, 1, False, 48)


def test_a_cloud_past_the_pool_is_flagged_and_to_numpy_refuses_it(monkeypatch):
    """A cloud whose H1 outgrew the device pool has h1_count -1 (H1_OVERFLOW): its H1 rows are
    padding, and to_numpy raises rather than return them as bars."""
    from tsloss_cuda.persistence import H1_OVERFLOW
    t = 2 * np.pi * np.arange(100) / 100
    ring = torch.as_tensor(np.stack([np.cos(t), np.sin(t)], 1))[None]
    monkeypatch.setenv("TSLOSS_ENGINE", "emulated")
    monkeypatch.setenv("TSLOSS_EMULATED_POOL_BYTES", "24576")
    dg = tsloss_cuda.vr_persistence(ring)
    assert dg.h1_count.tolist() == [H1_OVERFLOW] and dg.truncated.tolist() == [True]
    assert torch.equal(dg.h1, torch.zeros_like(dg.h1))
    with pytest.raises(RuntimeError, match=r"H1 of clouds \[0\] overflowed the CUDA workspace"):
        dg.to_numpy()
    monkeypatch.setenv("TSLOSS_EMULATED_POOL_BYTES", "4000000")  # the same cloud, fitting
    assert tsloss_cuda.vr_persistence(ring).h1_count.tolist() == [1]
