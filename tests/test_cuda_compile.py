"""Compile check of the torch-free CUDA kernels and the native core tests (no GPU needed).

Configures the top-level CMakeLists.txt in a temporary directory, builds `tsloss_cuda_kernels`
(nvcc, sm_80 and sm_90) and `test_core`, and runs ctest. Skipped only without cmake or nvcc.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return None


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not found")
@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
def test_cuda_kernels_and_native_tests_build(tmp_path):
    build = tmp_path / "build"
    _run(["cmake", "-S", ROOT, "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
          "-DTSLOSS_CUDA_KERNELS=ON", f"-DCMAKE_CUDA_COMPILER={_nvcc()}"])
    jobs = str(max(1, min(4, os.cpu_count() or 1)))
    _run(["cmake", "--build", str(build), "-j", jobs, "--target", "tsloss_cuda_kernels", "test_core"])
    assert any(name.startswith("libtsloss_cuda_kernels") for name in os.listdir(build))
    _run(["ctest", "--test-dir", str(build), "--output-on-failure"])
