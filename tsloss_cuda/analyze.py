"""Topology of saved soft prompts: ``python -m tsloss_cuda.analyze DIR``.

DIR holds ``.pt`` prompt checkpoints (one per step or epoch), each a ``(N, D)`` tensor or a dict
with one (``prompt``/``prompt_embeddings`` keys first, e.g. PEFT adapter state dicts). They are
ordered by the numbers in their names. Writes ``topology_metrics.csv``, ``topology.png`` (metrics
and TSLoss terms over checkpoints) and ``diagrams.png`` (barcodes and diagrams of the first,
middle and last checkpoints). Offline and on the CPU unless ``--device cuda``.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from typing import Dict, List, Optional

import torch

from ._cli import first_line, report_unexpected

PREFERRED_KEYS = ("prompt", "prompt_embeddings", "embedding.weight")


class AnalyzeError(Exception):
    """A user error: reported as one line."""


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def load_prompt(path: str) -> torch.Tensor:
    """The ``(N, D)`` prompt stored in a ``.pt`` file."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        raise AnalyzeError(f"cannot read checkpoint {path}: {first_line(exc)}") from None
    if isinstance(obj, torch.Tensor):
        t = obj
    elif isinstance(obj, dict):
        cands = [obj[k] for k in PREFERRED_KEYS if isinstance(obj.get(k), torch.Tensor)]
        cands += [v for v in obj.values() if isinstance(v, torch.Tensor) and v.dim() == 2]
        if not cands:
            raise AnalyzeError(f"no (N, D) prompt tensor in {path}")
        t = cands[0]
    else:
        raise AnalyzeError(f"{path} holds a {type(obj).__name__}, not a prompt tensor")
    if t.dim() != 2 or not t.is_floating_point():
        raise AnalyzeError(f"{path}: expected a float (N, D) prompt, got {tuple(t.shape)} {t.dtype}")
    return t.float()


def list_checkpoints(folder: str) -> List[str]:
    if not os.path.isdir(folder):
        raise AnalyzeError(f"not a folder: {folder}")
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise AnalyzeError(f"cannot read folder {folder}: {exc.strerror}") from None
    files = sorted((n for n in names if n.endswith(".pt")), key=_natural_key)
    if not files:
        raise AnalyzeError(f"no .pt checkpoints in {folder}")
    return [os.path.join(folder, n) for n in files]


def analyze(folder: str, out_dir: Optional[str] = None, device: str = "cpu",
            plots: bool = True) -> List[Dict[str, float]]:
    """Metrics rows (one per checkpoint) and, with ``plots``, the PNG figures in ``out_dir``."""
    from tsloss_cuda.loss import TSLoss
    from tsloss_cuda.persistence import vr_persistence
    from tsloss_cuda.tracking import TopologyTracker

    paths = list_checkpoints(folder)
    out_dir = out_dir or folder
    os.makedirs(out_dir, exist_ok=True)
    dev = torch.device(device)
    ts = TSLoss(stability=1.0)  # stability against the previous checkpoint
    tracker = TopologyTracker(1)
    snaps = {}
    keep = {0, len(paths) // 2, len(paths) - 1}
    shape = None
    for i, path in enumerate(paths):
        p = load_prompt(path).to(dev)
        if shape is not None and p.shape != shape:
            ts.reset()  # a different N cannot be compared for stability
        shape = p.shape
        with torch.no_grad():
            ts(p)
        tracker.update(i, p, ts.last_terms)
        if i in keep:
            snaps[os.path.basename(path)] = vr_persistence(p).to_numpy()[0]
    rows = tracker.flush()
    for row, path in zip(rows, paths):
        row["checkpoint"] = os.path.basename(path)
    cols = ["step", "checkpoint"] + [k for k in rows[0] if k not in ("step", "checkpoint")]
    with open(os.path.join(out_dir, "topology_metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    if plots:
        from tsloss_cuda import plots as P
        P.plot_topology({os.path.basename(os.path.normpath(folder)): rows},
                        os.path.join(out_dir, "topology.png"))
        P.plot_diagrams(snaps, os.path.join(out_dir, "diagrams.png"))
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tsloss_cuda.analyze", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", metavar="DIR", help="folder of .pt prompt checkpoints")
    ap.add_argument("--output-dir", default=None, help="where outputs go (default: DIR)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--no-plots", action="store_true", help="CSV only")
    args = ap.parse_args(argv)
    try:
        rows = analyze(args.folder, args.output_dir, args.device, not args.no_plots)
    except AnalyzeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, ValueError) as exc:
        return report_unexpected(exc)
    print(f"analysed {len(rows)} checkpoints; outputs in {args.output_dir or args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
