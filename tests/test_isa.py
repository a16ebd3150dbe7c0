"""The same bits from every x86 build, batch layout, thread count and split of the work.

The CPU kernels have a baseline (SSE2), an AVX2 and an AVX-512 build; the distances follow one
canonical order of operations in all of them (csrc/core/pairwise_distance.h), so results may not
differ by a single bit, in float64 too. Each test runs every build this CPU supports, capped with
tsloss_cuda.set_cpu_isa, and compares against the baseline build.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import tsloss_cuda
from distance_utils import canonical_distances
from tsloss_cuda import pairwise_distance, vr_persistence

FIELDS = ("h0", "h0_edges", "h1", "h1_edges", "h1_count", "truncated")
BUILDS = tsloss_cuda.supported_cpu_isas()


@pytest.fixture
def restore_isa():
    before = tsloss_cuda.cpu_isa()
    yield
    tsloss_cuda.set_cpu_isa(None if before == BUILDS[-1] else before)


def _clouds(rng: np.random.Generator):
    """Gaussian and tie-heavy clouds, N = 3-300, off-centre so no coordinate is a lucky zero."""
    for n, d in [(3, 2), (17, 9), (33, 64), (64, 127), (129, 40), (300, 17)]:
        yield f"gaussian-{n}x{d}", 3.0 + rng.standard_normal((n, d))
    for n, d in [(5, 3), (40, 4), (100, 6), (257, 3)]:
        yield f"integer-{n}x{d}", rng.integers(0, 3, (n, d)).astype(float)
    for k, d in [(3, 3), (7, 2), (4, 4)]:
        yield f"lattice-{k}^{d}", np.array(list(itertools.product(range(k), repeat=d)), float)
    base = rng.standard_normal((20, 11))
    yield "duplicates-40x11", np.concatenate([base, base])


def _float32_clouds(rng: np.random.Generator):
    """Clouds of the certified route (32-256 points, D >= 256; up to 1024 with AVX2 and AVX-512):
    centred, off-centre, exact ties and magnitudes 1e-30..1e30 certify (nearly) every pair from
    their Gram sums; duplicate points and two tight clusters far apart send pairs to the
    canonical sums, one by one and tiled."""
    yield "centred-64x2048", rng.standard_normal((64, 2048))
    yield "centred-200x300", rng.standard_normal((200, 300))
    yield "off-centre-40x300", 1e4 + rng.standard_normal((40, 300))
    # Two tight clusters far apart: the Gram sums, taken unchecked (the bound set to 0), gave
    # wrong float32 distances inside the clusters; checked, those pairs take the canonical sums.
    v = 1e3 * rng.standard_normal(300)
    yield "two-clusters-40x300", np.concatenate([v + 1e-3 * rng.standard_normal((20, 300)),
                                                 -v + 1e-3 * rng.standard_normal((20, 300))])
    scale = 10.0 ** rng.uniform(-30, 30, (40, 300))
    yield "magnitudes-40x300", rng.standard_normal((40, 300)) * scale
    yield "integer-50x256", rng.integers(-2, 3, (50, 256)).astype(float)
    base = rng.standard_normal((16, 700))
    yield "duplicates-32x700", np.concatenate([base, base])
    # Gram sums by panels (130 points: a part-filled last panel; 261 coordinates: chunk tails).
    yield "off-centre-130x261", 1e4 + rng.standard_normal((130, 261))
    # Past 256 points (the baseline build takes the canonical rows there): duplicates one by one,
    # two clusters tiled row block by row block.
    base = rng.standard_normal((150, 260))
    yield "duplicates-300x260", 3.0 + np.concatenate([base, base])
    v = 1e3 * rng.standard_normal(256)
    yield "two-clusters-520x256", np.concatenate([v + 1e-3 * rng.standard_normal((260, 256)),
                                                  -v + 1e-3 * rng.standard_normal((260, 256))])


def test_float32_distances_are_the_canonical_sums(rng, restore_isa):
    """Clouds of 32-256 points (1024 with AVX2, AVX-512) in 256+ dimensions take Gram sums,
    certified against a rounding bound, instead of the canonical ones (certified_squares_lower in
    csrc/cpu/distance_tiles.h): the float32 distances must still be the canonical sums' bits, in
    every build, whole clouds per thread (a batch) or row blocks (one cloud)."""
    for name, cloud in _float32_clouds(rng):
        x = torch.tensor(cloud, dtype=torch.float32)
        ref = canonical_distances(x[None])[0]
        # Whole clouds per task with at least two clouds per thread; fewer clouds split each
        # cloud's coordinates among the threads (split_certified_group), one range per
        # thread: 1, 2 and 3 of them.
        batch = x.expand(2 * torch.get_num_threads(), *x.shape)
        for isa in BUILDS:
            tsloss_cuda.set_cpu_isa(isa)
            for b, got in enumerate(pairwise_distance(batch)):
                assert torch.equal(got, ref), f"{name}, {isa}, batch entry {b}"
            for t in (1, 2, 3):
                with _threads(t):
                    assert torch.equal(pairwise_distance(x)[0], ref), f"{name}, {isa}, alone, {t}"


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _builds_and_threads(threads: int):
    """Each build this CPU runs, at one thread and at max(threads, 2): set, then yielded."""
    for isa in BUILDS:
        tsloss_cuda.set_cpu_isa(isa)
        for t in sorted({1, max(threads, 2)}):
            torch.set_num_threads(t)
            yield isa, t


def _equal(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in FIELDS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_build_gives_the_same_bits(rng, dtype, restore_isa):
    for name, cloud in _clouds(rng):
        x = torch.tensor(cloud, dtype=dtype)
        results = {}
        for isa in BUILDS:
            tsloss_cuda.set_cpu_isa(isa)
            xg = x.clone().requires_grad_(True)
            dist = pairwise_distance(xg)
            dgm = vr_persistence(xg)
            grad_points, = torch.autograd.grad(dgm.h0[:, 1].sum() + dgm.h1.sum() + dist.sum(), xg)
            results[isa] = (dist.detach(), dgm, grad_points)
        ref_dist, ref_dgm, ref_grad = results[BUILDS[0]]
        # And the bits are the canonical ones (float64 too), so that a CPU with one build only
        # still checks something here.
        assert torch.equal(ref_dist, canonical_distances(x[None])), f"{name} {dtype}: not canonical"
        for isa in BUILDS[1:]:
            dist, dgm, grad_points = results[isa]
            assert torch.equal(dist, ref_dist), f"{name} {dtype}: distances differ, {isa} vs baseline"
            assert _equal(dgm, ref_dgm), f"{name} {dtype}: diagrams differ, {isa} vs baseline"
            assert torch.equal(grad_points, ref_grad), f"{name} {dtype}: gradients differ, {isa}"


def _layouts(x: torch.Tensor):
    """The same clouds as a batch, one by one, expanded, non-contiguous and permuted."""
    b = x.shape[0]
    yield "batched", x, list(range(b))
    yield "non-contiguous", x.transpose(1, 2).contiguous().transpose(1, 2), list(range(b))
    perm = list(reversed(range(b)))
    yield "permuted", x[perm], perm
    yield "padded-columns", torch.cat([x, x], 2)[:, :, : x.shape[2]], list(range(b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("isa", BUILDS)
def test_layouts_and_threads_give_the_same_bits(rng, dtype, isa, restore_isa):
    """A cloud's diagram is a function of that cloud alone: not of its batch, its position in it,
    the tensor's strides, the number of threads or how they split the work."""
    tsloss_cuda.set_cpu_isa(isa)
    threads = torch.get_num_threads()
    try:
        for n, d, b in [(18, 5, 4), (40, 23, 5), (70, 33, 3), (130, 9, 2)]:
            x = torch.tensor(3.0 + rng.standard_normal((b, n, d)), dtype=dtype)
            alone = [vr_persistence(x[i:i + 1]) for i in range(b)]
            for t in sorted({1, max(threads, 2)}):
                torch.set_num_threads(t)
                for name, xs, order in _layouts(x):
                    dgm = vr_persistence(xs)
                    for row, i in enumerate(order):
                        for f in FIELDS:
                            assert torch.equal(getattr(dgm, f)[row], getattr(alone[i], f)[0]), (
                                f"{name} (n={n}, d={d}, {t} threads, {isa}): field {f} of cloud "
                                f"{i} differs from the cloud computed alone")
                # Expanded (stride 0): every copy equals the cloud alone.
                many = vr_persistence(x[:1].expand(6, n, d))
                for row in range(6):
                    for f in FIELDS:
                        assert torch.equal(getattr(many, f)[row], getattr(alone[0], f)[0])
                # A lone cloud split among threads, alone and as a 2-D input.
                assert _equal(vr_persistence(x[0]), vr_persistence(x[0].unsqueeze(0)))
    finally:
        torch.set_num_threads(threads)


def test_set_cpu_isa_errors_name_the_argument(restore_isa):
    with pytest.raises(ValueError, match="isa must be one of baseline, avx2, avx512"):
        tsloss_cuda.set_cpu_isa("sse4")
    assert tsloss_cuda.set_cpu_isa("baseline") == "baseline"
    assert tsloss_cuda.cpu_isa() == "baseline"
    assert tsloss_cuda.set_cpu_isa(None) == BUILDS[-1]
    unsupported = [isa for isa in ("avx2", "avx512") if isa not in BUILDS]
    for isa in unsupported:
        with pytest.raises(ValueError, match=f"isa='{isa}' is not supported by this CPU"):
            tsloss_cuda.set_cpu_isa(isa)


def test_environment_variable_sets_the_build():
    code = "import tsloss_cuda; print(tsloss_cuda.cpu_isa())"
    for isa in BUILDS:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "TSLOSS_CPU_ISA": isa}, check=True)
        assert out.stdout.strip() == isa
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TSLOSS_CPU_ISA": "mmx"})
    assert bad.returncode != 0
    assert "TSLOSS_CPU_ISA='mmx'" in bad.stderr.splitlines()[-1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tsloss_same_bits_in_every_build_and_layout(rng, dtype, restore_isa):
    """TSLoss per cloud (reduction="none") and its gradient: equal bits whatever the build, the
    batch around the cloud, the strides or the thread count."""
    threads = torch.get_num_threads()
    opts = dict(connectivity=1.0, redundancy=1.0, reduction="none")
    try:
        # d = 300: several coordinate chunks of the backward, in place and through scratch, each
        # prefetching the next (the next cloud's first at a cloud's end); d = 512: rows 2 or 4 KB
        # apart, and (10, 64): a last row block of two points, whose sums run in scratch;
        # (40, 700, 3) at two threads: fewer clouds than twice the threads, whose chunks the
        # threads share.
        for n, d, b in [(12, 7, 5), (40, 33, 4), (70, 9, 3), (20, 300, 5), (16, 512, 3),
                        (10, 64, 4), (40, 700, 3)]:
            x = torch.tensor(3.0 + rng.standard_normal((b, n, d)), dtype=dtype)
            results = []
            for isa, t in _builds_and_threads(threads):
                for name, xs in [("batched", x), ("strided", x.transpose(1, 2).contiguous()
                                                  .transpose(1, 2))]:
                    xg = xs.detach().clone().requires_grad_(True)
                    value = tsloss_cuda.loss(xg, **opts)
                    grad, = torch.autograd.grad(value.sum(), xg)
                    results.append((f"{isa}, {t} threads, {name}", value.detach(), grad))
                for i in range(b):  # each cloud alone
                    xg = x[i:i + 1].detach().clone().requires_grad_(True)
                    value = tsloss_cuda.loss(xg, **opts)
                    grad, = torch.autograd.grad(value.sum(), xg)
                    ref = results[0]
                    assert torch.equal(value[0], ref[1][i]), f"cloud {i} alone, {isa}, {t}"
                    assert torch.equal(grad[0], ref[2][i]), f"cloud {i} alone, {isa}, {t}"
            for what, value, grad in results[1:]:
                assert torch.equal(value, results[0][1]), f"n={n}: loss differs ({what})"
                assert torch.equal(grad, results[0][2]), f"n={n}: gradient differs ({what})"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pairwise_distance_gradient_same_bits_everywhere(rng, dtype, restore_isa):
    """pairwise_distance's backward (the pair tiles TSLoss's backward runs): a cloud's gradient
    depends on that cloud and its upstream gradient alone, in every build, thread count, batch
    layout and split of the work; a sparse upstream gradient skips whole tiles, and duplicate
    points (distance 0) get no direction."""
    threads = torch.get_num_threads()
    try:
        # d = 512: rows 2 or 4 KB apart; (10, 64): a last row block of two points; both sum in
        # scratch and store the sums as they finish.
        for n, d, b in [(5, 3, 6), (16, 130, 5), (16, 512, 4), (10, 64, 4), (33, 300, 4),
                        (64, 700, 3)]:
            x = torch.tensor(3.0 + rng.standard_normal((b, n, d)), dtype=dtype)
            x[:, -1] = x[:, 0]  # a duplicate pair in every cloud
            grad = torch.tensor(rng.standard_normal((b, n, n)), dtype=dtype)
            grad[1:] *= torch.tensor(rng.random((b - 1, n, n)) < 0.05, dtype=dtype)
            results = []
            for isa, t in _builds_and_threads(threads):
                for name, xs, order in _layouts(x):
                    xg = xs.detach().clone().requires_grad_(True)
                    got, = torch.autograd.grad(pairwise_distance(xg), xg, grad[order])
                    results.append((f"{name}, {isa}, {t} threads", got[torch.argsort(
                        torch.tensor(order))]))
                for i in range(b):
                    xg = x[i].detach().clone().requires_grad_(True)
                    got, = torch.autograd.grad(pairwise_distance(xg), xg, grad[i:i + 1])
                    results.append((f"cloud {i} alone, {isa}, {t} threads",
                                    torch.cat([results[0][1][:i], got[None],
                                               results[0][1][i + 1:]])))
            assert torch.isfinite(results[0][1]).all()
            for what, got in results[1:]:
                assert torch.equal(got, results[0][1]), f"n={n}, d={d}: gradient differs ({what})"
    finally:
        torch.set_num_threads(threads)


def _bar_gradient_reference(x: np.ndarray, dgm, w0: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """vr_persistence's backward from points by its rule, step by step in numpy: edge after edge
    (the h0 rows, then each h1 row's birth and death edge), s = g / |x_u - x_v| with the canonical
    length, step = T(s * (x_u - x_v)) added to u's row and subtracted from v's in T. Lengths near
    1 only (no rescaling)."""
    out = np.zeros_like(x)
    e0, e1 = dgm.h0_edges.numpy(), dgm.h1_edges.numpy()
    for b in range(x.shape[0]):
        edges = [(w0[b, r, 1], *e0[b, r]) for r in range(e0.shape[1])]
        for r in range(e1.shape[1]):
            edges += [(w1[b, r, 0], *e1[b, r, :2]), (w1[b, r, 1], *e1[b, r, 2:])]
        for g, u, v in edges:
            if g == 0 or u < 0 or v < 0 or u == v:
                continue
            diff = x[b, u].astype(np.float64) - x[b, v].astype(np.float64)
            sq = np.pad(diff * diff, (0, -len(diff) % 8)).reshape(-1, 8)
            lanes = np.add.accumulate(sq, axis=0)[-1]  # each lane in increasing k
            length = np.sqrt(((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
                             + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])))
            if length == 0:  # coincident points: no direction
                continue
            step = (float(g) / length * diff).astype(x.dtype)
            out[b, u] = out[b, u] + step
            out[b, v] = out[b, v] - step
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vr_persistence_gradient_same_bits_everywhere(rng, dtype, restore_isa):
    """vr_persistence's backward from points (cpu/edge_gradients.h): the rule's own bits in every
    build, thread count and batch layout, whether the clouds are shared out whole or one cloud's
    coordinates among the threads (130 points in 300 dimensions: several blocks), and with
    duplicate points (a zero bar with no direction)."""
    threads = torch.get_num_threads()
    try:
        for n, d, b in [(6, 3, 5), (20, 17, 4), (40, 100, 3), (130, 300, 2)]:
            x = torch.tensor(3.0 + rng.standard_normal((b, n, d)), dtype=dtype)
            x[:, -1] = x[:, 0]
            dgm = vr_persistence(x)
            w0 = torch.tensor(rng.standard_normal(tuple(dgm.h0.shape)), dtype=dtype)
            w1 = torch.tensor(rng.standard_normal(tuple(dgm.h1.shape)), dtype=dtype)
            want = torch.from_numpy(_bar_gradient_reference(x.numpy(), dgm, w0.numpy(),
                                                            w1.numpy()))
            assert (want != 0).any()
            for isa, t in _builds_and_threads(threads):
                for name, xs, order in _layouts(x):
                    xg = xs.detach().clone().requires_grad_(True)
                    got_dgm = vr_persistence(xg)
                    got, = torch.autograd.grad((got_dgm.h0 * w0[order]).sum()
                                               + (got_dgm.h1 * w1[order]).sum(), xg)
                    assert torch.equal(got, want[order]), (
                        f"n={n}, d={d}, {name}, {isa}, {t} threads: gradient differs")
    finally:
        torch.set_num_threads(threads)
