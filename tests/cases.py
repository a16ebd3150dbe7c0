"""Point-cloud families the engine is tested on (CPU and CUDA alike).

Each family stresses something different: generic position (Gaussian, blobs), real H1
(circles, tori), ties (lattices, hypercubes, polygons, rounded coordinates), degeneracy
(duplicates, identical points) and the tiny sizes N = 1, 2, 3.
"""
from __future__ import annotations

import itertools
from typing import Dict, List

import numpy as np


def _embed(x: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Rotate a low-dimensional cloud into R^dim by a random orthonormal frame."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, x.shape[1])))
    return x @ q.T


def families(seed: int = 0) -> Dict[str, List[np.ndarray]]:
    rng = np.random.default_rng(seed)
    out: Dict[str, List[np.ndarray]] = {}
    out["gaussian"] = [rng.standard_normal((n, d)) for n, d in [(8, 3), (20, 16), (40, 64), (64, 8)]]
    out["blobs"] = [
        np.concatenate([c + 0.1 * rng.standard_normal((n // 3, 10)) for c in 3 * rng.standard_normal((3, 10))])
        for n in (12, 30, 48)
    ]
    circles = []
    for n, d in [(12, 2), (30, 64), (50, 256)]:
        t = rng.uniform(0, 2 * np.pi, n)
        c = np.stack([np.cos(t), np.sin(t)], 1) + 0.05 * rng.standard_normal((n, 2))
        circles.append(_embed(c, d, rng) if d > 2 else c)
    out["noisy_circle"] = circles
    tori = []
    for n in (40, 80):
        u, v = rng.uniform(0, 2 * np.pi, (2, n))
        tori.append(np.stack([(2 + np.cos(v)) * np.cos(u), (2 + np.cos(v)) * np.sin(u), np.sin(v)], 1))
    out["torus"] = tori
    base = rng.standard_normal((10, 5))
    out["duplicates"] = [np.concatenate([base, base[:4]]), np.concatenate([base, base, base[:1]])]
    out["lattice"] = [np.array(list(itertools.product(range(k), repeat=dim)), float)
                      for k, dim in [(4, 2), (3, 3), (6, 2)]]
    out["hypercube"] = [np.array(list(itertools.product([0.0, 1.0], repeat=dim))) for dim in (2, 3, 4, 5)]
    out["rounded"] = [np.round(rng.standard_normal((n, 4)), 1) for n in (20, 40)] + [
        rng.integers(0, 3, (30, 3)).astype(float)]
    out["polygon"] = [np.stack([np.cos(2 * np.pi * np.arange(n) / n), np.sin(2 * np.pi * np.arange(n) / n)], 1)
                      for n in (3, 4, 5, 6, 8, 13)]
    out["tiny"] = [rng.standard_normal((n, 3)) for n in (1, 2, 3)]
    out["identical"] = [np.ones((7, 4)), np.zeros((3, 2))]
    return out


def all_clouds(seed: int = 0):
    """(family, index, cloud) triples over every family."""
    for name, clouds in families(seed).items():
        for i, c in enumerate(clouds):
            yield name, i, c


def _ring(n: int, centre: bool = False) -> np.ndarray:
    t = 2 * np.pi * np.arange(n - centre) / (n - centre)
    pts = np.stack([np.cos(t), np.sin(t)], 1)
    return np.concatenate([pts, np.zeros((1, 2))]) if centre else pts


def hard_clouds():
    """(name, cloud) pairs whose H1 reduction keeps thousands of coboundary entries at once:
    rings and lattices of 100-256 points (ties everywhere)."""
    rng = np.random.default_rng(11)
    yield "ring100", _ring(100)
    yield "ring256+centre", _ring(256, centre=True)
    yield "lattice6x6_256", rng.integers(0, 6, (256, 2)).astype(float)
    yield "grid16x16", np.array([(i, j) for i in range(16) for j in range(16)], float)
    yield "rounded200", np.round(2 * rng.standard_normal((200, 3)))
