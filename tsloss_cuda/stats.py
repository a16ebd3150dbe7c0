"""Statistics of a regulariser comparison: per-run summaries, small-sample bootstrap, Spearman.

numpy only. A run is its list of metrics rows (dicts with ``step`` and ``val_acc``, plus the
topology columns of :mod:`tsloss_cuda.tracking`), in step order.

**Intervals.** Every interval is a 95 % *studentized* bootstrap over seeds (bootstrap-t:
Efron & Tibshirani 1993, ch. 12). The plain percentile bootstrap of a mean covers ~84 % with 5
seeds, and no percentile-type interval can do much better there: its ends stay inside the data,
and the mean lies outside the range of 5 draws 6 % of the time. The studentized interval
resamples ``t* = (mean* - mean) / se*`` and puts ``mean - q(0.975)·se``, ``mean - q(0.025)·se``
as its ends, which may leave the data's range. A mean's interval is the union of that and
Student's t interval: accuracy differences are discrete (steps of 1 / validation size) and
often tied, and there the bootstrap-t alone is too narrow (simulated with differences of -1, 0
or +1 examples in 150 and no true effect, it covered 86 % at n = 5 and called a one-sided
effect 7.6 % of the time instead of 2.5 %). Simulated (``tests/test_stats.py``), the union
covers 96-97 % of normal means at n = 5 and 10, and 94-95 % of exponential (skewed) ones, where
the t interval alone covers less. A resample without spread (one seed drawn n times, or tied
values only) is standardised by the sample's own se; data without any spread (every seed the
same difference) have no interval, since no t statistic exists there (``undefined`` = 1), and
are decided by the exact sign test. With 3 seeds or fewer one seed drawn every time is likelier
than 2.5 %, so there is no interval: 4 seeds are the fewest that can test anything.

**Discrete differences: the randomization test.** Even the union is too liberal for a few
discrete differences: 7 seeds at +1, +1, +1, +1, +1, +1, -1 examples of 150 have t p = 0.047,
but the exact sign test gives 0.125, and with each seed ±1 at random the interval alone called
a one-sided effect 6.25 % of the time at n = 7 (nominal 2.5 %). So from
:data:`RANDOMIZATION_MIN` = 6 seeds a mean's ``held`` also needs the exact paired randomization
(sign-flip) test of the mean, two-sided p < 0.05 (:func:`randomization_p`,
:attr:`Interval.randomization_p`), which is exact whatever the differences' distribution,
given symmetry under no effect (the seed's pairing). With 5 seeds or fewer its smallest p is
2 / 2^n >= 0.0625, so there the interval alone decides, resting on Student's t (as
``python/compare_report.py`` notes). With 6 or more the test applies even when some
differences are 0, which flip to themselves: 6 seeds of which one tied at 0 and five at +1 have
p = 0.0625, ``not held``, though 5 seeds at +1, +1, +1, +1, +2 hold by the interval alone; the
exact test is the one to trust where it can decide. The 2^n sign vectors are enumerated for
n <= :data:`RANDOMIZATION_EXACT_MAX` = 20 (a million vectors, in chunks); beyond that
``n_boot`` vectors are drawn with the bootstrap's RNG seed and p carries its Monte-Carlo error
(:attr:`Interval.randomization_mc`; within it of 0.05 the verdict is ``inconclusive``). Drawing
rather than dropping the test there keeps one rule for every n: Student's t is then a good
approximation for bounded differences, but "good" has no bound for a few distinct values, and
drawing costs milliseconds. Exact one-sided false ``held`` rates of the new rule, every data
set enumerated with its probability under no effect (nominal 2.5 %):

=====================================  =====  =====  =====  =====  =====
differences (examples of 150)          n = 5  n = 6  n = 7  n = 8  n = 9
=====================================  =====  =====  =====  =====  =====
-1, 0, +1 with probability .3, .4, .3  1.62   0.07   0.23   0.40   0.56
-1 or +1, each 1/2                     0      1.56   0.78   0.39   1.95
-2 .. +2, each 1/5                     3.52   0.41   0.80   0.96   0.73
=====================================  =====  =====  =====  =====  =====

(in %; the interval alone: 2.60, 3.01, 1.82, 2.58 at n = 6-9 for the first, 1.56, 6.25, 3.52,
1.95 for the second, 2.25, 2.31, 1.81, 1.11 for the third; n = 5 is unchanged, where only the
interval decides, and so is n = 4: 0, 0, 2.24.) With 4 seeds the randomization test cannot
decide anything (smallest p 2/16 = 0.125), so an oddity remains there: +1, +1, +1, +2 examples
hold by the interval, while +1, +1, +1, +1, without spread, go to the sign test (p = 0.125) and
are ``untested``. The interval's verdict at n = 4 and 5 is parametric, and the rates above show
it near nominal for these data (3.5 % at worst).

Spearman intervals are the same union on
Fisher's z, with a cluster jackknife standard error (floored, for Student's half, by the
resamples' spread: :func:`spearman_interval`): simulated with
independent measures, 5 seeds of 7 runs (600 sets each), the bootstrap-t alone excluded zero
6.7 % of the time without a shared effect per seed and 10.0 % with one (sd 2), the union 2.2 %
and 3.8 % (nominal 5 %). A perfect ordering (rho = ±1 in every resample) has a point
interval, kept only where such an ordering is unlikely under independence, 2 / seeds! < 0.05
(5 seeds or more); with 4 (p = 0.083) it is unbounded, ``untested``. With at most
:data:`EXACT_MAX` distinct resamples (n <= 9 seeds) the bootstrap distribution is enumerated
exactly (every multiset of seeds, multinomially weighted), so no interval depends on an RNG
seed; beyond that ``n_boot`` resamples are drawn and each end carries its Monte-Carlo error
(:attr:`Interval.mc_error`), within which an end is not told from 0.

**Censoring.** A run that never reaches the target accuracy is censored: :func:`censored_steps`
counts it as reaching the target one logging interval after its last step, the earliest it
could have. That understates its true time, so a mean of censored step differences is pulled
towards 0 and can even favour the censored side; steps to target are therefore compared per
seed as a win, tie or loss (:func:`steps_outcome`), which censoring cannot bias, and judged by
an exact sign test (:func:`sign_test`).
"""
from __future__ import annotations

import itertools
import math
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

Rows = Sequence[Mapping[str, float]]
#: 1-d values: a sequence of numbers, or an array
Values = Union[Sequence[float], np.ndarray]

#: Final topology measures correlated with final accuracy (claim 3): the TSLoss connectivity
#: and redundancy terms, and the stability distance to the previous logged prompt. The paper
#: claims compact, loop-free, stable prompts do better: a negative correlation for each.
TOPOLOGY_MEASURES = ("ts_connectivity", "ts_redundancy", "ts_stability")

#: Most distinct resamples enumerated exactly (C(2n-1, n): 126 for n = 5, 24310 for n = 9).
EXACT_MAX = 30000
#: Relative tolerance under which an interval end counts as 0 (rounding of a mean of zeros).
TOL = 1e-9
#: z of the 99 % band of a Monte-Carlo quantile's rank (the ends' Monte-Carlo error).
_MC_Z = 2.576
#: Student's t 0.975 quantiles for 1-30 degrees of freedom (beyond: :func:`t_975`'s expansion).
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
         2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
         2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
         2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)


def t_975(df: int) -> float:
    """Student's t 0.975 quantile with ``df`` degrees of freedom (table to 30, then the
    Cornish-Fisher expansion in 1/df, within 4e-8 of the exact value there)."""
    if df < 1:
        raise ValueError(f"t_975: df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3)
            + (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z)
            / (92160 * df ** 4))


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
    """:func:`steps_to_target`, or ``last step + log interval`` for a run that never reaches it
    (a lower bound on its true time, so use it through :func:`steps_outcome`, not a mean)."""
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


# ---------------------------------------------------------------------------------------------
# intervals

class Interval(NamedTuple):
    """A statistic with its 95 % bootstrap interval over ``n`` resampled units (seeds).

    An end may be infinite (too few units to bound it) and is NaN only without an interval.
    mc_error: the Monte-Carlo error of the ends (0 when the resamples were enumerated);
    mc_ends: whether (low, high) each carry it (an end of Student's t interval does not, unless
    its se came from drawn resamples: :func:`spearman_interval`).
    nonfinite: input units whose value was not finite (a paired interval is then NaN; a
    correlation drops them). undefined: the share of resamples whose statistic is undefined
    (a constant variable in a correlation), left out of the percentiles; 1 for a mean of data
    without spread, which has no interval. randomization_p, randomization_mc: the two-sided p
    of the exact paired randomization test of a mean of 6 units or more, and its Monte-Carlo
    error (0 when enumerated): :func:`randomization_p`; NaN (not tested) otherwise.
    """

    value: float
    low: float
    high: float
    n: int
    mc_error: float = 0.0
    nonfinite: int = 0
    undefined: float = 0.0
    mc_ends: Tuple[bool, bool] = (True, True)
    randomization_p: float = math.nan  # one object: Intervals without a p compare equal
    randomization_mc: float = 0.0

    def _randomization(self) -> str:
        """``held`` (p < 0.05 beyond its Monte-Carlo error), ``inconclusive`` (within it) or
        ``not held`` for :attr:`randomization_p`; ``held`` when there is none (NaN)."""
        p, e = self.randomization_p, self.randomization_mc
        if math.isnan(p) or p + e < 0.05:
            return "held"
        return "inconclusive" if p - e < 0.05 else "not held"

    def decide(self, sign: int) -> str:
        """``held`` when the whole interval lies on the side of 0 given by ``sign`` (+1 or -1)
        by more than the rounding tolerance and the Monte-Carlo error; ``inconclusive`` when
        the near end is within the Monte-Carlo error of that; ``untested`` without an interval
        or with both ends infinite (fewer than 4 units); else ``not held``. Data without spread
        (``undefined`` = 1: every unit the same value) have no interval; they are decided by
        the exact sign test of n equal outcomes: ``not held`` when the value is not on the
        claimed side, ``held`` when n >= 6 (p = 2·0.5^n < 0.05), else ``untested``.

        With :attr:`randomization_p` (a mean of 6 units or more: :func:`mean_interval`),
        ``held`` also needs that exact paired randomization test's two-sided p < 0.05: an
        interval on the claimed side with p >= 0.05 is ``not held`` (``inconclusive`` where a
        drawn p is within its Monte-Carlo error, :attr:`randomization_mc`, of 0.05)."""
        if self.undefined == 1 and math.isfinite(self.value):
            if self.value * sign <= TOL * max(1.0, abs(self.value)):
                return "not held"
            return "held" if sign_test(dict.fromkeys(range(self.n), 1)).p < 0.05 else "untested"
        if math.isnan(self.low) or math.isnan(self.high) or (self.low, self.high) == (
                -math.inf, math.inf):  # no interval, or too few units to bound one
            return "untested"
        margin = self.low if sign > 0 else -self.high
        mc = self.mc_error if self.mc_ends[0 if sign > 0 else 1] else 0.0
        finite = [abs(v) for v in (self.low, self.high) if math.isfinite(v)]
        tol = TOL * max([1.0] + finite)  # a mean of exact zeros may round to 2.2e-17
        if margin - mc > tol:
            return self._randomization()
        if margin + mc > tol:
            return "not held" if self._randomization() == "not held" else "inconclusive"
        return "not held"

    def excludes_zero(self, sign: int) -> bool:
        return self.decide(sign) == "held"


def resamples_exact(n: int) -> bool:
    """Whether :func:`resamples` enumerates the resamples of ``n`` units (no RNG)."""
    return n >= 1 and math.comb(2 * n - 1, n) <= EXACT_MAX


def _check_n_boot(n_boot: int) -> None:
    # Checked by the public functions on entry, whether or not draws are needed, so a bad value
    # fails with 4 seeds as with 10; unchecked, drawing divided by 0 or passed numpy "negative
    # dimensions".
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def resamples(n: int, n_boot: int, seed: int) -> Tuple[np.ndarray, np.ndarray, bool]:
    """Bootstrap resamples of ``n`` units as counts: ``(counts (B, n), weights (B,), exact)``.

    Every distinct multiset with its multinomial probability when there are at most
    :data:`EXACT_MAX` (exact, no RNG), else ``n_boot`` draws with equal weights (``n_boot`` >= 1:
    the callers, :func:`mean_interval` and :func:`spearman_interval`, check it on entry).
    """
    if resamples_exact(n):
        counts = np.array([np.bincount(c, minlength=n) for c in
                           itertools.combinations_with_replacement(range(n), n)])
        logw = (math.lgamma(n + 1) - n * math.log(n)
                - np.array([sum(math.lgamma(k + 1) for k in c) for c in counts]))
        return counts.astype(float), np.exp(logw), True
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
    return counts, np.full(n_boot, 1.0 / n_boot), False


def _sorted_cdf(v: np.ndarray, w: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``v`` sorted (stably), and the cumulative share of the weights ``w`` up to each."""
    order = np.argsort(v, kind="mergesort")
    return v[order], np.cumsum(w[order]) / w.sum()


def _rank(cum: np.ndarray, q: float) -> int:
    """The inverse CDF's position for probability ``q`` (the slack keeps a probability step
    that lands on ``q`` on its side)."""
    return min(int(np.searchsorted(cum, q - 1e-12)), cum.size - 1)


def _studentized(est: float, se: float, stat: np.ndarray, se_b: np.ndarray, w: np.ndarray,
                 exact: bool, scale: float, units: int, se_t: Optional[float] = None,
                 se_t_mc: float = 0.0) -> Tuple[float, float, float, float, Tuple[bool, bool]]:
    """(low, high, Monte-Carlo error, undefined share, which ends carry that error): the 95 %
    studentized bootstrap interval ``[est - q(0.975)·se, est - q(0.025)·se]``, q the weighted
    quantiles of ``t* = (stat - est) / se_b`` over the resamples, joined with Student's t
    interval ``est ± t(0.975, units - 1)·se_t`` (see the module's notes), whose ends carry none.
    ``se_t`` defaults to ``se``; a jackknife ``se`` can be 0 while the resamples spread (see
    :func:`spearman_interval`), and then the bootstrap-t half is dropped and Student's half alone
    is the interval; with ``se_t`` 0 as well every resample equals ``est``, the interval too.
    ``se_t_mc``: the Monte-Carlo error of a ``se_t`` taken from drawn resamples; Student's ends
    then carry ``t(0.975, units - 1)·se_t_mc`` (``mc_error`` is the larger of the two errors).

    A resample without spread (``se_b`` = 0: one unit drawn n times, or only tied values
    drawn) or without a standard error (``se_b`` NaN: a jackknife whose leave-one-out samples
    include a constant variable, though the resample's own statistic exists) has no t*; it is
    standardised by the sample's own ``se`` instead. Dropping it would cut one tail short, and
    ``t* = ±inf`` would let three tied values out of five (accuracy differences come in steps
    of 1 / validation size) unbound an end. ``scale``: the data's
    magnitude, for the tolerance under which a spread is 0.
    """
    ok = np.isfinite(stat)
    undefined = float(w[~ok].sum())
    stat, se_b, w = stat[ok], se_b[ok], w[ok]
    se_t = se if se_t is None else se_t
    if stat.size == 0 or not math.isfinite(se) or not math.isfinite(se_t):
        return float("nan"), float("nan"), 0.0, undefined, (True, True)
    half = t_975(units - 1) * se_t
    if se <= 1e-12 * scale:  # no t statistic
        if se_t <= 1e-12 * scale:  # every resample equals the estimate (rho = ±1 clipped)
            return est, est, 0.0, undefined, (True, True)
        mc_t = t_975(units - 1) * se_t_mc
        return est - half, est + half, mc_t, undefined, (mc_t > 0, mc_t > 0)
    t, cum = _sorted_cdf((stat - est) / np.where(np.isfinite(se_b) & (se_b > 1e-9 * scale),
                                                 se_b, se), w)
    lo, hi = _rank(cum, 0.025), _rank(cum, 0.975)
    mc = 0.0
    if not exact:  # 99 % band of each quantile's rank among the draws, in units of se
        h = _MC_Z * math.sqrt(t.size * 0.025 * 0.975)
        for i in (lo, hi):
            a, b = max(int(i - h), 0), min(int(math.ceil(i + h)), t.size - 1)
            mc = max(mc, (t[i] - t[a]) * se, (t[b] - t[i]) * se)
    low, high = float(est - t[hi] * se), float(est - t[lo] * se)
    mc_t = t_975(units - 1) * se_t_mc
    ends = (low <= est - half or mc_t > 0, high >= est + half or mc_t > 0)
    return min(low, est - half), max(high, est + half), float(max(mc, mc_t)), undefined, ends


#: Fewest units for which the paired randomization test can reach p < 0.05 (2 / 2^6 = 0.031;
#: 5 units: 2 / 2^5 = 0.0625), and so the fewest whose mean's ``held`` also needs it.
RANDOMIZATION_MIN = 6
#: Most units whose 2^n sign vectors :func:`randomization_p` enumerates (2^20 = 1,048,576).
RANDOMIZATION_EXACT_MAX = 20
#: Sign vectors per chunk of the enumeration (bounds its memory to chunk × n floats).
_FLIP_CHUNK = 1 << 16


def randomization_p(values: Values, *, n_draws: int = 20000, seed: int = 0
                    ) -> Tuple[float, float]:
    """(two-sided p, its Monte-Carlo error) of the exact paired randomization test of a mean
    of 0 (Fisher's sign-flip test): under no effect each difference's sign is a fair coin, and
    p is the share of the 2^n sign vectors whose ``|sum ±|d_i||`` is at least the observed
    ``|sum d_i|`` (within rounding). Enumerated, with error 0, for n <=
    :data:`RANDOMIZATION_EXACT_MAX`; beyond, ``n_draws`` sign vectors are drawn (``seed``), p is
    ``(1 + hits) / (1 + n_draws)`` (a valid p, the observed vector counted once) and its error
    the 99 % band ``2.576·sqrt(p (1 - p) / n_draws)``. A zero difference flips to itself, so
    with k non-zero differences p is at least 2 / 2^k. Empty data give p = 1."""
    a = np.abs(np.asarray(values, dtype=float))
    n = a.size
    if n == 0:
        return 1.0, 0.0
    obs = abs(float(np.sum(values)))
    tol = 1e-9 * max(float(a.sum()), 1e-300)  # the same sum added in another order

    def at_least(signs: np.ndarray) -> int:  # sign vectors whose |sum| reaches the observed
        return int(np.count_nonzero(np.abs(signs @ a) >= obs - tol))

    if n <= RANDOMIZATION_EXACT_MAX:
        hits, total = 0, 1 << n
        bit = np.arange(n, dtype=np.int64)
        for start in range(0, total, _FLIP_CHUNK):
            idx = np.arange(start, min(start + _FLIP_CHUNK, total), dtype=np.int64)
            hits += at_least(1.0 - 2.0 * ((idx[:, None] >> bit[None]) & 1))
        return hits / total, 0.0
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_draws, _FLIP_CHUNK):
        m = min(_FLIP_CHUNK, n_draws - start)
        hits += at_least(1.0 - 2.0 * rng.integers(0, 2, size=(m, n)))
    p = (1 + hits) / (1 + n_draws)
    return p, _MC_Z * math.sqrt(p * (1 - p) / n_draws)


def mean_interval(values: Mapping[int, float], *, n_boot: int = 20000, seed: int = 0,
                  bounds: Tuple[float, float] = (-math.inf, math.inf)) -> Interval:
    """Mean of ``values`` (unit -> value) with its 95 % interval: the union of the studentized
    bootstrap interval and Student's t interval (see the module's notes).

    The ends may leave the range the mean can take (an outlying seed makes them wide): they
    are clipped to ``bounds``, e.g. (-1, 1) for a difference of accuracies.

    A non-finite value makes the whole result NaN (counted in ``nonfinite``), never dropped.
    Fewer than 2 units give a NaN interval and fewer than 4 an unbounded one: with 3, one unit
    drawn 3 times has probability 1/27 > 2.5 %, so an end would rest on single-unit resamples.
    Data without spread (every value equal) give a NaN interval with ``undefined`` = 1, which
    :meth:`Interval.decide` judges by the sign test: five seeds that each gained exactly one
    validation example prove nothing (5 wins of 5: p = 0.0625), six do (p = 0.031). With 6
    units or more it also carries the exact randomization test's p (:func:`randomization_p`,
    ``n_boot`` sign vectors and ``seed`` where they are drawn), which ``held`` needs below 0.05.
    """
    _check_n_boot(n_boot)
    d = np.array([values[k] for k in sorted(values)], dtype=float)
    bad = int(np.sum(~np.isfinite(d)))
    if d.size == 0 or bad:
        return Interval(float("nan"), float("nan"), float("nan"), int(d.size), nonfinite=bad)
    n = d.size
    if n < 2:
        return Interval(float(d.mean()), float("nan"), float("nan"), 1)
    if n < 4:
        return Interval(float(d.mean()), -math.inf, math.inf, n)
    mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(n))
    scale = float(np.abs(d).max()) or 1.0
    if se <= 1e-12 * scale:
        return Interval(mean, float("nan"), float("nan"), n, undefined=1.0)
    counts, w, exact = resamples(n, n_boot, seed)
    m = counts @ d / n
    se_b = np.sqrt((counts * (d[None] - m[:, None]) ** 2).sum(1) / (n - 1) / n)
    lo, hi, mc, _, ends = _studentized(mean, se, m, se_b, w, exact, scale, n)
    rp, rmc = (randomization_p(d, n_draws=n_boot, seed=seed) if n >= RANDOMIZATION_MIN
               else (math.nan, 0.0))
    return Interval(mean, max(lo, bounds[0]), min(hi, bounds[1]), n, mc, mc_ends=ends,
                    randomization_p=rp, randomization_mc=rmc)


def paired_difference(variant: Mapping[int, float], baseline: Mapping[int, float], *,
                      n_boot: int = 20000, seed: int = 0,
                      bounds: Tuple[float, float] = (-math.inf, math.inf)) -> Interval:
    """Mean of ``variant[s] - baseline[s]`` over the seeds both have, with the studentized
    bootstrap interval over seeds (:func:`mean_interval`)."""
    seeds = sorted(set(variant) & set(baseline))
    return mean_interval({s: variant[s] - baseline[s] for s in seeds}, n_boot=n_boot, seed=seed,
                         bounds=bounds)


# ---------------------------------------------------------------------------------------------
# steps to target: wins, ties and losses per seed

def steps_outcome(variant: Tuple[float, bool], baseline: Tuple[float, bool]) -> int:
    """+1 when the variant reached the target first, -1 when the baseline did, else 0.

    Each side is ``(censored steps, reached)``. Reached against censored is a definite win
    (the censored run had not reached it by its end); both censored is a tie.
    """
    (vs, vr), (bs, br) = variant, baseline
    if vr and br:
        return int(np.sign(bs - vs))
    return int(vr) - int(br)


class SignTest(NamedTuple):
    """Per-seed outcomes of a variant against the baseline and the exact two-sided sign test
    (ties dropped): ``p`` < 0.05 needs at least 6 untied seeds (5 of 5 give 0.0625)."""

    wins: int
    ties: int
    losses: int
    p: float

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    def decide(self, sign: int = +1) -> str:
        """``held`` (p < 0.05, more wins than losses for ``sign`` +1), ``untested`` when the
        untied seeds are too few for any p < 0.05, else ``not held``."""
        k = self.wins + self.losses
        if k < 6:  # 2·0.5^k >= 0.05: no outcome could be significant
            return "untested"
        better = self.wins > self.losses if sign > 0 else self.losses > self.wins
        return "held" if better and self.p < 0.05 else "not held"


def sign_test(outcomes: Mapping[int, int]) -> SignTest:
    """:class:`SignTest` of seed -> +1 / 0 / -1 (:func:`steps_outcome`)."""
    v = list(outcomes.values())
    wins, losses = v.count(1), v.count(-1)
    k = wins + losses
    tail = sum(math.comb(k, i) for i in range(min(wins, losses) + 1)) / 2 ** k if k else 1.0
    return SignTest(wins, v.count(0), losses, min(1.0, 2 * tail))


def paired_outcomes(variant: Mapping[int, Tuple[float, bool]],
                    baseline: Mapping[int, Tuple[float, bool]]) -> Dict[int, int]:
    """seed -> :func:`steps_outcome` over the seeds both have."""
    return {s: steps_outcome(variant[s], baseline[s])
            for s in sorted(set(variant) & set(baseline))}


# ---------------------------------------------------------------------------------------------
# Spearman

def ranks(x: Values) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks."""
    x = np.asarray(x, dtype=float)
    return _midranks(x, np.ones((1, x.size)))[0] if x.size else np.zeros(0)


def _midranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mid-ranks of ``x`` (R,) in each sample where run r appears ``w[b, r]`` times: (B, R)."""
    _, inv = np.unique(x, return_inverse=True)
    inv = inv.reshape(-1)
    onehot = (inv[:, None] == np.arange(inv.max() + 1)[None]).astype(float)
    wg = w @ onehot  # copies of each distinct value per sample
    mid = np.cumsum(wg, 1) - wg + (wg + 1) / 2
    return mid[:, inv]


def _spearman_weighted(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Spearman rho of each sample of runs with multiplicities ``w`` (B, R), as ranking the
    concatenated copies would give; NaN where x or y is constant in the sample."""
    rx, ry = _midranks(x, w), _midranks(y, w)
    tot = w.sum(1, keepdims=True)
    rx = rx - (w * rx).sum(1, keepdims=True) / tot
    ry = ry - (w * ry).sum(1, keepdims=True) / tot
    cov, vx, vy = (w * rx * ry).sum(1), (w * rx ** 2).sum(1), (w * ry ** 2).sum(1)

    def varies(v: np.ndarray) -> np.ndarray:  # exact: two distinct values drawn
        return ((w @ (v[:, None] == np.unique(v)[None]).astype(float)) > 0).sum(1) > 1

    ok = varies(x) & varies(y)
    return np.where(ok, cov / np.sqrt(np.where(ok, vx * vy, 1.0)), np.nan)


def spearman(x: Values, y: Values) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); NaN if one is constant.

    Raises ValueError on a non-finite value: NaN has no rank (drop it first).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d of one length, got {x.shape} and {y.shape}")
    bad = int(np.sum(~(np.isfinite(x) & np.isfinite(y))))
    if bad:
        raise ValueError(f"spearman: {bad} pair(s) with a non-finite value have no rank")
    if x.size < 2:
        return float("nan")
    return float(_spearman_weighted(x, y, np.ones((1, x.size)))[0])


def _fisher_z(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.arctanh(np.clip(_spearman_weighted(x, y, w), -1 + 1e-9, 1 - 1e-9))


def _jackknife_se(x: np.ndarray, y: np.ndarray, member: np.ndarray, counts: np.ndarray
                  ) -> np.ndarray:
    """Delete-one-draw jackknife standard error of Fisher's z of each resample (B, n clusters):
    each of the n drawn clusters left out once (a cluster drawn c times gives c equal terms)."""
    n = counts.shape[1]
    z = np.empty(counts.shape)
    for j in range(n):
        less = counts.copy()
        less[:, j] = np.maximum(less[:, j] - 1, 0)
        z[:, j] = _fisher_z(x, y, less[:, member])
    z = np.where(counts > 0, z, 0.0)
    mean = (counts * z).sum(1) / n
    return np.sqrt((n - 1) / n * (counts * (z - mean[:, None]) ** 2).sum(1))


def _robust_sd(v: np.ndarray, w: np.ndarray, exact: bool) -> Tuple[float, float]:
    """(sd, its Monte-Carlo error): the weighted interquartile range of the finite ``v`` over
    1.349 (a normal's sd), the spread of the resampled z, robust to resamples of few distinct
    clusters, whose rho of ±1 puts z at the clip (±10.7). From drawn resamples, the error is
    the most the range moves while each quartile's rank moves within its 99 % band (as the
    ends' in :func:`_studentized`); 0 when enumerated."""
    ok = np.isfinite(v)
    v, w = v[ok], w[ok]
    if v.size == 0:
        return 0.0, 0.0
    v, cum = _sorted_cdf(v, w)
    i25, i75 = _rank(cum, 0.25), _rank(cum, 0.75)
    sd, mc = float(v[i75] - v[i25]) / 1.349, 0.0
    if not exact:
        h = _MC_Z * math.sqrt(v.size * 0.25 * 0.75)
        at = lambda i: v[min(max(i, 0), v.size - 1)]  # noqa: E731
        wider = at(math.ceil(i75 + h)) - at(int(i25 - h))
        narrower = at(int(i75 - h)) - at(math.ceil(i25 + h))
        mc = max(float(wider - (v[i75] - v[i25])), float((v[i75] - v[i25]) - narrower)) / 1.349
    return sd, mc


def spearman_interval(x: Values, y: Values,
                      clusters: Optional[Sequence[int]] = None, *, n_boot: int = 20000,
                      seed: int = 0) -> Interval:
    """:func:`spearman` with a 95 % studentized cluster bootstrap interval.

    Runs of one seed share their start and data order, so they are not independent: the
    bootstrap resamples seeds (``clusters``; default each run its own), each drawn seed
    bringing all its runs, and ``n`` is the number of clusters. It is studentized on Fisher's
    z with a jackknife-over-clusters standard error in each resample, joined with Student's t
    interval on z (as :func:`mean_interval`: the bootstrap-t alone is too narrow), then mapped
    back to rho
    (``mc_error`` stays in z units, an upper bound in rho). Student's half uses the larger of
    the jackknife se and the resampled z's spread (interquartile range / 1.349): the jackknife
    se can be 0 where the resamples spread (x = 1..6 against y = 2, 1, 4, 3, 6, 5: every
    leave-one-out rho is 0.83), which made a zero-width interval; without that se there is no
    t statistic, and Student's half alone is the interval (from drawn resamples the spread
    carries a Monte-Carlo error, and so do Student's ends then: ``mc_ends``). Pairs with a non-finite value are
    dropped and counted (``nonfinite``); resamples with a constant variable have no rho
    (``undefined``). Fewer than 3 runs or 2 clusters give a NaN interval, fewer than 4 clusters
    an unbounded one (see :func:`mean_interval`). A perfect rank agreement has rho = ±1 in
    every resample: its interval is that point (Fisher's z clipped), and the claim is decided
    where such an ordering is unlikely under independence, ``2 / clusters! < 0.05`` (5 clusters
    or more: 2/120 = 0.017); with 4 (2/24 = 0.083) the interval is unbounded (``untested``).
    """
    _check_n_boot(n_boot)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    c = np.arange(x.size) if clusters is None else np.asarray(clusters)
    keep = np.isfinite(x) & np.isfinite(y)
    bad = int(np.sum(~keep))
    x, y, c = x[keep], y[keep], c[keep]
    ids, member = np.unique(c, return_inverse=True)
    member = member.reshape(-1)
    rho = spearman(x, y)
    if x.size < 3 or ids.size < 2 or not math.isfinite(rho):
        return Interval(rho, float("nan"), float("nan"), int(ids.size), nonfinite=bad)
    if ids.size < 4:  # as in mean_interval: one cluster drawn every time is too likely
        return Interval(rho, -math.inf, math.inf, int(ids.size), nonfinite=bad)
    one = np.ones((1, ids.size))
    z0, se0 = float(_fisher_z(x, y, one[:, member])[0]), float(_jackknife_se(x, y, member, one)[0])
    counts, w, exact = resamples(ids.size, n_boot, seed)
    z = _fisher_z(x, y, counts[:, member])
    floor, floor_mc = _robust_sd(z, w, exact)
    lo, hi, mc, undef, ends = _studentized(z0, se0, z, _jackknife_se(x, y, member, counts), w,
                                           exact, 1.0, int(ids.size), max(se0, floor),
                                           floor_mc if floor > se0 else 0.0)
    if lo == hi and 2 / math.factorial(int(ids.size)) >= 0.05:
        # A point interval: every resample equals the estimate, a perfect ordering (rho = ±1).
        # Under independence the units' ordering is uniform, so a perfect one in either
        # direction has probability 2 / units!: 0.083 with 4 units, too likely to decide.
        return Interval(rho, -math.inf, math.inf, int(ids.size), nonfinite=bad,
                        undefined=undef)
    return Interval(rho, float(np.tanh(lo)), float(np.tanh(hi)), int(ids.size), mc, bad, undef,
                    ends)


# ---------------------------------------------------------------------------------------------
# runs

def run_summary(rows: Rows, target: float) -> Dict[str, float]:
    """Per-run statistics: censored steps to ``target`` and whether it was ``reached`` (1/0),
    accuracy AUC, final accuracy, and the final topology measures (:data:`TOPOLOGY_MEASURES`)."""
    out = {"steps_to_target": censored_steps(rows, target),
           "reached": float(steps_to_target(rows, target) is not None),
           "auc": accuracy_auc(rows), "final_acc": final_acc(rows)}
    for k in TOPOLOGY_MEASURES:
        if k in rows[-1]:
            out[k] = float(rows[-1][k])
    return out


def variant_of(r: Mapping) -> str:
    """The run's variant (``tsloss_stab``, ``tsloss_w0.3``, ...), else its regulariser."""
    return r.get("variant") or r["regularizer"]


def by_seed(results: Sequence[Mapping], variant: str, stat: str, target: float
            ) -> Dict[int, float]:
    """seed -> ``run_summary(...)[stat]`` of the runs of one variant."""
    return {int(r["seed"]): run_summary(r["rows"], target)[stat] for r in results
            if variant_of(r) == variant}


def steps_by_seed(results: Sequence[Mapping], variant: str, target: float
                  ) -> Dict[int, Tuple[float, bool]]:
    """seed -> (censored steps to ``target``, reached) of one variant, for :func:`steps_outcome`."""
    steps = by_seed(results, variant, "steps_to_target", target)
    reached = by_seed(results, variant, "reached", target)
    return {s: (steps[s], bool(reached[s])) for s in steps}


def seeds_of(results: Sequence[Mapping]) -> List[int]:
    return sorted({int(r["seed"]) for r in results})
