"""Topology metrics of a soft prompt, computed on its device and read back only when logged.

:func:`topology_metrics` returns 0-d tensors on the prompt's device (no host sync);
:func:`to_floats` copies a dict of them to Python floats in one transfer, at the logging
interval. :class:`StepTimer` times training steps without a host sync per step.
"""
from __future__ import annotations

import math
import numbers
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Mapping, Optional, Tuple, Union

import torch

from tsloss_cuda.persistence import INVALID_INPUT, check_points, pairwise_distance, vr_persistence

if TYPE_CHECKING:  # loss imports this module
    from tsloss_cuda.loss import Terms, TSLoss

#: Metric names, in CSV column order.
METRICS = ("h0_count", "h1_count", "h0_mean_life", "h0_max_life", "h1_mean_life", "h1_max_life",
           "h0_entropy", "h1_entropy", "h0_total", "h1_total")
TERMS = ("connectivity", "redundancy", "stability", "scale")
#: TSLoss options that change a term's value. The weights only scale the terms, which are logged
#: unweighted, and the tracker sets the stability weight itself (see :class:`TopologyTracker`).
TERM_OPTIONS = ("normalize", "connectivity_mode", "target", "p", "max_h1")
#: TSLoss clamps the scale of a prompt whose points all coincide (or of one point) to float32's
#: smallest normal so that it can divide; the prompt's actual scale there is 0.
_SCALE_FLOOR = torch.finfo(torch.float32).tiny


def _entropy(life: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Persistent entropy ``-Σ p log p`` with ``p = l / Σ l`` over valid bars; 0 if none."""
    life = torch.where(valid, life, torch.zeros_like(life))
    total = life.sum(-1, keepdim=True)
    pr = life / total.clamp_min(torch.finfo(life.dtype).tiny)
    # 0·log 0 = 0: mask before the log so no NaN appears. p·log(1/p) rather than -(p·log p):
    # with no bars the sum is +0, where negating it would log "-0.0".
    safe = torch.where(pr > 0, pr, torch.ones_like(pr))
    return torch.where(pr > 0, pr * torch.log(1.0 / safe), torch.zeros_like(pr)).sum(-1)


def _masked_mean_max(life: torch.Tensor, valid: torch.Tensor):
    cnt = valid.sum(-1)
    z = torch.zeros_like(life)
    total = torch.where(valid, life, z).sum(-1)
    mean = total / cnt.clamp_min(1).to(life.dtype)
    mx = torch.where(valid, life, z).amax(-1) if life.shape[-1] > 0 else total
    return cnt, mean, mx, total


def cpu_engine_refuses(prompt: torch.Tensor) -> bool:
    """Whether the CPU engine would raise for this ``(..., N, D)`` prompt, computing in float64
    for a float64 prompt and in float32 otherwise (as :func:`tsloss_cuda.loss` does): it holds
    NaN or Inf (or, widened to float32, values past its range), or a distance between two of
    its points overflows the computing dtype. CUDA flags such a prompt instead of raising (a
    host sync); a run that diverged reaches either. One pass over the prompt; the engine's own
    distances are computed only where the bound 2 sqrt(D) max|x| on them allows an overflow."""
    x = prompt.detach()
    x = x if x.dtype == torch.float64 else x.float()
    if x.numel() == 0:
        return False
    m = float(x.abs().max())  # NaN and Inf propagate
    if not math.isfinite(m):
        return True
    if 2.0 * math.sqrt(x.shape[-1]) * m < torch.finfo(x.dtype).max:
        return False
    try:  # finite points of a valid shape: the only error left is the overflow
        pairwise_distance(x.reshape(-1, x.shape[-2], x.shape[-1]))
    except RuntimeError:
        return True
    return False


def _step(step) -> int:
    """``step`` as an int; a TypeError naming it otherwise (a float or a string would be stored
    in the rows as it is, or fail in ``%`` with an unrelated message)."""
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"step must be an int, got {step!r}")
    return int(step)


def _nan(device: torch.device) -> torch.Tensor:
    """A metric or term not measured: a float32 NaN on the prompt's device (not torch's default
    dtype or device), as every measured value is."""
    return torch.full((), float("nan"), dtype=torch.float32, device=device)


@torch.no_grad()
def topology_metrics(prompt: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Bar counts, mean/max lifetimes, persistent entropy and total persistence of H0 and H1.

    Args:
        prompt: ``(N, D)`` prompt (any float dtype; computed in float32).

    Returns:
        dict name -> 0-d float32 tensor on ``prompt``'s device (names in :data:`METRICS`).
        H0 uses the N-1 finite bars of positive length (the infinite bar is left out). H1 uses
        the K = max(4N, 8) most persistent bars where ``h1_count`` (the true count) exceeds K
        (:func:`vr_persistence`'s default capacity; not reached in practice at N <= 256). On CUDA,
        a prompt whose H1 outgrew the device workspace has NaN H1 metrics. An invalid prompt
        (NaN or Inf, or distances past float32's range: a diverged run) has NaN metrics
        throughout, on either device: not the 0 bars they would otherwise count, and not an
        error that would stop the run logging it.
    """
    if not isinstance(prompt, torch.Tensor):
        raise TypeError(f"prompt must be a torch.Tensor, got {type(prompt).__name__}")
    if prompt.dim() != 2:
        raise ValueError(f"prompt must be an (N, D) tensor, got shape {tuple(prompt.shape)}")
    if prompt.shape[1] == 0:  # vr_persistence would name its own argument, x
        raise ValueError(f"prompt must have D >= 1 coordinates, got shape {tuple(prompt.shape)}")
    if not prompt.is_floating_point():  # an integer prompt is no soft prompt; bool even less
        raise TypeError(f"prompt must be a floating-point tensor, got {prompt.dtype}")
    check_points(prompt, "prompt")  # vr_persistence would name its own argument, x
    x = prompt.detach().float()
    if x.device.type == "cpu" and cpu_engine_refuses(x):  # the CPU engine would raise
        return {k: _nan(x.device) for k in METRICS}
    dg = vr_persistence(x, 1)
    life0 = dg.h0[0, :, 1] - dg.h0[0, :, 0]  # (N-1,)
    valid0 = life0 > 0
    k = dg.h1.shape[1]
    life1 = dg.h1[0, :, 1] - dg.h1[0, :, 0]  # (K,)
    valid1 = torch.arange(k, device=x.device) < dg.h1_count[0].clamp_max(k)
    c0, m0, x0, t0 = _masked_mean_max(life0, valid0)
    c1, m1, x1, t1 = _masked_mean_max(life1, valid1)
    vals = dict(h0_count=c0, h1_count=dg.h1_count[0], h0_mean_life=m0, h0_max_life=x0,
                h1_mean_life=m1, h1_max_life=x1, h0_entropy=_entropy(life0, valid0),
                h1_entropy=_entropy(life1, valid1), h0_total=t0, h1_total=t1)
    # CUDA flags what it could not compute instead of raising (that would be a host sync):
    # h1_count -1, H1 overflowed (H0 exact); -2, invalid input (NaN H0 deaths). The masks
    # above would count those as 0 bars.
    bad1 = dg.h1_count[0] < 0
    bad0 = (dg.h1_count[0] == INVALID_INPUT) | torch.isnan(life0).any()
    nan = _nan(x.device)
    return {k: torch.where(bad0 if k.startswith("h0") else bad1, nan, v.float())
            for k, v in vals.items()}


def to_floats(values: Mapping[str, torch.Tensor]) -> Dict[str, float]:
    """Copy a dict of 0-d tensors to floats with a single device -> host transfer."""
    keys = [k for k, v in values.items() if isinstance(v, torch.Tensor) and v.numel() == 1]
    if not keys:
        return {}
    stacked = torch.stack([values[k].detach().reshape(()).float() for k in keys]).cpu().tolist()
    return {k: v + 0.0 for k, v in zip(keys, stacked)}  # + 0.0 turns -0.0 into 0.0


class TopologyTracker:
    """Records topology metrics and the TSLoss terms of a prompt, every ``every`` steps.

    ``due(step)`` says whether a step is one to record (a multiple of ``every``); the caller asks
    it, and ``update(step, prompt, terms)`` records whenever it is called, keeping device tensors.
    ``flush()`` reads the pending ones back (one transfer per record) and returns them as rows of
    floats.

    With ``tsloss_terms=True``, ``update`` without ``terms`` computes the unweighted TSLoss
    terms of the prompt it is given, with ``term_options`` (any of :data:`TERM_OPTIONS`; default
    TSLoss's defaults), and ``ts_stability`` measured against the prompt of the previous record
    (0 for the first record; NaN, not measured, when the prompt's shape changes). Every column
    of a row then describes the same prompt: the training job and ``tsloss_cuda.analyze`` both
    record this way, so a row of one equals the row of the other for the same saved prompt. ``ts_scale`` is the scale the terms
    are divided by (1 with ``normalize="none"``), 0 for a prompt of coincident points. Given
    ``terms`` (the dict of ``tsloss_cuda.loss(..., return_terms=True)``, or scalars under the
    names in :data:`TERMS`) are recorded as they are; another key is an error.
    """

    def __init__(self, every: int = 10, *, tsloss_terms: bool = False,
                 term_options: Optional[Mapping[str, Any]] = None) -> None:
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
            raise ValueError(f"every must be a positive integer (steps), got {every!r}")
        if not isinstance(tsloss_terms, bool):  # "no" would be true
            raise TypeError(f"tsloss_terms must be a bool, got {tsloss_terms!r}")
        self.every: int = every
        self._pending: List[Tuple[int, Dict[str, torch.Tensor]]] = []
        self._probe: Optional[TSLoss] = None
        unknown = sorted(set(term_options or {}) - set(TERM_OPTIONS))
        if unknown:
            raise ValueError(f"term_options: {', '.join(unknown)} not among {TERM_OPTIONS}")
        if term_options and not tsloss_terms:  # they shape the terms only it computes
            raise ValueError("term_options are options of the TSLoss terms that tsloss_terms=True "
                             "computes; pass tsloss_terms=True, or no term_options")
        if tsloss_terms:
            from tsloss_cuda.loss import TSLoss
            self._probe = TSLoss(stability=1.0, **dict(term_options or {}))
        self._shape: Optional[torch.Size] = None

    def due(self, step: int) -> bool:
        return _step(step) % self.every == 0

    def _terms_of(self, prompt: torch.Tensor) -> Union[Terms, Dict[str, torch.Tensor]]:
        assert self._probe is not None  # update calls it only with tsloss_terms=True
        reshaped = self._shape is not None and prompt.shape != self._shape
        if reshaped:
            self._probe.reset()  # prompts of different N cannot be compared for stability
        self._shape = prompt.shape
        # Any float dtype, as topology_metrics takes: TSLoss refuses float8, and computes the
        # others in float32 (float64 in float64) anyway.
        x = prompt.detach() if prompt.dtype == torch.float64 else prompt.detach().float()
        if x.device.type == "cpu" and cpu_engine_refuses(x):
            # NaN terms, as CUDA gives them, rather than the CPU engine's error
            return {name: _nan(x.device) for name in TERMS}
        with torch.no_grad():
            self._probe(x)
        if reshaped:  # not measured, which a 0 ("unchanged") would hide
            terms = self._probe.last_terms.copy()
            terms["stability"] = _nan(prompt.device)
            return terms
        return self._probe.last_terms

    def update(self, step: int, prompt: torch.Tensor,
               terms: Optional[Union[Terms, Mapping[str, Union[torch.Tensor, float]]]] = None
               ) -> None:
        step = _step(step)
        vals = topology_metrics(prompt)
        if terms is None and self._probe is not None:
            terms = self._terms_of(prompt)
        if terms:
            # The rest of tsloss_cuda.loss(..., return_terms=True)'s dict may come along.
            unknown = sorted(set(terms) - set(TERMS) - {"h1_count", "topology"})
            if unknown:
                raise ValueError(f"terms: unknown key(s) {', '.join(map(str, unknown))}; the "
                                 f"recorded terms are {', '.join(TERMS)}")
            for name in TERMS:
                t = terms.get(name)
                if isinstance(t, numbers.Real) and not isinstance(t, bool):
                    t = torch.tensor(float(t), dtype=torch.float32, device=prompt.device)
                elif t is not None and not isinstance(t, torch.Tensor):
                    raise TypeError(f"terms: {name} must be a tensor or a number, got "
                                    f"{type(t).__name__}")
                if isinstance(t, torch.Tensor) and t.numel() != 1:
                    raise ValueError(f"terms: {name} has shape {tuple(t.shape)}; the tracker "
                                     "records one prompt, so its terms must be scalars (one "
                                     "prompt's loss terms, or reduction='mean' or 'sum')")
                if isinstance(t, torch.Tensor):
                    # flush stacks the row's values: all of them on the prompt's device
                    t = t.detach().float().reshape(()).to(prompt.device)
                    if name == "scale":  # the clamp is not the prompt's scale
                        t = torch.where(t <= _SCALE_FLOOR, torch.zeros_like(t), t)
                    vals["ts_" + name] = t
        self._pending.append((step, vals))

    def flush(self) -> List[Dict[str, float]]:
        rows = []
        for step, vals in self._pending:
            row: Dict[str, float] = {"step": step}
            row.update(to_floats(vals))
            rows.append(row)
        self._pending = []
        return rows


class StepTimer:
    """Total seconds of marked spans of training steps, without a host sync per step.

    On CUDA the kernels run asynchronously, so a host clock would need a synchronisation at
    every mark. ``mark()`` records a CUDA event on the current stream instead; a span is read
    from its two events once they have completed: as they go when ``Event.query`` (which does
    not block) says so, else in :meth:`totals`, which waits for the last ones. On the CPU a mark
    is ``time.perf_counter()``.
    """

    def __init__(self, device: torch.device) -> None:
        self._cuda = torch.device(device).type == "cuda"
        self._open: Deque[Tuple[str, Any, Any]] = deque()  # CUDA spans not read yet
        self._totals: Dict[str, float] = {}

    def mark(self) -> Any:
        if not self._cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def add(self, key: str, start: Any, end: Any) -> None:
        """Add the span between two marks to ``key``'s total."""
        if not self._cuda:
            self._totals[key] = self._totals.get(key, 0.0) + (end - start)
            return
        self._open.append((key, start, end))
        while self._open and self._open[0][2].query():  # keeps few events alive
            self._read()

    def _read(self) -> None:
        key, start, end = self._open.popleft()
        end.synchronize()  # already complete, except for the last spans read by totals()
        self._totals[key] = self._totals.get(key, 0.0) + start.elapsed_time(end) / 1000.0

    def totals(self) -> Dict[str, float]:
        """Seconds per key so far (on CUDA, waits for the spans still running)."""
        while self._open:
            self._read()
        return dict(self._totals)
