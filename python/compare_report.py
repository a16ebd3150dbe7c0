"""Markdown report of a ``--compare`` folder: which of the paper's three claims held.

    python python/compare_report.py OUT_DIR [--baseline none] [--variant tsloss] [--target 0.8]
        > docs/compare-llm.md

Reads ``OUT_DIR/runs/*.json`` (a comparison in progress works: it reports the runs that
exist), else ``OUT_DIR/metrics.csv``. A claim holds only when its 95 % bootstrap interval
excludes zero in the claimed direction.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tsloss_cuda import stats  # noqa: E402
from tsloss_cuda.stats import Interval  # noqa: E402

#: Measure -> what it is, for claim 3; the paper expects a negative correlation for each.
MEASURES = {"ts_connectivity": "connectivity (H0 term)", "ts_redundancy": "redundancy (H1 term)",
            "ts_stability": "stability distance to the previous log"}


def load(out: str) -> Tuple[List[Dict], Dict]:
    """(results with ``variant``, ``seed``, ``rows``, ``overrides``; the job configuration)."""
    config: Dict = {}
    specs: Dict[str, Dict] = {}
    for name in ("comparison.json", "summary.json"):
        path = os.path.join(out, name)
        if os.path.isfile(path):
            with open(path) as f:
                saved = json.load(f)
            config, specs = saved.get("config", {}), saved.get("specs", {})
            if not specs:  # summary.json: each run's record carries its id and overrides
                specs = {r["run_id"]: r for r in saved.get("runs", []) if "run_id" in r}
            break
    # One order whatever the source, so the bootstrap draws the same intervals from the runs'
    # files and from the metrics.csv committed without them.
    order = lambda r: (r["variant"] or r["regularizer"], r["seed"])  # noqa: E731
    files = glob.glob(os.path.join(out, "runs", "*.json"))
    if files:
        results = []
        for p in files:
            with open(p) as f:
                results.append(json.load(f))
        return sorted(results, key=order), config
    path = os.path.join(out, "metrics.csv")
    if not os.path.isfile(path):
        sys.exit(f"compare_report: OUT_DIR {out} has neither runs/*.json nor metrics.csv")
    groups: Dict[Tuple[str, int], List[Dict]] = {}
    regs: Dict[str, str] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            v = r.get("variant") or r["regularizer"]
            regs[v] = r["regularizer"]
            row = {k: float(x) for k, x in r.items() if k not in ("regularizer", "variant")}
            groups.setdefault((v, int(row["seed"])), []).append(row)
    # The specs (comparison.json, else summary.json's runs) carry each run's overrides (the weight
    # sweep's weights).
    results = [{"variant": v, "regularizer": regs[v], "seed": s, "rows": rows,
                "overrides": specs.get(f"{v}_seed{s}", {}).get("overrides", {})}
               for (v, s), rows in groups.items()]
    return sorted(results, key=order), config


def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:+.{digits}f}"


def ci(iv: Interval, digits: int = 3) -> str:
    if not (np.isfinite(iv.low) and np.isfinite(iv.high)):
        return "n/a"
    return f"[{iv.low:+.{digits}f}, {iv.high:+.{digits}f}]"


def verdict(ok: List[bool]) -> str:
    return "held" if all(ok) else ("partly held" if any(ok) else "did not hold")


def report(out: str, results: List[Dict], config: Dict, baseline: str, variant: str,
           target: float, n_boot: int, seed: int) -> str:
    """The markdown report of ``results`` (as :func:`load` returns them)."""
    variants = list(dict.fromkeys(r.get("variant") or r["regularizer"] for r in results))
    seeds = stats.seeds_of(results)
    if baseline not in variants:
        sys.exit(f"compare_report: --baseline {baseline} has no runs in {out} "
                 f"(variants: {', '.join(variants)})")
    others = [v for v in variants if v != baseline]

    def paired(v: str, stat: str) -> Interval:
        return stats.paired_difference(stats.by_seed(results, v, stat, target),
                                       stats.by_seed(results, baseline, stat, target),
                                       n_boot=n_boot, seed=seed)

    lines: List[str] = []
    # Claims 1 and 2 are judged on --variant against --baseline.
    steps = paired(variant, "steps_to_target") if variant in variants else None
    auc = paired(variant, "auc") if variant in variants else None
    final = paired(variant, "final_acc") if variant in variants else None
    summaries = [stats.run_summary(r["rows"], target) for r in results]
    acc = [s["final_acc"] for s in summaries]
    rho = {m: stats.spearman_interval([s.get(m, np.nan) for s in summaries], acc,
                                      n_boot=n_boot, seed=seed)
           for m in MEASURES if all(m in s for s in summaries)}

    lines.append("# Does TSLoss help? Paired comparison by seed\n")
    head = (f"From {len(results)} runs ({len(variants)} variants, seeds "
            f"{', '.join(map(str, seeds))}), `{variant}` against `{baseline}`, "
            f"target accuracy {target:.2f}: ")
    if steps is None:
        lines.append(head + f"no `{variant}` runs yet, so claims 1 and 2 are untested.")
    else:
        c1 = verdict([steps.excludes_zero(-1), auc.excludes_zero(+1)])
        c2 = verdict([final.excludes_zero(+1)])
        c3 = verdict([iv.excludes_zero(-1) for iv in rho.values()]) if rho else "was untested"
        lines.append(
            head + f"**claim 1 (faster convergence) {c1}** (steps to target "
            f"{fmt(steps.value, 1)}, 95 % CI {ci(steps, 1)}; accuracy AUC {fmt(auc.value)}, "
            f"{ci(auc)}); **claim 2 (higher final accuracy) {c2}** ({fmt(final.value)}, "
            f"{ci(final)}); **claim 3 (stable, compact prompts do better) {c3}** ("
            + "; ".join(f"{MEASURES[m].split(' (')[0]} ρ = {fmt(iv.value, 2)}, {ci(iv, 2)}"
                        for m, iv in rho.items())
            + f", across {len(results)} runs). A claim holds only where its 95 % interval "
            "excludes zero in the claimed direction.")
    lines.append(f"\nDifferences are variant − `{baseline}`, paired by seed (same seed: same "
                 "prompt initialisation and data order); intervals are percentile bootstraps "
                 f"over seeds ({n_boot} resamples, RNG seed {seed}). A run that never reaches "
                 "the target counts as reaching it one logging interval after its last step.\n")

    lines.append("## Claims 1 and 2: convergence and final accuracy\n")
    lines.append("| variant | statistic (claimed sign) | mean difference | 95 % CI | n seeds |")
    lines.append("|---|---|---|---|---|")
    for v in others:
        for stat, label, d in (("steps_to_target", f"steps to acc ≥ {target:.2f} (−)", 1),
                               ("auc", "accuracy AUC / step span (+)", 3),
                               ("final_acc", "final accuracy (+)", 3)):
            iv = paired(v, stat)
            lines.append(f"| {v} | {label} | {fmt(iv.value, d)} | {ci(iv, d)} | {iv.n} |")

    sweep = weight_sweep(results, config)
    if sweep:
        lines.append("\n## TSLoss weight sweep\n")
        lines.append("| weight | variant | final acc (mean) | AUC (mean) | "
                     f"Δ final acc vs {baseline} | 95 % CI | n seeds |")
        lines.append("|---|---|---|---|---|---|---|")
        for w, v in sweep:
            mine = [stats.run_summary(r["rows"], target) for r in results
                    if (r.get("variant") or r["regularizer"]) == v]
            iv = paired(v, "final_acc")
            lines.append(f"| {w:g} | {v} | {np.mean([s['final_acc'] for s in mine]):.3f} | "
                         f"{np.mean([s['auc'] for s in mine]):.3f} | {fmt(iv.value)} | "
                         f"{ci(iv)} | {iv.n} |")

    if rho:
        lines.append("\n## Claim 3: final topology against final accuracy (all runs)\n")
        lines.append("| final measure | Spearman ρ with final accuracy (claimed: −) | 95 % CI | "
                     "n runs |")
        lines.append("|---|---|---|---|")
        for m, iv in rho.items():
            lines.append(f"| {MEASURES[m]} | {fmt(iv.value, 2)} | {ci(iv, 2)} | {iv.n} |")
    return "\n".join(lines) + "\n"


def weight_sweep(results: List[Dict], config: Dict) -> List[Tuple[float, str]]:
    """(TSLoss weight, variant) of the variants that change nothing but the weight."""
    out: Dict[str, float] = {}
    for r in results:
        v, ov = r.get("variant") or r["regularizer"], r.get("overrides") or {}
        if r["regularizer"] == "tsloss" and set(ov) <= {"reg_weight"}:
            w: Optional[float] = ov.get("reg_weight", config.get("reg_weight"))
            if w is not None:
                out[v] = float(w)
    return sorted(((w, v) for v, w in out.items()))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", metavar="OUT_DIR", help="a --compare output folder")
    p.add_argument("--baseline", default="none", help="variant the others are compared with")
    p.add_argument("--variant", default="tsloss", help="variant that claims 1 and 2 are about")
    p.add_argument("--target", type=float, default=None,
                   help="target accuracy (default: the job's --target-acc, else 0.8)")
    p.add_argument("--n-boot", type=int, default=10000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed")
    a = p.parse_args(argv)
    if not os.path.isdir(a.out_dir):
        sys.exit(f"compare_report: OUT_DIR {a.out_dir} is not a folder")
    results, config = load(a.out_dir)
    target = a.target if a.target is not None else float(config.get("target_acc", 0.8))
    sys.stdout.write(report(a.out_dir, results, config, a.baseline, a.variant, target,
                            a.n_boot, a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
