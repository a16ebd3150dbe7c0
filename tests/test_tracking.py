"""Tracking and plots on the outputs CUDA can produce (built by hand, so they run on the CPU):
flagged diagrams, collapsed prompts, NaN columns, and step timing by CUDA events."""
import math
import os

import matplotlib.colors
import numpy as np
import pytest
import torch

from tsloss_cuda import plots, tracking
from tsloss_cuda.persistence import H1_OVERFLOW, INVALID_INPUT, Diagrams, vr_persistence
from tsloss_cuda.tracking import (METRICS, TERMS, StepTimer, TopologyTracker,
                                  cpu_engine_refuses, to_floats, topology_metrics)

SQUARE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])


def _flagged(code: int) -> Diagrams:
    """The square's diagram as CUDA returns it for an H1 overflow (-1: H1 rows padding, H0
    exact) or an invalid input (-2: H0 and H1 NaN)."""
    d = vr_persistence(SQUARE)
    h1 = torch.zeros_like(d.h1)
    h0 = d.h0
    if code == INVALID_INPUT:
        h0, h1 = torch.full_like(d.h0, math.nan), torch.full_like(d.h1, math.nan)
    return Diagrams(h0, d.h0_edges, h1, d.h1_edges, torch.tensor([code]), d.truncated)


@pytest.mark.parametrize("code", [H1_OVERFLOW, INVALID_INPUT])
def test_flagged_diagrams_give_nan_metrics_not_zero_bars(monkeypatch, code):
    exact = to_floats(topology_metrics(SQUARE))
    monkeypatch.setattr(tracking, "vr_persistence", lambda x, maxdim=1: _flagged(code))
    got = to_floats(topology_metrics(SQUARE))
    for name in METRICS:
        if name.startswith("h1") or code == INVALID_INPUT:
            assert math.isnan(got[name]), (name, got[name])
        else:  # an overflow leaves H0 exact
            assert got[name] == exact[name], name


@pytest.mark.parametrize("prompt", [torch.randn(1, 4), torch.ones(3, 4)], ids=["N=1", "collapsed"])
def test_scale_of_a_collapsed_prompt_is_logged_as_zero(prompt):
    """TSLoss clamps the scale to float32's smallest normal to divide by it; the log says 0."""
    tracker = TopologyTracker(1, tsloss_terms=True)
    tracker.update(0, prompt)
    tracker.update(1, SQUARE)
    collapsed, square = tracker.flush()
    assert collapsed["ts_scale"] == 0.0
    assert square["ts_scale"] > 0.5


def test_zero_length_h0_bars_are_not_counted():
    """A duplicated point joins its twin at distance 0: no component lived, so neither the count
    nor the mean lifetime may include it; a collapsed prompt has no H0 bars at all."""
    line = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    got = to_floats(topology_metrics(line))
    assert got["h0_count"] == 2 and got["h0_mean_life"] == 1.5 and got["h0_total"] == 3
    collapsed = to_floats(topology_metrics(torch.ones(3, 4)))
    assert collapsed["h0_count"] == 0 and collapsed["h0_mean_life"] == 0


def _metrics_of(h0: np.ndarray, h1: np.ndarray) -> dict:
    """The metrics by their definitions, from ripser.py's finite bars of positive length."""
    out = {}
    for dim, dgm in (("h0", h0), ("h1", h1)):
        life = dgm[:, 1] - dgm[:, 0]
        p = life / life.sum()
        out.update({f"{dim}_count": len(life), f"{dim}_mean_life": life.mean(),
                    f"{dim}_max_life": life.max(), f"{dim}_total": life.sum(),
                    f"{dim}_entropy": float(-(p * np.log(p)).sum())})
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_the_definitions_on_ripsers_diagrams(seed):
    """Clouds with several H1 bars of unequal lives (two noisy loops and scatter), every metric
    against its definition on ripser.py's diagrams: the masks keep the real bars and only them."""
    pytest.importorskip("ripser")
    from diagram_utils import finite_part, ripser_reference
    g = torch.Generator().manual_seed(seed)
    t = 2 * math.pi * torch.rand(30, generator=g)
    loops = torch.cat([torch.stack([torch.cos(t[:18]), torch.sin(t[:18]), 0 * t[:18]], 1),
                       torch.stack([3 + 0.5 * torch.cos(t[18:]), 0.5 * torch.sin(t[18:]),
                                    0 * t[18:]], 1)])
    x = torch.cat([loops + 0.05 * torch.randn(30, 3, generator=g),
                   torch.randn(10, 3, generator=g)]).float()
    ref = ripser_reference(x.numpy())
    h0, h1 = finite_part(ref[0]), finite_part(ref[1])
    assert len(h1) >= 2 and np.ptp(h1[:, 1] - h1[:, 0]) > 0.1  # several bars, unequal
    want = _metrics_of(h0, h1)
    got = to_floats(topology_metrics(x))
    assert set(got) == set(METRICS)
    for name in METRICS:
        assert got[name] == pytest.approx(want[name], rel=1e-5, abs=1e-6), name


def test_prompt_without_bars_has_zero_means_not_nan():
    # A mean over no bars is logged as 0 (a NaN would read as a flagged diagram).
    line = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [6.0, 0.0]])
    got = to_floats(topology_metrics(line))
    assert got["h1_count"] == 0 and got["h1_mean_life"] == 0 and got["h1_max_life"] == 0
    assert to_floats(topology_metrics(torch.ones(3, 4)))["h0_mean_life"] == 0


def test_negative_zero_is_logged_as_zero():
    # A CSV cell would read "-0.0".
    got = to_floats({"v": torch.tensor(-0.0), "w": torch.tensor(-1.5)})
    assert str(got["v"]) == "0.0" and got["w"] == -1.5


@pytest.mark.parametrize("every", [0, -3, 0.5, 2.5, True, "x", float("nan")])
def test_tracker_refuses_an_interval_that_is_not_a_positive_integer(every):
    # Each was silently clamped to 1 or truncated, or failed in int() without the name.
    with pytest.raises(ValueError, match="every must be a positive integer"):
        TopologyTracker(every)


def test_tracker_refuses_options_that_are_not_term_options():
    with pytest.raises(ValueError, match="stability"):
        TopologyTracker(1, tsloss_terms=True, term_options={"stability": 0.5})


def _capture(monkeypatch):
    """The figures the plot functions would save."""
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    return figs


def test_tracker_refuses_the_terms_of_a_batch():
    """One prompt per tracker: a batch's per-prompt terms were dropped without a word."""
    from tsloss_cuda.loss import loss
    prompt = torch.randn(5, 3)
    tracker = TopologyTracker(1)
    _, batched = loss(torch.randn(3, 5, 3), reduction="none", return_terms=True)
    with pytest.raises(ValueError, match=r"terms: connectivity has shape \(3,\)"):
        tracker.update(0, prompt, terms=batched)
    _, one = loss(prompt, return_terms=True)
    tracker.update(0, prompt, terms=one)  # the whole dict: h1_count and topology come along
    row = tracker.flush()[0]
    assert row["ts_connectivity"] == pytest.approx(float(one["connectivity"]))


def test_tracker_refuses_terms_it_would_drop():
    """A misspelled key or a value of another kind was dropped without a word; plain numbers are
    recorded as the tensors are."""
    prompt, tracker = torch.randn(5, 3), TopologyTracker(1)
    with pytest.raises(ValueError, match=r"terms: unknown key\(s\) redundancy_; the recorded "
                                         r"terms are connectivity, redundancy, stability, scale"):
        tracker.update(0, prompt, terms={"connectivity": 0.5, "redundancy_": torch.tensor(1.0)})
    with pytest.raises(TypeError, match="terms: connectivity must be a tensor or a number, "
                                        "got str"):
        tracker.update(0, prompt, terms={"connectivity": "0.5"})
    with pytest.raises(TypeError, match="terms: connectivity must be a tensor or a number, "
                                        "got bool"):
        tracker.update(0, prompt, terms={"connectivity": True})  # not logged as 1.0
    assert tracker.flush() == []  # nothing half-recorded
    tracker.update(0, prompt, terms={"connectivity": 0.5, "redundancy": torch.tensor(0.25)})
    row = tracker.flush()[0]
    assert (row["ts_connectivity"], row["ts_redundancy"]) == (0.5, 0.25)


def test_a_nan_death_is_not_drawn_as_an_infinite_bar(monkeypatch):
    figs = _capture(monkeypatch)
    h0 = np.array([[0.0, 1.0], [0.0, np.nan], [0.0, np.inf]])
    plots.plot_diagrams({"step 0": [h0, np.zeros((0, 2))]}, "unused.png")
    barcode = figs[0].axes[0]
    arrows = [t for t in barcode.texts if "infinite H0 bar" in t.get_text()]
    assert len(arrows) == 1
    assert np.isfinite(barcode.get_xlim()).all()


def test_constant_note_shows_the_first_finite_value(monkeypatch):
    figs = _capture(monkeypatch)
    rows = [{"step": 0, "h0_mean_life": math.nan}, {"step": 10, "h0_mean_life": 1.5},
            {"step": 20, "h0_mean_life": 1.5}]
    plots.plot_topology({"run": rows}, "unused.png")
    notes = [t.get_text() for t in figs[0].texts if "constant" in t.get_text()]
    assert len(notes) == 1 and "= 1.5" in notes[0] and "nan" not in notes[0], notes


def test_a_run_that_diverged_after_its_first_record_is_drawn_not_constant(monkeypatch):
    """One measured value, then NaN (a run diverged before its second record): the figure said
    "every metric is constant", the opposite of what happened. It is drawn instead."""
    figs = _capture(monkeypatch)
    rows = [{"step": 0, "ts_scale": 0.14, "h1_count": 2.0},
            {"step": 3, "ts_scale": math.nan, "h1_count": math.nan},
            {"step": 6, "ts_scale": math.nan, "h1_count": math.nan}]
    plots.plot_topology({"run": rows}, "unused.png")
    titles = [ax.get_title() for ax in figs[0].axes if ax.get_title()]
    assert titles == ["Prompt scale", "H1: number of loops"]
    assert not [t for t in figs[0].texts if "constant" in t.get_text()]


def test_steps_and_bar_counts_get_whole_number_ticks(monkeypatch):
    """A run of one step: matplotlib's ticks were 0.0, 0.2, ... 1.0 on every step axis and
    0.5 bars on the count panels."""
    figs = _capture(monkeypatch)
    rows = [{"step": 0, "task_loss": 1.0, "val_acc": 0.5, "h1_count": 2.0, "ts_scale": 0.1},
            {"step": 1, "task_loss": 0.9, "val_acc": 0.6, "h1_count": 3.0, "ts_scale": 0.2}]
    plots.plot_curves({"run": rows}, "unused.png")
    plots.plot_topology({"run": rows}, "unused.png")
    axes = [ax for fig in figs for ax in fig.axes if ax.get_title()]
    assert len(axes) == 4
    for ax in axes:
        ticks = [t for t in ax.get_xticks() if -0.5 <= t <= 1.5]
        assert ticks and all(t == int(t) for t in ticks), (ax.get_title(), ticks)
    count = next(ax for ax in axes if ax.get_title() == "H1: number of loops")
    ticks = [t for t in count.get_yticks() if 1.5 <= t <= 3.5]
    assert ticks and all(t == int(t) for t in ticks), ticks


def test_step_ticks_are_round_numbers(monkeypatch):
    """The default job logs steps 0, 10, ..., 100: matplotlib's integer locator ticked them
    0, 15, ..., 105 (and 50 steps 0, 6, ..., 54)."""
    figs = _capture(monkeypatch)
    for last, step in ((100, 20), (50, 10), (1000, 200)):
        rows = [{"step": s, "task_loss": 1.0 / (1 + s), "ts_scale": 1.0 + s}
                for s in range(0, last + 1, 10)]
        plots.plot_topology({"run": rows}, "unused.png")
        ax = next(ax for ax in figs[-1].axes if ax.get_title() == "Prompt scale")
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks == list(range(0, last + 1, step)), (last, ticks)


def test_figures_leave_the_callers_matplotlib_backend(tmp_path):
    """plots set matplotlib.use("Agg") at import: analyze() or the figures called from a
    notebook switched its inline backend off for the rest of the session. The figures draw
    without pyplot now, and the files are the same bytes."""
    import subprocess
    import sys
    code = ("import matplotlib, sys; from tsloss_cuda import plots; "
            "rows = [{'step': 0, 'task_loss': 1.0, 'val_acc': 0.5}, "
            "{'step': 1, 'task_loss': 0.9, 'val_acc': 0.6}]; "
            "plots.plot_curves({'run': rows}, sys.argv[1]); print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.png")], check=True,
                         capture_output=True, text=True, env=dict(os.environ, MPLBACKEND="svg"))
    assert out.stdout.strip() == "svg"
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _FakeEvent:
    """A CUDA event on a fake clock: completes when the test says so."""
    clock = 0.0

    def __init__(self, enable_timing=False):
        self.time, self.done = None, False

    def record(self, stream=None):
        self.time = _FakeEvent.clock

    def query(self):
        return self.done

    def synchronize(self):
        self.done = True

    def elapsed_time(self, end):
        assert end.done, "read before completion"  # then the earlier start is done too
        return (end.time - self.time) * 1000.0


def test_step_timer_on_cuda_reads_events_without_a_sync_per_step(monkeypatch):
    def no_sync(*args, **kwargs):
        raise AssertionError("a host sync per step")

    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", no_sync)
    timer = StepTimer(torch.device("cuda"))
    for step in range(3):
        t0 = timer.mark()
        _FakeEvent.clock += 2.0
        t1 = timer.mark()
        _FakeEvent.clock += 0.5
        timer.add("step", t0, t1)
        timer.add("reg", t1, timer.mark())
        if step == 0:  # the first step's kernels have finished: folded in as it goes
            t0.done = t1.done = True
    assert len(timer._open) == 5  # the rest wait, without blocking
    assert timer.totals() == {"step": 6.0, "reg": 1.5}
    assert not timer._open


def test_step_timer_on_cpu_uses_the_host_clock():
    timer = StepTimer(torch.device("cpu"))
    timer.add("step", 1.0, 3.5)
    timer.add("step", 4.0, 4.5)
    assert timer.totals() == {"step": 3.0}


def test_a_diverged_prompt_is_logged_as_nan_not_raised():
    """A NaN prompt on the CPU (a diverged run): every metric and term NaN, as CUDA flags it,
    rather than the CPU engine's error, which stopped a run that only logged its topology."""
    tracker = TopologyTracker(1, tsloss_terms=True)
    prompt = torch.randn(8, 16)
    tracker.update(0, prompt)
    prompt[3, 5] = float("nan")
    tracker.update(1, prompt)
    first, second = tracker.flush()
    assert all(math.isfinite(v) for v in first.values())
    assert all(math.isnan(v) for k, v in second.items() if k != "step"), second
    assert set(second) == set(first)
    # float32, as the docstring says, whatever the default dtype
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert all(v.dtype == torch.float32 for v in topology_metrics(prompt).values())
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_a_prompt_past_float32s_range_is_logged_as_nan_not_raised(dtype):
    """Finite values whose float32 distances overflow (or, in float64, values float32 cannot
    hold): the CPU engine raised "overflows float32; pass float64 points", naming an input the
    caller never made, where the docstring promises NaN metrics. The float64 prompt's terms
    are computed in float64 (finite); its float32 metrics are NaN. A quarter of it takes the
    engine's check (the bound allows an overflow) and has none; 1e36 is finite throughout."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(8, 16, generator=g, dtype=torch.float64)
    huge = (base * (1e300 if dtype == torch.float64 else 1e38)).to(dtype)
    assert torch.isfinite(huge).all()
    assert cpu_engine_refuses(huge.float())
    assert cpu_engine_refuses(huge) == (dtype != torch.float64)  # float64 computes in float64
    if dtype != torch.float64:
        quarter = huge / 4
        assert 8 * float(quarter.abs().max()) > torch.finfo(torch.float32).max  # 2 sqrt(D) max
        assert not cpu_engine_refuses(quarter)
    tracker = TopologyTracker(1, tsloss_terms=True)
    tracker.update(0, huge)
    tracker.update(1, (base * 1e36).to(dtype) if dtype != torch.float64 else base)
    first, second = tracker.flush()
    assert all(math.isnan(first[k]) for k in METRICS), first
    # (a float64 prompt's scale, ~1e301, is logged as float32's inf)
    terms = [first["ts_" + t] for t in TERMS if t != "scale"]
    assert all(map(math.isnan if dtype != torch.float64 else math.isfinite, terms)), first
    assert all(math.isfinite(v) for k, v in second.items() if k != "ts_stability"), second


def test_a_float64_prompt_past_float64s_range_is_logged_as_nan():
    """The float64 terms' engine raised "exceeds the float64 range" from the tracker."""
    q = torch.zeros(3, 2, dtype=torch.float64)
    q[1, 0], q[2, 0], q[0, 1] = 1.7e308, -1.7e308, 1.0
    assert cpu_engine_refuses(q)
    tracker = TopologyTracker(1, tsloss_terms=True)
    tracker.update(0, q)
    (row,) = tracker.flush()
    assert all(math.isnan(v) for k, v in row.items() if k != "step"), row


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_overflow_check_is_the_engines_own(dtype):
    """cpu_engine_refuses decides as the engine does: on points whose largest distance lies
    within a few ulps of the dtype's largest value, it says True exactly where vr_persistence
    raises, on 3 points in 1-D and on 40 in 300-D (float32's certified Gram route)."""
    big = torch.finfo(dtype).max
    g = torch.Generator().manual_seed(1)
    wide = torch.randn(40, 300, generator=g, dtype=torch.float64)
    wide /= float(torch.cdist(wide, wide).max())
    seen = set()
    for scale in (0.9999998, 0.9999999, 1.0, 1.0000001, 1.0000002):
        line = torch.tensor([[0.0], [0.5], [-0.5]], dtype=torch.float64)
        for x in (line * big * scale, wide * big * scale):
            x = x.to(dtype)
            if not torch.isfinite(x).all():
                continue
            try:
                vr_persistence(x)
                raised = False
            except RuntimeError as e:
                assert "overflows float32" in str(e) or "exceeds the float64 range" in str(e)
                raised = True
            assert cpu_engine_refuses(x) == raised, (scale, x.shape)
            seen.add(raised)
    assert seen == {False, True}


def test_tracker_keeps_given_terms_on_the_prompts_device():
    """flush stacks a row's values into one tensor: a number or a CPU tensor given as a term of
    a CUDA prompt made that stack fail. No GPU here: the meta device stands in for CUDA (the
    metrics run on it through the ops' fake kernels)."""
    prompt, tracker = torch.randn(6, 8, device="meta"), TopologyTracker(1)
    tracker.update(0, prompt, terms={"connectivity": 0.5, "redundancy": torch.tensor(0.2)})
    (_, vals), = tracker._pending
    assert {"ts_connectivity", "ts_redundancy", "h0_total"} <= set(vals)
    assert {v.device.type for v in vals.values()} == {"meta"}


def test_stability_across_a_change_of_shape_is_not_measured():
    """Prompts of different N (checkpoints of two runs read by analyze) have no stability
    distance: NaN, where a 0 read as "unchanged"."""
    g = torch.Generator().manual_seed(0)
    tracker = TopologyTracker(1, tsloss_terms=True)
    for step, n in enumerate((8, 8, 10, 10)):
        tracker.update(step, torch.randn(n, 16, generator=g))
    stab = [row["ts_stability"] for row in tracker.flush()]
    assert stab[0] == 0.0 and stab[1] > 0 and math.isnan(stab[2]) and stab[3] > 0, stab


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float16, torch.bfloat16])
def test_tracker_terms_take_any_float_prompt_as_its_metrics_do(dtype):
    """topology_metrics widens any float prompt to float32; with tsloss_terms=True the same
    prompt went to TSLoss as it was, which refuses float8 (naming `prompts`, an argument the
    caller never passed). The terms are now those of the widened prompt."""
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randn(7, 12, generator=g).to(dtype) for _ in range(2)]
    tracker, ref = TopologyTracker(1, tsloss_terms=True), TopologyTracker(1, tsloss_terms=True)
    for step, p in enumerate(prompts):
        tracker.update(step, p)
        ref.update(step, p.float())
    assert tracker.flush() == ref.flush()


def test_metrics_and_terms_keep_float32_on_the_prompts_device_whatever_torchs_defaults():
    """The NaN results (a diverged prompt) and a number given as a term were made with torch's
    default dtype or device: under set_default_dtype(float64) every metric came back float64,
    and under set_default_device("meta") a diverged CPU prompt's metrics landed on meta, where
    the tracker could not record them. The docstring promises 0-d float32 on the prompt's
    device."""
    g = torch.Generator().manual_seed(0)
    good, bad = torch.randn(6, 3, generator=g), torch.full((6, 3), float("nan"))
    other = torch.randn(5, 3, generator=g)
    try:
        torch.set_default_dtype(torch.float64)
        for p in (good, bad):
            assert {v.dtype for v in topology_metrics(p).values()} == {torch.float32}
        with torch.device("meta"):
            for p in (good, bad):
                assert {(v.dtype, v.device.type) for v in topology_metrics(p).values()} == \
                    {(torch.float32, "cpu")}
            tracker = TopologyTracker(1, tsloss_terms=True)
            tracker.update(0, good)
            tracker.update(1, good.double(), terms={"connectivity": 0.5})
            tracker.update(2, other)  # reshaped: stability not measured
            tracker.update(3, bad)
            rows = tracker.flush()
    finally:
        torch.set_default_dtype(torch.float32)
    assert rows[1]["ts_connectivity"] == 0.5 and math.isnan(rows[2]["ts_stability"])
    assert math.isnan(rows[3]["h0_total"]) and math.isnan(rows[3]["ts_connectivity"])


def _rows(k: int):
    return [{"step": s, "task_loss": 1.0 / (s + k + 1), "val_acc": 0.1 * k,
             "ts_scale": 0.1 * s + k, "h1_count": float(s % 3 + k % 2)} for s in range(3)]


def test_every_run_of_a_large_comparison_has_its_own_style(monkeypatch):
    """Matplotlib's cycle has ten colours and every line had marker ".": the eleventh run of a
    comparison was drawn as the first, the "none" baseline."""
    figs = _capture(monkeypatch)
    runs = {f"run{k}": _rows(k) for k in range(12)}
    plots.plot_curves(runs, "unused.png")
    plots.plot_topology(runs, "unused.png")
    for fig in figs:
        for ax in (a for a in fig.axes if a.get_title()):
            styles = {ln.get_label(): (matplotlib.colors.to_hex(ln.get_color()),
                                       ln.get_linestyle(), ln.get_marker())
                      for ln in ax.get_lines()}
            assert len(styles) == 12 and len(set(styles.values())) == 12, styles
    curve_style = {ln.get_label(): ln.get_linestyle() for ln in figs[0].axes[0].get_lines()}
    styles = plots._styles([str(k) for k in range(160)])  # what the docstring promises
    assert len({tuple(v.values()) for v in styles.values()}) == 160
    topo_style = {ln.get_label(): ln.get_linestyle() for ln in figs[1].axes[0].get_lines()}
    assert curve_style == topo_style  # the same run looks the same in both figures


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("n_runs", [1, 5, 9, 12, 20])
def test_the_legend_clears_the_panel_titles(monkeypatch, n_runs):
    """The layout kept a fixed 7 % of the height for the legend: from 9 runs (three rows) it
    covered the first row of panel titles."""
    figs = _capture(monkeypatch)
    plots.plot_topology({f"a longer run label {k}": _rows(k) for k in range(n_runs)},
                        "unused.png")
    fig = figs[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    suptitle = fig._suptitle.get_window_extent(renderer)
    titles = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    assert titles
    assert not any(_overlap(legend, t) for t in titles)
    assert not _overlap(legend, suptitle)


def test_checkpoint_ticks_differ_where_the_names_do(monkeypatch):
    """Ticks kept each name's last 17 characters: experiment_{alpha,...}_final_prompt.pt read
    "…a_final_prompt.pt" four times in five."""
    names = [f"experiment_{w}_final_prompt.pt" for w in ("alpha", "beta", "gamma", "delta",
                                                         "epsilon")]
    ticks, shared = plots._short_names(names)
    assert ticks == ["alpha", "beta", "gamma", "delta", "epsilon"]
    assert shared == "experiment_…_final_prompt.pt"
    assert plots._short_names(["run.pt", "run2.pt"]) == (["run", "run2"], "….pt")
    # Shared text ends at a separator: cut anywhere, these ticked "1, 2, 3" and "alph, bet".
    assert plots._short_names(["epoch_10.pt", "epoch_20.pt", "epoch_30.pt"]) == (
        ["10", "20", "30"], "epoch_….pt")
    assert plots._short_names(names[:4])[0] == ["alpha", "beta", "gamma", "delta"]
    assert plots._short_names(["prompt_v10.pt", "prompt_v20.pt"])[0] == ["v10", "v20"]
    assert plots._short_names(["same", "same"]) == (["same", "same"], "")
    figs = _capture(monkeypatch)
    rows = [{"step": i, "ts_scale": 0.1 * i} for i in range(5)]
    plots.plot_topology({"ckpts": rows}, "unused.png", xticklabels=names)
    ax = next(a for a in figs[0].axes if a.get_title())
    assert [t.get_text() for t in ax.get_xticklabels()] == ticks
    assert "experiment_…_final_prompt.pt" in ax.get_xlabel()


def test_a_short_bar_is_marked_and_the_bars_counted(monkeypatch):
    """A bar 1e-4 of the axis long was drawn 0.02 px wide: a barcode of 3 H1 bars showed 1."""
    figs = _capture(monkeypatch)
    h0 = np.array([[0.0, 0.5], [0.0, 1.0], [0.0, np.inf]])
    h1 = np.array([[0.6, 0.9], [0.7, 0.7001], [0.8, 0.80005]])
    plots.plot_diagrams({"step 40": [h0, h1]}, "unused.png")
    barcode = figs[0].axes[0]
    assert "3 H0 and 3 H1 bars" in barcode.get_title()
    ticks = [ln for ln in barcode.get_lines() if ln.get_marker() == "|"]
    assert sorted(float(ln.get_xdata()[0]) for ln in ticks) == [0.7, 0.8]


def test_a_short_h0_bar_is_not_hidden_at_the_left_edge(monkeypatch):
    """H0 bars start at 0, where the barcode's axis started: a short bar's tick was half
    clipped under the spine, and near-duplicate points' bars vanished."""
    figs = _capture(monkeypatch)
    h0 = np.array([[0.0, 0.004], [0.0, 0.005], [0.0, 3.7], [0.0, np.inf]])
    plots.plot_diagrams({"step 10": [h0, np.zeros((0, 2))]}, "unused.png")
    barcode = figs[0].axes[0]
    ticks = [ln for ln in barcode.get_lines() if ln.get_marker() == "|"]
    assert len(ticks) == 2
    # The tick's half width (6 points at 90 dpi) lies inside the axis.
    fig = figs[0]
    fig.canvas.draw()
    left = barcode.transData.transform((0.0, 0.0))[0] - barcode.get_window_extent().x0
    assert left >= 3 * fig.dpi / 72, left


def test_checkpoint_ticks_stay_distinct_when_cut(monkeypatch):
    """Cut to their last 18 characters, names that differ further left read alike."""
    names = ["lr0.01_seed0_checkpoint_final_prompt.pt", "lr0.1_seed0_checkpoint_best_prompt.pt",
             "lr0.1_seed0_checkpoint_final_prompt.pt"]
    ticks, _ = plots._short_names(names)
    assert len(set(ticks)) == 3, ticks
    assert all(len(t) <= len(n) for t, n in zip(ticks, names))
    assert plots._short_names(["a_" + "x" * 30, "b_" + "x" * 30, "a_" + "x" * 30])[0][0] == (
        plots._short_names(["a_" + "x" * 30, "b_" + "x" * 30])[0][0])  # repeats stay repeats


def test_the_legend_names_a_run_missing_from_the_first_panel(monkeypatch):
    figs = _capture(monkeypatch)
    a = [{"step": s, "ts_scale": 0.2 * s, "h0_mean_life": 0.1 * s} for s in range(3)]
    b = [{"step": s, "h0_mean_life": 0.3 * s} for s in range(3)]  # not in the first panel
    plots.plot_topology({"A": a, "B": b}, "unused.png")
    legend = figs[0].legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["A", "B"]


def test_a_column_that_is_never_finite_is_noted_not_drawn_empty(monkeypatch):
    figs = _capture(monkeypatch)
    rows = [{"step": s, "h0_max_life": math.inf, "ts_scale": 0.1 * s} for s in range(3)]
    plots.plot_topology({"run": rows}, "unused.png")
    titles = [ax.get_title() for ax in figs[0].axes if ax.get_title()]
    assert titles == ["Prompt scale"], titles
    note = [t.get_text() for t in figs[0].texts if "constant" in t.get_text()][0]
    assert "or never finite" in note and "never finite" in note.split(":", 1)[1], note


def test_long_snapshot_labels_do_not_run_into_each_other(monkeypatch):
    figs = _capture(monkeypatch)
    h0, h1 = np.array([[0.0, 1.0], [0.0, np.inf]]), np.zeros((0, 2))
    snaps = {f"experiment_{w}_with_a_long_name/final_prompt.pt": [h0, h1]
             for w in ("alpha", "beta", "gamma")}
    plots.plot_diagrams(snaps, "unused.png")
    fig = figs[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for row in (0, 1):
        boxes = [fig.axes[row * 3 + j].title.get_window_extent(renderer) for j in range(3)]
        assert not _overlap(boxes[0], boxes[1]) and not _overlap(boxes[1], boxes[2])


def test_the_constant_note_says_when_some_records_were_not_finite(monkeypatch):
    figs = _capture(monkeypatch)
    ok = [{"step": s, "h1_count": 0.0, "ts_scale": 0.1 * s} for s in range(3)]
    diverged = [{"step": 0, "h1_count": 0.0, "ts_scale": 0.1},
                {"step": 1, "h1_count": math.nan, "ts_scale": math.nan}]
    plots.plot_topology({"ok": ok}, "unused.png")
    plots.plot_topology({"ok": ok, "diverged": diverged}, "unused.png")
    notes = [[t.get_text() for t in f.texts if "constant" in t.get_text()][0] for f in figs]
    assert notes[0].startswith("Not drawn, constant at every record: H1: number of loops = 0")
    assert notes[1].startswith("Not drawn, constant at every finite record:")


def test_topology_metrics_runs_without_autograd(monkeypatch):
    """Its @torch.no_grad() once moved onto a helper defined above it."""
    seen = []
    real = tracking.vr_persistence
    monkeypatch.setattr(tracking, "vr_persistence",
                        lambda *a, **k: seen.append(torch.is_grad_enabled()) or real(*a, **k))
    tracking.topology_metrics(torch.randn(6, 3, requires_grad=True))
    assert seen == [False]
