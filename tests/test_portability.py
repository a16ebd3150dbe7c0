"""The CPU extension's sources compile for the platforms this machine cannot run: arm64 macOS and
Linux, and x86-64 under Clang with libc++.

CI builds and runs only x86-64 Linux with GCC. An arm64 build once failed on the x86 assembly of
the distance tiles (their constraints are parsed for every target), and Clang on x86-64 on its
256-bit operands; neither showed here. zig's bundled Clang cross-compiles each source to an
object file (-O0: code generation catches what a syntax check would not, such as an inlined
function's target features). Skipped without the `ziglang` package (.ci/run installs it).
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# What setup.py compiles for a CPU build, and the engine the native tests build.
SOURCES = ["csrc/ops.cpp", "csrc/core/vr_engine.cpp",
           *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc/cpu").glob("*.cpp"))]
TARGETS = ["aarch64-macos", "aarch64-linux-gnu", "x86_64-linux-gnu"]


@pytest.fixture(scope="module")
def zig():
    pytest.importorskip("ziglang")
    return [sys.executable, "-m", "ziglang", "c++"]


def _compile(zig, target: str, source: str, out: Path) -> subprocess.CompletedProcess:
    tdir = Path(torch.__file__).parent / "include"
    # C++20, the standard torch's BuildExtension gives setup.py's build.
    cmd = zig + ["-target", target, "-std=c++20", "-c", "-O0", "-ffp-contract=off",
                 f"-I{ROOT / 'csrc'}", f"-I{tdir}",
                 f"-I{tdir / 'torch/csrc/api/include'}", f"-I{sysconfig.get_paths()['include']}",
                 str(ROOT / source), "-o", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("target", TARGETS)
def test_cpu_sources_compile_for(target, zig, tmp_path):
    objects = [tmp_path / (Path(s).stem + ".o") for s in SOURCES]
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        runs = list(pool.map(lambda s, o: _compile(zig, target, s, o), SOURCES, objects))
    failed = {s: r.stderr[-3000:] for s, r in zip(SOURCES, runs) if r.returncode != 0}
    assert not failed, "\n".join(f"{s} for {target}:\n{err}" for s, err in failed.items())
    assert all(o.stat().st_size > 0 for o in objects)
