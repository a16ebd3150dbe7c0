"""Check what a run of ``python -m tsloss_cuda.train`` (and optionally of ``tsloss_cuda.analyze``
on its checkpoints) wrote. Used by .ci/run after the README's quick start, and by the tests.

    python tests/check_job_outputs.py RUN_DIR [ANALYSIS_DIR]

Exits 1 with one line per problem; prints a one-line summary when all is well.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from typing import Dict, List, Optional

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tree(folder: str) -> Dict[str, Optional[bytes]]:
    """Every folder and file under ``folder``, hidden ones too: relative path -> bytes (None
    for a folder); two trees compare whole folders."""
    found: Dict[str, Optional[bytes]] = {}
    for root, dirs, names in os.walk(folder):
        for d in dirs:
            found[os.path.relpath(os.path.join(root, d), folder)] = None
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.relpath(os.path.join(root, name), folder)] = f.read()
    return found


def _rows(path: str) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _png(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC and os.path.getsize(path) > 10_000


def problems(run_dir: str, analysis_dir: Optional[str] = None) -> List[str]:
    """Everything wrong with a run folder (empty list: it is as documented)."""
    bad: List[str] = []
    with open(os.path.join(run_dir, "summary.json")) as f:
        text = f.read()
    summary = json.loads(text)
    cfg = summary["config"]
    for home in {os.path.expanduser("~"), os.path.abspath(run_dir)} - {"/", ""}:
        if home in text:
            bad.append(f"summary.json names the folder {home} of this machine")
    rows = _rows(os.path.join(run_dir, "metrics.csv"))
    runs = summary["runs"]
    steps = sorted({0, cfg["max_steps"], *range(0, cfg["max_steps"] + 1, cfg["log_every"])})
    if len(rows) != len(runs) * len(steps):
        bad.append(f"metrics.csv has {len(rows)} rows, expected {len(runs)} runs x {len(steps)}")
    for r in rows:
        for k, v in r.items():
            if v == "" or (k not in ("regularizer", "variant") and (v.startswith("-0.0")
                                                   or not math.isfinite(float(v)))):
                bad.append(f"metrics.csv step {r['step']}: column {k} is {v!r}")
    for res in runs:
        # A comparison's named variants (tsloss_stab, tsloss_w0.3) share a regulariser.
        reg, seed = res.get("variant") or res["regularizer"], res["seed"]
        mine = [r for r in rows if r.get("variant", r["regularizer"]) == reg
                and int(r["seed"]) == seed]
        if [int(r["step"]) for r in mine] != steps:
            bad.append(f"metrics.csv steps of {reg} seed {seed}: {[r['step'] for r in mine]}")
        ck = os.path.join(run_dir, "checkpoints", f"{reg}_seed{seed}")
        want = [f"step_{s:06d}.pt" for s in steps]
        # A run's own interval (a resumed comparison reuses runs saved at another), else the
        # job's; the metrics rows by default.
        job_every = cfg.get("checkpoint_every")
        every = res.get("checkpoint_every",
                        cfg["log_every"] if job_every is None else job_every)
        held = sorted(os.listdir(ck)) if os.path.isdir(ck) else []
        if every == cfg["log_every"] and held != want:
            bad.append(f"{ck} holds {held}, expected {want}")
        if not os.path.isfile(os.path.join(run_dir, "prompts", f"prompt_{reg}_seed{seed}.pt")):
            bad.append(f"no final prompt for {reg} seed {seed}")
    if not cfg["no_plots"]:
        figs = ["curves.png", "topology.png"] + [
            f"diagrams_{r.get('variant') or r['regularizer']}.png" for r in runs]
        bad += [f"{f} missing or not a PNG" for f in figs
                if not (os.path.isfile(os.path.join(run_dir, f)) and _png(os.path.join(run_dir, f)))]
    if analysis_dir:
        bad += _compare_analysis(rows, analysis_dir)
    return bad


def _compare_analysis(rows: List[Dict[str, str]], analysis_dir: str) -> List[str]:
    """The analysis of the first run's checkpoints equals that run's metrics rows."""
    got = _rows(os.path.join(analysis_dir, "topology_metrics.csv"))
    def run(r: Dict[str, str]) -> tuple:  # named variants (tsloss_stab) share a regulariser
        return r.get("variant") or r["regularizer"], r["seed"]

    first = [r for r in rows if run(r) == run(rows[0])]
    bad = []
    if [r["step"] for r in got] != [r["step"] for r in first]:
        bad.append(f"analysis steps {[r['step'] for r in got]} != metrics.csv's")
    shared = [k for k in got[0] if k in first[0] and k != "step"] if got else []
    if len(shared) < 10:
        bad.append(f"analysis shares only {shared} with metrics.csv")
    for a, m in zip(got, first):
        for k in shared:
            if not math.isclose(float(a[k]), float(m[k]), rel_tol=1e-6, abs_tol=1e-9):
                bad.append(f"step {a['step']}: {k} is {a[k]} in the analysis, {m[k]} in metrics.csv")
    for f in ("topology.png", "diagrams.png"):
        if not _png(os.path.join(analysis_dir, f)):
            bad.append(f"analysis {f} missing or not a PNG")
    return bad


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python tests/check_job_outputs.py RUN_DIR [ANALYSIS_DIR]")
    found = problems(*sys.argv[1:])
    for p in found:
        print(f"check_job_outputs: {p}", file=sys.stderr)
    if found:
        sys.exit(1)
    print(f"check_job_outputs: {sys.argv[1]} as documented"
          + (f"; {sys.argv[2]} equals its metrics rows" if len(sys.argv) == 3 else ""))
