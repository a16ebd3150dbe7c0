"""Markdown report of a ``--compare`` folder: which of the paper's three claims held.

    python python/compare_report.py OUT_DIR [--baseline none] [--variant tsloss] [--target 0.8]
        > report.md

Reads ``OUT_DIR/runs/*.json`` (a comparison in progress works: it reports the runs that
exist), else ``OUT_DIR/metrics.csv``; only the runs of the last invocation that
``comparison.json`` recorded are reported. A claim holds only when its 95 % interval (or, for
steps to target, its sign test) excludes no effect in the claimed direction, and a mean
difference of 6 paired seeds or more also passes the exact randomization test; the statistics
are those of :mod:`tsloss_cuda.stats`. Each claim's method is described by the seeds its pair
shares (a variant may have fewer seeds than the baseline).
"""
from __future__ import annotations

import csv
import glob
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tsloss_cuda import stats  # noqa: E402
from tsloss_cuda._cli import CLIError, Parser, bounded, nonneg_int, positive_int  # noqa: E402
from tsloss_cuda.compare import (CONFIG_KEYS, RUN_KEYS, nonempty_dicts,  # noqa: E402
                                  read_record)
from tsloss_cuda.run_outputs import run_id  # noqa: E402
from tsloss_cuda.stats import Interval, SignTest, variant_of  # noqa: E402

#: Measure -> what it is, for claim 3; the paper expects a negative correlation for each.
MEASURES = {"ts_connectivity": "connectivity (H0 term)", "ts_redundancy": "redundancy (H1 term)",
            "ts_stability": "stability distance to the previous log"}


def _saved(out: str) -> Tuple[Dict, Dict, Optional[List[str]]]:
    """(config, specs, run ids of the last invocation or None) from comparison.json, else
    summary.json (whose runs are the last invocation's)."""
    for name in ("comparison.json", "summary.json"):
        path = os.path.join(out, name)
        if os.path.isfile(path):
            keys = CONFIG_KEYS if name == "comparison.json" else {
                "runs": lambda v: v is None or v == [] or nonempty_dicts(v)}
            saved = read_record(path, keys, "OUT_DIR")
            specs = saved.get("specs") or {r["run_id"]: r for r in saved.get("runs", [])
                                           if "run_id" in r}
            # A folder from before "last" was recorded: every run it ever asked for.
            last = saved.get("last") or list(specs) or None
            return saved.get("config", {}), specs, last
    return {}, {}, None


def load(out: str) -> Tuple[List[Dict], Dict, int, List[str]]:
    """(results with ``variant``, ``seed``, ``rows``, ``overrides``; the job configuration;
    runs on disk left out because the last invocation did not ask for them; the variants it
    asked for, run yet or not)."""
    config, specs, last = _saved(out)
    planned = list(dict.fromkeys(specs[i].get("variant") or specs[i].get("regularizer")
                                 for i in last or () if i in specs))
    # One order whatever the source, so the report is the same from the runs' files and from
    # the metrics.csv committed without them.
    order = lambda r: (variant_of(r), r["seed"])  # noqa: E731
    files = sorted(glob.glob(os.path.join(out, "runs", "*.json")))
    if files:
        results = []
        for p in files:
            results.append(read_record(p, RUN_KEYS, "OUT_DIR"))
    else:
        path = os.path.join(out, "metrics.csv")
        if not os.path.isfile(path):
            sys.exit(f"compare_report: OUT_DIR {out} has neither runs/*.json nor metrics.csv")
        groups: Dict[Tuple[str, int], List[Dict]] = {}
        regs: Dict[str, str] = {}
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            try:
                for r in reader:
                    v = r.get("variant") or r["regularizer"]
                    regs[v] = r["regularizer"]
                    row = {k: float(x) for k, x in r.items()
                           if k not in ("regularizer", "variant")}
                    groups.setdefault((v, int(row["seed"])), []).append(row)
            except (csv.Error, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
                # A file cut short (an interrupted write) or edited: a row without its values.
                raise CLIError(f"OUT_DIR: cannot read {path}, line {reader.line_num}: "
                               f"{type(exc).__name__}: {exc}") from None
        # The specs carry each run's overrides (the weight sweep's weights).
        results = [{"variant": v, "regularizer": regs[v], "seed": s, "rows": rows}
                   for (v, s), rows in groups.items()]
        for r in results:
            r["run_id"] = run_id(r)
            r["overrides"] = specs.get(r["run_id"], {}).get("overrides", {})
    keep = set(last) if last is not None else None
    mine = [r for r in results if keep is None or r.get("run_id", "") in keep]
    return sorted(mine, key=order), config, len(results) - len(mine), planned


def fmt(x: Optional[float], digits: int = 3) -> str:
    return "n/a" if x is None or np.isnan(x) else f"{x:+.{digits}f}"


def mean_of(summaries: List[Dict], key: str) -> str:
    """The mean of one summary value over runs, "n/a" (as ``fmt``) where a run has none."""
    values = [s[key] for s in summaries]
    return "n/a" if not values or not np.isfinite(values).all() else f"{np.mean(values):.3f}"


def ci(iv: Interval, digits: int = 3, bound: float = 1.0) -> str:
    """``[low, high]``; an end clipped to +-``bound`` (the most an accuracy difference can be)
    is marked, since it is the clip and not an estimate."""
    if np.isnan(iv.low) or np.isnan(iv.high):
        return "n/a" + (f" ({iv.nonfinite} non-finite)" if iv.nonfinite else
                        " (no spread between seeds)" if iv.undefined == 1 else "")
    if np.isinf(iv.low) and np.isinf(iv.high):
        return "unbounded (n < 4)" if iv.n < 4 else f"unbounded ({perfect_ordering(iv.n)})"
    lo = "-1 (clipped)" if iv.low <= -bound else f"{iv.low:+.{digits}f}"
    hi = "+1 (clipped)" if iv.high >= bound else f"{iv.high:+.{digits}f}"
    return f"[{lo}, {hi}]"


def perfect_ordering(n: int) -> str:
    """Why a perfect rank ordering of ``n`` seeds decides nothing
    (:func:`stats.spearman_interval`)."""
    return f"a perfect ordering of {n} seeds, p = 2/{n}! = {2 / math.factorial(n):.3f}"


def same_difference(iv: Interval) -> str:
    """How data without spread (every seed the same difference) were decided: the exact sign
    test of n equal outcomes (:meth:`Interval.decide`)."""
    p = min(1.0, 2 * 0.5 ** iv.n)
    return (f"every seed the same difference: exact sign test {iv.n if iv.value > 0 else 0} "
            f"of {iv.n}, p = {p:.3f}")


def evidence(iv: Interval, digits: int = 3, bound: float = 1.0) -> str:
    """A difference's test as the report prints it: :func:`ci` and, where the decision used
    it, the exact randomization test's p; for data without spread, the sign test that decided
    them instead of an interval."""
    if iv.undefined == 1 and not iv.nonfinite and math.isfinite(iv.value):
        return same_difference(iv)
    text = ci(iv, digits, bound)
    if math.isfinite(iv.randomization_p):
        text += f", randomization p = {iv.randomization_p:.3f}" + (
            f" ± {iv.randomization_mc:.3f}" if iv.randomization_mc else "")
    return text


def why_untested(*ivs: Interval, dropped: bool = False) -> str:
    """Why intervals have no verdict, in words. ``dropped``: their non-finite units were left
    out (correlations), so those do not explain it."""
    why = {"non-finite values" if iv.nonfinite and not dropped else
           "n < 4 seeds" if iv.n < 4 else
           "no spread between seeds" if iv.undefined == 1 else
           "a constant measure" if np.isnan(iv.value) else
           perfect_ordering(iv.n) if iv.n >= 4 and np.isinf(iv.low) and np.isinf(iv.high) else
           # a correlation whose jackknife has no se: too few seeds carry the variation
           "a measure constant once one seed is left out" if iv.n >= 4 else "no interval"
           for iv in ivs if iv.decide(+1) == "untested"}
    return "; ".join(sorted(why)) or "no interval"


def parametric_note(n: int, who: str = "") -> str:
    """What a verdict on ``n`` paired seeds rests on, where no distribution-free test can
    hold; ``who``: the claims or rows it concerns, where pairs differ in n."""
    if n < 4 or 2 * 0.5 ** n < 0.05:
        return ""
    return (f" With {n} seeds{who} no distribution-free test of a paired difference can reach "
            f"p < 0.05 (the sign and Wilcoxon tests cannot go below {2 * 0.5 ** n:.4g}), so a "
            "verdict rests on Student's t and the bootstrap-t, which assume the differences "
            "near normal; differences without spread have neither and are decided by the "
            "exact sign test, which needs 6 seeds.")


def draw_text(n: int, n_boot: int, seed: int) -> str:
    """How the bootstrap of ``n`` seeds was done (:func:`stats.resamples`)."""
    if n < 4:
        return f"no resampling with {n} seeds"
    if stats.resamples_exact(n):
        return (f"all {math.comb(2 * n - 1, n)} distinct resamples of the {n} seeds, each with "
                "its probability: no RNG")
    return (f"{n_boot} resamples of the {n} seeds, RNG seed {seed}; an end within its "
            "Monte-Carlo error of 0 is inconclusive")


def by_n(uses: Sequence[Tuple[str, int]]) -> Dict[int, List[str]]:
    """n -> what uses it (claims, table rows), in order, each named once."""
    out: Dict[int, List[str]] = {}
    for who, n in uses:
        if who not in out.setdefault(n, []):
            out[n].append(who)
    return out


def state(x: Union[Interval, SignTest], sign: int) -> str:
    """A table's verdict of an :class:`Interval` or :class:`SignTest` for the claimed ``sign``,
    saying when the data show the opposite."""
    s = x.decide(sign)
    if s == "inconclusive":
        return "inconclusive (end within Monte-Carlo error of 0)"
    return "not held (the other way)" if s == "not held" and x.decide(-sign) == "held" else s


def verdict(states: List[str], why_untested: str) -> str:
    """One claim from its parts: those that could not be tested are left out."""
    s = [x for x in states if x != "untested"]
    if not s:
        return f"untested ({why_untested})"
    if all(x == "held" for x in s):
        return "held"
    if "held" in s:
        return "partly held"
    return "was inconclusive" if "inconclusive" in s else "did not hold"


def _steps(grid: List[float]) -> str:
    g = [f"{x:g}" for x in grid]
    return ", ".join(g) if len(g) <= 6 else f"{', '.join(g[:3])}, ..., {g[-1]} ({len(g)} logs)"


def steps_text(t: SignTest, reached: str) -> str:
    return f"{t.wins}/{t.ties}/{t.losses}, reached {reached}"


def report(out: str, results: List[Dict], config: Dict, baseline: str, variant: str,
           target: float, n_boot: int, seed: int, left_out: int = 0,
           planned: Sequence[str] = ()) -> str:
    """The markdown report of ``results`` (as :func:`load` returns them). ``planned``: the
    variants the comparison asked for, which ``variant`` may be before its first run ends."""
    variants = list(dict.fromkeys(variant_of(r) for r in results))
    seeds = stats.seeds_of(results)
    if baseline not in variants:
        sys.exit(f"compare_report: --baseline {baseline} has no runs in {out} "
                 f"(variants: {', '.join(variants)})")
    # As --baseline; but a variant the comparison asked for may have no finished run yet (a
    # comparison in progress), and is reported as such.
    if variant not in variants and variant not in planned:
        sys.exit(f"compare_report: --variant {variant} has no runs in {out} "
                 f"(variants: {', '.join(variants)})")
    others = [v for v in variants if v != baseline]
    # Pairs must share their logging schedule, or a "final" accuracy or a step to target would
    # compare different training lengths (the job logs every run alike; merged folders may not).
    steps_of = {(variant_of(r), int(r["seed"])): [row["step"] for row in r["rows"]]
                for r in results}
    for (v, s_), grid in sorted(steps_of.items()):
        base = steps_of.get((baseline, s_))
        if base is not None and grid != base:
            sys.exit(f"compare_report: {v} seed {s_} was logged at steps {_steps(grid)} and "
                     f"{baseline} seed {s_} at {_steps(base)}: paired statistics need one "
                     "schedule (same --max-steps and --log-every)")

    def paired(v: str, stat: str) -> Interval:  # accuracies: a difference lies in [-1, 1]
        return stats.paired_difference(stats.by_seed(results, v, stat, target),
                                       stats.by_seed(results, baseline, stat, target),
                                       n_boot=n_boot, seed=seed, bounds=(-1.0, 1.0))

    def steps(v: str) -> Tuple[SignTest, str]:
        mine, base = (stats.steps_by_seed(results, x, target) for x in (v, baseline))
        # Counted over the paired seeds, the ones the sign test compares.
        both = sorted(set(mine) & set(base))
        reached = (f"{sum(mine[s_][1] for s_ in both)}/{len(both)} vs {baseline} "
                   f"{sum(base[s_][1] for s_ in both)}/{len(both)}"
                   + (" of the paired seeds" if len(both) < max(len(mine), len(base))
                      else ""))
        return stats.sign_test(stats.paired_outcomes(mine, base)), reached

    summaries = [stats.run_summary(r["rows"], target) for r in results]
    acc = [s["final_acc"] for s in summaries]
    clusters = [int(r["seed"]) for r in results]
    rho = {m: stats.spearman_interval([s.get(m, np.nan) for s in summaries], acc, clusters,
                                      n_boot=n_boot, seed=seed)
           for m in MEASURES if any(m in s for s in summaries)}

    lines = ["# Does TSLoss help? Paired comparison by seed\n"]
    head = (f"From {len(results)} runs ({len(variants)} variants, seeds "
            f"{', '.join(map(str, seeds))}), `{variant}` against `{baseline}`, "
            f"target accuracy {target:.2f}: ")
    # Which n each claim's resampling and tests ran on: a pair's seeds, not all seeds.
    uses: List[Tuple[str, int]] = []
    if variant not in variants:
        c12 = f"no `{variant}` runs yet, so claims 1 and 2 are untested; "
    else:
        st, reached = steps(variant)
        auc, final = paired(variant, "auc"), paired(variant, "final_acc")
        c1 = verdict([st.decide(+1), auc.decide(+1)], why_untested(auc))
        c2 = verdict([final.decide(+1)], why_untested(final))
        st_why = ""
        if st.decide(+1) == "untested" and auc.decide(+1) != "untested":
            c1, st_why = c1 + " on the accuracy AUC alone", " (too few untied seeds to test)"
        sep = lambda iv: "; " if iv.undefined == 1 else ", "  # noqa: E731
        c12 = (f"**claim 1 (faster convergence) {c1}** (steps to target, wins/ties/losses "
               f"{steps_text(st, reached)}, sign test p = {st.p:.2f}{st_why}; accuracy AUC "
               f"{fmt(auc.value)}{sep(auc)}"
               f"{'' if auc.undefined == 1 else '95 % CI '}{evidence(auc)}); "
               f"**claim 2 (higher final accuracy) {c2}** ({fmt(final.value)}{sep(final)}"
               f"{evidence(final)}); ")
        uses.append(("claims 1 and 2", auc.n))
    by = {d: [MEASURES[m].split(" (")[0] for m, iv in rho.items() if iv.decide(-1) == d]
          for d in ("held", "inconclusive", "untested")}
    tested = len(rho) - len(by["untested"])
    if not tested:
        c3 = (f"untested ({why_untested(*rho.values(), dropped=True)})" if rho
              else "untested (no measures)")
    elif by["held"]:
        c3 = f"held for {len(by['held'])} of {tested} measures ({', '.join(by['held'])})"
    elif by["inconclusive"]:
        c3 = (f"was inconclusive for {len(by['inconclusive'])} of {tested} measures "
              f"({', '.join(by['inconclusive'])}) and held for none")
    else:
        c3 = f"did not hold for any of {tested} measures"
    rhos = "; ".join(f"{MEASURES[m].split(' (')[0]} ρ = {fmt(iv.value, 2)}, "
                     f"{ci(iv, 2, math.inf)}" for m, iv in rho.items())
    lines.append(
        head + c12 + f"**claim 3 (stable, compact prompts do better) {c3}** ("
        + (rhos + ", " if rhos else "")
        + f"across {len(results)} runs of {len(seeds)} seeds). A claim holds only where its "
        "95 % interval excludes zero in the claimed direction"
        + ("" if len(rho) < 2 else f"; claim 3's measures are {len(rho)} separate tests at "
           "95 % each, not corrected for multiplicity") + ".")
    uses += [("claim 3", iv.n) for iv in rho.values()]
    # the table's other rows, by variant (the claims' variant is claims 1 and 2)
    pairs = {v: paired(v, "final_acc").n for v in others if v != variant}
    uses += [(f"the {v} rows", n) for v, n in pairs.items()]
    ns = by_n(uses) or {len(seeds): []}
    if len(ns) == 1:
        draw = draw_text(next(iter(ns)), n_boot, seed)
    else:  # pairs of different seeds (a variant still running, a failed run)
        draw = "; ".join(f"{' and '.join(who)}: {draw_text(n, n_boot, seed)}"
                         for n, who in sorted(ns.items()))
    draw += "; with fewer than 4 seeds there is no interval and a claim is untested"
    pair_ns = by_n([(who, n) for who, n in uses if who != "claim 3"])
    notes = "".join(parametric_note(n, "" if len(pair_ns) == 1 else f" ({' and '.join(who)})")
                    for n, who in sorted(pair_ns.items()))
    if any(n >= stats.RANDOMIZATION_MIN for n in pair_ns):
        notes += (" From 6 paired seeds a difference holds only where the exact paired "
                  "randomization (sign-flip) test of its mean also gives two-sided p < 0.05 "
                  f"(all 2^n sign vectors up to {stats.RANDOMIZATION_EXACT_MAX} seeds, else "
                  f"{n_boot} drawn, p then within its Monte-Carlo error of 0.05 being "
                  "inconclusive): Student's t and the bootstrap-t are too liberal for a few "
                  "discrete differences.")
    lines.append(
        f"\nDifferences are variant − `{baseline}`, paired by seed (same seed: same prompt "
        "initialisation and data order); intervals are 95 %: the union of Student's t "
        "interval and a studentized bootstrap over seeds (the bootstrap alone is too narrow "
        f"for tied accuracy differences; {draw}); an end at ±1 is the clip to what an "
        "accuracy difference can be. Steps to target: a run that "
        "never reaches the target is censored; per seed the variant wins (it reached the "
        "target at an earlier log, or reached it where the baseline did not), ties (same log, "
        "or neither reached it) or loses, and an exact two-sided sign test over the untied "
        "seeds decides; p < 0.05 needs 6 untied seeds or more, so with fewer claim 1 rests on "
        "the accuracy AUC. Claim 3's Spearman ρ pools all runs; its interval resamples seeds "
        "with all their runs (runs of one seed share start and data order), studentized on "
        "Fisher's z with a jackknife over seeds and joined with Student's t interval there. "
        "Each row of the tables below is a separate test at 95 %, not corrected for "
        "multiplicity." + notes
        + (f" {left_out} run(s) in runs/ that the last invocation did not ask for are left "
           "out." if left_out else "") + "\n")

    lines.append("## Claims 1 and 2: convergence and final accuracy\n")
    lines.append("| variant | statistic (claimed direction) | value | 95 % CI / test | "
                 "n seeds | verdict |")
    lines.append("|---|---|---|---|---|---|")
    for v in others:
        st, reached = steps(v)
        lines.append(f"| {v} | steps to acc ≥ {target:.2f}: wins/ties/losses (more wins) | "
                     f"{steps_text(st, reached)} | sign test p = {st.p:.2f} | {st.n} | "
                     f"{state(st, +1)} |")
        for stat, label in (("auc", "accuracy AUC / step span (+)"),
                            ("final_acc", "final accuracy (+)")):
            iv = paired(v, stat)
            lines.append(f"| {v} | {label} | {fmt(iv.value)} | {evidence(iv)} | {iv.n} | "
                         f"{state(iv, +1)} |")

    sweep = weight_sweep(results, config)
    if sweep:
        lines.append("\n## TSLoss weight sweep\n")
        lines.append("| weight | variant | final acc (mean) | AUC (mean) | "
                     f"Δ final acc vs {baseline} | 95 % CI | n seeds |")
        lines.append("|---|---|---|---|---|---|---|")
        for w, v in sweep:
            mine = [stats.run_summary(r["rows"], target) for r in results if variant_of(r) == v]
            iv = paired(v, "final_acc")
            lines.append(f"| {w:g} | {v} | {mean_of(mine, 'final_acc')} | "
                         f"{mean_of(mine, 'auc')} | {fmt(iv.value)} | "
                         f"{evidence(iv)} | {iv.n} |")

    if rho:
        lines.append("\n## Claim 3: final topology against final accuracy (all runs)\n")
        lines.append("| final measure | Spearman ρ with final accuracy (claimed: −) | 95 % CI "
                     "(seeds resampled) | runs / seeds | verdict |")
        lines.append("|---|---|---|---|---|")
        for m, iv in rho.items():
            note = (f"; {iv.nonfinite} run(s) without a finite value dropped"
                    if iv.nonfinite else "")
            note += (f"; {iv.undefined:.1%} of resamples without ρ left out"
                     if iv.undefined else "")
            lines.append(f"| {MEASURES[m]} | {fmt(iv.value, 2)} | {ci(iv, 2, math.inf)} | "
                         f"{len(results) - iv.nonfinite} / {iv.n} | "
                         f"{state(iv, -1)}{note} |")
    return "\n".join(lines) + "\n"


def weight_sweep(results: List[Dict], config: Dict) -> List[Tuple[float, str]]:
    """(TSLoss weight, variant) of the variants that change nothing but the weight."""
    out: Dict[str, float] = {}
    for r in results:
        v, ov = variant_of(r), r.get("overrides") or {}
        if r["regularizer"] == "tsloss" and set(ov) <= {"reg_weight"}:
            w: Optional[float] = ov.get("reg_weight", config.get("reg_weight"))
            if w is not None:
                out[v] = float(w)
    return sorted(((w, v) for v, w in out.items()))


#: ``--target``: an accuracy in (0, 1]; at 0 or below every run reaches it at step 0.
accuracy = bounded(float, 0.0, 1.0, "an accuracy in (0, 1]", strict=True)


def main(argv: Optional[List[str]] = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", metavar="OUT_DIR", help="a --compare output folder")
    p.add_argument("--baseline", default="none",
                   help="variant the others are compared with (default: none)")
    p.add_argument("--variant", default="tsloss",
                   help="variant that claims 1 and 2 are about (default: tsloss)")
    p.add_argument("--target", type=accuracy, default=None,
                   help="target accuracy (default: the job's --target-acc, else 0.8)")
    p.add_argument("--n-boot", type=positive_int, default=20000,
                   help="bootstrap resamples when there are too many seeds to enumerate them "
                        "(default: 20000)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="bootstrap RNG seed (idem; default: 0)")
    a = p.parse_args(argv)
    if a.variant == a.baseline:
        p.error(f"--variant and --baseline are both {a.variant}: name two different variants")
    if not os.path.isdir(a.out_dir):
        sys.exit(f"compare_report: OUT_DIR {a.out_dir} is not a folder")
    try:
        results, config, left_out, planned = load(a.out_dir)
    except CLIError as exc:
        sys.exit(f"compare_report: {exc}")
    target = a.target if a.target is not None else float(config.get("target_acc", 0.8))
    sys.stdout.write(report(a.out_dir, results, config, a.baseline, a.variant, target,
                            a.n_boot, a.seed, left_out, planned))
    return 0


if __name__ == "__main__":
    sys.exit(main())
