"""Compile checks that need no GPU: the torch-free CUDA kernels, the native core tests, and a
type check of the CUDA torch glue.

Configures the top-level CMakeLists.txt in a temporary directory, builds `tsloss_cuda_kernels`
(nvcc, sm_80 and sm_90), `test_core`, `profile_core` and `test_warp`, runs ctest (test_warp only
built, test_races and test_cuda_host not built: .ci/run's CMake builds run them) and the profiling harness on a
tiny batch; skipped only without cmake or nvcc.
Then runs g++ -fsyntax-only over csrc/cuda/*.cpp against torch's CUDA headers.

TSLOSS_CMAKE_BUILD_DIR may name an existing build of this tree configured with the CUDA kernels
on (.ci/run's build-ci, which it has just built and tested): the targets are then brought up to
date there, in seconds, rather than compiled again from nothing (over two minutes on 2 cores).
Any other folder there gets the fresh build.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

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


def _existing_build():
    """TSLOSS_CMAKE_BUILD_DIR as a Path where it is a build of this tree with the CUDA kernels on,
    else None (a fresh build then): .ci/run's CMake finds nvcc on PATH only, this file also
    through CUDA_HOME, so its build-ci may lack the kernels that this check must compile."""
    existing = os.environ.get("TSLOSS_CMAKE_BUILD_DIR")
    if not existing:
        return None
    cache = Path(existing) / "CMakeCache.txt"
    if not cache.is_file():
        return None
    # Reconfiguring it with a CUDA compiler named anew would wipe its cache and rebuild it all;
    # the build below reruns CMake by itself if a CMakeLists.txt changed.
    settings = cache.read_text().splitlines()
    source = [line.split("=", 1)[1] for line in settings
              if line.startswith("CMAKE_HOME_DIRECTORY:")]
    if "TSLOSS_CUDA_KERNELS:BOOL=ON" not in settings or not source or (
            os.path.realpath(source[0]) != os.path.realpath(ROOT)):
        return None
    return Path(existing)


def test_existing_build_is_used_only_where_it_compiles_the_kernels(tmp_path, monkeypatch):
    def cache(name, kernels, source):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "CMakeCache.txt").write_text(
            f"TSLOSS_CUDA_KERNELS:BOOL={kernels}\nCMAKE_HOME_DIRECTORY:INTERNAL={source}\n")
        return folder

    cases = [(cache("good", "ON", ROOT), True), (cache("no_kernels", "OFF", ROOT), False),
             (cache("other_tree", "ON", str(tmp_path)), False), (tmp_path / "missing", False)]
    for folder, used in cases:
        monkeypatch.setenv("TSLOSS_CMAKE_BUILD_DIR", str(folder))
        assert (_existing_build() == folder) is used, folder
    monkeypatch.delenv("TSLOSS_CMAKE_BUILD_DIR")
    assert _existing_build() is None


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not found")
@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
def test_cuda_kernels_and_native_tests_build(tmp_path):
    build = _existing_build()
    if build is None:
        build = tmp_path / "build"
        _run(["cmake", "-S", ROOT, "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
              "-DTSLOSS_CUDA_KERNELS=ON", f"-DCMAKE_CUDA_COMPILER={_nvcc()}"])
    jobs = str(max(1, min(4, os.cpu_count() or 1)))
    _run(["cmake", "--build", str(build), "-j", jobs, "--target", "tsloss_cuda_kernels", "test_core",
          "profile_core", "test_warp"])
    assert any(name.startswith("libtsloss_cuda_kernels") for name in os.listdir(build))
    # test_warp's 10,000-cloud parity (about 20 s) runs in .ci/run's two CMake builds, and
    # test_races (half a minute) and test_cuda_host (15 s) in the plain one; here test_warp only
    # has to build.
    _run(["ctest", "--test-dir", str(build), "--output-on-failure", "-E",
          "^test_(warp|races|cuda_host)$"])
    # The profiling harness runs and reports every phase on a tiny batch.
    out = _run([str(build / "profile_core"), "12", "5", "3", "1"]).stdout
    for phase in ("distances", "prim", "apparent-pair sweep", "reduction", "engine total"):
        assert phase in out, out
    assert subprocess.run([str(build / "profile_core"), "2", "5", "3"], capture_output=True).returncode == 2


# The torch glue (csrc/cuda/*.cpp) is only built where torch has CUDA, which CI does not have.
# It is still type-checked here: g++ -fsyntax-only against this torch's own CUDA headers and the
# CUDA toolkit's runtime headers. The headers of the CUDA math libraries that torch's context
# header names (cuBLAS, cuSPARSE, cuSOLVER) are not part of an nvcc-only toolkit, so tiny stand-ins
# declaring just their handle and status types are written to a temporary folder.
_LIBRARY_STANDINS = {
    "cublas_v2.h": "typedef struct cublasContext* cublasHandle_t; typedef int cublasStatus_t;",
    "cublasLt.h": "typedef struct cublasLtContext* cublasLtHandle_t;",
    "cusparse.h": "typedef struct cusparseContext* cusparseHandle_t; typedef int cusparseStatus_t;",
    "cusolver_common.h": "typedef int cusolverStatus_t;",
    "cusolverDn.h": '#include "cusolver_common.h"\ntypedef struct cusolverDnContext* cusolverDnHandle_t;',
    "c10/cuda/impl/cuda_cmake_macros.h": "",
}


def _cuda_include():
    nvcc = _nvcc()
    if nvcc is None:
        return None
    root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    for cand in (os.path.join(root, "include"), "/usr/local/cuda/include"):
        if os.path.exists(os.path.join(cand, "cuda_runtime.h")):
            return cand
    return None


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")
@pytest.mark.skipif(_cuda_include() is None, reason="CUDA runtime headers not found")
def test_cuda_glue_type_checks(tmp_path):
    from torch.utils.cpp_extension import include_paths
    if not os.path.exists(os.path.join(include_paths()[0], "ATen", "cuda", "CUDAContext.h")):
        pytest.skip("this torch ships no CUDA headers")
    for name, text in _LIBRARY_STANDINS.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#pragma once\n" + text + "\n")
    glue = [os.path.join(ROOT, "csrc", "cuda", f) for f in sorted(os.listdir(os.path.join(ROOT, "csrc", "cuda")))
            if f.endswith(".cpp")]
    assert glue, "no CUDA glue found"
    # C++20, as setup.py's build: torch's BuildExtension picks it (2.14's headers refuse C++17).
    flags = ["g++", "-std=c++20", "-fsyntax-only", f"-I{tmp_path}", f"-I{_cuda_include()}",
             f"-I{os.path.join(ROOT, 'csrc')}"] + [f"-I{p}" for p in include_paths()]
    for src in glue:
        _run(flags + [src])
