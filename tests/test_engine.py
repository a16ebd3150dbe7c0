"""The exact engine: equality with ripser.py, edge conventions, batching, output format."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tsloss_cuda import default_max_h1, pairwise_distance, vr_persistence

from cases import all_clouds
from diagram_utils import (assert_diagrams_match, finite_part, ripser_reference, scaled_tol)

CLOUDS = list(all_clouds(0))
IDS = [f"{name}-{i}" for name, i, _ in CLOUDS]


def _t(x, dtype):
    return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype)


def _h0_edges_form_spanning_tree(edges: np.ndarray, n: int) -> bool:
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for u, v in edges:
        ru, rv = find(int(u)), find(int(v))
        if ru == rv:
            return False
        parent[ru] = rv
    return len(edges) == max(n - 1, 0)


# ---- (1) same float32 distance matrix -> same diagrams as ripser.py ---------------------------

@pytest.mark.parametrize("name,idx,cloud", CLOUDS, ids=IDS)
def test_distance_matrix_matches_ripser(name, idx, cloud):
    dm = pairwise_distance(_t(cloud, torch.float32))[0]
    dgm = vr_persistence(dm, distances=True)
    ours = dgm.to_numpy()[0]
    ref = ripser_reference(dm.numpy(), distance_matrix=True)
    tol = scaled_tol(1e-6, dm)
    assert_diagrams_match(ours, ref, tol, what=f"{name}[{idx}]")
    # The true H1 count is the number of non-trivial pairs ripser.py reports.
    assert int(dgm.h1_count[0]) == len(finite_part(ref[1]))
    assert not bool(dgm.truncated[0])


# Every third cloud of two points or more (GUDHI builds no complex of one point).
GUDHI_CASES = [(c, i) for c, i in zip(CLOUDS, IDS) if len(c[2]) >= 2][::3]


@pytest.mark.parametrize("name,idx,cloud", [c for c, _ in GUDHI_CASES],
                         ids=[i for _, i in GUDHI_CASES])
def test_float64_distance_matrix_matches_gudhi(name, idx, cloud):
    """ripser.py rounds distances to float32, so float64 diagrams are checked against GUDHI's
    Rips complex in double on the same matrix: the same bars, counts included, to 1e-12 of the
    diameter (where float32 rounding could merge or split a bar 1 ulp long)."""
    gudhi = pytest.importorskip("gudhi")
    dm = pairwise_distance(_t(cloud, torch.float64))[0]
    ours = vr_persistence(dm, distances=True).to_numpy()[0]
    ref = _gudhi_diagrams(gudhi, dm.numpy())
    assert_diagrams_match(ours, ref, scaled_tol(1e-12, dm), what=f"{name}[{idx}]")


def _gudhi_diagrams(gudhi, dm, field=2):
    # Over Z/2, as ripser.py and we reduce: GUDHI's default field, Z/11, may pair near-tied
    # bars otherwise (the test below).
    st = gudhi.RipsComplex(distance_matrix=dm).create_simplex_tree(max_dimension=2)
    st.compute_persistence(homology_coeff_field=field)
    return [st.persistence_intervals_in_dimension(k).reshape(-1, 2) for k in (0, 1)]


def test_near_ties_pair_as_over_z2_not_as_gudhis_default_field():
    """An 11-point float64 matrix of tenths moved by up to 2e-12 (found by a fuzz against
    GUDHI's default field): over Z/2 our H1 bars equal GUDHI's bit for bit; over Z/11 two
    deaths swap between births 1e-12 apart, a bottleneck of 1.00001e-12 against a diameter of
    1: past the 1e-12 the check above allows."""
    gudhi = pytest.importorskip("gudhi")
    tenths = [3, 4, 5, 2, 1, 4, 6, 4, 8, 7, 1, 9, 4, 3, 7, 2, 1, 6, 8, 5, 2, 5, 2, 3, 5, 9, 2, 2,
              7, 2, 3, 9, 1, 2, 4, 7, 8, 2, 3, 6, 1, 8, 6, 4, 2, 4, 7, 7, 5, 10, 5, 1, 2, 9, 4]
    moved = [-1, -2, 0, -1, -1, -2, 0, 2, 0, 0, 0, -1, -1, 0, 1, -1, -1, 1, 2, 1, 1, -1, 2, -2, 0,
             -1, -1, 1, 0, -2, 2, 1, -1, 2, 0, 0, -2, 2, 0, 1, 1, 2, 1, 0, -2, 2, -1, 2, -2, 2, 1,
             1, 0, 1, -2]
    dm = np.zeros((11, 11))
    dm[np.triu_indices(11, 1)] = np.array(tenths) / 10 + np.array(moved) * 1e-12
    dm += dm.T
    ours = vr_persistence(torch.from_numpy(dm), distances=True).to_numpy()[0]

    def bars(d):
        return sorted(map(tuple, np.asarray(d).reshape(-1, 2).tolist()))
    assert bars(ours[1]) == bars(_gudhi_diagrams(gudhi, dm)[1]) and len(bars(ours[1])) == 8
    assert bars(ours[1]) != bars(_gudhi_diagrams(gudhi, dm, field=11)[1])


# ---- (2) points in, float64 and float32 -------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,idx,cloud", CLOUDS, ids=IDS)
def test_points_match_ripser(name, idx, cloud, dtype):
    x = _t(cloud, dtype)
    ours = vr_persistence(x).to_numpy()[0]
    # ripser.py on the very same (possibly float32-rounded) coordinates.
    ref = ripser_reference(x.double().numpy())
    dm64 = pairwise_distance(x.double())[0]
    tol = scaled_tol(1e-5, dm64)
    if dtype == torch.float32:
        # ripser.py rounds its distances to float32 too: the same bars, a short one included
        # (a bottleneck test alone matches a missing short bar to the diagonal).
        assert_diagrams_match(ours, ref, tol, what=f"{name}[{idx}]")
    for k in (0, 1):
        from diagram_utils import bottleneck
        bn = bottleneck(ours[k], ref[k])
        assert bn <= tol, f"{name}[{idx}] H{k}: bottleneck {bn:.3e} > {tol:.3e}"
    assert np.isinf(ours[0][:, 1]).sum() == 1


# ---- (3) edges explain the values exactly ------------------------------------------------------

def _edge_index(e: np.ndarray) -> np.ndarray:
    """The combinatorial index C(v, 2) + u of edges (u < v), rows of ``e``: the filtration's
    tie-breaker (at equal lengths the larger index comes first, as in ripser)."""
    u, v = e[:, 0].astype(np.int64), e[:, 1].astype(np.int64)
    return v * (v - 1) // 2 + u


def test_tied_bars_come_in_filtration_order():
    """The two squares' tied bars, literally: H0's unit edges by decreasing index, and the
    squares' equal H1 bars the later-born first (equal births: the smaller birth edge)."""
    square = torch.tensor([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=torch.float64)
    assert vr_persistence(square).h0_edges[0].tolist() == [[2, 3], [0, 3], [1, 2]]
    two = torch.cat([square, square + torch.tensor([10.0, 0.0])])
    dg = vr_persistence(two)
    assert int(dg.h1_count[0]) == 3  # and a thin loop across the gap
    assert dg.h1_edges[0, :2].tolist() == [[0, 1, 1, 3], [4, 5, 5, 7]]


def _check_edges(dgm, dist: torch.Tensor, b: int = 0):
    """Every reported edge's length equals its value exactly; padding and ordering conventions."""
    d = dist.detach().numpy()
    n = d.shape[0]
    h0 = dgm.h0[b].detach().numpy()
    e0 = dgm.h0_edges[b].numpy()
    h1 = dgm.h1[b].detach().numpy()
    e1 = dgm.h1_edges[b].numpy()
    count = int(dgm.h1_count[b])
    k = h1.shape[0]
    kept = min(count, k)

    assert h0.shape == (max(n - 1, 0), 2) and e0.shape == h0.shape
    assert (h0[:, 0] == 0).all()
    assert (e0[:, 0] < e0[:, 1]).all(), "h0_edges must have u < v"
    assert (e0 >= 0).all() and (e0 < n).all()
    np.testing.assert_array_equal(h0[:, 1], d[e0[:, 0], e0[:, 1]])
    assert (np.diff(h0[:, 1]) >= 0).all(), "h0 must be sorted by death"
    assert _h0_edges_form_spanning_tree(e0, n), "h0 edges must form a spanning tree"
    # Ties in filtration order: an equal death comes first for the larger edge index.
    tied = h0[1:, 1] == h0[:-1, 1]
    assert (_edge_index(e0[:-1])[tied] > _edge_index(e0[1:])[tied]).all(), \
        "equal H0 deaths must come by decreasing edge index"

    live, pad = slice(0, kept), slice(kept, k)
    assert (e1[live] >= 0).all() and (e1[live] < n).all()
    assert (e1[live, 0] < e1[live, 1]).all(), "h1 birth edge must have i < j"
    assert (e1[live, 2] < e1[live, 3]).all(), "h1 death edge must have k < l"
    np.testing.assert_array_equal(h1[live, 0], d[e1[live, 0], e1[live, 1]])
    np.testing.assert_array_equal(h1[live, 1], d[e1[live, 2], e1[live, 3]])
    assert (h1[live, 1] > h1[live, 0]).all(), "zero-persistence pairs must be excluded"
    pers = h1[live, 1] - h1[live, 0]
    assert (np.diff(pers) <= 0).all(), "h1 must be ordered by decreasing persistence"
    # Equal persistence: the later birth in filtration order first (a larger birth, or an equal
    # birth with the smaller edge index).
    tied = pers[1:] == pers[:-1]
    b0, b1 = h1[live, 0][:-1], h1[live, 0][1:]
    i0, i1 = _edge_index(e1[live, :2])[:-1], _edge_index(e1[live, :2])[1:]
    assert ((b0 > b1) | ((b0 == b1) & (i0 < i1)))[tied].all(), \
        "equal H1 persistences must come by reverse filtration order of their births"
    assert (h1[pad] == 0).all(), "h1 padding rows must be (0, 0)"
    assert (e1[pad] == -1).all(), "h1_edges padding must be -1"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,idx,cloud", CLOUDS, ids=IDS)
def test_edges_explain_values_points(name, idx, cloud, dtype):
    x = _t(cloud, dtype)
    dgm = vr_persistence(x)
    _check_edges(dgm, pairwise_distance(x)[0])


@pytest.mark.parametrize("name,idx,cloud", CLOUDS, ids=IDS)
def test_edges_explain_values_distances(name, idx, cloud):
    dm = pairwise_distance(_t(cloud, torch.float32))[0]
    _check_edges(vr_persistence(dm, distances=True), dm)


# ---- (4) batched == one by one, bitwise -------------------------------------------------------

def _batch_of_different_clouds(rng, n=24, d=4):
    t = rng.uniform(0, 2 * np.pi, n)
    circle = np.zeros((n, d))
    circle[:, 0], circle[:, 1] = np.cos(t), np.sin(t)
    base = rng.standard_normal((n // 2, d))
    return np.stack([
        rng.standard_normal((n, d)),
        circle + 0.05 * rng.standard_normal((n, d)),
        np.round(rng.standard_normal((n, d)), 1),           # ties
        np.concatenate([base, base]),                       # duplicates
        np.ones((n, d)),                                    # identical
        5 * rng.standard_normal((n, d)) + 100,
        rng.integers(0, 2, (n, d)).astype(float),           # hypercube-like, many ties
    ])


FIELDS = ("h0", "h0_edges", "h1", "h1_edges", "h1_count", "truncated")


def _assert_same(a, b, bi=None):
    for f in FIELDS:
        ta, tb = getattr(a, f), getattr(b, f)
        if bi is not None:
            ta = ta[bi:bi + 1]
        assert ta.dtype == tb.dtype and ta.shape == tb.shape, f
        assert torch.equal(ta, tb), f"{f} differs (cloud {bi})"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_batched_equals_one_by_one(rng, dtype):
    x = _t(_batch_of_different_clouds(rng), dtype)
    K = 40
    batched = vr_persistence(x, max_h1=K)
    for b in range(x.shape[0]):
        _assert_same(batched, vr_persistence(x[b], max_h1=K), b)
    # The same holds for the distance-matrix route.
    dm = pairwise_distance(x)
    batched_d = vr_persistence(dm, distances=True, max_h1=K)
    for b in range(x.shape[0]):
        _assert_same(batched_d, vr_persistence(dm[b], distances=True, max_h1=K), b)


def test_batched_pairwise_distance_equals_one_by_one(rng):
    x = _t(_batch_of_different_clouds(rng), torch.float32)
    pd = pairwise_distance(x)
    assert pd.shape == (x.shape[0], x.shape[1], x.shape[1])
    for b in range(x.shape[0]):
        assert torch.equal(pd[b:b + 1], pairwise_distance(x[b]))


# ---- (5) to_numpy format ----------------------------------------------------------------------

@pytest.mark.parametrize("name,idx,cloud", CLOUDS, ids=IDS)
def test_to_numpy_format(name, idx, cloud):
    x = _t(cloud, torch.float64)
    dgm = vr_persistence(x)
    out = dgm.to_numpy()
    assert isinstance(out, list) and len(out) == 1 and len(out[0]) == 2
    h0, h1 = out[0]
    for a in (h0, h1):
        assert isinstance(a, np.ndarray) and a.dtype == np.float64 and a.ndim == 2 and a.shape[1] == 2
    # Exactly one infinite bar, (0, inf), as the last row.
    assert np.isinf(h0[:, 1]).sum() == 1
    np.testing.assert_array_equal(h0[-1], [0.0, np.inf])
    finite = h0[:-1]
    assert (finite[:, 0] == 0).all()
    assert (finite[:, 1] > 0).all(), "zero-length H0 bars must be left out"
    # Every positive death of the tensor output is there.
    deaths = dgm.h0[0, :, 1].numpy()
    np.testing.assert_array_equal(np.sort(finite[:, 1]), np.sort(deaths[deaths > 0]))
    assert len(h1) == min(int(dgm.h1_count[0]), dgm.h1.shape[1])
    np.testing.assert_array_equal(h1, dgm.h1[0, :len(h1)].numpy())


def test_to_numpy_batch_and_grad_tensor(rng):
    x = torch.tensor(rng.standard_normal((3, 10, 3)), requires_grad=True)
    out = vr_persistence(x).to_numpy()  # must detach internally
    assert len(out) == 3
    for b in range(3):
        np.testing.assert_array_equal(out[b][0][-1], [0.0, np.inf])


# ---- (6) pairwise_distance ---------------------------------------------------------------------

def _ref_dist(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    diff = x[:, None, :] - x[None, :, :]
    return np.sqrt((diff * diff).sum(-1))


def _pd_cases(rng):
    base = rng.standard_normal((40, 16))
    hd = rng.standard_normal((8, 768))
    return {
        "gaussian": base,
        "far_from_origin": 1000.0 + 1e-3 * base,
        "far_large_offset": 1e4 + rng.standard_normal((40, 16)),
        "near_duplicates": np.concatenate([base[:20], base[:20] + 1e-4 * rng.standard_normal((20, 16))]),
        "near_duplicates_far": 1000.0 + np.concatenate([base[:20], base[:20] + 1e-2 * rng.standard_normal((20, 16))]),
        "high_dim": rng.standard_normal((30, 768)),
        "duplicates": np.concatenate([base[:20], base[:20]]),
        # Magnitudes where float32 squares would underflow or overflow although the distances
        # themselves are representable: these take the exact double path.
        "tiny_scale": 1e-25 * base,
        "huge_scale": 3e19 * base,
        "odd_sizes": rng.standard_normal((37, 259)),  # every tile remainder and block tail
        # Copies at many scales in high dimension, far from the origin: exercises both the
        # Gram form and the difference-form fallback around its switch-over.
        "multiscale_near_dups_768": 1000.0 + np.concatenate(
            [hd] + [hd + s * rng.standard_normal(hd.shape) for s in (3e-2, 1e-2, 3e-3, 1e-3, 1e-4, 1e-5)]),
    }


@pytest.mark.parametrize("dtype,rel", [(torch.float32, 1e-6), (torch.float64, 1e-10)], ids=["f32", "f64"])
@pytest.mark.parametrize("case", ["gaussian", "far_from_origin", "far_large_offset", "near_duplicates",
                                  "near_duplicates_far", "high_dim", "duplicates",
                                  "multiscale_near_dups_768", "tiny_scale", "huge_scale",
                                  "odd_sizes"])
def test_pairwise_distance_accuracy(rng, case, dtype, rel):
    x = _t(_pd_cases(rng)[case], dtype)
    pd = pairwise_distance(x)
    assert pd.shape == (1, x.shape[0], x.shape[0]) and pd.dtype == dtype
    p = pd[0]
    assert torch.equal(p, p.T), "not exactly symmetric"
    assert (torch.diagonal(p) == 0).all(), "diagonal not exactly zero"
    ref = _ref_dist(x.numpy())  # float64 distances of the exact input values
    err = np.abs(p.numpy().astype(np.float64) - ref)
    off = ~np.eye(len(ref), dtype=bool)
    bad = err[off] > rel * ref[off]
    assert not bad.any(), (
        f"{bad.sum()} entries off by more than {rel} relative; worst rel err "
        f"{(err[off] / np.maximum(ref[off], 1e-300)).max():.3e}")


def test_pairwise_distance_batched_3d(rng):
    x = torch.tensor(rng.standard_normal((4, 12, 5)))
    pd = pairwise_distance(x)
    assert pd.shape == (4, 12, 12)
    for b in range(4):
        np.testing.assert_allclose(pd[b].numpy(), _ref_dist(x[b].numpy()), rtol=1e-12, atol=0)


# ---- (7) max_h1 truncation ---------------------------------------------------------------------

def test_truncation_keeps_most_persistent(rng):
    x = torch.tensor(rng.standard_normal((60, 6)))
    full = vr_persistence(x)
    count = int(full.h1_count[0])
    assert count > 5 and not bool(full.truncated[0])
    pers_full = (full.h1[0, :count, 1] - full.h1[0, :count, 0]).numpy()
    for K in (0, 1, 3, count - 1):
        t = vr_persistence(x, max_h1=K)
        assert t.h1.shape == (1, K, 2) and t.h1_edges.shape == (1, K, 4)
        assert int(t.h1_count[0]) == count, "h1_count must stay the true count"
        assert bool(t.truncated[0])
        kept = (t.h1[0, :, 1] - t.h1[0, :, 0]).numpy()
        # The K largest persistences, in decreasing order.
        np.testing.assert_array_equal(kept, np.sort(pers_full)[::-1][:K])
        # And they are the very same pairs (values and edges) as the untruncated run's first K.
        assert torch.equal(t.h1[0], full.h1[0, :K])
        assert torch.equal(t.h1_edges[0], full.h1_edges[0, :K])
        assert torch.equal(t.h0, full.h0) and torch.equal(t.h0_edges, full.h0_edges)
    exact = vr_persistence(x, max_h1=count)
    assert not bool(exact.truncated[0]) and int(exact.h1_count[0]) == count
    assert torch.equal(exact.h1[0], full.h1[0, :count])


@pytest.mark.parametrize("kind", ["hypercube7", "lattice5^3", "integer60"])
def test_truncation_with_ties(kind):
    """Many pairs share a persistence: truncation must still keep exactly the first K rows."""
    import itertools
    x = {"hypercube7": np.array(list(itertools.product([0.0, 1.0], repeat=7))),
         "lattice5^3": np.array(list(itertools.product(range(5), repeat=3)), float),
         "integer60": np.random.default_rng(0).integers(0, 3, (60, 3)).astype(float)}[kind]
    x = torch.tensor(x)
    full = vr_persistence(x)
    count = int(full.h1_count[0])
    for K in sorted({1, 2, 5, 17, count // 2, count - 1}):
        t = vr_persistence(x, max_h1=K)
        assert int(t.h1_count[0]) == count and bool(t.truncated[0])
        assert torch.equal(t.h1[0], full.h1[0, :K])
        assert torch.equal(t.h1_edges[0], full.h1_edges[0, :K])


def test_truncation_per_cloud_in_batch(rng):
    x = torch.tensor(np.stack([rng.standard_normal((30, 4)), np.ones((30, 4))]))
    counts = vr_persistence(x).h1_count
    assert counts[0] > 2 and counts[1] == 0
    t = vr_persistence(x, max_h1=2)
    assert t.truncated.tolist() == [True, False]
    assert torch.equal(t.h1_count, counts)
    # to_numpy keeps the two most persistent bars and says so, naming the truncated cloud only.
    with pytest.warns(UserWarning, match=r"H1 of clouds \[0\] has more bars than max_h1 = 2"):
        out = t.to_numpy()
    assert [len(o[1]) for o in out] == [2, 0]


def test_default_capacity_does_not_truncate_gaussian_256_768():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 256, 768, generator=g)
    dgm = vr_persistence(x)
    assert default_max_h1(256) == 4 * 256
    assert dgm.h1.shape == (2, 1024, 2)
    assert not dgm.truncated.any()
    assert (dgm.h1_count > 0).all() and (dgm.h1_count <= 1024).all()


@pytest.mark.parametrize("n,k", [(0, 8), (1, 8), (2, 8), (3, 12), (5, 20)])
def test_default_capacity_is_4n_at_least_8(n, k):
    # The documented default K = max(4·N, 8), as literal numbers: not read back through
    # default_max_h1, which would follow a change of its constants.
    assert default_max_h1(n) == k
    dgm = vr_persistence(torch.randn(n, 3))
    assert dgm.h1.shape == (1, k, 2) and dgm.h1_edges.shape == (1, k, 4)


def test_to_numpy_warns_only_when_bars_were_dropped():
    # A capacity equal to the number of bars keeps them all: no warning; one less drops one.
    torch.manual_seed(0)
    x = torch.randn(1, 40, 8)
    count = int(vr_persistence(x).h1_count[0])
    assert count > 2
    exact = vr_persistence(x, max_h1=count)
    assert not exact.truncated.any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(exact.to_numpy()[0][1]) == count
    short = vr_persistence(x, max_h1=count - 1)
    assert short.truncated.all()
    with pytest.warns(UserWarning, match=rf"H1 of clouds \[0\] has more bars than max_h1 = "
                                         rf"{count - 1}"):
        assert len(short.to_numpy()[0][1]) == count - 1


# ---- (8) maxdim=0, tiny N, large N -------------------------------------------------------------

def test_maxdim0(rng):
    x = torch.tensor(rng.standard_normal((3, 20, 4)))
    d0 = vr_persistence(x, maxdim=0)
    d1 = vr_persistence(x)
    assert d0.h1.shape == (3, 0, 2) and d0.h1_edges.shape == (3, 0, 4)
    assert (d0.h1_count == 0).all() and not d0.truncated.any()
    assert torch.equal(d0.h0, d1.h0) and torch.equal(d0.h0_edges, d1.h0_edges)
    out = d0.to_numpy()
    for b in range(3):
        assert len(out[b]) == 1  # [H0], as ripser.py's dgms with maxdim=0
        ref = ripser_reference(x[b], maxdim=0)
        assert_diagrams_match(out[b], ref, scaled_tol(1e-5, pairwise_distance(x[b])), dims=(0,))


@pytest.mark.parametrize("distances", [False, True])
def test_single_point(distances):
    x = torch.zeros(1, 1) if distances else torch.tensor([[1.0, 2.0, 3.0]])
    dgm = vr_persistence(x, distances=distances)
    K = default_max_h1(1)
    assert dgm.h0.shape == (1, 0, 2) and dgm.h0_edges.shape == (1, 0, 2)
    assert dgm.h1.shape == (1, K, 2) and dgm.h1_edges.shape == (1, K, 4)
    assert (dgm.h1 == 0).all() and (dgm.h1_edges == -1).all()
    assert dgm.h1_count.tolist() == [0] and dgm.truncated.tolist() == [False]
    h0, h1 = dgm.to_numpy()[0]
    np.testing.assert_array_equal(h0, [[0.0, np.inf]])
    assert h1.shape == (0, 2)


@pytest.mark.parametrize("distances", [False, True])
def test_two_points(distances):
    p = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    x = pairwise_distance(p)[0] if distances else p
    dgm = vr_persistence(x, distances=distances)
    assert dgm.h0.tolist() == [[[0.0, 5.0]]]
    assert dgm.h0_edges.tolist() == [[[0, 1]]]
    assert dgm.h1_count.tolist() == [0] and (dgm.h1 == 0).all() and (dgm.h1_edges == -1).all()
    h0, h1 = dgm.to_numpy()[0]
    np.testing.assert_array_equal(h0, [[0.0, 5.0], [0.0, np.inf]])
    assert h1.shape == (0, 2)
    # Two coincident points: one zero-length bar, left out of to_numpy.
    z = vr_persistence(torch.ones(2, 3))
    assert z.h0.tolist() == [[[0.0, 0.0]]]
    np.testing.assert_array_equal(z.to_numpy()[0][0], [[0.0, np.inf]])


def test_large_cloud_1024_matches_ripser_counts():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1024, 16, generator=g)
    dm = pairwise_distance(x)[0]
    dgm = vr_persistence(dm, distances=True)
    ref = ripser_reference(dm.numpy(), distance_matrix=True)
    assert int(dgm.h1_count[0]) == len(finite_part(ref[1]))
    assert not bool(dgm.truncated[0])
    ours = dgm.to_numpy()[0]
    assert_diagrams_match(ours, ref, scaled_tol(1e-6, dm))
    # Points route agrees with the distance route bitwise.
    _assert_same(vr_persistence(x), dgm)


def _hard_clouds():
    import itertools
    rng = np.random.default_rng(1)
    sphere = rng.standard_normal((300, 3))
    return {
        "lattice10^2": np.array(list(itertools.product(range(10), repeat=2)), float),
        "lattice5^3": np.array(list(itertools.product(range(5), repeat=3)), float),
        "hypercube7": np.array(list(itertools.product([0.0, 1.0], repeat=7))),
        "integer200": rng.integers(0, 4, (200, 3)).astype(float),
        "duplicates200": rng.standard_normal((20, 5))[rng.integers(0, 20, 200)],
        "sphere300": sphere / np.linalg.norm(sphere, axis=1, keepdims=True),
        "polygon100": np.stack([np.cos(2 * np.pi * np.arange(100) / 100),
                                np.sin(2 * np.pi * np.arange(100) / 100)], 1),
    }


@pytest.mark.parametrize("kind", list(_hard_clouds()))
def test_larger_degenerate_clouds_match_ripser(kind):
    x = torch.tensor(_hard_clouds()[kind], dtype=torch.float32)
    dm = pairwise_distance(x)[0]
    dgm = vr_persistence(dm, distances=True)
    ref = ripser_reference(dm.numpy(), distance_matrix=True)
    assert int(dgm.h1_count[0]) == len(finite_part(ref[1]))
    assert_diagrams_match(dgm.to_numpy()[0], ref, scaled_tol(1e-6, dm), what=kind)
    _check_edges(dgm, dm)
    _assert_same(vr_persistence(x), dgm)


# ---- (9) distances=True with (N, N) and (B, N, N) ----------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_distances_input_2d_and_3d(rng, dtype):
    x = _t(rng.standard_normal((4, 25, 5)), dtype)
    dm = pairwise_distance(x)
    from_points = vr_persistence(x)
    batched = vr_persistence(dm, distances=True)
    # The points route computes exactly pairwise_distance(x): identical results.
    _assert_same(batched, from_points)
    for b in range(4):
        single = vr_persistence(dm[b], distances=True)
        assert single.h0.shape == (1, 24, 2)
        _assert_same(batched, single, b)
        ref = ripser_reference(dm[b].numpy().astype(np.float32), distance_matrix=True)
        if dtype == torch.float32:
            assert_diagrams_match(single.to_numpy()[0], ref, scaled_tol(1e-6, dm[b]))


def test_distances_non_euclidean_matrix(rng):
    """A general (non-Euclidean) metric: graph shortest paths, compared with ripser.py."""
    from scipy.sparse.csgraph import shortest_path
    n = 30
    w = rng.uniform(0.5, 2.0, (n, n))
    w = np.triu(w, 1)
    w = w + w.T
    dm = shortest_path(w, directed=False).astype(np.float32)
    np.fill_diagonal(dm, 0)
    dgm = vr_persistence(torch.from_numpy(dm), distances=True)
    ref = ripser_reference(dm, distance_matrix=True)
    assert_diagrams_match(dgm.to_numpy()[0], ref, scaled_tol(1e-6, dm))
    _check_edges(dgm, torch.from_numpy(dm))


@pytest.mark.parametrize("dim", [2, 3, 17, 768])
def test_float32_distances_are_the_float64_distance_rounded_once(rng, dim):
    # Rows are widened and summed in float64, so each float32 distance is the float64
    # distance rounded once: the matrix ripser.py builds from the same points, on any CPU. (Not
    # always the exact distance correctly rounded: a float64 sum that lands on a float32 tie
    # rounds to even, one ulp from the exact value, seen only with coordinates whose scales
    # span some 30 decades.)
    x = torch.tensor(rng.standard_normal((80, dim)), dtype=torch.float32)
    got = pairwise_distance(x)[0].numpy()
    ref = _ref_dist(x.numpy().astype(np.float64)).astype(np.float32)
    assert np.array_equal(got, ref), f"{(got != ref).sum()} of {got.size} entries differ"


def test_float32_points_h0_equals_ripser_exactly(rng):
    # ripser.py given the float32 points' exact (float64) values computes float64 distances and
    # rounds them to float32, as we do. (Handed float32 arrays, it would build its matrix in
    # float32 by sklearn's Gram form, a few ulps off.)
    from diagram_utils import ripser_reference
    for _ in range(20):
        x = torch.tensor(rng.standard_normal((60, 3)), dtype=torch.float32)
        ours = vr_persistence(x).to_numpy()[0][0]
        ref = ripser_reference(x.numpy().astype(np.float64))[0]
        np.testing.assert_array_equal(np.sort(ours[:, 1]), np.sort(ref[:, 1]))


def test_a_grid_past_the_int32_triangle_index():
    """A 49 x 49 unit grid: N = 2401 points, so triangle indices pass 2^31 (C(2401, 3) = 2.3e9,
    from N = 2345 on) and no smaller cloud covers them. Known diagram: every unit square is one
    H1 bar [1, sqrt 2), killed by one of its diagonals; every H0 bar dies at 1."""
    side = 49
    grid = torch.stack(torch.meshgrid(torch.arange(float(side)), torch.arange(float(side)),
                                      indexing="ij"), -1).reshape(-1, 2)
    dg = vr_persistence(grid)
    squares = (side - 1) ** 2
    assert dg.h1_count.tolist() == [squares] and not bool(dg.truncated.any())
    h1, edges = dg.h1[0, :squares], dg.h1_edges[0, :squares].long()
    diag = torch.tensor(2.0, dtype=torch.float32).sqrt()
    assert bool((h1[:, 0] == 1).all()) and bool((h1[:, 1] == diag).all())
    assert bool((dg.h0[0, :, 1] == 1).all()) and dg.h0.shape[1] == side * side - 1
    p = grid.long()
    birth = (p[edges[:, 0]] - p[edges[:, 1]]).abs().sum(1)
    death = (p[edges[:, 2]] - p[edges[:, 3]]).abs()
    assert bool((birth == 1).all()) and bool((death == 1).all())  # an edge; a diagonal
    corner = torch.minimum(p[edges[:, 2]], p[edges[:, 3]])  # each square's diagonal once
    assert len({(int(a), int(b)) for a, b in corner}) == squares
