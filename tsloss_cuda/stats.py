"""Statistics of a regulariser comparison: per-run summaries, paired bootstrap, Spearman.

numpy only. A run is its list of metrics rows (dicts with ``step`` and ``val_acc``, plus the
topology columns of :mod:`tsloss_cuda.tracking`), in step order.

Runs that never reach the target accuracy are *censored*: :func:`censored_steps` counts them as
reaching it one logging interval after the last step (``max_step + log_every``), the earliest
step they could still have reached it at. Their paired difference is then a bound, not a value,
and favours neither side more than the data allow.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np

Rows = Sequence[Mapping[str, float]]

#: Final topology measures correlated with final accuracy (claim 3): the TSLoss connectivity
#: and redundancy terms, and the stability distance to the previous logged prompt. The paper
#: claims compact, loop-free, stable prompts do better: a negative correlation for each.
TOPOLOGY_MEASURES = ("ts_connectivity", "ts_redundancy", "ts_stability")


def steps_to_target(rows: Rows, target: float) -> Optional[int]:
    """The first logged step with ``val_acc >= target``; None if no row reaches it."""
    for r in rows:
        if r["val_acc"] >= target:
            return int(r["step"])
    return None


def log_interval(rows: Rows) -> int:
    """Steps between the first two rows (the job logs at step 0, then every ``--log-every``)."""
    return int(rows[1]["step"]) - int(rows[0]["step"]) if len(rows) > 1 else 1


def censored_steps(rows: Rows, target: float) -> float:
    """:func:`steps_to_target`, or ``last step + log interval`` for a run that never reaches it."""
    s = steps_to_target(rows, target)
    return float(s) if s is not None else float(rows[-1]["step"]) + log_interval(rows)


def accuracy_auc(rows: Rows) -> float:
    """Area under the accuracy curve (trapezoid over steps) / the step span: a mean accuracy.

    1.0 for a run at 100 % from step 0; a single row gives its own accuracy.
    """
    x = np.array([r["step"] for r in rows], dtype=float)
    y = np.array([r["val_acc"] for r in rows], dtype=float)
    if len(x) < 2 or x[-1] == x[0]:
        return float(y[-1])
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


def final_acc(rows: Rows) -> float:
    return float(rows[-1]["val_acc"])


class Interval(NamedTuple):
    """A statistic with its 95 % bootstrap interval over ``n`` units (seeds or runs)."""

    value: float
    low: float
    high: float
    n: int

    def excludes_zero(self, sign: int) -> bool:
        """True when the whole interval lies on the side of 0 given by ``sign`` (+1 or -1)."""
        return bool(self.low > 0) if sign > 0 else bool(self.high < 0)


def _percentiles(samples: np.ndarray) -> tuple:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return float(lo), float(hi)


def paired_difference(variant: Mapping[int, float], baseline: Mapping[int, float], *,
                      n_boot: int = 10000, seed: int = 0) -> Interval:
    """Mean of ``variant[s] - baseline[s]`` over the seeds both have, with a 95 % interval.

    The interval is the percentile bootstrap of the mean over seeds (``n_boot`` resamples of the
    seeds with replacement, ``numpy.random.default_rng(seed)``). Fewer than 2 shared seeds give
    a NaN interval: one pair says nothing about spread.
    """
    seeds = sorted(set(variant) & set(baseline))
    d = np.array([variant[s] - baseline[s] for s in seeds], dtype=float)
    if d.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    if d.size < 2:
        return Interval(float(d.mean()), float("nan"), float("nan"), int(d.size))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    lo, hi = _percentiles(d[idx].mean(1))
    return Interval(float(d.mean()), lo, hi, int(d.size))


def ranks(x: Sequence[float]) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=r)
    return sums[inv] / counts[inv]


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair of ``(B, n)`` arrays; NaN where a row is constant."""
    rx = np.apply_along_axis(ranks, 1, x)
    ry = np.apply_along_axis(ranks, 1, y)
    rx -= rx.mean(1, keepdims=True)
    ry -= ry.mean(1, keepdims=True)
    den = np.sqrt((rx ** 2).sum(1) * (ry ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(1) / np.where(den > 0, den, 1), np.nan)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); NaN if one is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d of one length, got {x.shape} and {y.shape}")
    return float(_spearman_rows(x[None], y[None])[0]) if x.size >= 2 else float("nan")


def spearman_interval(x: Sequence[float], y: Sequence[float], *, n_boot: int = 2000,
                      seed: int = 0) -> Interval:
    """:func:`spearman` with a 95 % percentile bootstrap interval over the pairs (runs).

    Resamples in which either variable is constant have no rank correlation and are dropped.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rho = spearman(x, y)
    if x.size < 3:
        return Interval(rho, float("nan"), float("nan"), int(x.size))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    lo, hi = _percentiles(_spearman_rows(x[idx], y[idx]))
    return Interval(rho, lo, hi, int(x.size))


def run_summary(rows: Rows, target: float) -> Dict[str, float]:
    """Per-run statistics: censored steps to ``target``, accuracy AUC, final accuracy, and the
    final topology measures (``ts_connectivity``, ``ts_redundancy``, ``ts_stability``)."""
    out = {"steps_to_target": censored_steps(rows, target), "auc": accuracy_auc(rows),
           "final_acc": final_acc(rows)}
    for k in TOPOLOGY_MEASURES:
        if k in rows[-1]:
            out[k] = float(rows[-1][k])
    return out


def by_seed(results: Sequence[Mapping], variant: str, stat: str, target: float
            ) -> Dict[int, float]:
    """seed -> ``run_summary(...)[stat]`` of the runs of one variant."""
    return {int(r["seed"]): run_summary(r["rows"], target)[stat] for r in results
            if r.get("variant", r["regularizer"]) == variant}


def seeds_of(results: Sequence[Mapping]) -> List[int]:
    return sorted({int(r["seed"]) for r in results})
