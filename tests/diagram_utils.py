"""Helpers shared by the tests: reference diagrams (ripser.py) and diagram comparison."""
from __future__ import annotations

import warnings
from typing import List, Sequence

import numpy as np
import torch

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


def canonical_distances(x: torch.Tensor) -> torch.Tensor:
    """core/pairwise_distance.h in torch, step by step: eight lane sums by coordinate mod 8 in
    increasing k (rounded product, rounded add), then ((0+1)+(2+3))+((4+5)+(6+7))."""
    xd = x.double()
    b, n, d = xd.shape
    pad = (-d) % 8
    xd = torch.nn.functional.pad(xd, (0, pad))
    t = xd[:, :, None, :] - xd[:, None, :, :]
    sq = (t * t).reshape(b, n, n, -1, 8)
    lanes = torch.zeros(b, n, n, 8, dtype=torch.float64)
    for m in range(sq.shape[3]):
        lanes = lanes + sq[:, :, :, m, :]
    s = ((lanes[..., 0] + lanes[..., 1]) + (lanes[..., 2] + lanes[..., 3])) + \
        ((lanes[..., 4] + lanes[..., 5]) + (lanes[..., 6] + lanes[..., 7]))
    # numpy's sqrt: correctly rounded like C's (this torch's CPU sqrt was seen 1 ulp off).
    return torch.from_numpy(np.sqrt(s.numpy())).to(x.dtype)
