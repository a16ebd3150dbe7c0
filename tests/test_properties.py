"""Property-based tests (hypothesis): invariances, MST identity, agreement with ripser.py."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import minimum_spanning_tree

from tsloss_cuda import pairwise_distance, vr_persistence

from diagram_utils import assert_diagrams_match, bottleneck, finite_part, ripser_reference, scaled_tol

SETTINGS = settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def clouds(draw, min_n=3, max_n=28, max_d=6):
    """Random clouds in general position and with ties / duplicates / real loops."""
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, max_d))
    kind = draw(st.sampled_from(["gaussian", "rounded", "duplicates", "circle", "integer"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "gaussian":
        x = rng.standard_normal((n, d))
    elif kind == "rounded":
        x = np.round(rng.standard_normal((n, d)), 1)
    elif kind == "duplicates":
        base = rng.standard_normal(((n + 1) // 2, d))
        x = base[rng.integers(0, len(base), n)]
    elif kind == "integer":
        x = rng.integers(0, 3, (n, d)).astype(float)
    else:
        t = rng.uniform(0, 2 * np.pi, n)
        x = np.zeros((n, max(d, 2)))
        x[:, 0], x[:, 1] = np.cos(t), np.sin(t)
        x += 0.05 * rng.standard_normal(x.shape)
    return x


def _dgms(x: np.ndarray):
    return vr_persistence(torch.tensor(x, dtype=torch.float64)).to_numpy()[0]


def _diam(x: np.ndarray) -> float:
    return float(pairwise_distance(torch.tensor(x, dtype=torch.float64)).max())


def _assert_close(a, b, tol, what):
    for k in (0, 1):
        bn = bottleneck(a[k], b[k])
        assert bn <= tol, f"{what} H{k}: bottleneck {bn:.3e} > {tol:.3e}"
    assert np.isinf(a[0][:, 1]).sum() == np.isinf(b[0][:, 1]).sum() == 1


@SETTINGS
@given(x=clouds(), seed=st.integers(0, 2**32 - 1))
def test_permutation_invariance(x, seed):
    perm = np.random.default_rng(seed).permutation(len(x))
    tol = 1e-9 * max(_diam(x), 1e-300)
    _assert_close(_dgms(x), _dgms(x[perm]), tol, "permuted")


@SETTINGS
@given(x=clouds(), shift=st.lists(st.floats(-100, 100), min_size=6, max_size=6))
def test_translation_invariance(x, shift):
    t = np.asarray(shift[: x.shape[1]] + [0.0] * max(0, x.shape[1] - 6))
    tol = 1e-9 * max(_diam(x), 1.0)
    _assert_close(_dgms(x), _dgms(x + t), tol, "translated")


@SETTINGS
@given(x=clouds(), seed=st.integers(0, 2**32 - 1))
def test_orthogonal_invariance(x, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((x.shape[1], x.shape[1])))
    tol = 1e-9 * max(_diam(x), 1e-300)
    _assert_close(_dgms(x), _dgms(x @ q.T), tol, "rotated")


@SETTINGS
@given(x=clouds(), c=st.floats(1e-2, 1e2))
def test_scaling_scales_diagram(x, c):
    a, b = _dgms(x), _dgms(c * x)
    tol = 1e-9 * c * max(_diam(x), 1e-300)
    scaled = [a[0] * c, a[1] * c]
    scaled[0][-1] = [0.0, np.inf]
    _assert_close(scaled, b, tol, f"scaled by {c}")


@SETTINGS
@given(x=clouds(), k=st.integers(-8, 8))
def test_power_of_two_scaling_is_exact(x, k):
    """Scaling by 2^k is exact in floating point, so the outputs scale bitwise."""
    t = torch.tensor(x, dtype=torch.float64)
    a, b = vr_persistence(t), vr_persistence(t * 2.0**k)
    assert torch.equal(a.h0 * 2.0**k, b.h0) and torch.equal(a.h1 * 2.0**k, b.h1)
    assert torch.equal(a.h0_edges, b.h0_edges) and torch.equal(a.h1_edges, b.h1_edges)
    assert torch.equal(a.h1_count, b.h1_count)


@SETTINGS
@given(x=clouds(min_n=2, max_n=40))
def test_h0_is_the_minimum_spanning_tree(x):
    t = torch.tensor(x, dtype=torch.float64)
    dm = pairwise_distance(t)[0].numpy()
    dgm = vr_persistence(t)
    deaths = dgm.h0[0, :, 1].numpy()
    # Exactly N-1 finite H0 bars, all born at 0.
    assert deaths.shape == (len(x) - 1,) and np.isfinite(deaths).all()
    assert (dgm.h0[0, :, 0] == 0).all()
    # scipy reads zero entries as missing edges: contract coincident points first (each extra
    # copy is a zero-length H0 bar), then take the MST of the distinct points.
    _, first = np.unique(x, axis=0, return_index=True)
    first = np.sort(first)
    sub = dm[np.ix_(first, first)]
    assert (sub[~np.eye(len(first), dtype=bool)] > 0).all()
    mst = minimum_spanning_tree(sub).toarray()
    weights = np.sort(np.concatenate([np.zeros(len(x) - len(first)), mst[mst > 0]]))
    assert len(weights) == len(x) - 1
    # The multiset of MST edge lengths is unique: it must equal the H0 deaths exactly.
    np.testing.assert_array_equal(np.sort(deaths), weights)
    assert np.isclose(deaths.sum(), weights.sum(), rtol=1e-12, atol=0)
    # to_numpy: the N-1 finite bars minus the zero-length ones, plus (0, inf).
    h0 = dgm.to_numpy()[0][0]
    assert len(h0) == int((deaths > 0).sum()) + 1


@SETTINGS
@given(x=clouds(max_n=24))
def test_matches_ripser_on_small_clouds(x):
    dm = pairwise_distance(torch.tensor(x, dtype=torch.float32))[0]
    dgm = vr_persistence(dm, distances=True)
    ref = ripser_reference(dm.numpy(), distance_matrix=True)
    assert int(dgm.h1_count[0]) == len(finite_part(ref[1]))
    assert_diagrams_match(dgm.to_numpy()[0], ref, scaled_tol(1e-6, dm))
    # Points route (float64) vs ripser.py on the same points.
    ours = _dgms(x)
    ref_pts = ripser_reference(x)
    # ripser.py measures points by the Gram form, off by up to ~sqrt(eps) |x| (coincident points
    # at |x| ~ 1 came back 1.5e-8 apart): its own error is added to the tolerance.
    tol = scaled_tol(1e-5, pairwise_distance(torch.tensor(x))[0]) + 1e-7 * float(np.abs(x).max())
    for k in (0, 1):
        assert bottleneck(ours[k], ref_pts[k]) <= tol
