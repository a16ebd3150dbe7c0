"""Bad input gives a clear error naming the argument; odd-but-valid input works; determinism."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from tsloss_cuda import default_max_h1, pairwise_distance, vr_persistence
from tsloss_cuda import loss as tsloss

from distance_utils import canonical_distances

KMAX = None


def _kmax() -> int:
    """kMaxPoints, read from csrc/core/common.h so the test follows the source of truth."""
    global KMAX
    if KMAX is None:
        import os
        path = os.path.join(os.path.dirname(__file__), "..", "csrc", "core", "common.h")
        m = re.search(r"kMaxPoints\s*=\s*(\d+)", open(path).read())
        KMAX = int(m.group(1))
    return KMAX


FIELDS = ("h0", "h0_edges", "h1", "h1_edges", "h1_count", "truncated")
ERRORS = (ValueError, TypeError, RuntimeError)


def _same(a, b):
    for f in FIELDS:
        ta, tb = getattr(a, f), getattr(b, f)
        assert ta.dtype == tb.dtype and ta.shape == tb.shape, f
        assert torch.equal(ta, tb), f"{f} differs"


def _dist(rng, n=8, d=3, dtype=torch.float64):
    return pairwise_distance(torch.tensor(rng.standard_normal((n, d)), dtype=dtype))[0]


# ---- rank, sizes --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(), (5,), (1, 2, 5, 3)])
@pytest.mark.parametrize("distances", [False, True])
def test_wrong_rank(shape, distances):
    with pytest.raises(ValueError, match=r"x must be .*shape"):
        vr_persistence(torch.zeros(shape), distances=distances)


@pytest.mark.parametrize("shape", [(), (5,), (1, 2, 5, 3)])
def test_pairwise_distance_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"x must be"):
        pairwise_distance(torch.zeros(shape))


def test_not_a_tensor():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        vr_persistence(np.zeros((4, 2)))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        pairwise_distance([[0.0, 1.0]])


def test_zero_dimensional_points():
    # The message gives the caller's shape, not the op's batched one; from two points on (the
    # fewest with an edge), a ValueError as documented, not the kernel's RuntimeError.
    for n in (2, 5):
        with pytest.raises(ValueError, match=rf"x must have D >= 1 .* got shape \({n}, 0\)$"):
            vr_persistence(torch.zeros(n, 0))
        with pytest.raises(ValueError, match=rf"prompts must have D >= 1 .* got shape \({n}, 0\)$"):
            tsloss(torch.zeros(n, 0))
    with pytest.raises(ValueError, match=r"x must have D >= 1 .* got shape \(2, 5, 0\)$"):
        vr_persistence(torch.zeros(2, 5, 0))
    # One point has no edge: its diagram is the same in R^0 as anywhere.
    one = vr_persistence(torch.zeros(1, 0))
    assert one.h0.shape == (1, 0, 2) and one.h1_count.tolist() == [0]


def test_pairwise_distance_zero_dimensional_points_are_all_coincident():
    # R^0 has a single point: every distance is exactly 0 (no error, no garbage).
    pd = pairwise_distance(torch.zeros(2, 5, 0))
    assert pd.shape == (2, 5, 5) and (pd == 0).all()


@pytest.mark.parametrize("distances", [False, True])
@pytest.mark.parametrize("maxdim", [0, 1])
def test_empty_batch(distances, maxdim):
    """B = 0: an empty result with the shapes a non-empty batch would have."""
    n = 6
    x = torch.zeros(0, n, n if distances else 3)
    dgm = vr_persistence(x, maxdim=maxdim, distances=distances)
    k = default_max_h1(n) if maxdim == 1 else 0
    assert dgm.h0.shape == (0, n - 1, 2) and dgm.h0_edges.shape == (0, n - 1, 2)
    assert dgm.h1.shape == (0, k, 2) and dgm.h1_edges.shape == (0, k, 4)
    assert dgm.h1_count.shape == (0,) and dgm.truncated.shape == (0,)
    assert dgm.h0.dtype == x.dtype and dgm.h0_edges.dtype == torch.int64
    assert dgm.h1_count.dtype == torch.int64 and dgm.truncated.dtype == torch.bool
    assert dgm.to_numpy() == []
    assert pairwise_distance(torch.zeros(0, n, 3)).shape == (0, n, n)


@pytest.mark.parametrize("distances", [False, True])
def test_empty_cloud(distances):
    """N = 0: no H0/H1 rows; H1 is padding with count 0 (never uninitialised memory)."""
    for b in (1, 3):
        x = torch.zeros(b, 0, 0 if distances else 3)
        dgm = vr_persistence(x, distances=distances)
        k = default_max_h1(0)
        assert dgm.h0.shape == (b, 0, 2) and dgm.h0_edges.shape == (b, 0, 2)
        assert dgm.h1.shape == (b, k, 2)
        assert (dgm.h1 == 0).all() and (dgm.h1_edges == -1).all()
        assert (dgm.h1_count == 0).all() and not dgm.truncated.any()
        for h0, h1 in dgm.to_numpy():  # as ripser.py: no bar at all, not even the infinite one
            assert h1.shape == (0, 2) and h0.shape == (0, 2)


@pytest.mark.parametrize("distances", [False, True])
def test_single_point_batch(distances):
    x = torch.zeros(4, 1, 1) if distances else torch.randn(4, 1, 3)
    dgm = vr_persistence(x, distances=distances, max_h1=5)
    assert dgm.h0.shape == (4, 0, 2) and dgm.h1.shape == (4, 5, 2)
    assert (dgm.h1 == 0).all() and (dgm.h1_edges == -1).all() and (dgm.h1_count == 0).all()
    for h0, h1 in dgm.to_numpy():
        np.testing.assert_array_equal(h0, [[0.0, np.inf]])
        assert h1.shape == (0, 2)


def test_too_many_points_names_the_limit():
    """A shape error naming the argument, as the README promises for bad arguments: it was the
    op's RuntimeError, which names neither (the op itself still raises it, test_torch_features)."""
    from tsloss_cuda import loss
    kmax = _kmax()
    with pytest.raises(ValueError, match=rf"^x must have at most {kmax} points a cloud, got "
                                         rf"shape \({kmax + 1}, 1\)$"):
        vr_persistence(torch.zeros(kmax + 1, 1))
    with pytest.raises(ValueError, match=rf"^x must have at most {kmax} points"):
        vr_persistence(torch.zeros(1, kmax + 1, kmax + 1), distances=True)
    # A batch does not bypass the limit either.
    with pytest.raises(ValueError, match=rf"^x must have at most {kmax} points"):
        vr_persistence(torch.zeros(2, kmax + 1, 1), maxdim=0)
    with pytest.raises(ValueError, match=rf"^prompts must have at most {kmax} points"):
        loss(torch.zeros(2, kmax + 1, 1))
    vr_persistence(torch.zeros(kmax, 1), maxdim=0)  # the limit itself is taken


# ---- dtypes, arguments --------------------------------------------------------------------------

# float16/bfloat16 are accepted and computed in float32 (tests/test_half_precision.py).
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool,
                                   torch.complex64, torch.complex128])
@pytest.mark.parametrize("distances", [False, True])
def test_bad_dtypes(dtype, distances):
    x = torch.zeros(5, 5, dtype=dtype) if distances else torch.ones(5, 3, dtype=dtype)
    with pytest.raises(TypeError, match=r"x must be float32 or float64"):
        vr_persistence(x, distances=distances)
    if not distances:
        with pytest.raises(TypeError, match=r"x must be float32 or float64"):
            pairwise_distance(x)


@pytest.mark.parametrize("max_h1", [-1, -100])
def test_negative_max_h1(max_h1):
    with pytest.raises(ValueError, match=r"max_h1 must be >= 0"):
        vr_persistence(torch.randn(5, 3), max_h1=max_h1)


def test_max_h1_must_fit_int64():
    # 2**63 does not fit an int64: refused by name before the op sees it. 2**63 - 1 fits, and
    # the op refuses it as any capacity that cannot be allocated, naming what suffices.
    with pytest.raises(ValueError, match=r"max_h1 must be below 2\*\*63 \(an int64\), got "
                                         r"9223372036854775808"):
        vr_persistence(torch.randn(5, 3), max_h1=2**63)
    with pytest.raises(RuntimeError, match=r"max_h1 = 9223372036854775807 .* pass max_h1 <= 10"):
        vr_persistence(torch.randn(5, 3), max_h1=2**63 - 1)


@pytest.mark.parametrize("maxdim", [-1, 2, 3])
def test_bad_maxdim(maxdim):
    with pytest.raises(ValueError, match=r"maxdim must be 0 or 1"):
        vr_persistence(torch.randn(5, 3), maxdim=maxdim)


# ---- non-finite values --------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_points(bad, dtype):
    x = torch.randn(3, 6, 2, dtype=dtype)
    x[2, 4, 1] = bad
    # Each message names the op the user called, whichever path computed the distances.
    for batch in (x, x[2:]):
        with pytest.raises(RuntimeError, match=r"^vr_persistence: x contains NaN or Inf"):
            vr_persistence(batch)
        with pytest.raises(RuntimeError, match=r"^vr_persistence: x contains NaN or Inf"):
            vr_persistence(batch, maxdim=0)
        with pytest.raises(RuntimeError, match=r"^pairwise_distance: x contains NaN or Inf"):
            pairwise_distance(batch)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", ["lower", "upper", "both"])
def test_non_finite_distances(rng, bad, where):
    d = torch.stack([_dist(rng) for _ in range(3)])
    if where in ("lower", "both"):
        d[1, 5, 2] = bad
    if where in ("upper", "both"):
        d[1, 2, 5] = bad
    # the message names the cloud and the bad entry where the user put it
    at = r"\(5, 2\)" if where == "lower" else r"\(2, 5\)"  # the upper one where both are
    with pytest.raises(RuntimeError,
                       match=r"distance matrix of cloud 1 contains NaN or Inf at " + at):
        vr_persistence(d, distances=True)


def test_nan_on_distance_diagonal(rng):
    d = _dist(rng)
    d[3, 3] = float("nan")
    with pytest.raises(RuntimeError, match=r"distance matrix .*(diagonal|NaN)"):
        vr_persistence(d, distances=True)


# ---- malformed distance matrices ----------------------------------------------------------------

def test_distance_matrix_not_square():
    with pytest.raises(ValueError, match=r"distance matrix .* got shape \(4, 5\): not square"):
        vr_persistence(torch.zeros(4, 5), distances=True)
    with pytest.raises(ValueError, match=r"distance matrix .* got shape \(2, 5, 4\): not square"):
        vr_persistence(torch.zeros(2, 5, 4), distances=True)


def test_distance_matrix_not_symmetric(rng):
    d = _dist(rng)
    d[5, 1] += 1.0
    with pytest.raises(RuntimeError, match=r"not symmetric.*\(5, 1\)"):
        vr_persistence(d, distances=True)
    d = _dist(rng)
    d[1, 5] *= 2.0  # the upper triangle is compared too, not silently ignored
    with pytest.raises(RuntimeError, match=r"not symmetric"):
        vr_persistence(d, distances=True)


def test_distance_matrix_negative(rng):
    d = _dist(rng)
    d[4, 2] = d[2, 4] = -0.5
    with pytest.raises(RuntimeError, match=r"negative entry"):
        vr_persistence(d, distances=True)


def test_distance_matrix_nonzero_diagonal(rng):
    d = _dist(rng)
    d[6, 6] = 0.1
    with pytest.raises(RuntimeError, match=r"non-zero diagonal .*\(6, 6\)"):
        vr_persistence(d, distances=True)
    d = torch.ones(1, 1, 1)
    with pytest.raises(RuntimeError, match=r"non-zero diagonal"):
        vr_persistence(d, distances=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_negative_zero_entries_read_as_zero(dtype):
    """A matrix with -0 off the diagonal (a product or difference that underflowed) equals one
    with +0 there, and gives its bits: a -0 H0 death came out before, equal in value but not
    in bits (torch.equal cannot tell them apart; signbit can)."""
    pts = torch.tensor([[0.0], [0.0], [1.0], [3.0]], dtype=dtype)
    d = torch.cdist(pts, pts)
    neg = d.clone()
    neg[0, 1] = neg[1, 0] = -0.0
    assert torch.signbit(neg[0, 1]) and not torch.signbit(d[0, 1])
    a, b = vr_persistence(neg, distances=True), vr_persistence(d, distances=True)
    _same(a, b)
    assert not torch.signbit(a.h0).any()
    assert torch.equal(torch.signbit(a.h1), torch.signbit(b.h1))


def test_distance_matrix_rounding_asymmetry_is_accepted(rng):
    """Symmetric up to rounding is fine: the upper triangle is read, as ripser.py and giotto-ph
    read it."""
    d = _dist(rng, dtype=torch.float32)
    for i, j in ((7, 3), (3, 7)):
        e = d.clone()
        e[i, j] = torch.nextafter(e[i, j], torch.tensor(10.0))
        a = vr_persistence(e, distances=True)
        upper = torch.triu(e) + torch.triu(e, 1).T
        _same(a, vr_persistence(upper, distances=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_asymmetric_matrix_reads_as_ripser_and_giotto_read_it(dtype):
    # A lower-triangle reading gave H0 deaths {1, 2} here, both references {1.00005, 2}.
    ripser = pytest.importorskip("ripser")
    gph = pytest.importorskip("gph")
    a = np.array([[0, 1.00005, 2], [1, 0, 3], [2, 3, 0]], dtype)
    ours = vr_persistence(torch.from_numpy(a), distances=True).to_numpy()[0][0]
    for ref in (ripser.ripser(a, distance_matrix=True)["dgms"][0],
                gph.ripser_parallel(a, metric="precomputed")["dgms"][0]):
        # ripser.py computes in float32 whatever the input
        assert sorted(ours[np.isfinite(ours[:, 1]), 1].astype(np.float32).tolist()) == \
            sorted(ref[np.isfinite(ref[:, 1]), 1].astype(np.float32).tolist())


def test_distance_gradient_goes_to_the_entry_read():
    d = pairwise_distance(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]))
    d = d.clone().requires_grad_()
    dg = vr_persistence(d, distances=True)
    dg.h0.sum().backward()
    assert torch.count_nonzero(torch.tril(d.grad)) == 0
    assert torch.count_nonzero(torch.triu(d.grad, 1)) == 3  # the tree's three edges


# ---- layouts ------------------------------------------------------------------------------------

def test_non_contiguous_points(rng):
    base = torch.tensor(rng.standard_normal((3, 4, 20)))
    x = base.transpose(1, 2)  # (3, 20, 4), non-contiguous
    assert not x.is_contiguous()
    _same(vr_persistence(x), vr_persistence(x.contiguous()))
    assert torch.equal(pairwise_distance(x), pairwise_distance(x.contiguous()))
    sliced = torch.tensor(rng.standard_normal((3, 40, 8)))[:, ::2, 1::2]
    assert not sliced.is_contiguous()
    _same(vr_persistence(sliced), vr_persistence(sliced.contiguous()))
    assert torch.equal(pairwise_distance(sliced), pairwise_distance(sliced.contiguous()))


def test_non_contiguous_distances(rng):
    d = pairwise_distance(torch.tensor(rng.standard_normal((3, 15, 4))))
    t = d.transpose(1, 2)
    assert not t.is_contiguous()
    _same(vr_persistence(t, distances=True), vr_persistence(t.contiguous(), distances=True))
    big = pairwise_distance(torch.tensor(rng.standard_normal((3, 30, 4))))
    sub = big[:, ::2, ::2]
    assert not sub.is_contiguous()
    _same(vr_persistence(sub, distances=True), vr_persistence(sub.contiguous(), distances=True))


def test_expanded_stride0_inputs(rng):
    one = torch.tensor(rng.standard_normal((1, 18, 5)))
    x = one.expand(4, 18, 5)
    assert x.stride(0) == 0
    dgm = vr_persistence(x)
    _same(dgm, vr_persistence(x.contiguous()))
    single = vr_persistence(one)
    for b in range(4):
        for f in FIELDS:
            assert torch.equal(getattr(dgm, f)[b], getattr(single, f)[0])
    # Stride-0 along the coordinates: every point identical.
    flat = torch.tensor([1.0, 2.0]).expand(7, 2)
    z = vr_persistence(flat)
    assert (z.h0 == 0).all() and (z.h1_count == 0).all()
    # Expanded distance matrices.
    d = pairwise_distance(one)
    dx = d.expand(3, 18, 18)
    _same(vr_persistence(dx, distances=True), vr_persistence(dx.contiguous(), distances=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed devices need a CUDA device")
@pytest.mark.cuda
def test_cuda_points_give_cuda_outputs():  # pragma: no cover - needs a GPU
    x = torch.randn(5, 3, device="cuda")
    dgm = vr_persistence(x)
    assert dgm.h0.device == x.device and dgm.h1_count.device == x.device


# ---- determinism --------------------------------------------------------------------------------

def _det_batch(rng, dtype):
    n, d = 40, 6
    parts = [rng.standard_normal((n, d)) for _ in range(5)]
    parts.append(np.round(rng.standard_normal((n, d)), 1))
    parts.append(rng.integers(0, 2, (n, d)).astype(float))
    base = rng.standard_normal((n // 2, d))
    parts.append(np.concatenate([base, base]))
    return torch.tensor(np.stack(parts), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("distances", [False, True])
def test_deterministic_across_calls_and_threads(rng, dtype, distances):
    x = _det_batch(rng, dtype)
    if distances:
        x = pairwise_distance(x)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ref = vr_persistence(x, distances=distances)
        pd2 = pairwise_distance(x) if not distances else None
        for _ in range(3):
            _same(vr_persistence(x, distances=distances), ref)
        torch.set_num_threads(1)
        for _ in range(2):
            _same(vr_persistence(x, distances=distances), ref)
        if pd2 is not None:
            assert torch.equal(pairwise_distance(x), pd2)
    finally:
        torch.set_num_threads(old)


def test_flushed_subnormals_are_the_same_bits_at_any_thread_count():
    # torch.set_flush_denormal sets the calling thread's mode only; the pool's threads, started
    # before, kept theirs, so clouds of subnormal coordinates gave other bits where a worker ran
    # them (a batch's clouds 2 and 3 at two threads; every pair of a lone cloud split among them).
    rng = np.random.default_rng(3)
    x = torch.from_numpy(np.ldexp(rng.standard_normal((64, 512)),
                                  rng.integers(-149, -120, (64, 512))).astype(np.float32))
    batch = x[None].expand(4, 64, 512)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        pairwise_distance(batch)  # the pool's threads exist before the mode changes
        if not torch.set_flush_denormal(True):
            pytest.skip("no flush-denormal mode on this CPU")
        got = [pairwise_distance(batch), vr_persistence(batch)]
        torch.set_num_threads(1)
        lone = [pairwise_distance(x), vr_persistence(x)]
        torch.set_num_threads(2)
        split = [pairwise_distance(x), vr_persistence(x)]  # one cloud, shared by the threads
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(old)
    for b in range(4):
        assert torch.equal(got[0][b], lone[0][0]), b
        for f in FIELDS:
            assert torch.equal(getattr(got[1], f)[b], getattr(lone[1], f)[0]), (b, f)
    assert torch.equal(split[0], lone[0])
    _same(split[1], lone[1])


def _message(fn, *args, **kw) -> str:
    with pytest.raises(RuntimeError) as err:
        fn(*args, **kw)
    return str(err.value).splitlines()[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_errors_name_the_first_bad_cloud_and_pair_at_any_thread_count(dtype):
    # Several bad clouds (or pairs): one thread names the first; two threads named whichever
    # task failed first ("cloud 2" for "cloud 0", "points 0 and 16" for "points 0 and 1").
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 300, generator=g, dtype=dtype)
    x[0, 3, 7] = float("nan")
    batch = x.expand(8, 64, 300)
    huge = torch.finfo(dtype).max * 0.75
    far = torch.randn(1, 64, 300, generator=g, dtype=dtype)
    far[0, 0::2, 0], far[0, 1::2, 0] = -huge, huge  # every pair of odd and even points overflows
    calls = [(pairwise_distance, batch, "point 3 of cloud 0"),
             (vr_persistence, batch, "point 3 of cloud 0"),
             (pairwise_distance, far, "points 0 and 1"), (vr_persistence, far, "points 0 and 1"),
             (pairwise_distance, far.expand(8, 64, 300), "points 0 and 1 of cloud 0")]
    two = torch.randn(2, 12, 1, generator=g, dtype=dtype)  # few clouds: balanced row blocks
    two[0, 5, 0] = two[0, 8, 0] = float("nan")
    calls += [(pairwise_distance, two, "point 5 of cloud 0"),
              (vr_persistence, two, "point 5 of cloud 0"), (tsloss, two, "point 5 of cloud 0")]
    # The first bad cloud after cloud 0, in a later task of whole clouds (four clouds, two
    # threads: two tasks), and in the few-cloud route (float32: the certified distances).
    later = torch.randn(4, 32, 8, generator=g, dtype=dtype)
    later[3, 5, 2] = float("nan")
    few = torch.zeros(2, 32, 256, dtype=dtype)
    few[1, 3, 0], few[1, 9, 0] = -huge, huge
    calls += [(fn, later, "point 5 of cloud 3")
              for fn in (pairwise_distance, vr_persistence, tsloss)]
    calls += [(fn, few, "points 3 and 9 of cloud 1") for fn in (pairwise_distance, vr_persistence)]
    # Few clouds, float32: cloud 0 (two tight clusters far apart) mostly fails the certificate and
    # takes the canonical rows, cloud 1 certifies; cloud 0's late bad point must still be named
    # (the certified clouds' rows once ran, and raised, first).
    v = 1e3 * torch.randn(256, generator=g, dtype=dtype)
    mixed = torch.randn(2, 64, 256, generator=g, dtype=dtype)
    mixed[0] = torch.cat([v + 1e-3 * mixed[0, :32], -v + 1e-3 * mixed[0, 32:]])
    mixed[0, 60, 0] = mixed[1, 5, 0] = float("nan")
    calls += [(fn, mixed, "point 60 of cloud 0")
              for fn in (pairwise_distance, vr_persistence, tsloss)]
    old = torch.get_num_threads()
    try:
        for fn, arg, named in calls:
            seen = set()
            for threads in (1, 2, 1, 2):
                torch.set_num_threads(threads)
                for _ in range(3):
                    seen.add(_message(fn, arg))
            assert len(seen) == 1 and named in next(iter(seen)), seen
    finally:
        torch.set_num_threads(old)


def test_absurd_max_h1_is_refused_by_name():
    # 10**12 rows would exhaust memory; the error names the argument and what suffices.
    with pytest.raises(RuntimeError, match=r"max_h1 = 1000000000000 .* pass max_h1 <= 10"):
        vr_persistence(torch.randn(5, 3), max_h1=10**12)
    with pytest.raises(RuntimeError, match=r"^loss: max_h1 = 1000000000000 .* pass max_h1 <= 10"):
        tsloss(torch.randn(5, 3), max_h1=10**12)  # in the name of the op called
    # surplus capacity that fits stays legal
    assert vr_persistence(torch.randn(5, 3), max_h1=1000).h1.shape == (1, 1000, 2)
    # An empty batch too: its outputs' strides overflowed ("Stride calculation overflowed").
    with pytest.raises(RuntimeError, match=r"max_h1 = 4611686018427387904 .* pass max_h1 <= 10"):
        vr_persistence(torch.randn(0, 5, 3), max_h1=2**62)
    with pytest.raises(RuntimeError, match=r"^loss: max_h1 = 4611686018427387904 .* <= 10"):
        tsloss(torch.randn(0, 5, 3), max_h1=2**62, reduction="none")
    assert vr_persistence(torch.randn(0, 5, 3), max_h1=1000).h1.shape == (0, 1000, 2)


# ---- the CUDA path's no-sync validity flags, checked here against the CPU op's verdict ------

def _cpu_rejects(x, distances):
    try:
        vr_persistence(x, distances=distances)
        return False
    except RuntimeError:
        return True


def test_invalid_cloud_flags_agree_with_cpu_checks(rng):
    from tsloss_cuda.persistence import invalid_clouds
    pts = torch.tensor(rng.standard_normal((6, 9, 3)))
    pts[1, 4, 2] = float("nan")
    pts[2, 0, 0] = float("inf")
    pts[3, 8, 1] = -float("inf")
    flags = invalid_clouds(pts, False)
    assert flags.tolist() == [_cpu_rejects(pts[b], False) for b in range(6)]
    assert flags.tolist() == [False, True, True, True, False, False]

    dm = pairwise_distance(torch.tensor(rng.standard_normal((8, 7, 3))))
    dm[1, 3, 2] += 1.0                        # not symmetric
    dm[2, 5, 1] = dm[2, 1, 5] = -0.5          # negative
    dm[3, 4, 4] = 0.25                        # non-zero diagonal
    dm[4, 6, 0] = float("nan")                # NaN
    dm[5, 2, 1] *= 1 + 1e-6                   # asymmetric within rounding: accepted
    dm[6, 6, 5] = dm[6, 5, 6] = float("inf")  # Inf
    flags = invalid_clouds(dm, True)
    assert flags.tolist() == [_cpu_rejects(dm[b], True) for b in range(8)]
    assert flags.tolist() == [False, True, True, True, True, False, True, False]


@pytest.mark.parametrize("rel", [1e-6, 5e-5, 2e-4, 1e-3, 1e-1])
@pytest.mark.parametrize("where", [(0, 1), (1, 0)], ids=["upper", "lower"])
def test_invalid_cloud_flags_follow_the_cpu_asymmetry_bound(rng, rel, where):
    # The CPU op accepts |lower - upper| <= 1e-4 · max(|lower|, |upper|) (rounding) and rejects
    # more; the no-sync flags of the CUDA path must draw the same line, on either side of it.
    from tsloss_cuda.persistence import invalid_clouds
    d = _dist(rng)[None].clone()
    d[(0,) + where] *= 1 + rel
    assert invalid_clouds(d, True).tolist() == [rel > 1e-4]
    assert _cpu_rejects(d, True) == (rel > 1e-4)


def test_marked_clouds_are_nan_with_invalid_count(rng):
    from tsloss_cuda.persistence import INVALID_INPUT, Diagrams, mark_invalid_clouds
    x = torch.tensor(rng.standard_normal((3, 12, 4)))
    out = torch.ops.tsloss_cuda.vr_persistence(x, 1, False, 48)
    marked = mark_invalid_clouds(out, torch.tensor([False, True, False]))
    assert marked[4].tolist() == [out[4][0].item(), INVALID_INPUT, out[4][2].item()]
    assert torch.isnan(marked[0][1]).all() and torch.isnan(marked[2][1]).all()
    for k in (0, 2):  # the valid clouds are untouched, bitwise
        assert torch.equal(marked[0][k], out[0][k]) and torch.equal(marked[2][k], out[2][k])
    with pytest.raises(RuntimeError, match=r"clouds \[1\] had invalid input"):
        Diagrams(*marked).to_numpy()


# ---- extreme magnitudes: no hang, no silent zeros, no wrong advice -----------------------------

@pytest.mark.parametrize("dtype,unit", [(torch.float32, 2.0 ** -149), (torch.float64, 2.0 ** -1074)],
                         ids=["f32", "f64"])
def test_subnormal_distance_matrix_finishes_and_scales(rng, dtype, unit):
    # Integer multiples of the smallest subnormal: the H1 band step underflows to zero here,
    # which once looped forever. Scaling by a power of two is exact, so the diagram must be the
    # scaled diagram of the same integer matrix.
    n = 11
    a = np.tril(rng.integers(1, 31, size=(n, n)).astype(np.float64), -1)
    a = a + a.T
    tiny = vr_persistence(torch.tensor(a * unit, dtype=dtype), distances=True)
    ref = vr_persistence(torch.tensor(a, dtype=dtype), distances=True)
    assert torch.equal(tiny.h1_count, ref.h1_count)
    assert torch.equal(tiny.h0_edges, ref.h0_edges) and torch.equal(tiny.h1_edges, ref.h1_edges)
    assert torch.equal(tiny.h1.double() / unit, ref.h1.double())


def _subnormal_float32_cloud():
    """40 points whose coordinates are float32 subnormals (small multiples of 2^-149, some
    coincident), and their distances as the op rounds them (tests/distance_utils.py: float64
    distances of the float32 values, rounded once to float32, exact as
    test_engine.py::test_float32_points_h0_equals_ripser_exactly shows)."""
    x = torch.tensor(np.random.default_rng(1).normal(size=(40, 2)) * 1e-44, dtype=torch.float32)
    return x, canonical_distances(x[None])[0]


def _mst_weights(d: np.ndarray) -> np.ndarray:
    """Sorted edge weights of a minimum spanning tree (Prim on the dense matrix): the same for
    every MST, ties or not. Not SciPy's minimum_spanning_tree, which finds no edge at these
    magnitudes and reads a zero distance (coincident points) as no edge."""
    n = len(d)
    done = np.zeros(n, dtype=bool)
    done[0] = True
    best, out = d[0].copy(), []
    for _ in range(n - 1):
        j = int(np.argmin(np.where(done, np.inf, best)))
        out.append(best[j])
        done[j] = True
        best = np.minimum(best, d[j])
    return np.sort(out)


def test_subnormal_float32_points_finish():
    x, d = _subnormal_float32_cloud()
    dg = vr_persistence(x)
    assert not bool(dg.truncated.any())
    # Finishing is not enough: an all-zero diagram (flushed subnormals, squares underflowing
    # in float32) also finishes. The H0 deaths are the MST's edges, bit for bit.
    deaths = np.sort(dg.h0[0, :, 1].double().numpy())
    want = _mst_weights(d.double().numpy())
    assert np.count_nonzero(want) > 30  # a few coincident points, the rest apart
    np.testing.assert_array_equal(deaths, want)


def test_subnormal_float32_points_h1_equals_ripser():
    ripser = pytest.importorskip("ripser")
    x, d = _subnormal_float32_cloud()
    dg = vr_persistence(x)
    # ripser.py takes a float32 distance matrix unchanged, so its bars are the same float32s.
    ref = ripser.ripser(d.numpy(), maxdim=1, distance_matrix=True)["dgms"][1]
    ours = dg.h1[0, :int(dg.h1_count)].double().numpy()
    assert len(ref) > 0  # this cloud has loops: 4 bars
    bars = [np.array(sorted(map(tuple, a.astype(np.float64).tolist()))) for a in (ours, ref)]
    np.testing.assert_array_equal(*bars)  # the sorted (birth, death) pairs, exactly


def test_float64_distances_beyond_the_square_range():
    # Squares would overflow / underflow float64; the distances themselves are representable.
    big = pairwise_distance(torch.tensor([[0.0], [1e200]], dtype=torch.float64))
    assert big[0, 1, 0].item() == 1e200
    small = pairwise_distance(torch.tensor([[0.0], [1e-200], [3e-200]], dtype=torch.float64))
    np.testing.assert_allclose(small[0].numpy(), np.array([[0, 1, 3], [1, 0, 2], [3, 2, 0]]) * 1e-200,
                               rtol=1e-15)
    with pytest.raises(RuntimeError, match="exceeds the float64 range"):
        pairwise_distance(torch.tensor([[-1e308], [1e308]], dtype=torch.float64))
    with pytest.raises(RuntimeError, match="overflows float32; pass float64 points"):
        pairwise_distance(torch.tensor([[-3e38], [3e38]], dtype=torch.float32))


def test_lone_point_error_names_its_cloud():
    x = torch.zeros(3, 1, 4)
    x[2, 0, 1] = float("nan")
    with pytest.raises(RuntimeError, match=r"NaN or Inf \(cloud 2\)"):
        pairwise_distance(x)
    with pytest.raises(RuntimeError, match=r"NaN or Inf \(cloud 2\)"):
        vr_persistence(x)


# ---- The backward ops check their saved tensors against x ------------------------------------
# They are public ops (torch.ops.tsloss_cuda.*): a wrong shape must be an error naming the
# tensor, not a read or write outside it. Same checks on every backend.
BACKWARD_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ops = torch.ops.tsloss_cuda


def _vr_saved(device):
    torch.manual_seed(3)
    x = torch.randn(2, 7, 3, dtype=torch.float64, device=device)
    h0, e0, h1, e1, _, _ = ops.vr_persistence(x, 1, False, 6)
    return [torch.ones_like(h0), torch.ones_like(h1), x, e0, e1, False]


@pytest.mark.parametrize("device", BACKWARD_DEVICES)
@pytest.mark.parametrize("index, bad, name", [
    (3, lambda e: e[:, :-1], "h0_edges"),            # (B, N-2, 2)
    (3, lambda e: e.double(), "h0_edges must be int64"),
    (4, lambda e: e[..., :3], "h1_edges"),          # (B, K, 3)
    (4, lambda e: e[:1], "h1_edges"),               # one cloud for two
    (0, lambda g: g[:, :, :1], "grad_h0"),
    (1, lambda g: g[:, :-1], "grad_h1"),            # K - 1 rows for K edges
])
def test_vr_persistence_backward_checks_shapes(device, index, bad, name):
    args = _vr_saved(device)
    args[index] = bad(args[index])
    with pytest.raises(RuntimeError, match=re.escape(name)):
        ops.vr_persistence_backward(*args)


def test_vr_persistence_backward_refuses_an_edge_outside_the_cloud():
    args = _vr_saved("cpu")
    args[3] = args[3].clone()
    args[3][1, 0, 0] = 7  # N = 7: points 0..6
    with pytest.raises(RuntimeError, match=r"h0_edges names point 7 of a cloud of 7 points"):
        ops.vr_persistence_backward(*args)


def _tsloss_saved(device, reduction):
    torch.manual_seed(4)
    x = torch.randn(3, 8, 5, dtype=torch.float64, device=device)
    out = ops.tsloss_forward(x, None, None, 1, 10, True, False, 0.0, 1.0, 1.0, 1.0, 0.0,
                             reduction)
    grads = [torch.ones_like(out[0]), None, None, None, None]
    saved = [x, out[9], out[8], out[6], out[7], out[5], out[10], out[11]]
    options = [None, None, True, False, 0.0, 1.0, 1.0, 1.0, 0.0, reduction]
    return grads, saved, options


@pytest.mark.parametrize("device", BACKWARD_DEVICES)
@pytest.mark.parametrize("index, bad, name", [
    (1, lambda d: d[:, :-1], "dist"),
    (2, lambda s: s[:-1], "scales"),
    (3, lambda t: t[:, :-1], "topo_h0"),
    (5, lambda c: c.double(), "h1_count must be int64"),
    (6, lambda e: e[:-1], "h0_edges"),
    (7, lambda e: e[:, :-1], "h1_edges"),           # K - 1 rows for a topo_h1 of K
])
def test_tsloss_backward_checks_saved_shapes(device, index, bad, name):
    grads, saved, options = _tsloss_saved(device, 1)
    saved[index] = bad(saved[index])
    with pytest.raises(RuntimeError, match=re.escape(name)):
        ops.tsloss_backward(*grads, *saved, *options)


@pytest.mark.parametrize("device", BACKWARD_DEVICES)
def test_tsloss_backward_checks_the_output_gradient_shape(device):
    grads, saved, options = _tsloss_saved(device, 1)  # mean: one value per output
    grads[0] = torch.ones(3, dtype=torch.float64, device=device)
    with pytest.raises(RuntimeError, match="one value"):
        ops.tsloss_backward(*grads, *saved, *options)
    grads, saved, options = _tsloss_saved(device, 0)  # none: B values
    grads[2] = torch.ones((), dtype=torch.float64, device=device)
    with pytest.raises(RuntimeError, match="B values"):
        ops.tsloss_backward(*grads, *saved, *options)
    grads[2] = None
    assert ops.tsloss_backward(*grads, *saved, *options).shape == saved[0].shape


def test_tsloss_backward_refuses_an_edge_outside_the_cloud():
    grads, saved, options = _tsloss_saved("cpu", 1)
    saved[7] = saved[7].clone()
    saved[7][0, 0, 1] = 8
    with pytest.raises(RuntimeError, match=r"h1_edges names point 8 of a cloud of 8 points"):
        ops.tsloss_backward(*grads, *saved, *options)


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e300, 1e-300, 1e-305])
def test_gradient_at_extreme_float64_scales(scale):
    """A bar's gradient is a sum of unit vectors, whatever the cloud's scale: float64 clouds whose
    squared distances under- or overflow (the forward rescales those pairs) must get it too, not
    zeros (the backward once took sqrt of the raw squares: 0 or Inf lengths)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, dtype=torch.float64, generator=g)

    def grad(s):
        y = (x * s).requires_grad_(True)
        d = vr_persistence(y)
        (d.h0[..., 1].sum() + d.h1.sum()).backward()
        return y.grad

    torch.testing.assert_close(grad(scale), grad(1.0), rtol=0, atol=1e-14)


@pytest.mark.parametrize("distances", [False, True])
def test_gradient_of_subnormal_float64_edges(distances):
    """Edges shorter than ~2.2e-308 (subnormal lengths): g / length overflowed float64, so the
    gradient from points was +-Inf (and NaN where a coordinate difference is 0) while the
    forward's values were right; from the distance matrix it was always a plain 1. Off the axes
    the length itself, rounded to a subnormal, was 1e-4 off the unit vector."""
    for gap, slope in ((1e-310, 0.0), (5e-324, 0.0), (1e-320, 1.0), (3e-320, 1 / 3)):
        x = torch.tensor([[0.0, 0.0], [gap, gap * slope]], dtype=torch.float64,
                         requires_grad=True)
        inp = pairwise_distance(x) if distances else x
        vr_persistence(inp, distances=distances).h0[..., 1].sum().backward()
        # The unit vector of the exact difference (its coordinates are exact subnormals).
        d = x.detach()[1] - x.detach()[0]
        unit = (d / d.abs().max()) / (d / d.abs().max()).norm()
        # From the matrix the gradient divides by the distance the forward returned, itself a
        # subnormal with few bits: close, not exact, off the axes.
        tol = 1e-3 if distances and slope else 1e-15
        torch.testing.assert_close(x.grad, torch.stack([-unit, unit]), rtol=tol, atol=0)


@pytest.mark.parametrize("points,weight", [(1e300, 1e-30), (1e-200, 1e-30), (1e-270, 1e40),
                                           # a subnormal edge under a huge weight, a near-
                                           # maximal one under a subnormal weight: scaled
                                           # by 2^+-1000 they still over- or underflowed
                                           (2e-311, 1e300), (2e307, 1e-318)])
def test_gradient_of_far_scaled_weights_on_far_scaled_edges(points, weight):
    """g / length outside the normal range (a tiny weight on a long edge underflowed to 0, a
    huge one on a short edge overflowed to Inf): the gradient is still g times the unit vector."""
    x = torch.tensor([[0.0, 0.0], [3 * points, 4 * points]], dtype=torch.float64,
                     requires_grad=True)
    (vr_persistence(x).h0[..., 1].sum() * weight).backward()
    want = torch.tensor([[-0.6, -0.8], [0.6, 0.8]], dtype=torch.float64) * weight
    # A subnormal weight has few bits: the product rounds to its precision.
    torch.testing.assert_close(x.grad, want, rtol=1e-15, atol=abs(weight) * 1e-15 + 5e-324)


@pytest.mark.parametrize("dtype,scales", [(torch.float32, [1e-30, 1e-20, 1e20, 1e30]),
                                          (torch.float64, [1e-200, 1e-300, 1e200, 1e300])])
def test_loss_gradient_far_from_unit_scale(dtype, scales):
    """TSLoss with normalize="mean" is scale invariant, so its gradient at s x is the gradient at
    x over s. The pair weights (~1/s^2) once left the dtype's range in the backward's tiles:
    NaN and Inf gradients for small prompts, zeros for large ones."""
    from tsloss_cuda import loss
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64).to(dtype)

    def grad(s):
        y = (x * s).requires_grad_(True)
        loss(y).backward()
        return y.grad

    ref = grad(1.0)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    for s in scales:
        torch.testing.assert_close(grad(s) * s, ref, rtol=0, atol=tol * float(ref.abs().max()))


def test_distance_gradient_of_subnormal_points():
    """float32 points around 1e-40 (subnormal): the distances' gradient is a sum of unit vectors,
    finite (its weights 1/d once overflowed float32 to Inf and NaN)."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(6, 3, generator=g) * 1e-40).float()
    y = x.clone().requires_grad_(True)
    pairwise_distance(y).sum().backward()
    yd = x.double().requires_grad_(True)
    pairwise_distance(yd).sum().backward()
    assert torch.isfinite(y.grad).all()
    torch.testing.assert_close(y.grad.double(), yd.grad, rtol=0, atol=1e-3)


def test_distance_gradient_op_ignores_infinite_distances():
    """The raw backward op with an Inf distance (never from the forward, which refuses it, but
    callable): that pair weighs 0, the others as before (its weights' scale once took the Inf's
    exponent and zeroed the whole cloud)."""
    ops = torch.ops.tsloss_cuda
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 5, 3, generator=g, dtype=torch.float64)
    dist = ops.pairwise_distance(x)
    grad = torch.rand(1, 5, 5, generator=g, dtype=torch.float64) * 0.4
    grad[0, 1, 0] = grad[0, 0, 1] = 0.1
    inf = dist.clone()
    inf[0, 1, 0] = inf[0, 0, 1] = float("inf")
    zero = grad.clone()
    zero[0, 1, 0] = zero[0, 0, 1] = 0.0
    got = ops.pairwise_distance_backward(grad, x, inf)
    assert torch.isfinite(got).all() and got.abs().sum() > 0
    torch.testing.assert_close(got, ops.pairwise_distance_backward(zero, x, dist))



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distance_gradient_composite_where_weights_overflow(dtype):
    """The backward CUDA and meta use (the composite in csrc/ops.cpp, run here on the CPU by its
    dispatch key) and the double-backward form, against the CPU kernel: equal to rounding on
    ordinary clouds, and finite and exact where the weight (g_ij + g_ji) / d_ij leaves the dtype's
    range (TSLoss at its scale clamp: g ~ 1/tiny over d ~ tiny/2 gave inf on the H200)."""
    ops = torch.ops.tsloss_cuda
    op = ops.pairwise_distance_backward.default

    def composite(grad, x, dist):
        return op._op_dk(torch._C.DispatchKey.CompositeExplicitAutograd, grad, x, dist)

    def double_backward_form(grad, x):
        y = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(pairwise_distance(y), y, grad, create_graph=True)
        return gx.detach()

    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 7, 5, generator=g, dtype=dtype)
    x[1, 4] = x[1, 2]  # coincident points: no direction, no gradient
    grad = torch.rand(3, 7, 7, generator=g, dtype=dtype)
    dist = ops.pairwise_distance(x)
    want = ops.pairwise_distance_backward(grad, x, dist)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(composite(grad, x, dist), want, **tol)
    torch.testing.assert_close(double_backward_form(grad, x), want, **tol)

    tiny = torch.finfo(dtype).tiny
    x = torch.tensor([[[0.0], [tiny / 2]]], dtype=dtype)
    half = torch.tensor(1 / (4 * tiny), dtype=dtype)  # a power of two
    grad = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]], dtype=dtype) * half
    dist = ops.pairwise_distance(x)
    want = ops.pairwise_distance_backward(grad, x, dist)
    assert torch.isfinite(want).all() and want[0, 0, 0] == -2 * half
    assert torch.equal(composite(grad, x, dist), want)
    assert torch.equal(double_backward_form(grad, x), want)
