"""TSLoss as a composition of the public ops (pairwise_distance, vr_persistence) and torch
tensor ops: the definition `tsloss_cuda.loss` had before it became one fused op, kept as the
reference the fused op is tested against (tests/test_tsloss_op.py).

Self-contained beside those two ops: it takes nothing from tsloss_cuda/loss.py (a bug in its
input conversion or capacity default would otherwise change both sides of a comparison). It
assumes valid options and prompts; their validation is tested against `loss` itself."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from tsloss_cuda.loss import PromptTopology, Terms
from tsloss_cuda.persistence import pairwise_distance, vr_persistence


def _prompts(prompts: torch.Tensor) -> torch.Tensor:
    """(B, N, D) in the compute dtype: float64 stays float64, everything else (float32,
    float16, bfloat16) is computed in float32."""
    x = prompts.to(torch.float64 if prompts.dtype == torch.float64 else torch.float32)
    return x if x.dim() == 3 else x.unsqueeze(0)


def _match_width(t: torch.Tensor, width: int) -> torch.Tensor:
    if t.shape[-1] >= width:
        return t[..., :width]
    return torch.nn.functional.pad(t, (0, width - t.shape[-1]))


def _reduce(v: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return v.mean()
    if reduction == "sum":
        return v.sum()
    return v


def reference_loss(
    prompts: torch.Tensor,
    *,
    connectivity: float = 1.0,
    redundancy: float = 1.0,
    stability: float = 0.0,
    previous: Optional[PromptTopology] = None,
    normalize: str = "mean",
    connectivity_mode: str = "total",
    target: Optional[float] = None,
    p: float = 1.0,
    reduction: str = "mean",
    return_terms: bool = False,
    max_h1: Optional[int] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, Terms]]:
    """The composition tsloss_cuda.loss was before it became one op: the reference."""
    x = _prompts(prompts)
    b, n = x.shape[0], x.shape[1]
    k = max(4 * n, 8) if max_h1 is None else max_h1  # the documented default: 4·N, at least 8
    need_h1 = redundancy != 0 or stability != 0 or return_terms

    # One distance matrix serves the scale and the diagram; gradients of both flow through it.
    dist = pairwise_distance(x)
    if normalize == "mean":
        ordered = max(n * (n - 1), 1)
        total = dist.sum((-2, -1))
        # Past the dtype's range: a float32 sum is taken in float64 (its mean fits), a float64
        # one leaves no mean (NaN), as the op's raw_scale.
        wide = dist.double().sum((-2, -1))
        scale = torch.where(torch.isinf(total) & torch.isfinite(wide),
                            (wide / ordered).to(x.dtype), total / ordered)
        scale = torch.where(torch.isinf(wide), torch.full_like(scale, float("nan")), scale)
        # The floor passes the gradient where the scale equals it, as the op's does. Not
        # clamp_min: its gradient there is 1 up to torch 2.13 and 0 from 2.14. NaN stays NaN.
        tiny = torch.finfo(x.dtype).tiny
        scale = torch.where(scale < tiny, torch.full_like(scale, tiny), scale)
    else:
        scale = torch.ones(b, dtype=x.dtype, device=x.device)
    dg = vr_persistence(dist, 1 if need_h1 else 0, distances=True, max_h1=k)

    deaths = dg.h0[..., 1] / scale[:, None]  # (B, N-1), ascending
    if connectivity_mode == "total":
        conn = deaths.mean(-1) if n > 1 else x.new_zeros(b)
    else:
        assert target is not None  # connectivity_mode="target" needs one (as loss checks)
        conn = (deaths - target).abs().mean(-1) if n > 1 else x.new_zeros(b)

    kk = dg.h1.shape[1]
    valid = torch.arange(kk, device=x.device)[None, :] < dg.h1_count[:, None]
    pers = (dg.h1[..., 1] - dg.h1[..., 0]) / scale[:, None]  # (B, K); padding rows are 0
    # Padding is masked before the power: d/dx x^p at 0 is infinite for p < 1.
    powered = torch.where(valid, torch.where(valid, pers, torch.ones_like(pers)) ** p,
                          torch.zeros_like(pers))
    # A cloud whose H1 is unknown (h1_count < 0: the device's workspace overflowed, or invalid
    # input) has no redundancy to give: NaN, and no gradient through it (torch.where).
    unknown = dg.h1_count < 0
    nan = torch.full((), float("nan"), dtype=x.dtype, device=x.device)
    red = torch.where(unknown, nan, powered.sum(-1))

    # stable: tied persistences keep their row order, as in the op, so that the gradient at a
    # tie (a subgradient) is the same one, not whichever order the sort happened to pick.
    h1_sorted = torch.sort(torch.where(valid, pers, torch.zeros_like(pers)), dim=-1,
                           descending=True, stable=True).values
    if previous is None:
        stab = x.new_zeros(b)
    else:
        prev_h0 = previous.h0.to(device=x.device, dtype=x.dtype)
        prev_h1 = _match_width(previous.h1.to(device=x.device, dtype=x.dtype), kk)
        if prev_h0.shape != deaths.shape:
            raise ValueError(f"previous.h0 has shape {tuple(prev_h0.shape)}, expected "
                             f"{tuple(deaths.shape)} (same B and N as the previous call)")
        stab = ((deaths - prev_h0) ** 2).mean(-1) if n > 1 else x.new_zeros(b)
        if kk > 0:
            # Over the rows holding a bar now or in the previous topology (through its last
            # non-zero row): the rows past both add 0, and must not dilute the mean.
            row = torch.arange(1, kk + 1, device=x.device)
            rows = torch.maximum(dg.h1_count.clamp(0, kk),
                                 torch.where(prev_h1 != 0, row, 0).amax(-1))
            stab = stab + ((h1_sorted - prev_h1) ** 2).sum(-1) / rows.clamp_min(1).to(x.dtype)
        stab = torch.where(unknown, nan, stab)  # its H1 part unknown, as the redundancy

    # A term weighed 0 is left out: an unknown (NaN) one makes the loss NaN only where it counts.
    total = sum((w * t for w, t in ((connectivity, conn), (redundancy, red), (stability, stab))
                 if w != 0), x.new_zeros(b))
    out = _reduce(total, reduction)
    if not return_terms:
        return out
    terms: Terms = {
        "connectivity": _reduce(conn, reduction),
        "redundancy": _reduce(red, reduction),
        "stability": _reduce(stab, reduction),
        "scale": _reduce(scale, reduction),
        "h1_count": dg.h1_count,
        "topology": PromptTopology(deaths.detach(), h1_sorted.detach()),
    }
    return out, terms
