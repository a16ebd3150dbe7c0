"""Helpers shared by the tests: reference diagrams (ripser.py) and diagram comparison."""
from __future__ import annotations

import warnings
from typing import List, Sequence

import numpy as np

import gudhi
from ripser import ripser


def as_numpy(x) -> np.ndarray:
    """A torch tensor or array-like as a numpy array (no gradient, on the host)."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def finite_part(dgm, drop_zero: bool = True) -> np.ndarray:
    """The finite rows ``(birth, death)`` of a diagram as float64 (K, 2); empty -> (0, 2)."""
    a = np.asarray(as_numpy(dgm), dtype=np.float64).reshape(-1, 2)
    keep = np.isfinite(a).all(axis=1)
    if drop_zero:
        keep &= a[:, 1] > a[:, 0]
    return a[keep]


def n_infinite(dgm) -> int:
    a = np.asarray(as_numpy(dgm), dtype=np.float64).reshape(-1, 2)
    return int(np.isinf(a[:, 1]).sum())


def bottleneck(a, b) -> float:
    """Exact bottleneck distance (L-infinity) between the finite parts of two diagrams (empties
    allowed): the least t at which a perfect matching exists in the usual bipartite graph (each
    bar to a bar of the other diagram or to the diagonal, at half its length; diagonal to
    diagonal free), by bisection over the candidate costs.

    Not gudhi.bottleneck_distance alone, which gave 0.66 for H0 diagrams (births all 0)
    that are 1.1e-7 apart (gudhi 3.13.0: bars 1.794, 2.193, 2.458 against ripser.py's same
    three plus two of 1.5e-8 and 3e-8, a cloud with repeated points).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    fa, fb = finite_part(a), finite_part(b)
    n, m = len(fa), len(fb)
    if n == 0 and m == 0:
        return 0.0
    cost = np.full((n + m, m + n), np.inf)
    cost[:n, :m] = np.maximum(np.abs(fa[:, None, 0] - fb[None, :, 0]),
                              np.abs(fa[:, None, 1] - fb[None, :, 1]))
    cost[np.arange(n), m + np.arange(n)] = (fa[:, 1] - fa[:, 0]) / 2  # a's bars to the diagonal
    cost[n + np.arange(m), np.arange(m)] = (fb[:, 1] - fb[:, 0]) / 2  # b's bars to the diagonal
    cost[n:, m:] = 0.0
    values = np.unique(cost[np.isfinite(cost)])

    def perfect(t: float) -> bool:
        match = maximum_bipartite_matching(csr_matrix((cost <= t).astype(np.int8)),
                                           perm_type="column")
        return bool((match >= 0).all())

    # gudhi's value, where right, is found with two matchings: it admits a perfect matching
    # and the next smaller candidate does not. Else (its bug, seen in both directions) the
    # bisection decides, on the side of gudhi's value where the answer lies.
    i = int(np.argmin(np.abs(values - gudhi.bottleneck_distance(fa, fb, 0.0))))
    if perfect(values[i]):
        if i == 0 or not perfect(values[i - 1]):
            return float(values[i])
        lo, hi = 0, i - 1
    else:  # values[-1] always admits one: each bar to the diagonal
        lo, hi = i + 1, len(values) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if perfect(values[mid]):
            hi = mid
        else:
            lo = mid + 1
    return float(values[lo])


def ripser_reference(x, distance_matrix: bool = False, maxdim: int = 1) -> List[np.ndarray]:
    """ripser.py's diagrams ``[H0, H1, ...]`` of points or of a (symmetric) distance matrix.

    ripser.py computes in float32: a float32 distance matrix goes in unchanged.
    """
    a = as_numpy(x)
    if a.shape[0] == 0:
        return [np.zeros((0, 2)) for _ in range(maxdim + 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # square point clouds, more columns than rows
        return ripser(a, maxdim=maxdim, distance_matrix=distance_matrix)["dgms"]


def diameter(dist) -> float:
    d = np.asarray(as_numpy(dist), dtype=np.float64)
    return float(d.max()) if d.size else 0.0


def scaled_tol(rel: float, dist) -> float:
    """rel x diameter, with a floor for degenerate (all-identical) clouds."""
    return rel * max(diameter(dist), 1e-30)


def assert_diagrams_match(ours: Sequence, ref: Sequence, tol: float, dims=(0, 1), what: str = ""):
    """Same number of finite non-trivial bars and of infinite bars, bottleneck <= tol, per dim."""
    for k in dims:
        fo, fr = finite_part(ours[k]), finite_part(ref[k])
        assert len(fo) == len(fr), (
            f"{what} H{k}: {len(fo)} finite bars, ripser.py has {len(fr)}")
        assert n_infinite(ours[k]) == n_infinite(ref[k]), f"{what} H{k}: infinite bar count differs"
        bn = bottleneck(fo, fr)
        assert bn <= tol, f"{what} H{k}: bottleneck {bn:.3e} > {tol:.3e}"
