"""Matplotlib figures for training runs and prompt checkpoints (written as PNG files)."""
from __future__ import annotations

import math
import os
import textwrap
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

# Figures without pyplot: they need no display, and the caller's backend stays (pyplot's
# matplotlib.use("Agg") switched a notebook's inline backend off for good).
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np

#: Metric rows: numbers under the columns drawn (``step`` and the panels'); the other columns,
#: such as analyze's ``checkpoint`` names (str), are not read.
Rows = Sequence[Mapping[str, Any]]

#: Panels of :func:`plot_topology`, most telling first: (column, title, y label). The CSV keeps
#: every column; these are the ones worth a picture (h0_total is h0_count·h0_mean_life,
#: h1_mean_life and h1_entropy follow the H1 bar count).
TOPOLOGY_PANELS: Tuple[Tuple[str, str, str], ...] = (
    ("ts_connectivity", "TSLoss connectivity term", "mean H0 death / scale"),
    ("ts_scale", "Prompt scale", "mean pairwise distance"),
    ("h0_mean_life", "H0: mean bar length", "distance"),
    ("h0_max_life", "H0: longest finite bar", "distance"),
    ("h0_entropy", "H0: persistent entropy", "entropy (nats)"),
    ("ts_stability", "TSLoss stability term\n(change since the previous record)", "mean squared change"),
    ("ts_redundancy", "TSLoss redundancy term", "sum of H1 bar lengths / scale"),
    ("h1_count", "H1: number of loops", "bars"),
    ("h1_max_life", "H1: longest loop bar", "distance"),
    ("h1_total", "H1: total bar length", "distance"),
    ("h0_count", "H0: finite bars of positive length", "bars"),
)


def _figure(figsize: Tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # what pyplot gave it headless: a renderer to measure text with
    return fig


def _save(fig, path: str) -> str:
    fig.savefig(path, dpi=90, bbox_inches="tight")
    return path


def _constant(values: Sequence[float]) -> bool:
    """Whether a column is flat: its finite values equal, and at least two of them where it
    has others (one measured value of a run that diverged after it is a change, not a
    constant); a column without a finite value has nothing to draw, and counts as flat."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < (2 if len(finite) < len(values) else 1):
        return not finite
    return max(finite) - min(finite) <= 1e-12 * max(1.0, abs(finite[0]))


def _whole_numbers(axis) -> None:
    """Integer ticks: steps and bar counts have no 0.2 or 1.5 (matplotlib's choice for a short
    range). Multiples of 1, 2 or 5 times a power of ten: matplotlib's integer default also
    takes 1.5, 3, 6, ..., and ticked 100 logged steps 0, 15, ..., 105."""
    axis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


#: Line styles after matplotlib's ten colours: a comparison of 11+ runs gave its eleventh the
#: colour and marker of the first (the "none" baseline).
_DASHES = ("-", "--", ":", "-.")
_MARKERS = (".", "x", "+", "^")


def _styles(labels: Sequence[str]) -> Dict[str, Dict[str, str]]:
    """A distinct (colour, line style, marker) per run label, in order, for up to 160 labels;
    the same label gets the same style in every figure of a job."""
    return {label: {"color": f"C{i % 10}", "ls": _DASHES[(i // 10) % 4],
                    "marker": _MARKERS[(i // 40) % 4]}
            for i, label in enumerate(labels)}


#: Where a shared prefix or suffix may end: cut anywhere else, epoch_{10,20}.pt shared "0.pt"
#: and ticked "1" and "2", and {alpha,delta}_final.pt shared "a_final.pt".
_NAME_SEPARATORS = "_-./ "


def _short_names(names: Sequence[str], width: int = 18) -> Tuple[List[str], str]:
    """Tick labels for ``names``: the prefix and suffix they all share, up to a separator
    (``_-./`` or a space), taken off (returned, as "prefix…suffix", for the axis label), then
    each cut to its last ``width`` characters. Cut first, names that differ in the middle
    (run_alpha_final.pt, run_gamma_final.pt) read alike."""
    if len(names) < 2:
        return [n if len(n) <= width else "…" + n[-(width - 1):] for n in names], ""
    pre = os.path.commonprefix(list(names))
    pre = pre[:max((i + 1 for i, c in enumerate(pre) if c in _NAME_SEPARATORS), default=0)]
    suf = os.path.commonprefix([n[len(pre):][::-1] for n in names])[::-1]
    suf = suf[min((i for i, c in enumerate(suf) if c in _NAME_SEPARATORS), default=len(suf)):]
    cut = [n[len(pre):len(n) - len(suf)] for n in names]
    if not all(cut):  # one name is all shared text (run.pt beside run_2.pt): keep them whole
        pre, suf, cut = "", "", list(names)
    # Wider where the cut makes different names alike (lr0.01_..._final, lr0.1_..._final).
    for w in range(width, max(width, *map(len, cut)) + 1):
        ticks = [c if len(c) <= w else "…" + c[-(w - 1):] for c in cut]
        if len(set(ticks)) == len(set(cut)):
            break
    return ticks, (f"{pre}…{suf}" if pre or suf else "")


def _first_value(values: Sequence[float]) -> float:
    """The first finite value (NaN if none): what a constant column's note shows."""
    return next((v for v in values if math.isfinite(v)), math.nan)


def plot_curves(rows_by_run: Mapping[str, Rows], path: str, *, title: Optional[str] = None,
                xlabel: str = "training step") -> str:
    """Task loss and validation accuracy against step, one line per run label.

    rows_by_run: label -> metric rows (dicts with ``step``, ``task_loss``, ``val_acc``).
    """
    fig = _figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    styles = _styles(list(rows_by_run))
    for label, rows in rows_by_run.items():
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r.get("task_loss", np.nan) for r in rows], label=label,
                     **styles[label])
        axes[1].plot(steps, [r.get("val_acc", np.nan) for r in rows], label=label,
                     **styles[label])
    axes[0].set(xlabel=xlabel, ylabel="cross-entropy",
                title="Task loss on the training batches\n(mean since the previous record)")
    axes[1].set(xlabel=xlabel, ylabel="accuracy", title="Validation accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        _whole_numbers(ax.xaxis)
    if len(rows_by_run) > 4:  # one legend, beside the panels: inside, a comparison's hid lines
        axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    else:
        axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_topology(rows_by_run: Mapping[str, Rows], path: str, *, title: Optional[str] = None,
                  xlabel: str = "training step",
                  panels: Sequence[Tuple[str, str, str]] = TOPOLOGY_PANELS,
                  xticklabels: Optional[Sequence[str]] = None) -> str:
    """Topology metrics and TSLoss terms against step, one line per run label.

    ``xticklabels``: names for the steps 0, 1, ... (checkpoints without steps), shown on the x
    axis where there are few enough to read (12), else integer ticks only.

    Panels whose value never changes (in any run) are left out and listed, with their value, in
    a note under the figure, so that e.g. a prompt without loops does not fill it with flat
    zero lines.
    """
    shown, flat = [], []
    gaps = False  # a flat column with non-finite records (a run that diverged): said in the note
    never = False  # a column without a finite record
    for col, name, unit in panels:
        vals = [r[col] for rows in rows_by_run.values() for r in rows if col in r]
        if not vals:
            continue
        if _constant(vals):
            first = _first_value(vals)
            if math.isnan(first):
                flat.append(f"{name.splitlines()[0]}: never finite")
                never = True
            else:
                flat.append(f"{name.splitlines()[0]} = {first:.4g}")
                gaps |= not all(math.isfinite(v) for v in vals)
        else:
            shown.append((col, name, unit))
    cols = 3
    nrows = max(1, math.ceil(len(shown) / cols))
    legend_rows = math.ceil(len(rows_by_run) / 4)  # 4 labels a row (ncol below)
    height = 3.1 * nrows + 0.6 + 0.2 * legend_rows  # inches: panels, the title, the legend
    fig = _figure(figsize=(4.3 * cols, height))
    axes = fig.subplots(nrows, cols, squeeze=False)
    styles = _styles(list(rows_by_run))
    ticks, shared = (_short_names(xticklabels) if xticklabels is not None else ([], ""))
    for ax, (col, name, unit) in zip(axes.flat, shown):
        for label, rows in rows_by_run.items():
            pts = [(r["step"], r[col]) for r in rows if col in r]
            if pts:
                s, v = zip(*pts)
                ax.plot(s, v, label=label, **styles[label])
        ax.set(title=name, xlabel=xlabel, ylabel=unit)
        if xticklabels is not None and len(xticklabels) <= 12:  # name each checkpoint
            ax.set_xticks(range(len(ticks)), ticks, rotation=30, ha="right", fontsize=7)
            if shared:
                ax.set_xlabel(f"{xlabel}\n{shared}", fontsize=8)
        else:
            _whole_numbers(ax.xaxis)
        if col.endswith("_count"):
            _whole_numbers(ax.yaxis)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    if not shown:
        axes.flat[0].text(0.5, 0.5, "every metric is constant", ha="center", va="center")
    # Every run that has a line somewhere, in run order: a run missing from the first panel
    # (rows without its column) was drawn elsewhere without a legend entry.
    drawn = {ln.get_label(): ln for ax in axes.flat for ln in ax.get_lines()}
    labels = [label for label in rows_by_run if label in drawn]
    handles = [drawn[label] for label in labels]
    fig.suptitle(title or "Prompt topology over training", fontsize=13)
    # Room above the panels for the title (0.45 in) and one 0.2 in line per legend row: a
    # fixed 7 % let a legend of 9+ runs cover the first row's titles.
    below_title = 1 - 0.45 / height
    top = below_title - (0.2 * legend_rows + 0.05) / height if handles else below_title
    fig.tight_layout(rect=(0, 0.06 if flat else 0, 1, top))
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), fontsize=10,
                   bbox_to_anchor=(0.5, below_title), frameon=False)
    if flat:
        note = (f"Not drawn, constant at every {'finite ' if gaps else ''}record"
                + (" or never finite" if never else "") + ": " + "; ".join(flat))
        fig.text(0.5, 0.01, note, ha="center", va="bottom", fontsize=9, wrap=True)
    return _save(fig, path)


def _wrap(label: str, width: int = 36) -> str:
    """A panel label in lines that fit a 4.2 in panel: long checkpoint paths ran into the next
    panel's title."""
    return "\n".join(textwrap.wrap(label, width, break_on_hyphens=False)) or label


def _finite_top(h0: np.ndarray, h1: np.ndarray) -> float:
    vals = np.concatenate([h0[:, 1], h1.reshape(-1)])
    vals = vals[np.isfinite(vals)]  # the infinite bar, and NaN bars of an invalid prompt
    return float(vals.max()) * 1.12 if vals.size and vals.max() > 0 else 1.0


def plot_diagrams(snapshots: Mapping[str, Sequence[np.ndarray]], path: str, *,
                  title: Optional[str] = None) -> str:
    """Barcodes (top row) and persistence diagrams (bottom row) of a few prompt snapshots.

    snapshots: panel label (e.g. ``"step 50"``) -> ripser-format ``[H0 (n0, 2), H1 (n1, 2)]``
    arrays. H0's infinite bar is drawn to the right edge with an arrow and the point of infinite
    death on a dashed "∞" line at the top of the diagram.
    """
    n = max(len(snapshots), 1)
    fig = _figure(figsize=(4.2 * n, 7.2))
    axes = fig.subplots(2, n, squeeze=False)
    # One filtration scale for every snapshot, so they compare at a glance.
    top = max([_finite_top(h0, h1) for h0, h1 in snapshots.values()] or [1.0])
    for j, (label, (h0, h1)) in enumerate(snapshots.items()):
        inf0 = np.isinf(h0[:, 1])  # NaN deaths (invalid input) are no infinite bar; not drawn
        ax = axes[0, j]
        bars = [(0, b, d) for b, d in h0[~inf0]] + [(1, b, d) for b, d in h1]
        bars.sort(key=lambda t: (t[0], -(t[2] - t[1])))
        y = 0
        for b, _ in h0[inf0]:
            ax.annotate("", xy=(top, y), xytext=(b, y),
                        arrowprops=dict(arrowstyle="->", color="C0", lw=1.4))
            ax.text(top, y + 0.2, "infinite H0 bar →∞", ha="right", va="bottom", color="C0",
                    fontsize=8)
            y += 1
        for dim, b, d in bars:
            color = "C0" if dim == 0 else "C3"
            ax.plot([b, d], [y, y], color=color, lw=1.6)
            if d - b < 0.01 * top:  # under a pixel or two: a tick marks where the bar is
                ax.plot([b], [y], "|", color=color, ms=6, mew=1.6)
            y += 1
        ax.set(title=f"{_wrap(label)}\nbarcode: {len(h0)} H0 and {len(h1)} H1 bars",
               xlabel="filtration (distance)",
               ylabel="bars: H0 blue, H1 red", xlim=(-0.03 * top, top * 1.02),
               ylim=(-0.8, max(y, 1) + 0.3))  # from below 0: a short H0 bar's tick is at 0
        ax.set_yticks([])
        ax.grid(alpha=0.3, axis="x")

        ax = axes[1, j]
        ax.plot([0, top], [0, top], "k--", lw=0.7)
        ax.axhline(top, color="0.4", ls=":", lw=0.9)
        ax.text(0.02 * top, top, "∞", va="bottom", fontsize=11, color="0.3")
        ax.scatter(h0[~inf0, 0], h0[~inf0, 1], s=14, color="C0", label="H0")
        if inf0.any():
            ax.scatter(h0[inf0, 0], np.full(int(inf0.sum()), top), s=50, marker="^",
                       color="C0", label="H0, infinite death")
        ax.scatter(h1[:, 0], h1[:, 1], s=14, color="C3",
                   label="H1" if len(h1) else "H1 (none)")
        ax.set(title=f"{_wrap(label)}\npersistence diagram", xlabel="birth (distance)",
               ylabel="death (distance)", xlim=(-0.03 * top, top * 1.02),
               ylim=(-0.03 * top, top * 1.08))
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return _save(fig, path)
