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
    """Exact bottleneck distance between the finite parts of two diagrams (empties allowed)."""
    fa, fb = finite_part(a), finite_part(b)
    if len(fa) == 0 and len(fb) == 0:
        return 0.0
    return float(gudhi.bottleneck_distance(fa, fb, 0.0))


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
