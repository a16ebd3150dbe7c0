"""What ``python -m tsloss_cuda.train`` writes: metrics.csv, summary.json, prompts, figures."""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from ._files import PartialFiles, deferred_sigint, partial_path, remove_leftovers
from .stats import variant_of as variant

#: metrics.csv columns first in this order (``variant`` only in comparisons with named
#: variants); the topology columns follow.
LEAD_COLUMNS = ("regularizer", "variant", "seed", "step", "val_acc", "task_loss", "reg_loss")


def _mean_sd(v: List[float], digits: int = 3) -> str:
    """Mean ± the sample standard deviation (n - 1); no spread is shown for a single value."""
    if not v:
        return "n/a"
    sd = f"{np.std(v, ddof=1):.{digits}f}" if len(v) > 1 else "n/a"
    return f"{np.mean(v):.{digits}f} ± {sd}"


def run_id(res: Mapping) -> str:
    """The name of the run's prompt and checkpoint folder, e.g. ``tsloss_w0.3_seed3``."""
    return f"{variant(res)}_seed{res['seed']}"


def prompt_checkpoints(folder: str) -> List[str]:
    """The prompts a run saved in its checkpoint folder (``step_*.pt``); none if no folder."""
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder))
            if n.startswith("step_") and n.endswith(".pt")]


#: The installed package's folder: files shipped in it are named from the package on.
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def portable_path(path: str, out: str) -> str:
    """A path that names no folder of this machine: a file shipped in the package as
    ``tsloss_cuda/...`` (the task CSVs), another existing path relative to the output folder (a
    model folder, the user's CSV), anything else (a model name) unchanged."""
    if not isinstance(path, str) or not os.path.exists(path):
        return path
    full = os.path.abspath(path)
    if os.path.commonpath([full, _PACKAGE]) == _PACKAGE:
        return os.path.basename(_PACKAGE) + "/" + os.path.relpath(full, _PACKAGE).replace(os.sep,
                                                                                          "/")
    return os.path.relpath(full, os.path.abspath(out)).replace(os.sep, "/")


#: Job arguments that name files or folders.
PATH_ARGS = ("model", "data", "output_dir")
#: Job arguments that say where this machine keeps things and change no result: not recorded.
MACHINE_ARGS = ("model_cache",)


def portable_config(args: Any, out: str) -> Dict[str, Any]:
    """``vars(args)`` without :data:`MACHINE_ARGS`, the path arguments made relative to ``out``
    (see portable_path)."""
    cfg = {k: v for k, v in vars(args).items() if k not in MACHINE_ARGS}
    for k in PATH_ARGS:
        if k in cfg:
            cfg[k] = portable_path(cfg[k], out)
    return cfg


def compare_table(results: List[Dict], regs: List[str], target: float) -> str:
    """Markdown table: one row per variant (regulariser, or named variant such as
    ``tsloss_stab``), aggregated over seeds; ``regs`` variants first, in that order."""
    regs = list(regs) + [v for v in dict.fromkeys(variant(r) for r in results) if v not in regs]
    lines = [f"| regularizer | steps to val acc ≥ {target:.2f} (mean ± sd of the runs that "
             "reached it, reached/runs) | final val acc (mean ± sd) | s/step | "
             "regulariser share of step time |",
             "|---|---|---|---|---|"]
    for reg in regs:
        rs = [r for r in results if variant(r) == reg]
        if not rs:
            continue
        hit = [r["steps_to_target"] for r in rs if r["steps_to_target"] is not None]
        steps = (f"{_mean_sd(hit, 0)} ({len(hit)}/{len(rs)})" if hit
                 else f"not reached (0/{len(rs)})")
        share = np.mean([r["reg_share"] for r in rs]) * 100
        lines.append(f"| {reg} | {steps} | {_mean_sd([r['final_acc'] for r in rs])} | "
                     f"{np.mean([r['sec_per_step'] for r in rs]):.3f} | {share:.1f}% |")
    return "\n".join(lines)


def staging_folder(run_dir: str, name: str) -> str:
    """Where a run writes its checkpoints until :func:`commit_checkpoints` moves them into
    ``checkpoints/NAME``: beside it, hidden (a run that does not finish leaves the earlier run's
    checkpoints as its metrics.csv and summary.json list them)."""
    return os.path.join(run_dir, "checkpoints", f".{name}.partial")


def checkpoint_name(step: int) -> str:
    """The file of a run's prompt after ``step`` updates, in its checkpoint folder."""
    return f"step_{step:06d}.pt"


def longest_output(run_ids: Sequence[str], max_steps: int) -> str:
    """The longest path, relative to the output folder, that the job writes for these runs (a
    staged checkpoint, or a prompt's or a run record's temporary name), for the up-front check
    that the folder leaves room for it."""
    names = []
    for run in run_ids:
        names += [os.path.join(staging_folder("", run), checkpoint_name(max_steps)),
                  partial_path(os.path.join("prompts", f"prompt_{run}.pt")),
                  partial_path(os.path.join("runs", f"{run}.json"))]
    return max(names, key=len)


def checkpoint_folder(run_dir: str, name: str, keep: bool) -> str:
    """The run's :func:`staging_folder`, empty (a killed job's is removed), created when
    ``keep`` (checkpoints are due)."""
    stage = staging_folder(run_dir, name)
    shutil.rmtree(stage, ignore_errors=True)
    if keep:
        os.makedirs(stage)
    return stage


def commit_checkpoints(run_dir: str, name: str) -> None:
    """Once the run's outputs are written: its checkpoint folder's prompts (``step_*.pt``) are
    replaced by the staged ones. An earlier run's go, staged or not: a rerun into the same
    output folder with another --log-every or --max-steps left them there, mixed into this
    run's for ``tsloss_cuda.analyze``."""
    folder, stage = os.path.join(run_dir, "checkpoints", name), staging_folder(run_dir, name)
    for path in prompt_checkpoints(folder):
        os.remove(path)
    if os.path.isdir(stage):
        os.makedirs(folder, exist_ok=True)
        for path in prompt_checkpoints(stage):
            os.replace(path, os.path.join(folder, os.path.basename(path)))
        shutil.rmtree(stage)


def discard_checkpoints(run_dir: str, name: str) -> None:
    """Remove a run's staged checkpoints (a run that failed or was interrupted); the earlier
    run's stay."""
    shutil.rmtree(staging_folder(run_dir, name), ignore_errors=True)


class EarlierJob(NamedTuple):
    """What a job found in its output folder when it started (:func:`earlier_job`)."""
    run_ids: Tuple[str, ...]  # the runs of the job whose summary.json was there
    started: float  # this job's start (time.time()): files written since are not the earlier's


def earlier_job(out: str) -> Optional[EarlierJob]:
    """The runs recorded by an earlier job's ``summary.json`` in ``out``, read before this job
    writes anything; None where there is none (a new or foreign folder: nothing is removed)."""
    try:
        with open(os.path.join(out, "summary.json")) as f:
            runs = json.load(f)["runs"]
        ids = tuple(run_id(r) for r in runs)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # not a summary.json of ours: its folder's files are not the job's to remove
    return EarlierJob(ids, time.time())


def runs_to_remove(out: str, earlier: Optional[EarlierJob], run_ids: Sequence[str]) -> List[str]:
    """The earlier job's runs whose prompts and checkpoints this job will remove at its end:
    those not in ``run_ids`` nor recorded as a comparison's finished run (``runs/RUN.json``)."""
    if earlier is None:
        return []
    keep = set(run_ids)
    recorded = os.path.join(out, "runs")
    if os.path.isdir(recorded):
        keep |= {n[:-5] for n in os.listdir(recorded) if n.endswith(".json")}
    return [r for r in earlier.run_ids if r not in keep]


def announce_removal(out: str, earlier: Optional[EarlierJob], run_ids: Sequence[str]) -> None:
    """Say at the job's start, not after hours of training, which earlier runs it replaces."""
    replaced = runs_to_remove(out, earlier, run_ids)
    if replaced:
        print(f"{out} holds an earlier job's runs {', '.join(replaced)}: their prompts and "
              "checkpoints are removed when this job finishes (use another --output-dir to "
              "keep them)", flush=True)


def remove_stale_outputs(out: str, earlier: EarlierJob, run_ids: Sequence[str],
                         figures: Sequence[str], world: int) -> List[str]:
    """Remove what the earlier job in ``out`` wrote and this one did not, so that the folder
    describes this job alone: the prompts and checkpoints (``step_*.pt``) of the earlier job's
    runs that are not in ``run_ids``, the figures not in ``figures`` (all of them under
    --no-plots), and ``prompt_rankR.pt`` unless this job ran R as one of several ranks. Only
    files of these names, last written before this job started, are touched (a job writing
    into the same folder meanwhile keeps its files), and a comparison's finished run
    (``runs/RUN.json``) keeps its prompt and checkpoints even where this job left it out (a
    restart with fewer regularisers or seeds). Returns the removed paths."""
    removed: List[str] = []
    keep_ranks = {f"prompt_rank{r}.pt" for r in range(world)} if world > 1 else set()

    def drop(path: str) -> None:
        try:
            if os.path.isfile(path) and os.path.getmtime(path) < earlier.started:
                os.remove(path)
                removed.append(path)
        except OSError as exc:  # the job's own outputs are written: say so, do not fail it
            print(f"could not remove {path}: {exc.strerror}", file=sys.stderr)

    for run in runs_to_remove(out, earlier, run_ids):
        drop(os.path.join(out, "prompts", f"prompt_{run}.pt"))
        folder = os.path.join(out, "checkpoints", run)
        for path in prompt_checkpoints(folder):
            drop(path)
        try:
            os.rmdir(folder)  # where it is there and nothing else is left in it
        except OSError:
            pass
    for name in os.listdir(out):
        figure = (name in ("curves.png", "topology.png")
                  or (name.startswith("diagrams_") and name.endswith(".png")))
        rank = name.startswith("prompt_rank") and name.endswith(".pt")
        if (figure and name not in figures) or (rank and name not in keep_ranks):
            drop(os.path.join(out, name))
    return removed


def write_metrics(path: str, rows: List[Dict]) -> None:
    cols = [c for c in LEAD_COLUMNS if any(c in r for r in rows)]
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def metrics_rows(results: Sequence[Mapping]) -> List[Dict]:
    """Every run's rows; with named variants a ``variant`` column follows ``regularizer``."""
    named = any(variant(r) != r["regularizer"] for r in results)
    rows = []
    for res in results:
        for r in res["rows"]:
            rows.append({"regularizer": r["regularizer"], "variant": variant(res), **r}
                        if named else dict(r))
    return rows


def _nulls_for_nan(v: Any) -> Any:
    """``v`` with its non-finite floats (a diverged run's final accuracy) as None: summary.json
    is read by tools whose JSON has no NaN (jq, JavaScript), where Python's ``NaN`` is an
    error."""
    if isinstance(v, dict):
        return {k: _nulls_for_nan(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_nulls_for_nan(x) for x in v]
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_outputs(out: str, args, results: List[Dict], regs: List[str], model_path: str,
                  task: str, world: int, total_s: float,
                  earlier: Optional[EarlierJob] = None, staged: Sequence[str] = ()) -> str:
    """metrics.csv, summary.json, prompts/*.pt, PNG plots; returns the comparison table.
    With ``earlier`` (:func:`earlier_job` of ``out`` at the job's start), the earlier job's
    files that this one did not write are removed and listed on stdout
    (:func:`remove_stale_outputs`). The checkpoints of the runs ``staged`` move into place
    (:func:`commit_checkpoints`) with metrics.csv and summary.json, which list them.

    All or nothing: every file is first written under a hidden temporary name
    (:func:`tsloss_cuda._files.partial_path`); an error or Ctrl-C meanwhile removes those and
    leaves the folder as it was (the staged checkpoints too: the caller discards them). Then,
    with Ctrl-C held back until it is done (:func:`tsloss_cuda._files.deferred_sigint`), the
    files are renamed into place, the staged checkpoints committed, the earlier job's files
    removed, and summary.json put in place last: a crash in the middle leaves the earlier
    summary.json, which still names the earlier job's runs for a rerun to remove.

    ``results`` are :func:`tsloss_cuda.training.train_one`'s dicts, or the same loaded back by
    :func:`tsloss_cuda.compare.load_run` (``variant``/``run_id`` then name the runs).
    ``summary.json`` names no folder of this machine: paths are relative to ``out``, and a
    model given by name stays a name.
    """
    prompts = os.path.join(out, "prompts")
    for folder in (out, prompts):  # a killed job's temporaries (Ctrl-C removes its own)
        remove_leftovers(folder)
    made_prompts = not os.path.isdir(prompts)
    os.makedirs(prompts, exist_ok=True)
    summary_path = os.path.join(out, "summary.json")
    figures: List[str] = []
    with PartialFiles() as files:
        try:
            files.write(os.path.join(out, "metrics.csv"),
                        lambda tmp: write_metrics(tmp, metrics_rows(results)))
            for res in results:  # partial binds this run's prompt, whenever write() calls it
                files.write(os.path.join(prompts, f"prompt_{run_id(res)}.pt"),
                            functools.partial(torch.save, res["prompt"]))
            table = compare_table(results, regs, args.target_acc)
            model = (portable_path(model_path, out) if os.path.exists(str(args.model))
                     else args.model)
            summary = {
                "config": portable_config(args, out), "model": model, "task": task,
                "world_size": world, "total_seconds": total_s, "table_markdown": table,
                "runs": [{k: v for k, v in r.items() if k not in ("rows", "snapshots", "prompt")}
                         for r in results],
            }

            def write_summary(tmp: str) -> None:
                with open(tmp, "w") as f:
                    json.dump(_nulls_for_nan(summary), f, indent=2, allow_nan=False)
            files.write(summary_path, write_summary)
            if not args.no_plots:
                figures = _write_figures(files, out, results)
        except BaseException:
            files.discard()  # first: the prompts' temporaries would keep prompts/ from going
            if made_prompts:  # the folder as it was: without a prompts/ it did not have
                try:
                    os.rmdir(prompts)
                except OSError:
                    pass
            raise
        with deferred_sigint():
            files.put(*[p for p in files.pending() if p != summary_path])
            for name in staged:
                commit_checkpoints(out, name)
            removed = ([] if earlier is None else
                       remove_stale_outputs(out, earlier, [run_id(r) for r in results],
                                            figures, world))
            files.put(summary_path)  # last: till then the earlier one names the earlier runs
            if removed:
                shown = ", ".join(os.path.relpath(p, out) for p in removed[:6])
                more = f" and {len(removed) - 6} more" if len(removed) > 6 else ""
                print(f"removed {len(removed)} files of the earlier job in {out} that this job "
                      f"did not write: {shown}{more}")
    return table


def _write_figures(files: PartialFiles, out: str, results: Sequence[Mapping]) -> List[str]:
    """curves.png, topology.png and diagrams_VARIANT.png (the first seed of each variant) as
    temporaries of ``files``; returns their names."""
    from tsloss_cuda import plots
    first: Dict[str, Mapping] = {}
    for res in results:  # curves: the first seed of each variant
        first.setdefault(variant(res), res)
    by_run = {f"{k} (seed {v['seed']})": v["rows"] for k, v in first.items()}
    files.write(os.path.join(out, "curves.png"), lambda tmp: plots.plot_curves(
        by_run, tmp, title="Soft prompt tuning: " + ", ".join(by_run)))
    files.write(os.path.join(out, "topology.png"), lambda tmp: plots.plot_topology(
        by_run, tmp, title="Prompt topology over training"))
    figures = ["curves.png", "topology.png"]
    for reg, res in first.items():  # partial binds this reg and res (a lambda's late binding
        if res["snapshots"]:        # would give every figure the last one's, were write() lazy)
            files.write(os.path.join(out, f"diagrams_{reg}.png"), functools.partial(
                plots.plot_diagrams, res["snapshots"],
                title=f"Prompt persistence, regulariser {reg}, seed {res['seed']} "
                      f"(N = {res['prompt'].shape[0]} vectors)"))
            figures.append(f"diagrams_{reg}.png")
    return figures
