"""Batched Vietoris–Rips persistence (H0, H1) of point clouds or distance matrices."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch

from ._ops import ops

#: Default H1 capacity per cloud is ``H1_CAPACITY_PER_POINT * N`` (at least ``H1_MIN_CAPACITY``).
#: Gaussian clouds in high dimension give 1.5–2.6·N H1 pairs, so clouds of N <= 256 do not
#: truncate in practice; ``truncated`` reports it whenever they do.
H1_CAPACITY_PER_POINT = 4
H1_MIN_CAPACITY = 8


def default_max_h1(n: int) -> int:
    """The default H1 capacity K for clouds of ``n`` points."""
    return max(H1_CAPACITY_PER_POINT * n, H1_MIN_CAPACITY)


@dataclass
class Diagrams:
    """Persistence diagrams of a batch of B clouds of N points, as fixed-capacity tensors.

    Attributes:
        h0: ``(B, N-1, 2)`` float, rows ``(birth=0, death)`` sorted by death (ties: filtration
            order). The one infinite H0 bar of each cloud is implicit and not stored.
        h0_edges: ``(B, N-1, 2)`` int64, vertices ``(u < v)`` of the edge whose length is the
            death.
        h1: ``(B, K, 2)`` float, rows ``(birth, death)`` ordered by decreasing persistence.
            Rows ``>= min(h1_count, K)`` are padding ``(0, 0)``.
        h1_edges: ``(B, K, 4)`` int64, ``(i, j, k, l)``: birth edge ``(i < j)`` and death edge
            ``(k < l)``, the longest edge of the triangle that kills the class. Padding is -1.
        h1_count: ``(B,)`` int64, the true number of H1 pairs (zero-persistence pairs excluded).
            On CUDA only, -1 marks a cloud whose H1 reduction outgrew its fixed device
            workspace (its H1 rows are all padding, ``truncated`` is True, H0 is exact); raise
            ``TSLOSS_CUDA_H1_HEAP`` / ``TSLOSS_CUDA_H1_ARENA`` / ``TSLOSS_CUDA_H1_COLUMNS``.
        truncated: ``(B,)`` bool, whether ``h1_count > K`` (then the K most persistent are kept).

    ``h0`` and ``h1`` carry gradients to the input points (or distance matrix).
    """

    h0: torch.Tensor
    h0_edges: torch.Tensor
    h1: torch.Tensor
    h1_edges: torch.Tensor
    h1_count: torch.Tensor
    truncated: torch.Tensor

    def to_numpy(self) -> List[List[np.ndarray]]:
        """Per cloud, ``[H0, H1]`` float64 arrays in ripser.py's format.

        H0 includes its ``(0, inf)`` row and leaves zero-length bars out, as ripser.py does.
        This copies to the host: use it for analysis, not inside a training step.
        """
        h0 = self.h0.detach().double().cpu().numpy()
        h1 = self.h1.detach().double().cpu().numpy()
        counts = self.h1_count.cpu().numpy()
        if (counts < 0).any():
            raise RuntimeError(
                f"H1 of clouds {np.flatnonzero(counts < 0).tolist()} overflowed the CUDA "
                "workspace; raise TSLOSS_CUDA_H1_HEAP / TSLOSS_CUDA_H1_ARENA and recompute")
        counts = np.minimum(counts, h1.shape[1])
        out = []
        for b in range(h0.shape[0]):
            bars0 = h0[b][h0[b, :, 1] > 0]
            bars0 = np.concatenate([bars0, [[0.0, np.inf]]], axis=0)
            out.append([bars0, h1[b, : counts[b]].copy()])
        return out


def _as_batch(x: torch.Tensor, name: str, *, square: bool) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    what = "(N, N) or (B, N, N) distance matrix" if square else "(N, D) or (B, N, D) points"
    if x.dim() not in (2, 3):
        raise ValueError(f"{name} must be a {what}, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    return x if x.dim() == 3 else x.unsqueeze(0)


def pairwise_distance(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances within each cloud.

    Args:
        x: ``(N, D)`` or ``(B, N, D)`` float32/float64 points.

    Returns:
        ``(B, N, N)`` distances in x's dtype (B = 1 for 2-D input): exactly symmetric, exact
        zero diagonal, accurate to the float64-computed distance (no Gram-form cancellation).
        Differentiable.
    """
    return ops.pairwise_distance(_as_batch(x, "x", square=False))


def vr_persistence(
    x: torch.Tensor,
    maxdim: int = 1,
    *,
    distances: bool = False,
    max_h1: Optional[int] = None,
) -> Diagrams:
    """Vietoris–Rips persistence diagrams H0 and H1 of a batch of clouds, in one call.

    Equal to ripser.py's diagrams (Z/2 coefficients, same tie-breaking: diameter, then index).

    Args:
        x: points ``(N, D)`` / ``(B, N, D)``, or with ``distances=True`` a distance matrix
            ``(N, N)`` / ``(B, N, N)`` (read through its lower triangle). float32 or float64.
        maxdim: 1 for H0 and H1, 0 for H0 only (``h1`` then has K = 0 rows).
        distances: whether ``x`` is a distance matrix.
        max_h1: capacity K of the H1 outputs; default :func:`default_max_h1` (4·N).

    Returns:
        :class:`Diagrams` on x's device; ``h0``/``h1`` are differentiable w.r.t. ``x``.
    """
    xb = _as_batch(x, "x", square=distances)
    n = xb.shape[1]
    if maxdim not in (0, 1):
        raise ValueError(f"maxdim must be 0 or 1, got {maxdim}")
    if max_h1 is None:
        max_h1 = default_max_h1(n)
    elif max_h1 < 0:
        raise ValueError(f"max_h1 must be >= 0, got {max_h1}")
    return Diagrams(*ops.vr_persistence(xb, maxdim, distances, max_h1))
