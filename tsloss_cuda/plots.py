"""Matplotlib figures for training runs and prompt checkpoints (written as PNG files)."""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: the job runs without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tsloss_cuda.tracking import METRICS  # noqa: E402


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_curves(rows_by_run: Mapping[str, List[Dict[str, float]]], path: str) -> str:
    """Task loss and validation accuracy against step, one line per run label.

    rows_by_run: label -> metric rows (dicts with ``step``, ``task_loss``, ``val_acc``).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, rows in rows_by_run.items():
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r.get("task_loss", np.nan) for r in rows], label=label)
        axes[1].plot(steps, [r.get("val_acc", np.nan) for r in rows], label=label)
    axes[0].set(xlabel="step", ylabel="task loss (train batch)", title="Task loss")
    axes[1].set(xlabel="step", ylabel="validation accuracy", title="Validation accuracy")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_topology(rows_by_run: Mapping[str, List[Dict[str, float]]], path: str,
                  names: Sequence[str] = METRICS + ("ts_connectivity", "ts_redundancy")) -> str:
    """Each topology metric (and TSLoss term, when present) against step, one line per run."""
    names = [n for n in names if any(n in r for rows in rows_by_run.values() for r in rows)]
    cols = 4
    nrows = max(1, (len(names) + cols - 1) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.8 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for label, rows in rows_by_run.items():
            pts = [(r["step"], r[name]) for r in rows if name in r]
            if pts:
                s, v = zip(*pts)
                ax.plot(s, v, label=label)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if names:
        axes.flat[0].legend(fontsize=6)
    return _save(fig, path)


def plot_diagrams(snapshots: Mapping[str, Sequence[np.ndarray]], path: str) -> str:
    """Barcodes (top row) and persistence diagrams (bottom row) of a few prompt snapshots.

    snapshots: title -> ripser-format ``[H0 (n0, 2), H1 (n1, 2)]`` arrays (H0 may hold an
    infinite death, drawn at the top of the axis).
    """
    n = max(len(snapshots), 1)
    fig, axes = plt.subplots(2, n, figsize=(3.8 * n, 6.5), squeeze=False)
    for j, (title, (h0, h1)) in enumerate(snapshots.items()):
        finite = np.concatenate([h0[np.isfinite(h0[:, 1]), 1], h1.reshape(-1)]) \
            if len(h1) else h0[np.isfinite(h0[:, 1]), 1]
        top = float(finite.max()) * 1.1 if finite.size else 1.0
        ax = axes[0, j]
        bars = [(0, b, d) for b, d in h0] + [(1, b, d) for b, d in h1]
        for i, (dim, b, d) in enumerate(bars):
            ax.plot([b, min(d, top)], [i, i], color="C0" if dim == 0 else "C3", lw=1.2)
        ax.set(title=f"{title}: barcode", xlabel="filtration", yticks=[])
        ax = axes[1, j]
        h0f = np.where(np.isfinite(h0[:, 1]), h0[:, 1], top)
        ax.scatter(h0[:, 0], h0f, s=10, label="H0")
        if len(h1):
            ax.scatter(h1[:, 0], h1[:, 1], s=10, color="C3", label="H1")
        ax.plot([0, top], [0, top], "k--", lw=0.7)
        ax.set(title=f"{title}: diagram", xlabel="birth", ylabel="death")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_run(out_dir: str, rows_by_run, snapshots) -> List[str]:
    """The three standard figures of a run folder; returns the written paths."""
    paths = [plot_curves(rows_by_run, os.path.join(out_dir, "curves.png")),
             plot_topology(rows_by_run, os.path.join(out_dir, "topology.png"))]
    if snapshots:
        paths.append(plot_diagrams(snapshots, os.path.join(out_dir, "diagrams.png")))
    return paths
