"""What the benchmark suite accepts as a correct result, and what its verdicts compare against:
a timed row is only as good as its check."""
import importlib.util
import math
import os

import numpy as np
import pytest
import torch

import tsloss_cuda

ripser = pytest.importorskip("ripser")
pytest.importorskip("gudhi")  # bottleneck distances

_spec = importlib.util.spec_from_file_location(
    "bench_run", os.path.join(os.path.dirname(__file__), "..", "benchmarks", "run.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _case(n=40, d=16, b=2):
    x = bench.make_clouds(n, d, b)
    inp = bench.Inputs(x)
    ref = [ripser.ripser(m, maxdim=1, distance_matrix=True)["dgms"] for m in inp.dm]
    return x, inp, ref


def _copy(dgms):
    return [[np.array(d, dtype=np.float64) for d in cloud] for cloud in dgms]


def test_ours_equals_ripser_under_the_tight_check():
    x, inp, ref = _case()
    got = tsloss_cuda.vr_persistence(x).to_numpy()
    assert bench.check_diagrams(ref, got, inp.diam, same_count=True) == (True, 0.0)


def test_a_missing_short_bar_fails():
    # The old bound (1e-4 of the diameter) passed a diagram without its shortest H1 bars.
    x, inp, ref = _case()
    got = _copy(tsloss_cuda.vr_persistence(x).to_numpy())
    h1 = got[0][1]
    assert len(h1) > 2
    got[0][1] = np.delete(h1, np.argmin(h1[:, 1] - h1[:, 0]), axis=0)
    assert not bench.check_diagrams(ref, got, inp.diam, same_count=True)[0]


def test_a_bar_moved_past_the_tolerance_fails_and_within_it_passes():
    x, inp, ref = _case()
    got = tsloss_cuda.vr_persistence(x).to_numpy()
    for factor, passes in ((3.0, False), (0.5, True)):
        moved = _copy(got)
        moved[1][0][0, 1] += factor * bench.TOL * inp.diam[1]
        ok, err = bench.check_diagrams(ref, moved, inp.diam, same_count=True)
        assert ok is passes and err == pytest.approx(factor * bench.TOL, rel=1e-3)


def test_a_peers_extra_bar_below_a_float32_step_passes_but_not_ours():
    # GUDHI computes in float64 and may keep a bar that float32 rounding makes zero-length.
    x, inp, ref = _case()
    extra = _copy(tsloss_cuda.vr_persistence(x).to_numpy())
    b = extra[0][1][0, 0]
    extra[0][1] = np.vstack([extra[0][1], [[b, b * (1 + 2 ** -24)]]])
    assert bench.check_diagrams(ref, extra, inp.diam)[0]
    assert not bench.check_diagrams(ref, extra, inp.diam, same_count=True)[0]


def test_an_infinite_bar_count_decides():
    x, inp, ref = _case()
    got = _copy(tsloss_cuda.vr_persistence(x).to_numpy())
    got[0][0] = got[0][0][np.isfinite(got[0][0][:, 1])]
    assert bench.check_diagrams(ref, got, inp.diam) == (False, math.inf)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_reference_loss_from_ripser_equals_ours(dtype):
    x, inp, ref = _case(b=3)
    ours = tsloss_cuda.loss(x.to(dtype), reduction="none").double().numpy()
    want = bench.reference_loss(ref, inp.dm)
    np.testing.assert_allclose(ours, want, rtol=bench.LOSS_RTOL / 10)
    # Not a tautology: each term moves it.
    assert not np.allclose(bench.reference_loss([[r[0], r[1][:0]] for r in ref], inp.dm), want,
                           rtol=bench.LOSS_RTOL)


def test_a_wrong_loss_value_is_a_wrong_row(tmp_path, monkeypatch):
    # The TSLoss row was "correct" whenever its value was finite.
    real = bench.reference_loss
    monkeypatch.setattr(bench, "reference_loss", lambda ref, dm: real(ref, dm) * (1 + 1e-4))
    payload = bench.main(["--configs", "12,4,2", "--reps", "1", "--impls", "ours",
                          "--out", str(tmp_path), "--name", "w", "--cpu", "--no-progress"])
    rows = {r["op"]: r for r in payload["records"]}
    assert rows["forward"]["correct"] is True
    assert rows["loss_fwd_bwd"]["correct"] is False
    assert rows["loss_fwd_bwd"]["max_loss_rel_err"] == pytest.approx(1e-4, rel=0.05)
    assert "WRONG" in (tmp_path / "w.md").read_text()


class _HalfGradient(torch.autograd.Function):
    """The identity forward, half the gradient backward: a backward that skips work."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * 0.5


@pytest.mark.parametrize("broken", ["half", "none"])
def test_a_wrong_gradient_is_a_wrong_row(tmp_path, monkeypatch, broken):
    """The timed TSLoss backward was never checked: one that did half the work, or none (the
    loss of detached points), kept the row correct and doubled its ratio."""
    real = tsloss_cuda.loss

    def loss(x, *args, **kwargs):
        if x.requires_grad:
            x = _HalfGradient.apply(x) if broken == "half" else x.detach()
        value = real(x, *args, **kwargs)
        return value if value.requires_grad else value.requires_grad_()

    monkeypatch.setattr(tsloss_cuda, "loss", loss)
    payload = bench.main(["--configs", "12,4,2", "--reps", "1", "--impls", "ours",
                          "--out", str(tmp_path), "--name", "g", "--cpu", "--no-progress"])
    row = next(r for r in payload["records"] if r["op"] == "loss_fwd_bwd")
    assert row["correct"] is False and row["grad_rel_err"] > 0.4, row["grad_rel_err"]
    monkeypatch.setattr(tsloss_cuda, "loss", real)
    payload = bench.main(["--configs", "12,4,2", "--reps", "1", "--impls", "ours",
                          "--out", str(tmp_path), "--name", "ok", "--cpu", "--no-progress"])
    row = next(r for r in payload["records"] if r["op"] == "loss_fwd_bwd")
    assert row["correct"] is True and row["grad_rel_err"] < bench.GRAD_RTOL


def test_the_gradient_check_steps_inside_one_pairing():
    """A central difference across a change of the bars' edges measures a jump, not the
    derivative: at the fixed step (1e-6 of the largest coordinate) a (128, 2048, 16) batch read
    a correct backward 0.5 % off. Here edges (0, 2) and (1, 3) of a near-square differ by 2e-8,
    and u moves point 3 so that a step past 2e-8 swaps them on one side."""
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0 + 1e-8], [1.0, 1.0 + 3e-8]]],
                     dtype=torch.float64)
    u = torch.zeros_like(x)
    u[0, 3, 1] = 1.0
    xr = x.clone().requires_grad_(True)
    tsloss_cuda.loss(xr).backward()
    step = bench.difference_step(x, u)
    assert bench.GRAD_STEP_FLOOR <= step < 2e-8
    err, used = bench.directional_error(xr.grad, x, u)
    assert used == step and err < bench.GRAD_RTOL, err
    # The fixed step crosses the swap, and the difference there is not the derivative.
    h = bench.GRAD_STEP
    with torch.no_grad():
        fd = float(tsloss_cuda.loss(x + h * u) - tsloss_cuda.loss(x - h * u)) / (2 * h)
    assert abs(fd - float((xr.grad * u).sum())) > 10 * bench.GRAD_RTOL * abs(fd)
    # A generic cloud keeps the first step.
    y = bench.make_clouds(12, 4, 2).double()
    assert bench.difference_step(y, torch.randn(y.shape, dtype=torch.float64,
                                                generator=torch.Generator().manual_seed(1))) \
        == bench.GRAD_STEP


def test_the_gradient_check_leaves_out_clouds_float32_pairs_apart():
    """float32 distances tie where float64 ones do not, so a float32 cloud may pair a bar with
    other edges than its float64 copy: its float32 gradient is right for the float32 loss and
    off for the float64 one. Cloud 48 of the suite's (256, 768) clouds is one (1 % of them at
    that size; 10 of 1,024 failed the GPU config's check together)."""
    x = bench.make_clouds(256, 768, 64)[47:50].contiguous()  # clouds 47, 48, 49 of 64
    apart = bench.paired_apart(x, x.double())
    assert apart.tolist() == [False, True, False]
    u = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    tsloss_cuda.loss(xr).backward()
    lone = torch.zeros_like(u)
    lone[1] = u[1]
    assert bench.directional_error(xr.grad, x.double(), lone)[0] > 10 * bench.GRAD_RTOL
    err, _, left_out = bench.gradient_check(xr.grad, x)
    assert left_out == 1 and err < bench.GRAD_RTOL, (err, left_out)


def test_the_fastest_kind_that_passed_is_the_peers_time(tmp_path, monkeypatch):
    # A faster kind with wrong diagrams made the whole peer WRONG, dropping it from the verdicts.
    orig = bench.PEERS["ripser"][0]

    def peer(inp, kind):
        run, to_dgms = orig(inp, kind)
        if kind == "points":  # instant and wrong
            out = run()
            return (lambda: out), (lambda o: [[d[0], d[1][:0]] for d in o])
        return run, to_dgms
    monkeypatch.setitem(bench.PEERS, "ripser", (peer, "forward"))
    payload = bench.main(["--configs", "12,4,2", "--reps", "1", "--impls", "ours,ripser",
                          "--out", str(tmp_path), "--name", "k", "--cpu", "--no-progress"])
    rec = next(r for r in payload["records"] if r["impl"] == "ripser")
    assert rec["input"] == "matrix" and rec["correct"] is True
    assert rec["alternatives"]["points"]["correct"] is False
    assert rec["alternatives"]["points"]["median_s"] < rec["median_s"]


@pytest.mark.parametrize("after", [2.0, 1.2, 0.5])
def test_ours_is_timed_before_and_after_the_peers(tmp_path, monkeypatch, after):
    """A-B-A: the machine's speed changing while the peers run shows as drift between ours'
    two timings; past DRIFT either way the config's verdicts are marked for a rerun."""
    state = {"peers": False}
    orig = bench.PEERS["ripser"][0]

    def peer(inp, kind):
        state["peers"] = True
        return orig(inp, kind)

    def fake_time(run, reps, cuda=False, adaptive=True):
        t = 1e-3 * (after if state["peers"] else 1.0)
        return run(), t, [t] * max(reps, 1)
    monkeypatch.setitem(bench.PEERS, "ripser", (peer, "forward"))
    monkeypatch.setattr(bench, "time_fn", fake_time)
    monkeypatch.setattr(bench, "parallel_speedup", lambda: 2.0)
    payload = bench.main(["--configs", "12,4,2", "--reps", "2", "--impls", "ours,ripser",
                          "--out", str(tmp_path), "--name", "aba", "--cpu", "--no-progress"])
    ours = [r for r in payload["records"] if r["impl"] == "ours"]
    assert len(ours) == 2
    for r in ours:
        assert r["times_s"] == [1e-3] * 2 and r["times_after_s"] == [1e-3 * after] * 2
        assert r["drift"] == pytest.approx(after) and r["reps"] == 4
        assert r["median_s"] == pytest.approx(1e-3 * (1 + after) / 2)
    md = (tmp_path / "aba.md").read_text()
    marked = after != 1.2
    assert ("as long after the peers as before them" in md) is marked
    assert ("unsteady: rerun" in md) is marked
    alone = bench.main(["--configs", "12,4,2", "--reps", "1", "--impls", "ours", "--out",
                        str(tmp_path), "--name", "alone", "--cpu", "--no-progress"])
    assert all("drift" not in r for r in alone["records"])


def test_unsteady_configs_keep_the_worst_drift_either_way():
    recs = [dict(_record("ours", None, op), drift=d) for op, d in
            (("forward", 0.7), ("loss_fwd_bwd", 1.3))] + [dict(_record("ripser", 2.0), drift=9)]
    assert bench.unsteady_configs(recs) == [(64, 8, 2, 0.7)]
    recs[0]["drift"] = 1 / 1.25
    assert bench.unsteady_configs(recs) == [(64, 8, 2, 1.3)]
    recs[1]["drift"] = 1.25
    assert bench.unsteady_configs(recs) == []


def _record(impl, ratio, op="forward", n=64):
    return dict(impl=impl, device="cpu", N=n, D=8, B=2, op=op, median_s=1.0, correct=True,
                ratio_to_ours=ratio, input="matrix")


def test_goals_name_the_peers_a_verdict_leaves_out():
    ours = [dict(_record("ours", None), op=op) for op in ("forward", "loss_fwd_bwd")]
    some = ours + [_record("ripser", 5.0), dict(_record("gudhi", None), correct=False)]
    text = "\n".join(bench.goals(some))
    assert "5.00× (met; 1 of 5 peers)" in text
    assert "not against gph-1t (not run), gph-all (not run), gudhi (WRONG)" in text
    everyone = ours + [_record(i, 3.0 + k) for k, i in
                       enumerate(["ripser", "gph-1t", "gph-all", "gudhi", "gudhi-sklearn"])]
    text = "\n".join(bench.goals(everyone))
    assert "3.00× (met)" in text and "peers" not in text.split("| 64 |")[1]


def _goal_row(records, busy=frozenset()):
    text = "\n".join(bench.goals(records, busy))
    return [c.strip() for c in next(l for l in text.splitlines()
                                    if l.startswith("| %d |" % records[0]["N"])).split("|")[4:8]]


@pytest.mark.parametrize("n, need, cap", [(16, 10, 2.0), (64, 2, 2.0), (128, 2, 1.5)])
def test_goal_thresholds_on_both_sides(n, need, cap):
    """Every goal's threshold, as the issues state them: forward >= 10x the best peer at
    N <= 32 and 2x above, TSLoss fwd+bwd >= 3x torch-topological and <= 2x our forward
    (1.5x at N >= 128); ours WRONG and a busy machine are said, not blamed on a peer."""
    def config(fwd_ratio, loss_ratio, over, ours_ok=True):
        ours = [dict(_record("ours", None, n=n), median_s=1.0, correct=ours_ok),
                dict(_record("ours", None, "loss_fwd_bwd", n), median_s=over)]
        peers = [_record(i, fwd_ratio, n=n) for i in
                 ("ripser", "gph-1t", "gph-all", "gudhi", "gudhi-sklearn")]
        if fwd_ratio is not None:  # the best peer (the lowest ratio) decides
            peers[0] = dict(peers[0], ratio_to_ours=fwd_ratio * 3)
        return ours + peers + [_record("torch-topological", loss_ratio, "loss_fwd_bwd", n)]

    met = _goal_row(config(need * 1.01, 3.03, cap * 0.99))
    assert [c.split("(")[1] for c in met] == ["met)", "met)", "met)", "met)"], met
    missed = _goal_row(config(need * 0.99, 2.97, cap * 1.01))
    assert missed == [f"{need * 0.99:.2f}× (missed, needs {need}×)"] * 2 + [
        "2.97× (missed, needs 3×)", f"{cap * 1.01:.2f}× (missed, needs ≤ {cap}×)"], missed
    # With the matrix's cost added the same peers can fall behind: the second column's own ratio.
    timed = [dict(r, ratio_to_ours_incl_matrix=need * 1.5) if r.get("ratio_to_ours") and
             r["op"] == "forward" and r["impl"] != "ours" else r
             for r in config(need * 0.99, 3.03, cap * 0.99)]
    assert _goal_row(timed)[:2] == [f"{need * 0.99:.2f}× (missed, needs {need}×)",
                                    f"{need * 1.5:.2f}× (met)"]
    wrong = config(None, 3.03, cap * 0.99, ours_ok=False)
    for r in wrong:
        if r["impl"] not in ("ours", "torch-topological"):
            r["ratio_to_ours"] = None  # no peer gets a ratio against a wrong result
    row = _goal_row(wrong)
    assert row[:2] == ["ours WRONG", "ours WRONG"] and row[3] == "ours WRONG", row
    assert "not against" not in "\n".join(bench.goals(wrong))
    busy = _goal_row(config(need * 1.01, 3.03, cap * 0.99), {(n, 8, 2)})
    assert all(c.endswith("busy: rerun") for c in busy), busy


def test_a_capped_build_names_its_files(tmp_path):
    # TSLOSS_CPU_ISA (or set_cpu_isa) below the CPU's best once wrote the full-speed file name.
    if len(tsloss_cuda.supported_cpu_isas()) < 2:
        pytest.skip("this CPU runs only the baseline build")
    try:
        tsloss_cuda.set_cpu_isa("baseline")
        payload = bench.main(["--configs", "8,4,2", "--reps", "1", "--impls", "ours",
                              "--out", str(tmp_path), "--cpu", "--no-progress"])
    finally:
        tsloss_cuda.set_cpu_isa(None)
    assert payload["meta"]["cpu_isa"] == "baseline"
    names = {p.name for p in tmp_path.iterdir()}
    assert any(n.endswith("-baseline-configs-impls.json") for n in names), names
    assert payload["meta"]["engine"]["source_digest"] == tsloss_cuda.build_info()["source_digest"]
    assert payload["meta"]["torch_cpu_capability"] and "family" in payload["meta"]["cpu_id"]


def test_a_busy_machine_is_flagged(tmp_path, monkeypatch):
    # Another process holding a core made two threads slower than one (pairwise_distance 80x);
    # those times went into the tables unmarked.
    for speedup, flagged in ((0.5, True), (1.9, False)):
        monkeypatch.setattr(bench, "parallel_speedup", lambda: speedup)
        payload = bench.main(["--configs", "8,4,2", "--reps", "1", "--impls", "ours",
                              "--out", str(tmp_path), "--name", "busy", "--cpu", "--no-progress"])
        assert all(r["parallel_speedup"] == speedup for r in payload["records"])
        md = (tmp_path / "busy.md").read_text()
        assert ("the machine was busy" in md) is (flagged and os.cpu_count() > 1)


def test_the_probe_measures_threads(monkeypatch):
    # The probe is one thread's time over all threads' time, each timed under its own count.
    threads = torch.get_num_threads()
    seen = []

    def fake_time(run, reps, cuda=False, adaptive=True):
        seen.append(torch.get_num_threads())
        return None, 0.0, [8.0 / torch.get_num_threads(), 9.0]  # the min is taken

    monkeypatch.setattr(bench, "time_fn", fake_time)
    assert bench.parallel_speedup() == threads
    assert seen == [1, threads] and torch.get_num_threads() == threads
    monkeypatch.undo()
    # Real timings: with one thread both sides do the same work, so the ratio is about 1.
    torch.set_num_threads(1)
    try:
        s = bench.parallel_speedup()
    finally:
        torch.set_num_threads(threads)
    assert math.isfinite(s) and 0.5 < s < 2, s
