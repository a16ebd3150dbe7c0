"""Comparison statistics (hand-computed values) and the resumable comparison runner."""
import argparse
import glob
import hashlib
import json
import math
import os
import re
import shutil
import signal
import threading
import time

import numpy as np
import pytest
import torch

from check_job_outputs import problems, tree as _tree
from tsloss_cuda import stats
from tsloss_cuda._cli import CLIError
from tsloss_cuda.compare import (RunSpec, apply_overrides, comparison_specs, load_run,
                                 run_comparison)
from tsloss_cuda.run_outputs import announce_removal, earlier_job, write_outputs
from tsloss_cuda.stats import Interval


@pytest.fixture(autouse=True)
def _ctrl_c_raises():
    """Python's own SIGINT handler in every test here: a suite started with ``&`` from a shell
    without job control inherits SIGINT ignored, where the Ctrl-C tests' signal did nothing and
    four of them failed."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _rows(steps, accs, **cols):
    return [dict(step=s, val_acc=a, **{k: v[i] for k, v in cols.items()})
            for i, (s, a) in enumerate(zip(steps, accs))]


# ---------------------------------------------------------------------------------------------
# statistics

def test_steps_to_target_and_censoring():
    rows = _rows([0, 5, 10, 15], [0.1, 0.5, 0.85, 0.9])
    assert stats.steps_to_target(rows, 0.8) == 10
    assert stats.steps_to_target(rows, 0.1) == 0
    assert stats.steps_to_target(rows, 0.95) is None
    assert stats.censored_steps(rows, 0.8) == 10
    assert stats.censored_steps(rows, 0.95) == 20  # never reached: last step + log interval


def test_accuracy_auc():
    assert stats.accuracy_auc(_rows([0, 10, 20], [0.0, 0.5, 1.0])) == pytest.approx(0.5)
    # (10·(0.2+0.6)/2 + 20·(0.6+0.6)/2) / 30 = 16/30, uneven steps weigh by their length
    assert stats.accuracy_auc(_rows([0, 10, 30], [0.2, 0.6, 0.6])) == pytest.approx(16 / 30)
    assert stats.accuracy_auc(_rows([0, 10], [1.0, 1.0])) == 1.0
    assert stats.accuracy_auc(_rows([0], [0.4])) == 0.4


def test_ranks_and_spearman():
    assert stats.ranks([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert stats.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    # no ties: 1 - 6 Σd² / (n(n²-1)) = 1 - 6·4/120
    assert stats.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    # ties: ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): 4.5 / sqrt(4.5 · 5) = sqrt(0.9)
    assert stats.spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(math.sqrt(0.9))
    assert math.isnan(stats.spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="non-finite"):  # NaN has no rank (was ranked last)
        stats.spearman([1, 2, float("nan")], [1, 2, 3])


def test_spearman_matches_scipy(rng):
    sp = pytest.importorskip("scipy.stats")
    x, y = rng.integers(0, 5, 30), rng.integers(0, 5, 30)  # many ties
    assert stats.spearman(x, y) == pytest.approx(sp.spearmanr(x, y)[0])


def test_spearman_interval():
    x = np.arange(12.0)
    iv = stats.spearman_interval(x, x ** 3, n_boot=500)
    assert iv.value == 1 and iv.n == 12 and iv.low == pytest.approx(1) and iv.excludes_zero(+1)
    iv = stats.spearman_interval([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5], n_boot=500, seed=3)
    assert iv.low < iv.value < iv.high and iv.mc_error == 0  # 6 runs: enumerated, no RNG
    assert iv == stats.spearman_interval([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5], seed=4)
    # 12 runs are drawn: a fixed RNG seed reproduces the interval, another moves its ends.
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=12), rng.normal(size=12)
    drawn = stats.spearman_interval(x, y, n_boot=500, seed=3)
    assert drawn.mc_error > 0 and drawn == stats.spearman_interval(x, y, n_boot=500, seed=3)
    assert drawn != stats.spearman_interval(x, y, n_boot=500, seed=4)


def test_paired_difference():
    var = {0: 3.0, 1: 5.0, 2: 4.0, 3: 4.5, 4: 9.0}
    base = {0: 1.0, 1: 2.0, 2: 4.0, 3: 3.0, 4: 8.0, 5: 0.0}  # seed 5 unpaired
    iv = stats.paired_difference(var, base)
    assert iv.value == pytest.approx(1.5) and iv.n == 5  # differences 2, 3, 0, 1.5, 1
    assert iv.low < iv.value < iv.high and iv.mc_error == 0
    assert iv == stats.paired_difference(var, base, seed=9)  # 5 seeds: enumerated, no RNG
    # Every seed gained exactly 1: no spread, so no interval (4 wins of 4 prove nothing).
    same = stats.paired_difference({s: s + 1.0 for s in range(4)}, {s: float(s) for s in range(4)})
    assert same.value == 1 and same.n == 4 and same.undefined == 1
    assert same.decide(+1) == "untested" and not same.excludes_zero(+1)
    assert same.decide(-1) == "not held"  # no seed was worse
    two = stats.paired_difference({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0})  # too few to bound
    assert two[:4] == (1.0, -math.inf, math.inf, 2) and two.decide(+1) == "untested"
    one = stats.paired_difference({0: 2.0}, {0: 1.0})
    assert one.value == 1 and math.isnan(one.low) and not one.excludes_zero(+1)


def test_by_seed_uses_censored_steps():
    res = [{"regularizer": "tsloss", "variant": "tsloss_w1", "seed": s,
            "rows": _rows([0, 5, 10], [0.1, 0.2, 0.9 if s else 0.3])} for s in (0, 1)]
    assert stats.by_seed(res, "tsloss_w1", "steps_to_target", 0.8) == {0: 15.0, 1: 10.0}
    assert stats.steps_by_seed(res, "tsloss_w1", 0.8) == {0: (15.0, False), 1: (10.0, True)}
    assert stats.by_seed(res, "tsloss", "final_acc", 0.8) == {}


# ---------------------------------------------------------------------------------------------
# the runner

def test_comparison_specs():
    specs = comparison_specs(["none", "l2", "pairwise", "tsloss"], [0, 3], [0.03, 0.1, 0.3],
                             stability_weight=0.5, base_weight=0.1)
    ids = [s.run_id for s in specs]
    assert ids[:7] == ["none_seed0", "l2_seed0", "pairwise_seed0", "tsloss_seed0",
                       "tsloss_stab_seed0", "tsloss_w0.03_seed0", "tsloss_w0.3_seed0"]
    assert len(ids) == 14 and "tsloss_w0.3_seed3" in ids
    stab = specs[4]
    assert stab.regularizer == "tsloss" and dict(stab.overrides) == {"ts_stability": 0.5}
    args = argparse.Namespace(reg_weight=0.1, ts_stability=0.0)
    assert apply_overrides(args, specs[6]).reg_weight == 0.3 and args.reg_weight == 0.1
    with pytest.raises(ValueError, match="not a job argument"):
        apply_overrides(args, RunSpec("tsloss", 0, (("nope", 1.0),)))


def test_sweep_keeps_the_base_weight_without_a_plain_tsloss():
    """A sweep weight equal to --reg-weight is the plain tsloss variant, so it is run once; when
    tsloss is not among the regularisers no plain run exists and the weight must stay."""
    ids = [s.run_id for s in comparison_specs(["none"], [0], [0.1, 0.3], base_weight=0.1)]
    assert ids == ["none_seed0", "tsloss_w0.1_seed0", "tsloss_w0.3_seed0"]
    ids = [s.run_id for s in comparison_specs(["none", "tsloss"], [0], [0.1, 0.3],
                                              base_weight=0.1)]
    assert ids == ["none_seed0", "tsloss_seed0", "tsloss_w0.3_seed0"]


STEPS = [0, 5, 10]


def fake_train(spec: RunSpec):
    """Deterministic, fast stand-in for train_one."""
    w = dict(spec.overrides).get("reg_weight", 0.1)
    g = torch.Generator().manual_seed(spec.seed * 100 + len(spec.variant))
    acc = [0.3, 0.5 + 0.1 * spec.seed, min(0.6 + w + 0.05 * spec.seed, 1.0)]
    topo = {k: [float(torch.rand((), generator=g)) for _ in STEPS]
            for k in ("h0_total", "ts_connectivity", "ts_redundancy", "ts_stability")}
    rows = [{"regularizer": spec.regularizer, "seed": spec.seed, "step": s, "val_acc": a,
             "task_loss": 1.0 - a, "reg_loss": w, **{k: v[i] for k, v in topo.items()}}
            for i, (s, a) in enumerate(zip(STEPS, acc))]
    snaps = {f"step {s}": [np.array([[0.0, 0.5], [0.0, np.inf]]), np.zeros((0, 2))]
             for s in (0, 10)}
    return {"regularizer": spec.regularizer, "seed": spec.seed, "rows": rows,
            "snapshots": snaps, "prompt": torch.randn(4, 3, generator=g),
            "final_acc": acc[-1], "steps_to_target": stats.steps_to_target(rows, 0.8),
            "sec_per_step": 0.01, "reg_share": 0.1}


SPECS = comparison_specs(["none", "tsloss"], [0, 1], [0.1, 0.3], stability_weight=1.0,
                         base_weight=0.1)
CONFIG = {"max_steps": 10, "lr": 0.01, "model": "tiny"}


def _files(d):
    out = {}
    for sub in ("runs", "prompts"):
        for f in sorted(os.listdir(os.path.join(d, sub))):
            out[f"{sub}/{f}"] = open(os.path.join(d, sub, f), "rb").read()
    return out


def test_progress_shows_time_left_only_while_runs_remain(tmp_path, capsys):
    run_comparison(str(tmp_path / "a"), SPECS[:3], fake_train, CONFIG, quiet=False)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    assert "3/3" in bar[-1] and "left" not in bar[-1] and "done" in bar[-1], bar[-1]
    assert any("left" in line for line in bar)  # an estimate once a run had finished


def test_time_left_is_the_mean_run_time_times_the_runs_left(tmp_path, monkeypatch):
    """Each run takes 100 s on a fake clock: before run i of 4 the bar says (4 - i) x 100 s."""
    import tsloss_cuda.compare as compare_mod
    clock = iter(range(0, 10_000, 100))
    monkeypatch.setattr(compare_mod.time, "perf_counter", lambda: float(next(clock)))
    import tqdm.auto
    shown = []
    real_tqdm = tqdm.auto.tqdm

    def spy(*a, **k):
        bar = real_tqdm(*a, **k)
        bar.set_postfix_str = lambda text, **kw: shown.append(text)
        return bar
    monkeypatch.setattr(tqdm.auto, "tqdm", spy)
    run_comparison(str(tmp_path / "a"), SPECS[:4], fake_train, CONFIG, quiet=True)
    assert [t.split(", ")[-1] for t in shown[1:4]] == [
        "~0:05:00 left", "~0:03:20 left", "~0:01:40 left"], shown


def test_resume_trains_only_missing_runs(tmp_path):
    full = run_comparison(str(tmp_path / "a"), SPECS, fake_train, CONFIG, quiet=True)
    assert [r["run_id"] for r in full] == [s.run_id for s in SPECS] and len(full) == 8

    calls = []

    def flaky(spec):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the job were stopped during the third run
        calls.append(spec.run_id)
        return fake_train(spec)

    b = str(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        run_comparison(b, SPECS, flaky, CONFIG, quiet=True)
    assert sorted(os.listdir(os.path.join(b, "runs"))) == sorted(f"{i}.json" for i in calls)
    assert not [f for f in os.listdir(os.path.join(b, "prompts")) if ".partial" in f]

    again = []
    resumed = run_comparison(b, SPECS, lambda s: again.append(s.run_id) or fake_train(s),
                             CONFIG, quiet=True)
    assert again == [s.run_id for s in SPECS][2:]  # only the missing runs are trained
    assert _files(b) == _files(str(tmp_path / "a"))
    assert json.dumps([{k: v for k, v in r.items() if k not in ("prompt", "snapshots")}
                       for r in resumed]) == \
        json.dumps([{k: v for k, v in r.items() if k not in ("prompt", "snapshots")}
                    for r in full])
    assert all(torch.equal(x["prompt"], y["prompt"]) for x, y in zip(resumed, full))
    # A third start trains nothing.
    assert run_comparison(b, SPECS, lambda s: pytest.fail("retrained"), CONFIG, quiet=True)


def test_other_config_is_refused(tmp_path):
    out = str(tmp_path)
    run_comparison(out, SPECS[:1], fake_train, CONFIG, quiet=True)
    with pytest.raises(CLIError, match="--output-dir") as e:
        run_comparison(out, SPECS[:1], fake_train, dict(CONFIG, lr=0.02), quiet=True)
    assert "lr=0.01" in str(e.value) and "\n" not in str(e.value)
    other = RunSpec("tsloss", 0, (("ts_stability", 2.0),), "tsloss_stab")
    run_comparison(out, [s for s in SPECS if s.run_id == "tsloss_stab_seed0"], fake_train,
                   CONFIG, quiet=True)
    with pytest.raises(CLIError, match="--output-dir .* tsloss_stab_seed0"):
        run_comparison(out, [other], fake_train, CONFIG, quiet=True)
    # More seeds with the same settings extend the folder.
    more = comparison_specs(["none"], [0, 5])
    assert [r["seed"] for r in run_comparison(out, more, fake_train, CONFIG, quiet=True)] == [0, 5]


def test_outputs_from_loaded_runs(tmp_path):
    """write_outputs from results read back from disk: documented files, no absolute paths."""
    out = tmp_path / "cmp"
    data = tmp_path / "data.csv"
    data.write_text("text,label,split\n")
    results = run_comparison(str(out), SPECS, fake_train, CONFIG, quiet=True)
    loaded = [load_run(str(out), s.run_id) for s in SPECS]
    assert np.isinf(loaded[0]["snapshots"]["step 0"][0][1, 1])
    args = argparse.Namespace(model="tiny-model", data=str(data), output_dir=str(out),
                              max_steps=10, log_every=5, checkpoint_every=0, target_acc=0.8,
                              no_plots=False)
    table = write_outputs(str(out), args, loaded, ["none", "tsloss"], "/abs/models/tiny",
                          "causal", 1, 1.0)
    assert "| tsloss_stab |" in table and "| tsloss_w0.3 |" in table
    assert problems(str(out)) == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "tiny-model" and summary["config"]["data"] == "../data.csv"
    assert summary["config"]["output_dir"] == "."
    assert str(tmp_path) not in (out / "summary.json").read_text()
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("regularizer,variant,seed,step,val_acc,task_loss,reg_loss,")
    assert len(results) == len(summary["runs"]) == 8
    assert not [r for r in summary["runs"] if "rows" in r]  # the rows are metrics.csv's


def test_a_rerun_removes_the_earlier_jobs_files(tmp_path, capsys):
    """A job rerun into a used folder (the default runs/prompt_tuning is one) removes, and
    names, the earlier job's prompts, checkpoints, figures and rank files that it did not
    write itself (analyze and readers would take them for this job's). It keeps every other
    file: a run the earlier summary.json does not list, a comparison's finished run
    (runs/RUN.json), anything written since this job started, and files of other names."""
    out = tmp_path / "job"
    stale = ["prompts/prompt_none_seed0.pt", "checkpoints/none_seed0/step_000010.pt",
             "checkpoints/none_seed1/step_000010.pt", "diagrams_none.png", "curves.png",
             "topology.png", "prompt_rank1.pt"]
    kept = ["notes.txt", "checkpoints/none_seed0/mine.txt", "prompts/mine.pt",
            "prompts/prompt_pairwise_seed0.pt", "checkpoints/pairwise_seed0/step_000010.pt",
            "runs/pairwise_seed0.json", "prompts/prompt_l2_seed0.pt",
            "checkpoints/l2_seed0/step_000010.pt"]
    for f in stale + kept:
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        (out / f).write_bytes(b"x")
        os.utime(out / f, (1e9, 1e9))
    earlier = [{"regularizer": r, "seed": 0} for r in ("none", "pairwise", "tsloss")]
    (out / "summary.json").write_text(json.dumps({"runs": earlier + [{"regularizer": "none",
                                                                      "seed": 1}]}))
    job = earlier_job(str(out))
    assert job.run_ids == ("none_seed0", "pairwise_seed0", "tsloss_seed0", "none_seed1")
    announce_removal(str(out), job, ["tsloss_seed0"])  # at the job's start
    said = capsys.readouterr().out
    assert "runs none_seed0, none_seed1: their prompts" in said and "pairwise" not in said
    fresh = out / "prompts" / "prompt_none_seed0.pt"  # a job writing here meanwhile
    data = tmp_path / "data.csv"
    data.write_text("text,label,split\n")
    args = argparse.Namespace(model="tiny-model", data=str(data), output_dir=str(out),
                              max_steps=10, log_every=5, checkpoint_every=0, target_acc=0.8,
                              no_plots=True)
    write_outputs(str(out), args, [fake_train(RunSpec("tsloss", 0))], ["tsloss"], "tiny",
                  "causal", 1, 1.0, job)
    assert [f for f in stale if (out / f).exists()] == []
    assert [f for f in kept if not (out / f).exists()] == []
    assert (out / "prompts" / "prompt_tsloss_seed0.pt").exists()
    assert "removed 7 files of the earlier job" in capsys.readouterr().out
    assert not (out / "checkpoints" / "none_seed1").exists()  # emptied: gone too
    for f in stale:
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        (out / f).write_bytes(b"x")  # newer than the job's start: not the earlier job's
    write_outputs(str(out), args, [fake_train(RunSpec("tsloss", 0))], ["tsloss"], "tiny",
                  "causal", 1, 1.0, job)
    assert [f for f in stale if not (out / f).exists()] == [] and fresh.exists()
    assert earlier_job(str(tmp_path / "new")) is None  # nothing recorded: nothing removed
    for odd in ('{"runs": ["a"]}', '{"runs": {"a": 1}}', '{"runs": [null]}', '[]', '{"x": 1}',
                '{"runs": [{"regularizer": "none"}]}', "not json"):
        (out / "summary.json").write_text(odd)  # not ours: its folder is left alone
        assert earlier_job(str(out)) is None, odd


def _fake_figures(monkeypatch):
    """plots' functions writing their title (fast, and telling one figure from another)."""
    from tsloss_cuda import plots

    def fake(what, path, title=""):
        with open(path, "w") as f:
            f.write(title)
    for name in ("plot_curves", "plot_topology", "plot_diagrams"):
        monkeypatch.setattr(plots, name, fake)


def _age(folder, seconds=60):
    """Date every file under ``folder`` ``seconds`` back."""
    old = time.time() - seconds
    for root, _, names in os.walk(folder):
        for name in names:
            os.utime(os.path.join(root, name), (old, old))


def _args(out, **changed):
    args = dict(model="tiny-model", data=str(out.parent / "data.csv"), output_dir=str(out),
                max_steps=10, log_every=5, checkpoint_every=5, target_acc=0.8, no_plots=False)
    return argparse.Namespace(**dict(args, **changed))


def _earlier_job_folder(tmp_path, monkeypatch):
    """A folder holding an earlier job's complete outputs, a minute old: runs none_seed0 and
    tsloss_seed0, their prompts and checkpoints (steps 0, 5, 10), curves.png, topology.png,
    diagrams_none.png, diagrams_tsloss.png, metrics.csv and summary.json."""
    from tsloss_cuda.run_outputs import commit_checkpoints, staging_folder
    _fake_figures(monkeypatch)
    out = tmp_path / "job"
    (tmp_path / "data.csv").write_text("text,label,split\n")
    earlier = [fake_train(RunSpec("none", 0)), fake_train(RunSpec("tsloss", 0))]
    for res in earlier:
        stage = staging_folder(str(out), f"{res['regularizer']}_seed0")
        os.makedirs(stage)
        for step in (0, 5, 10):
            torch.save(torch.full((4, 3), float(step)), os.path.join(stage, f"step_{step:06d}.pt"))
    write_outputs(str(out), _args(out), earlier, ["none", "tsloss"], "tiny", "causal", 1, 1.0)
    for res in earlier:
        commit_checkpoints(str(out), f"{res['regularizer']}_seed0")
    _age(out)
    return out


def _rerun(out):
    """A rerun of tsloss_seed0 alone (--log-every 2) into ``out`` about to write its outputs:
    the earlier job read at its start, its new checkpoints staged. Returns a function calling
    write_outputs for it."""
    from tsloss_cuda.run_outputs import staging_folder
    job = earlier_job(str(out))
    stage = staging_folder(str(out), "tsloss_seed0")
    os.makedirs(stage)
    for step in (0, 2, 4):
        torch.save(torch.full((4, 3), -float(step)), os.path.join(stage, f"step_{step:06d}.pt"))
    res = dict(fake_train(RunSpec("tsloss", 0)), prompt=torch.ones(4, 3), final_acc=0.25)
    args = _args(out, log_every=2, checkpoint_every=2)
    return lambda: write_outputs(str(out), args, [res], ["tsloss"], "tiny", "causal", 1, 2.0,
                                 job, staged=["tsloss_seed0"])


def _only_the_rerun(out):
    """The folder describes the rerun of tsloss_seed0 alone, complete."""
    summary = json.loads((out / "summary.json").read_text())
    assert [r["regularizer"] for r in summary["runs"]] == ["tsloss"]
    assert summary["runs"][0]["final_acc"] == 0.25 and summary["config"]["log_every"] == 2
    assert {r.split(",")[0] for r in (out / "metrics.csv").read_text().splitlines()[1:]} == \
        {"tsloss"}
    assert os.listdir(out / "prompts") == ["prompt_tsloss_seed0.pt"]
    assert torch.equal(torch.load(out / "prompts" / "prompt_tsloss_seed0.pt"), torch.ones(4, 3))
    assert os.listdir(out / "checkpoints") == ["tsloss_seed0"]  # none_seed0's and the stage gone
    ck = out / "checkpoints" / "tsloss_seed0"
    assert sorted(os.listdir(ck)) == ["step_000000.pt", "step_000002.pt", "step_000004.pt"]
    assert torch.equal(torch.load(ck / "step_000004.pt"), torch.full((4, 3), -4.0))
    assert sorted(n for n in os.listdir(out) if n.endswith(".png")) == [
        "curves.png", "diagrams_tsloss.png", "topology.png"]  # diagrams_none.png gone
    assert not [p for p in _tree(out) if ".partial" in p]


def _write_part(path, data):
    with open(path, "wb") as f:
        f.write(data)


#: A step of write_outputs that fails after writing part of its file: (module, name, stand-in).
_FAILS = {
    "a figure": ("tsloss_cuda.plots", "plot_diagrams",
                 lambda snaps, path, **k: _write_part(path, b"\x89PNG")),
    "a prompt": ("torch", "save", lambda obj, path: _write_part(path, b"PK")),
    "summary.json": ("json", "dump", lambda obj, f, **k: f.write("{")),
}


@pytest.mark.parametrize("step,exc", [("a figure", KeyboardInterrupt),
                                      ("a prompt", KeyboardInterrupt),
                                      ("summary.json", KeyboardInterrupt),
                                      ("a figure", OSError(28, "No space left on device"))])
def test_outputs_that_fail_or_are_interrupted_leave_the_folder_as_it_was(
        tmp_path, monkeypatch, step, exc):
    """Ctrl-C or an error while write_outputs writes (the figures take seconds) leaves every
    file of the earlier job as it was, staged checkpoints included (train discards them): it
    once left this job's metrics.csv beside the earlier summary.json, figures and checkpoints
    (which tsloss_cuda.analyze then read as this job's), or an empty summary.json."""
    import importlib
    out = _earlier_job_folder(tmp_path, monkeypatch)
    write = _rerun(out)
    before = _tree(out)
    module, name, part = _FAILS[step]

    def fail(*a, **k):
        part(*a, **k)
        raise exc
    monkeypatch.setattr(importlib.import_module(module), name, fail)
    with pytest.raises(exc if isinstance(exc, type) else type(exc)):
        write()
    assert _tree(out) == before


def test_outputs_that_fail_in_a_new_folder_leave_no_prompts_folder(tmp_path, monkeypatch):
    """The folder as it was covers a prompts/ the job made: its rmdir ran before the prompts'
    temporaries were removed, so it failed (not empty) and an empty prompts/ stayed."""
    import types

    from tsloss_cuda import plots
    out = tmp_path / "new"
    out.mkdir()

    def fail(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(plots, "plot_curves", fail)
    args = types.SimpleNamespace(target_acc=0.5, model="m", no_plots=False)
    res = [dict(regularizer="l2", seed=0, prompt=torch.ones(2, 2), snapshots={},
                rows=[{"regularizer": "l2", "seed": 0, "step": 0, "val_acc": 0.5}],
                final_acc=0.5, steps_to_target=0, sec_per_step=0.1, reg_share=0.1)]
    with pytest.raises(RuntimeError, match="disk full"):
        write_outputs(str(out), args, res, ["l2"], "m", "causal", 1, 1.0)
    assert os.listdir(out) == []


def test_committed_checkpoints_replace_only_the_runs_prompts(tmp_path):
    """A run's checkpoint folder may hold the user's own files (a copied best.pt): only its
    step_*.pt prompts are the run's to replace."""
    from tsloss_cuda.run_outputs import commit_checkpoints, staging_folder
    folder = tmp_path / "checkpoints" / "tsloss_seed0"
    folder.mkdir(parents=True)
    for name in ("best.pt", "step_000005.pt"):
        torch.save(torch.ones(2), folder / name)
    os.makedirs(staging_folder(str(tmp_path), "tsloss_seed0"))
    torch.save(torch.zeros(2), os.path.join(staging_folder(str(tmp_path), "tsloss_seed0"),
                                            "step_000001.pt"))
    commit_checkpoints(str(tmp_path), "tsloss_seed0")
    assert sorted(os.listdir(folder)) == ["best.pt", "step_000001.pt"]


def test_metrics_columns_lead_in_the_documented_order():
    """docs/outputs.md's order (regularizer, variant, seed, step, val_acc, task_loss,
    reg_loss), then the topology columns as the rows give them, whatever order the rows
    were built in."""
    import csv
    import tempfile

    from tsloss_cuda.run_outputs import write_metrics
    row = {"h0_total": 1.0, "regularizer": "l2", "reg_loss": 0.5, "seed": 0, "step": 0,
           "task_loss": 2.0, "val_acc": 0.3, "h1_count": 0}
    with tempfile.TemporaryDirectory() as d:
        write_metrics(os.path.join(d, "m.csv"), [row])
        with open(os.path.join(d, "m.csv")) as f:
            assert next(csv.reader(f)) == ["regularizer", "seed", "step", "val_acc", "task_loss",
                                           "reg_loss", "h0_total", "h1_count"]


def test_the_longest_output_is_the_longest_runs():
    """The up-front length check tests the longest path of any run, not the first run's."""
    from tsloss_cuda.run_outputs import longest_output
    path = longest_output(["none_seed0", "tsloss_stab_w0.25_seed10"], 10)
    assert "tsloss_stab_w0.25_seed10" in path
    assert len(path) >= len(longest_output(["tsloss_stab_w0.25_seed10"], 10))


def test_a_killed_jobs_temporary_files_go_with_the_next_job(tmp_path, monkeypatch, capsys):
    """A job killed (SIGTERM from timeout or Slurm, SIGKILL, out of memory) while it wrote its
    outputs left its hidden .NAME.partial-PID files for good: no rename or later job took them
    away. The next job's write_outputs removes those of processes no longer running, and leaves
    a running process's alone."""
    import subprocess
    import sys
    out = _earlier_job_folder(tmp_path, monkeypatch)
    write = _rerun(out)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = [out / f".metrics.partial-{gone}.csv", out / f".curves.partial-{gone}.png",
                out / "prompts" / f".prompt_none_seed0.partial-{gone}.pt"]
        live = out / f".summary.partial-{running.pid}.json"
        for p in dead + [live]:
            p.write_bytes(b"part")
        write()
        assert live.exists() and not [p for p in dead if p.exists()]
        live.unlink()
        _only_the_rerun(out)
    finally:
        running.kill()
        running.wait()


def test_another_users_temporary_files_are_left_alone(tmp_path, monkeypatch):
    """A partial file of a process this user may not signal (os.kill: PermissionError) belongs
    to another user's running job in a shared folder: kept, as a running process's own."""
    from tsloss_cuda import _files

    def kill(pid, sig):
        raise PermissionError(1, "Operation not permitted")
    theirs, gone = tmp_path / ".summary.partial-4242.json", tmp_path / ".metrics.partial-4243.csv"
    for p in (theirs, gone):
        p.write_bytes(b"part")
    monkeypatch.setattr(_files.os, "kill", kill)
    assert _files.remove_leftovers(str(tmp_path)) == [] and theirs.exists() and gone.exists()
    monkeypatch.undo()

    def dead(pid, sig):
        raise ProcessLookupError(3, "No such process")
    monkeypatch.setattr(_files.os, "kill", dead)
    assert sorted(_files.remove_leftovers(str(tmp_path))) == sorted([str(theirs), str(gone)])


def test_a_killed_comparisons_temporary_records_go_with_its_restart(tmp_path):
    """The twin of the test above for --compare: a comparison killed while it recorded a run
    left .RUN.partial-PID.json in runs/ (and its prompt's in prompts/) for good; its restart
    removes them, and trains and records the run."""
    import subprocess
    import sys
    out = str(tmp_path)
    specs = comparison_specs(["none", "tsloss"], [0])
    run_comparison(out, specs[:1], fake_train, {"target_acc": 0.8}, quiet=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    dead = [os.path.join(out, "runs", f".tsloss_seed0.partial-{gone}.json"),
            os.path.join(out, "prompts", f".prompt_tsloss_seed0.partial-{gone}.pt"),
            os.path.join(out, f".comparison.partial-{gone}.json")]
    for p in dead:
        with open(p, "wb") as f:
            f.write(b"part")
    results = run_comparison(out, specs, fake_train, {"target_acc": 0.8}, quiet=True)
    assert [r["run_id"] for r in results] == ["none_seed0", "tsloss_seed0"]
    assert not [p for p in dead if os.path.exists(p)]
    assert not [p for p in _tree(out) if ".partial" in p]


@pytest.mark.parametrize("where", ["os.replace", "commit_checkpoints"])
def test_ctrl_c_while_the_outputs_go_in_waits_till_they_are_all_in(tmp_path, monkeypatch,
                                                                   capsys, where):
    """Ctrl-C while write_outputs renames its files into place, commits the checkpoints and
    removes the earlier job's files takes effect once all of that is done: the folder is the
    rerun's, complete, and the KeyboardInterrupt follows."""
    from tsloss_cuda import run_outputs
    out = _earlier_job_folder(tmp_path, monkeypatch)
    write = _rerun(out)
    handler = signal.getsignal(signal.SIGINT)
    sent = []

    def ctrl_c_then(real):
        def wrapped(*a, **k):
            if not sent:
                sent.append(where)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)  # where not held back, the interrupt comes here
            return real(*a, **k)
        return wrapped
    if where == "os.replace":
        monkeypatch.setattr(os, "replace", ctrl_c_then(os.replace))
    else:
        monkeypatch.setattr(run_outputs, "commit_checkpoints",
                            ctrl_c_then(run_outputs.commit_checkpoints))
    with pytest.raises(KeyboardInterrupt):
        write()
    assert sent
    _only_the_rerun(out)
    assert "removed 5 files of the earlier job" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C is no longer held back


#: os.replace calls of the rerun's write_outputs: metrics.csv, its prompt, 3 figures, 3
#: checkpoints, summary.json.
_REPLACES = 9


@pytest.mark.parametrize("k", range(_REPLACES))
def test_a_crash_while_the_outputs_go_in_orphans_no_earlier_file(tmp_path, monkeypatch, k):
    """A crash (not Ctrl-C, which waits) at any rename of write_outputs leaves no prompt or
    checkpoint that summary.json does not name, so a rerun knows and removes it: summary.json
    once named this job's runs alone before the earlier job's files were removed, and those
    of an interrupted job stayed for good."""
    from tsloss_cuda.run_outputs import discard_checkpoints
    out = _earlier_job_folder(tmp_path, monkeypatch)
    write = _rerun(out)
    real, calls = os.replace, []

    def replace(*a, **kw):
        calls.append(a)
        if len(calls) == k + 1:
            raise RuntimeError("crash")
        return real(*a, **kw)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(RuntimeError, match="crash"):
        write()
    monkeypatch.setattr(os, "replace", real)
    discard_checkpoints(str(out), "tsloss_seed0")  # as train does
    named = set(earlier_job(str(out)).run_ids)
    prompts = {n[len("prompt_"):-len(".pt")] for n in os.listdir(out / "prompts")}
    checkpoints = set(os.listdir(out / "checkpoints"))
    assert prompts | checkpoints <= named, (prompts, checkpoints, named)
    assert not [p for p in _tree(out) if ".partial" in p]
    _age(out)
    _rerun(out)()  # the job again, to its end: the earlier job's files are gone
    _only_the_rerun(out)


def test_ctrl_c_is_held_back_on_the_main_thread_only():
    """deferred_sigint: on the main thread a Ctrl-C in the block raises KeyboardInterrupt at its
    end, not before, and the handler is put back; ignored where it was ignored; off the main
    thread (no handler can be set there) the block just runs."""
    from tsloss_cuda._files import deferred_sigint
    handler, done = signal.getsignal(signal.SIGINT), []
    with pytest.raises(KeyboardInterrupt):
        with deferred_sigint():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            done.append(1)
    assert done == [1] and signal.getsignal(signal.SIGINT) is handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred_sigint():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, handler)
    errors = []

    def off_main():
        try:
            with deferred_sigint():
                done.append(2)
        except Exception as e:  # ValueError: signal only works in main thread
            errors.append(e)
    t = threading.Thread(target=off_main)
    t.start()
    t.join()
    assert errors == [] and done == [1, 2]


def test_ctrl_c_between_a_runs_record_and_its_checkpoints_waits(tmp_path):
    """A comparison records a finished run (runs/RUN.json) and then moves its checkpoints into
    place (on_saved): Ctrl-C between the two once left a recorded run, which a restart skips,
    without its checkpoints (train then discards the staged ones)."""
    saved = []

    def on_saved(spec):
        if not saved:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # where not held back, the interrupt comes here
        saved.append(spec.run_id)
    with pytest.raises(KeyboardInterrupt):
        run_comparison(str(tmp_path), SPECS[:2], fake_train, CONFIG, quiet=True,
                       on_saved=on_saved)
    assert saved == [SPECS[0].run_id]
    assert os.listdir(tmp_path / "runs") == [f"{SPECS[0].run_id}.json"]


def test_report_says_what_held(tmp_path):
    """python/compare_report.py on a fake comparison: tsloss_w0.3 beats the baseline's final
    accuracy by 0.2, 0.2, 0.2, 0.15 on seeds 0-3, so claim 2 holds; the plain tsloss equals
    the baseline and holds nothing."""
    import subprocess
    import sys
    out = str(tmp_path)
    specs = comparison_specs(["none", "tsloss"], [0, 1, 2, 3], [0.1, 0.3], base_weight=0.1)
    run_comparison(out, specs, fake_train, {"reg_weight": 0.1, "target_acc": 0.8}, quiet=True)
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "python", "compare_report.py")

    def report(*extra):
        r = subprocess.run([sys.executable, script, out, "--n-boot", "500", *extra],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    text = report("--variant", "tsloss_w0.3")
    first = text.split("\n\n")[1]
    assert "From 12 runs (3 variants, seeds 0, 1, 2, 3)" in first
    assert "**claim 2 (higher final accuracy) held** (+0.187, [+0.148, +0.227])" in first
    # 3 wins, 1 tie: too few untied seeds for the sign test, so the AUC decides claim 1.
    assert ("**claim 1 (faster convergence) held on the accuracy AUC alone** (steps to "
            "target, wins/ties/losses 3/1/0, reached 4/4 vs none 1/4, sign test p = 0.25") in first
    assert "| 0.3 | tsloss_w0.3 |" in text and "| 0.1 | tsloss |" in text
    assert "| tsloss_w0.3 | final accuracy (+) | +0.187 | [+0.148, +0.227] | 4 | held |" in text
    assert "| 12 / 4 |" in text  # claim 3: 12 runs, 4 seeds resampled
    assert "claim 2 (higher final accuracy) did not hold" in report()

    # A committed comparison keeps metrics.csv and comparison.json, not runs/: same report.
    from tsloss_cuda.run_outputs import write_metrics, metrics_rows
    write_metrics(os.path.join(out, "metrics.csv"),
                  metrics_rows([load_run(out, s.run_id) for s in specs]))
    shutil.rmtree(os.path.join(out, "runs"))
    assert report("--variant", "tsloss_w0.3") == text
    # Without comparison.json, summary.json's runs carry the overrides (the sweep's weights).
    with open(os.path.join(out, "comparison.json")) as f:
        saved = json.load(f)
    os.remove(os.path.join(out, "comparison.json"))
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"config": saved["config"],
                   "runs": [dict(spec, run_id=rid) for rid, spec in saved["specs"].items()]}, f)
    assert report("--variant", "tsloss_w0.3") == text


def test_comparison_config_and_readonly_rank(tmp_path):
    from tsloss_cuda.compare import comparison_config
    data = tmp_path / "d.csv"
    data.write_text("x")
    args = argparse.Namespace(model="gemma-3-270m", data=str(data),
                              output_dir=str(tmp_path / "o"), quiet=True, seeds=[0, 1], lr=0.01,
                              reg_weight=0.1, model_cache=str(tmp_path / "cache"))
    cfg = comparison_config(args, str(tmp_path / "o"))
    # The model cache is where this machine keeps the converted model: not recorded, and a
    # restart with another cache resumes the same comparison.
    assert cfg == {"model": "gemma-3-270m", "data": "../d.csv", "lr": 0.01, "reg_weight": 0.1}
    args.model_cache = "/elsewhere"
    assert comparison_config(args, str(tmp_path / "o")) == cfg
    # Ranks other than 0 of a distributed job train the missing runs but write nothing.
    out = str(tmp_path / "o")
    run_comparison(out, SPECS[:1], fake_train, cfg, quiet=True)
    before = _files(out)
    res = run_comparison(out, SPECS[:3], fake_train, cfg, quiet=True, write=False)
    assert [r["run_id"] for r in res] == [s.run_id for s in SPECS[:3]] and _files(out) == before


def test_portable_paths_name_no_folder_of_this_machine(tmp_path):
    from tsloss_cuda.run_outputs import portable_path
    from tsloss_cuda.tasks import DATA_CSV
    out = tmp_path / "run"
    assert portable_path(DATA_CSV, str(out)) == "tsloss_cuda/data/reviews.csv"
    mine = tmp_path / "mine.csv"
    mine.write_text("text,label,split\n")
    assert portable_path(str(mine), str(out)) == "../mine.csv"
    assert portable_path("gemma-3-270m", str(out)) == "gemma-3-270m"


def _report_text(out, *extra):
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "python", "compare_report.py")
    r = subprocess.run([sys.executable, script, out, *extra], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_report_of_a_comparison_in_progress_says_untested(tmp_path):
    """Seed 0 alone: no interval exists, so no claim 'did not hold'."""
    out = str(tmp_path)
    run_comparison(out, comparison_specs(["none", "tsloss"], [0]), fake_train,
                   {"target_acc": 0.8}, quiet=True)
    first = _report_text(out).split("\n\n")[1]
    assert "**claim 1 (faster convergence) untested (n < 4 seeds)**" in first
    assert "**claim 2 (higher final accuracy) untested (n < 4 seeds)**" in first
    assert "**claim 3 (stable, compact prompts do better) untested (n < 4 seeds)**" \
        in first
    assert "did not hold" not in first


def test_report_refuses_a_variant_the_comparison_never_asked_for(tmp_path, capsys):
    """--variant bogus reported "no `bogus` runs yet" and exit 0 where --baseline bogus is an
    error listing the variants; a variant asked for whose runs have not ended is still that."""
    out = str(tmp_path)
    run_comparison(out, comparison_specs(["none", "tsloss"], [0]), fake_train,
                   {"target_acc": 0.8}, quiet=True)
    os.remove(os.path.join(out, "runs", "tsloss_seed0.json"))  # in progress: none_seed0 done
    rep = _report_module()
    for flag in ("--variant", "--baseline"):
        with pytest.raises(SystemExit, match=rf"^compare_report: {flag} bogus has no runs in "
                                             rf"{re.escape(out)} \(variants: none\)$"):
            rep.main([out, flag, "bogus"])
    assert rep.main([out]) == 0
    assert "no `tsloss` runs yet, so claims 1 and 2 are untested" in capsys.readouterr().out


@pytest.mark.parametrize("option,value,expected", [
    ("--n-boot", "0", "an integer >= 1"),  # was ZeroDivisionError with >= 10 seeds
    ("--n-boot", "-5", "an integer >= 1"),  # was numpy's "negative dimensions"
    ("--seed", "-1", "an integer >= 0"),  # was numpy's "expected non-negative integer"
    ("--target", "5", "an accuracy in (0, 1]"),
    ("--target", "nan", "an accuracy in (0, 1]"),
    ("--target", "-1", "an accuracy in (0, 1]"),  # every run reached it at step 0
    ("--target", "0", "an accuracy in (0, 1]")])
def test_report_options_are_checked_before_any_data_is_read(tmp_path, capsys, option, value,
                                                            expected):
    """One line naming the option, exit status 2, before OUT_DIR is looked at (it does not
    exist here)."""
    with pytest.raises(SystemExit) as info:
        _report_module().main([str(tmp_path / "nonexistent"), option, value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1, err
    shown = repr(value) if value == "nan" else value  # as every option of the job shows it
    assert f"error: argument {option}: expected {expected}, got {shown} (see --help)" in err


def test_report_refuses_a_variant_compared_with_itself(tmp_path, capsys):
    """Each claim then compared a variant with itself and was reported as not holding."""
    with pytest.raises(SystemExit) as info:
        _report_module().main([str(tmp_path), "--variant", "l2", "--baseline", "l2"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--variant and --baseline are both l2" in err, err


def test_report_shows_the_last_invocation_only(tmp_path):
    """A second, smaller invocation on the same folder: the report shows its runs, not the
    earlier seeds and variants still in runs/."""
    out = str(tmp_path)
    run_comparison(out, SPECS, fake_train, CONFIG, quiet=True)  # 4 variants x seeds 0, 1
    fewer = comparison_specs(["none", "tsloss"], [0, 1])
    run_comparison(out, fewer, fake_train, CONFIG, quiet=True)
    assert len(os.listdir(os.path.join(out, "runs"))) == 8
    saved = json.loads(open(os.path.join(out, "comparison.json")).read())
    assert saved["last"] == [s.run_id for s in fewer] and len(saved["specs"]) == 8
    text = _report_text(out)
    assert "From 4 runs (2 variants, seeds 0, 1)" in text
    assert "4 run(s) in runs/ that the last invocation did not ask for are left out" in text
    assert "tsloss_stab" not in text and "tsloss_w0.3" not in text


def test_repeated_run_ids_are_refused(tmp_path):
    """Two specs of one run id would write one file: the second run would silently replace
    the first. Refused before anything is trained or written."""
    twins = [RunSpec("tsloss", 0, (("reg_weight", w),), "tsloss_sweep") for w in (0.1, 0.3)]
    out = tmp_path / "cmp"
    for specs in (twins, SPECS[:1] * 2):
        with pytest.raises(ValueError, match="run ids repeat"):
            run_comparison(str(out), specs, lambda s: pytest.fail("trained"), CONFIG, quiet=True)
    assert not out.exists()


def test_a_run_without_its_prompt_is_trained_again(tmp_path):
    """A runs/<id>.json whose prompt file is gone is no finished run (its prompt is part of
    the result): it is retrained, not loaded without a prompt."""
    out = str(tmp_path)
    run_comparison(out, SPECS[:2], fake_train, CONFIG, quiet=True)
    os.remove(os.path.join(out, "prompts", "prompt_tsloss_seed0.pt"))
    assert load_run(out, "tsloss_seed0") is None and load_run(out, "none_seed0") is not None
    again = []
    res = run_comparison(out, SPECS[:2], lambda s: again.append(s.run_id) or fake_train(s),
                         CONFIG, quiet=True)
    assert again == ["tsloss_seed0"] and torch.equal(res[1]["prompt"],
                                                      fake_train(SPECS[1])["prompt"])


def test_more_sweep_weights_extend_a_comparison(tmp_path):
    """Which variants to run (--compare-regularizers, --compare-weights, --compare-stability)
    is not a setting of a run: left out of the config (``ignore``), so a second invocation with
    another weight trains only the new runs in the same folder."""
    from tsloss_cuda.compare import comparison_config
    out = str(tmp_path)
    ignore = ("compare_regularizers", "compare_weights", "compare_stability")
    args = argparse.Namespace(lr=0.01, reg_weight=0.1, compare_regularizers=["none", "tsloss"],
                              compare_weights=[], compare_stability=0.0)

    def compare(weights):
        args.compare_weights = weights
        cfg = comparison_config(args, out, ignore=ignore)
        assert cfg == {"lr": 0.01, "reg_weight": 0.1}
        specs = comparison_specs(args.compare_regularizers, [0], weights, base_weight=0.1)
        trained = []
        run_comparison(out, specs, lambda s: trained.append(s.run_id) or fake_train(s), cfg,
                       quiet=True)
        return trained

    assert compare([0.3]) == ["none_seed0", "tsloss_seed0", "tsloss_w0.3_seed0"]
    assert compare([0.3, 1.0]) == ["tsloss_w1_seed0"]


def test_a_begun_comparison_is_extended_with_its_recorded_flags(tmp_path):
    """The job refuses a flag that no run uses, but a comparison records every flag, used or
    not, and a later invocation must repeat them: extending a TSLoss comparison by a run
    without TSLoss, with the recorded --ts-stability, goes through (it was refused, and left
    out, the configuration check refused the folder: stuck either way)."""
    from tsloss_cuda.compare import comparison_config, job_specs, settle_head
    from tsloss_cuda.train import build_parser
    out = str(tmp_path)
    ignore = ("compare_regularizers", "compare_weights", "compare_stability")

    def invoke(*regs, stability="0.3"):
        argv = ["--compare", "--seeds", "0", "--compare-regularizers", *regs,
                "--output-dir", out] + (["--ts-stability", stability] if stability else [])
        args = build_parser().parse_args(argv)
        specs = job_specs(args)
        settle_head(args, "encoder")
        trained = []
        run_comparison(out, specs, lambda s: trained.append(s.run_id) or fake_train(s),
                       comparison_config(args, out, ignore=ignore), quiet=True)
        return trained

    with pytest.raises(CLIError, match="--ts-stability is a TSLoss weight, which no run"):
        invoke("none")  # a fresh comparison: the flag would be ignored
    assert invoke("tsloss") == ["tsloss_seed0"]
    assert invoke("none") == ["none_seed0"]
    with pytest.raises(CLIError, match="ts_stability=0.3, not 0.0"):
        invoke("l2", stability=None)


def test_runs_without_their_config_are_refused(tmp_path):
    out = str(tmp_path)
    run_comparison(out, SPECS[:2], fake_train, CONFIG, quiet=True)
    os.remove(os.path.join(out, "comparison.json"))
    with pytest.raises(CLIError, match=f"--output-dir {out} holds runs/ but no comparison.json"):
        run_comparison(out, SPECS[:2], lambda s: pytest.fail("reused"), dict(CONFIG, lr=0.5),
                       quiet=True)


def test_resume_checks_each_runs_provenance(tmp_path):
    """World size (the effective batch is --batch-size x world), the data file's sha256 and
    the package version are recorded per run; a resume that differs in one is refused."""
    from tsloss_cuda import __version__
    from tsloss_cuda.compare import provenance
    data = tmp_path / "d.csv"
    data.write_text("text,label,split\n")
    prov = provenance(str(data), 1)
    assert prov == {"world_size": 1, "version": __version__,
                    "data_sha256": hashlib.sha256(b"text,label,split\n").hexdigest()}
    out = str(tmp_path / "cmp")
    run_comparison(out, SPECS[:2], fake_train, CONFIG, quiet=True, prov=prov)
    rec = json.loads(open(os.path.join(out, "runs", "none_seed0.json")).read())
    assert rec["provenance"] == prov
    # Same provenance: resumes, trains nothing.
    run_comparison(out, SPECS[:2], lambda s: pytest.fail("retrained"), CONFIG, quiet=True,
                   prov=prov)
    for key, value in (("world_size", 2), ("data_sha256", "0" * 64), ("version", "0.0.0")):
        with pytest.raises(CLIError, match=f"--output-dir .* none_seed0 made with {key}="):
            run_comparison(out, SPECS[:2], fake_train, CONFIG, quiet=True,
                           prov=dict(prov, **{key: value}))
    # A run recorded before provenance was: unknown, so refused too.
    old = str(tmp_path / "old")
    run_comparison(old, SPECS[:1], fake_train, CONFIG, quiet=True)
    with pytest.raises(CLIError, match="none_seed0 recorded without its world size"):
        run_comparison(old, SPECS[:1], fake_train, CONFIG, quiet=True, prov=prov)


def test_single_run_refuses_a_comparison_folder(tmp_path, capsys):
    """A single run writes prompts/, metrics.csv and summary.json: over a comparison's it
    would overwrite them. Refused before any model is loaded."""
    from tsloss_cuda import train
    out = str(tmp_path)
    run_comparison(out, SPECS[:1], fake_train, CONFIG, quiet=True)
    before = _files(out)
    assert train.main(["--output-dir", out, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {out} holds a --compare comparison" in err and err.count("\n") == 1
    assert _files(out) == before
    # A runs/ folder of other outputs (the default --output-dir's parent) is no comparison.
    from tsloss_cuda.compare import holds_comparison
    other = tmp_path / "other"
    (other / "runs" / "prompt_tuning").mkdir(parents=True)
    assert not holds_comparison(str(other)) and holds_comparison(out)



def _report_module():
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python",
                        "compare_report.py")
    spec = importlib.util.spec_from_file_location("compare_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_weight_sweep_means_say_n_a_for_a_diverged_run():
    """The sweep's mean columns printed "nan" where every other cell of the report says
    "n/a" for a run without a finite value."""
    rep = _report_module()
    runs = [{"final_acc": 0.5, "auc": 0.4}, {"final_acc": math.nan, "auc": 0.2}]
    assert rep.mean_of(runs, "final_acc") == "n/a" and rep.mean_of(runs, "auc") == "0.300"
    assert rep.mean_of([], "auc") == "n/a"


def test_report_names_why_and_marks_clipped_ends():
    """A clipped end is printed as the clip, not as an estimate of -1.000; an untested claim
    says why (no spread, a constant measure, too few seeds); pairs logged on different
    schedules are refused, since their "final" accuracies are not at one step."""
    rep = _report_module()
    assert rep.ci(Interval(-0.045, -1.0, 0.069, 5)) == "[-1 (clipped), +0.069]"
    assert rep.ci(Interval(0.5, -0.2, 1.0, 5)) == "[-0.200, +1 (clipped)]"
    assert rep.ci(Interval(0.9, 0.5, 1.0, 5), 2, math.inf) == "[+0.50, +1.00]"  # a correlation
    assert rep.ci(Interval(0.1, math.nan, math.nan, 5, undefined=1.0)) == \
        "n/a (no spread between seeds)"
    flat = stats.mean_interval({s: 0.02 for s in range(5)})
    const = stats.spearman_interval([1.0] * 8, list(range(8)), [0, 0, 1, 1, 2, 2, 3, 3])
    few = stats.mean_interval({0: 0.1, 1: 0.2})
    assert rep.why_untested(flat) == "no spread between seeds"
    assert rep.why_untested(const) == "a constant measure"
    assert rep.why_untested(few) == "n < 4 seeds"
    # A correlation drops its non-finite runs and is still computed: they are no reason.
    dropped = stats.spearman_interval([1.0] * 7 + [math.nan], list(range(8)),
                                      [0, 0, 1, 1, 2, 2, 3, 3])
    assert dropped.nonfinite == 1 and rep.why_untested(dropped) == "non-finite values"
    assert rep.why_untested(dropped, dropped=True) == "a constant measure"

    def run(variant, seed, steps):
        return {"variant": variant, "regularizer": variant, "seed": seed, "overrides": {},
                "rows": [{"step": s, "val_acc": 0.5 + 0.01 * i} for i, s in enumerate(steps)]}
    results = [run(v, s, [0, 5, 10]) for v in ("none", "tsloss") for s in range(4)]
    assert "claim 2" in rep.report("x", results, {}, "none", "tsloss", 0.8, 200, 0)
    results[-1] = run("tsloss", 3, [0, 10, 20])
    with pytest.raises(SystemExit, match="tsloss seed 3 was logged at steps 0, 10, 20 and none "
                                         "seed 3 at 0, 5, 10"):
        rep.report("x", results, {}, "none", "tsloss", 0.8, 200, 0)


def test_infinities_and_nan_survive_a_run_record(tmp_path):
    """H0's infinite bar is stored as a string (JSON has no infinity): each sign must come back
    as itself, and NaN (a diverged run's values) stays NaN."""
    from tsloss_cuda.compare import _encode
    assert _encode([-math.inf, math.inf, 1.5]) == ["-inf", "inf", 1.5]
    assert _encode({"a": np.array([[0.0, -np.inf]])}) == {"a": [[0.0, "-inf"]]}
    out, spec = str(tmp_path), SPECS[0]
    res = fake_train(spec)
    res["snapshots"] = {"step 0": [np.array([[-np.inf, np.inf], [0.0, np.nan]]),
                                   np.zeros((0, 2))]}
    run_comparison(out, [spec], lambda s: res, CONFIG, quiet=True)
    h0, h1 = load_run(out, spec.run_id)["snapshots"]["step 0"]
    assert h0[0, 0] == -math.inf and h0[0, 1] == math.inf and math.isnan(h0[1, 1])
    assert h0[1, 0] == 0.0 and h1.shape == (0, 2)


@pytest.mark.parametrize("rows", [[], [1, 2], None])
def test_a_record_without_metric_rows_is_refused(tmp_path, rows):
    """A run holds step 0's row at least: a record without rows (or not dicts) is damaged,
    refused naming the file, not loaded for the report to fail on with an IndexError."""
    out = str(tmp_path)
    run_comparison(out, SPECS[:1], fake_train, CONFIG, quiet=True)
    path = os.path.join(out, "runs", f"{SPECS[0].run_id}.json")
    with open(path) as f:
        body = json.load(f)
    body["rows"] = rows
    with open(path, "w") as f:
        json.dump(body, f)
    want = rf"--output-dir: .*{SPECS[0].run_id}.json is not a file of a tsloss_cuda comparison"
    with pytest.raises(CLIError, match=want + r" \(no valid rows\)"):
        load_run(out, SPECS[0].run_id)


def test_time_left_reads_hours_minutes_seconds():
    """The comparison's progress bar: minutes wrap at the hour."""
    from tsloss_cuda.compare import _hms
    assert [_hms(s) for s in (0, 59.4, 3599, 3700, 7325, 90061)] == [
        "0:00:00", "0:00:59", "0:59:59", "1:01:40", "2:02:05", "25:01:01"]


def test_a_record_under_another_runs_name_is_refused(tmp_path):
    """A runs/<id>.json copied or renamed by hand holds another run: loading it as this run
    would resume a comparison with the wrong run's results."""
    out = str(tmp_path)
    run_comparison(out, SPECS[:1], fake_train, CONFIG, quiet=True)
    a = SPECS[0].run_id
    shutil.copy(os.path.join(out, "runs", f"{a}.json"), os.path.join(out, "runs", "B.json"))
    shutil.copy(os.path.join(out, "prompts", f"prompt_{a}.pt"),
                os.path.join(out, "prompts", "prompt_B.pt"))
    with pytest.raises(CLIError, match=f"--output-dir: .*B.json holds run '{a}', not 'B'"):
        load_run(out, "B")
    assert load_run(out, a)["run_id"] == a


def test_checkpoint_every_is_no_setting_of_a_comparison(tmp_path):
    """Checkpoints are extra files, not a result: a resume with another --checkpoint-every
    must reuse the finished runs, so the config leaves it out."""
    from tsloss_cuda.compare import comparison_config, job_specs, settle_head
    from tsloss_cuda.train import build_parser
    out = str(tmp_path / "o")

    def config(every):
        args = build_parser().parse_args(["--compare", "--output-dir", out,
                                          "--checkpoint-every", str(every)])
        assert args.checkpoint_every == every
        job_specs(args)  # as train.run records it: every flag's default set
        settle_head(args, "encoder")
        return comparison_config(args, out)

    cfg = config(3)
    assert "checkpoint_every" not in cfg and "lr" in cfg
    assert cfg["reg_weight"] == 0.1 and cfg["head"] == "similarity"
    assert cfg == config(5)


def test_compare_table_rows_are_the_means_and_sds_of_the_runs():
    """One row per variant over its seeds: steps over the runs that reached the target (with
    reached/runs), final accuracy mean ± sample sd, mean s/step, mean share in percent."""
    from tsloss_cuda.run_outputs import compare_table

    def run(reg, seed, steps, acc, sec, share, **extra):
        return dict(regularizer=reg, seed=seed, steps_to_target=steps, final_acc=acc,
                    sec_per_step=sec, reg_share=share, **extra)

    results = [run("none", 0, 40, 0.70, 0.10, 0.0), run("none", 1, None, 0.50, 0.14, 0.0),
               run("none", 2, 60, 0.90, 0.12, 0.0),
               run("tsloss", 0, 20, 0.80, 0.2, 0.02, variant="tsloss_w0.3")]
    lines = compare_table(results, ["none"], 0.75).splitlines()
    assert lines[2] == "| none | 50 ± 14 (2/3) | 0.700 ± 0.200 | 0.120 | 0.0% |"
    assert lines[3] == "| tsloss_w0.3 | 20 ± n/a (1/1) | 0.800 ± n/a | 0.200 | 2.0% |"
    assert len(lines) == 4


def test_report_verdicts_from_their_parts():
    """How a claim's parts make its verdict, how a table row says the data point the other way,
    and the clip to [-1, 1] of an accuracy difference (a bootstrap-t end of -1.6 here)."""
    rep = _report_module()
    assert rep.verdict(["held", "held"], "") == "held"
    assert rep.verdict(["held", "not held"], "") == "partly held"
    assert rep.verdict(["held", "untested"], "") == "held"  # untested parts are left out
    assert rep.verdict(["inconclusive", "not held"], "") == "was inconclusive"
    assert rep.verdict(["not held", "not held"], "") == "did not hold"
    assert rep.verdict(["untested"], "n < 4 seeds") == "untested (n < 4 seeds)"
    assert rep.state(Interval(0.1, 0.05, 0.2, 5), +1) == "held"
    assert rep.state(Interval(-0.1, -0.2, -0.05, 5), +1) == "not held (the other way)"
    assert rep.state(Interval(0.1, -0.05, 0.2, 5), +1) == "not held"
    assert rep.state(Interval(0.1, 0.001, 0.2, 5, mc_error=0.01), +1).startswith("inconclusive")
    assert "cannot go below 0.0625" in rep.parametric_note(5)
    assert rep.parametric_note(6) == "" and rep.parametric_note(3) == ""
    one_seed = np.zeros(15)
    one_seed[[0, 1]] = [1.0, 2.0]  # varies in seed 0 only: no jackknife se, no interval
    iv = stats.spearman_interval(one_seed, np.linspace(0.9, 0.5, 15), np.repeat(np.arange(5), 3))
    assert rep.why_untested(iv, dropped=True) == "a measure constant once one seed is left out"
    gain = [0.007, -0.033, -0.207, 0.0, 0.007]

    def run(variant, seed, final):
        return {"variant": variant, "regularizer": variant, "seed": seed, "overrides": {},
                "rows": [{"step": 0, "val_acc": 0.5}, {"step": 10, "val_acc": final}]}
    results = ([run("none", s, 0.5) for s in range(5)]
               + [run("tsloss", s, 0.5 + g) for s, g in enumerate(gain)])
    text = rep.report("x", results, {}, "none", "tsloss", 0.9, 200, 0)
    row = next(l for l in text.splitlines() if l.startswith("| tsloss | final accuracy"))
    assert "[-1 (clipped), +0.069]" in row and row.endswith("| not held |"), row
    assert "**claim 2 (higher final accuracy) did not hold**" in text


def test_compare_defaults_are_every_regularizer_with_seeds_0_1_2(tmp_path):
    """The documented comparison is every regulariser with seeds 0, 1 and 2, seed-major; a
    single run is tsloss, seed 0."""
    from tsloss_cuda.compare import job_specs
    from tsloss_cuda.train import build_parser
    from tsloss_cuda.training import REGULARIZERS
    args = build_parser().parse_args(["--compare", "--output-dir", str(tmp_path / "c")])
    specs = job_specs(args)
    assert args.seeds == [0, 1, 2]
    assert [(s.regularizer, s.seed) for s in specs] == [
        (r, s) for s in (0, 1, 2) for r in REGULARIZERS]
    single = build_parser().parse_args(["--output-dir", str(tmp_path / "s")])
    assert [(s.regularizer, s.seed) for s in job_specs(single)] == [("tsloss", 0)]


def test_a_readonly_rank_returns_results_with_their_provenance(tmp_path):
    """A rank that writes nothing returns the same record keys as rank 0 (which reads them
    back), provenance included."""
    from tsloss_cuda.compare import PROVENANCE, RunSpec, run_comparison
    spec = RunSpec("none", 0)

    def train(s):
        return {"regularizer": s.regularizer, "seed": s.seed, "prompt": torch.zeros(2, 2),
                "rows": [{"step": 0, "val_acc": 0.5}], "snapshots": {}}

    prov = {"world_size": 2, "data_sha256": "ab" * 32, "version": "x"}
    out = str(tmp_path / "o")
    (main,) = run_comparison(out, [spec], train, {"lr": 0.1}, quiet=True, prov=prov)
    (other,) = run_comparison(str(tmp_path / "p"), [spec], train, {"lr": 0.1}, quiet=True,
                              write=False, prov=prov)
    assert main[PROVENANCE] == prov and other[PROVENANCE] == prov
    assert other["run_id"] == main["run_id"] == spec.run_id


def test_a_single_process_rerun_removes_every_ranks_prompt(tmp_path):
    """After an earlier 2-rank job, a one-process job in the same folder leaves no
    prompt_rank*.pt (it wrote none); a 2-rank job keeps its own two and drops a third rank's."""
    import time
    from tsloss_cuda.run_outputs import EarlierJob, remove_stale_outputs
    for world, kept in ((1, set()), (2, {"prompt_rank0.pt", "prompt_rank1.pt"})):
        out = tmp_path / f"w{world}"
        out.mkdir()
        (out / "summary.json").write_text(json.dumps({"runs": []}))
        for r in range(3):
            (out / f"prompt_rank{r}.pt").write_bytes(b"x")
            os.utime(out / f"prompt_rank{r}.pt", (time.time() - 60, time.time() - 60))
        earlier = EarlierJob((), time.time())
        remove_stale_outputs(str(out), earlier, [], [], world)
        assert {n for n in os.listdir(out) if n.startswith("prompt_rank")} == kept


def test_curves_and_diagrams_show_each_variants_first_seed(tmp_path, monkeypatch):
    """curves.png, topology.png and diagrams_<variant>.png show the first seed of each
    variant, as the figure titles say."""
    from tsloss_cuda import plots
    seen = {}
    def touch(path):  # a figure is written, under a temporary name put in place after
        open(path, "wb").close()
    monkeypatch.setattr(plots, "plot_curves",
                        lambda by_run, path, **k: touch(path) or seen.update(c=list(by_run)))
    monkeypatch.setattr(plots, "plot_topology", lambda by_run, path, **k: touch(path))
    monkeypatch.setattr(plots, "plot_diagrams", lambda snaps, path, title="", **k:
                        touch(path) or seen.setdefault("d", []).append(title))
    snaps = {"step 0": [np.array([[0.0, 1.0]]), np.zeros((0, 2))]}
    results = [{"regularizer": r, "seed": s, "rows": [{"regularizer": r, "seed": s, "step": 0,
                                                       "val_acc": 0.5}],
                "snapshots": snaps, "prompt": torch.zeros(2, 2), "final_acc": 0.5,
                "steps_to_target": None, "sec_per_step": 0.1, "reg_share": 0.0}
               for s in (3, 5) for r in ("none", "tsloss")]
    args = argparse.Namespace(target_acc=0.8, no_plots=False, model="m", data="d",
                              output_dir=str(tmp_path))
    write_outputs(str(tmp_path), args, results, ["none", "tsloss"], "m", "encoder", 1, 1.0)
    assert seen["c"] == ["none (seed 3)", "tsloss (seed 3)"]
    assert all("seed 3" in t for t in seen["d"]) and len(seen["d"]) == 2


def _synthetic_run(variant, seed, accs, topo=None):
    rows = [{"step": 10 * i, "val_acc": a} for i, a in enumerate(accs)]
    if topo is not None:
        rows[-1].update(ts_connectivity=topo[0], ts_redundancy=topo[1], ts_stability=topo[2])
    return {"variant": variant, "regularizer": variant, "seed": seed, "overrides": {},
            "rows": rows}


def test_report_describes_each_pair_by_its_own_seeds():
    """The resampling, the parametric caveat and the reached counts follow the seeds a pair
    shares, not all seeds: a variant of 9 seeds against a baseline of 10 is enumerated (not
    "2000 resamples"), one of 5 in a comparison of 6 seeds gets the n <= 5 caveat, one of 4
    is not described as "126 resamples of the 5 seeds", and reached counts paired seeds."""
    rep = _report_module()
    rng = np.random.default_rng(0)
    res = []
    for s in range(10):
        res.append(_synthetic_run("none", s, [0.5, 0.7, 0.75 + 0.01 * s], rng.normal(size=3)))
        if s < 9:
            res.append(_synthetic_run("tsloss", s, [0.5, 0.72, 0.76 + 0.013 * s * (s % 3)],
                                      rng.normal(size=3)))
    methods = rep.report("x", res, {}, "none", "tsloss", 0.8, 2000, 0).split("\n\n")[2]
    assert ("claims 1 and 2: all 24310 distinct resamples of the 9 seeds, each with its "
            "probability: no RNG") in methods
    assert "claim 3: 2000 resamples of the 10 seeds, RNG seed 0" in methods
    assert "From 6 paired seeds a difference holds only where the exact paired randomization" \
        in methods

    res = []
    for s in range(6):
        res.append(_synthetic_run("none", s, [0.5, 0.7, 0.75]))
        if s < 5:
            res.append(_synthetic_run("tsloss", s, [0.5, 0.7, 0.80 + 0.01 * s]))
    text = rep.report("x", res, {}, "none", "tsloss", 0.8, 2000, 0)
    first, methods = text.split("\n\n")[1:3]
    assert "With 5 seeds no distribution-free test" in methods
    assert "all 126 distinct resamples of the 5 seeds" in methods
    assert "reached 5/5 vs none 0/5 of the paired seeds" in first  # not "0/6"
    # no measures: no stray comma before "across"
    assert "(across 11 runs of 6 seeds)" in first and "(, across" not in first
    assert "excludes zero in the claimed direction." in first  # not "0 separate tests"
    assert "separate tests" not in first

    res = [_synthetic_run("none", s, [0.5, 0.7, 0.75]) for s in range(5)]
    res += [_synthetic_run("tsloss", s, [0.5, 0.7, 0.8 + 0.01 * s]) for s in range(4)]
    methods = rep.report("x", res, {}, "none", "tsloss", 0.8, 2000, 0).split("\n\n")[2]
    assert "all 35 distinct resamples of the 4 seeds" in methods and "126" not in methods


def test_report_names_the_sign_test_that_decided_equal_differences():
    """Every seed the same gain has no interval: the report says the exact sign test decided
    it (6 of 6, p = 0.031) instead of "n/a (no spread between seeds)" next to "held"."""
    rep = _report_module()
    res = []
    for s in range(6):
        res.append(_synthetic_run("none", s, [0.5, 0.6, 0.7 + 0.01 * s]))
        res.append(_synthetic_run("tsloss", s, [0.5, 0.6 + 1 / 150, 0.7 + 0.01 * s + 1 / 150]))
    text = rep.report("x", res, {}, "none", "tsloss", 0.8, 2000, 0)
    first = text.split("\n\n")[1]
    assert ("**claim 2 (higher final accuracy) held** (+0.007; every seed the same difference: "
            "exact sign test 6 of 6, p = 0.031)") in first
    assert ("accuracy AUC +0.005; every seed the same difference: exact sign test 6 of 6, "
            "p = 0.031)") in first
    assert "no spread between seeds)" not in first
    row = next(l for l in text.splitlines() if l.startswith("| tsloss | final accuracy"))
    assert "exact sign test 6 of 6, p = 0.031 | 6 | held |" in row, row


def test_report_shows_the_randomization_test_and_the_untested_perfect_ordering():
    """7 seeds at +1, ..., +1, -1 examples: the interval excludes 0 but the randomization test
    (p = 0.125) does not, and the report says so; a perfect ordering of 4 seeds is untested,
    with its reason."""
    rep = _report_module()
    res = []
    for s, k in enumerate([1, 1, 1, 1, 1, 1, -1]):
        res.append(_synthetic_run("none", s, [0.5, 0.6, 0.7 + 0.01 * s]))
        res.append(_synthetic_run("tsloss", s, [0.5, 0.6, 0.7 + 0.01 * s + k / 150]))
    first = rep.report("x", res, {}, "none", "tsloss", 0.8, 2000, 0).split("\n\n")[1]
    assert ("**claim 2 (higher final accuracy) did not hold** (+0.005, [+0.000, +0.009], "
            "randomization p = 0.125)") in first
    iv = stats.spearman_interval([1.0, 2, 3, 4], [0.9, 0.8, 0.7, 0.6])
    assert rep.why_untested(iv) == "a perfect ordering of 4 seeds, p = 2/4! = 0.083"
    assert rep.ci(iv) == "unbounded (a perfect ordering of 4 seeds, p = 2/4! = 0.083)"


def test_report_of_a_metrics_csv_cut_short_is_a_one_line_error(tmp_path):
    """A folder read from metrics.csv alone (the runs' files gone) whose file was cut mid-row, or
    holds a row written by hand without its numbers, ended in float('')'s traceback."""
    out = str(tmp_path)
    run_comparison(out, comparison_specs(["none", "tsloss"], [0]), fake_train,
                   {"target_acc": 0.8}, quiet=True)
    for p in glob.glob(os.path.join(out, "runs", "*.json")):
        os.remove(p)
    rows = ["regularizer,seed,step,val_acc"] + [f"{v},0,{s},0.{5 + s}" for v in ("none", "tsloss")
                                                for s in range(3)]
    csv_path = os.path.join(out, "metrics.csv")
    rep = _report_module()
    for text, line in [("\n".join(rows) + "\n", None), ("\n".join(rows)[:-3], 7),
                       ("\n".join(rows[:3] + ["none,0,,0.5"] + rows[3:]) + "\n", 4)]:
        with open(csv_path, "w") as f:
            f.write(text)
        if line is None:
            assert rep.main([out]) == 0
            continue
        with pytest.raises(SystemExit, match=rf"^compare_report: OUT_DIR: cannot read "
                                             rf"{re.escape(csv_path)}, line {line}: \w+Error"):
            rep.main([out])


def test_a_new_comparison_refused_in_its_first_run_leaves_no_settings(tmp_path):
    """An argument only a run checks (a --task causal the model cannot do) was refused after
    comparison.json was written: the corrected command was then refused for other settings,
    and so was any single run into the folder. A comparison with a run recorded keeps them."""
    from tsloss_cuda._cli import CLIError

    def refused(spec):
        raise CLIError("refused in the run")

    out = str(tmp_path / "a")
    with pytest.raises(CLIError, match="refused in the run"):
        run_comparison(out, SPECS[:2], refused, CONFIG, quiet=True)
    assert not os.path.exists(os.path.join(out, "comparison.json"))
    run_comparison(out, SPECS[:1], fake_train, dict(CONFIG, lr=0.02), quiet=True)  # other ones
    with pytest.raises(CLIError, match="refused in the run"):
        run_comparison(out, SPECS[:2], refused, dict(CONFIG, lr=0.02), quiet=True)
    assert os.path.exists(os.path.join(out, "comparison.json"))  # one run depends on it
