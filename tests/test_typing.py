"""The typed public API: mypy passes on the package, the front ends, benchmarks/ and tools/
with the project's configuration (pyproject.toml's [tool.mypy]), and a user's code type-checks
against the package's own annotations (the py.typed marker ships them; without it mypy reads
the package as untyped, every name Any).

mypy's cache lives in a fixed folder under the system temp (one per checkout), so that a second
run takes seconds; the first analyses torch's stubs (and, for the package's own check,
transformers') once per check: about 35 and 11 s on 2 cores.
"""
import hashlib
import os
import tempfile
import textwrap
from pathlib import Path

import pytest

import tsloss_cuda

api = pytest.importorskip("mypy.api")

ROOT = Path(tsloss_cuda.__file__).resolve().parents[1]  # the checkout this run imports


def _cache_dir(kind: str) -> str:
    """mypy's cache for this checkout and kind of check (their options differ: one cache each)."""
    tag = hashlib.sha1(str(ROOT).encode()).hexdigest()[:10]
    return os.path.join(tempfile.gettempdir(), f"tsloss_cuda-mypy-{os.getuid()}-{tag}", kind)


def _mypy(args, cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    stdout, stderr, status = api.run(list(args))
    return stdout + stderr, status


def test_package_front_ends_and_tools_type_check(monkeypatch):
    if not (ROOT / "pyproject.toml").is_file() or not (ROOT / "python").is_dir():
        pytest.skip("needs the checkout (pyproject.toml, python/)")
    out, status = _mypy(["--config-file", str(ROOT / "pyproject.toml"),
                         "--cache-dir", _cache_dir("project"), "tsloss_cuda", "python",
                         "benchmarks", "tools"],
                        ROOT, monkeypatch)
    assert status == 0, out


# A user's code: the public API (tsloss_cuda.__all__), with the types it promises.
USER_CODE = '''
from typing import Any, Dict, List, Tuple

import torch

import tsloss_cuda
from tsloss_cuda import Diagrams, PromptTopology, TopologyTracker, TSLoss


def train_step(x: torch.Tensor, model: torch.nn.Module) -> List[Dict[str, float]]:
    value: torch.Tensor = tsloss_cuda.loss(x)
    total, terms = tsloss_cuda.loss(x, stability=0.5, return_terms=True)
    reveal_type(total)
    topology: PromptTopology = terms["topology"]
    scale: torch.Tensor = terms["scale"]
    again: torch.Tensor = tsloss_cuda.loss(x, stability=0.5, previous=topology)
    module = TSLoss(stability=1.0, max_h1=16)
    module(x).backward()
    previous: PromptTopology | None = module.previous
    dg: Diagrams = tsloss_cuda.vr_persistence(x, maxdim=1, max_h1=8)
    h0: torch.Tensor = dg.h0
    dist: torch.Tensor = tsloss_cuda.pairwise_distance(x)
    k: int = tsloss_cuda.default_max_h1(x.shape[-2])
    metrics: Dict[str, torch.Tensor] = tsloss_cuda.topology_metrics(x)
    tracker = TopologyTracker(1, tsloss_terms=True)
    tracker.update(0, x, terms)
    tracker.update(1, x, {"connectivity": 0.5})
    prompt: torch.Tensor = tsloss_cuda.prompt_parameters(model)
    soft = tsloss_cuda.SoftPromptModel(model, 4, label_ids=torch.tensor([3, 5]))
    isa: str = tsloss_cuda.set_cpu_isa(None)
    isas: Tuple[str, ...] = tsloss_cuda.supported_cpu_isas()
    active: str = tsloss_cuda.cpu_isa()
    info: Dict[Any, Any] = tsloss_cuda.build_info()
    return tracker.flush()
'''


def test_user_code_sees_the_annotations(tmp_path, monkeypatch):
    (tmp_path / "user.py").write_text(textwrap.dedent(USER_CODE))
    # No configuration of any folder above. transformers and peft are not followed (their
    # types read as Any): the user's snippet touches neither, and they were three quarters of
    # this check's cold run (43 -> 11 s on 2 cores).
    (tmp_path / "mypy.ini").write_text(
        "[mypy]\n\n[mypy-transformers,transformers.*,peft,peft.*]\nfollow_imports = skip\n")
    # The package as an installed one (a folder on the interpreter's path, not a source given
    # to mypy), whose annotations mypy reads only with a py.typed marker.
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("MYPYPATH", raising=False)
    out, status = _mypy(["--strict", "--config-file", "mypy.ini", "--cache-dir",
                         _cache_dir("user"), "user.py"], tmp_path, monkeypatch)
    assert status == 0, out
    assert 'Revealed type is "torch._tensor.Tensor"' in out, out
