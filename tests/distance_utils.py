"""The canonical distances in torch, for tests on hosts without the peer libraries (numpy and
torch only: the GPU host runs tests/test_cuda_tsloss.py without ripser or gudhi)."""
from __future__ import annotations

import numpy as np
import torch


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
