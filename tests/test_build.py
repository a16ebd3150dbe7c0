"""How the extension was linked: facts that decide whether it can live beside torch."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tsloss_cuda._C as ext


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} (binutils) not installed")
    return path


def test_extension_shares_torchs_libstdcxx():
    # A static libstdc++ copy inside _C.so (e.g. from LDFLAGS=-static-libstdc++) made every
    # error message with a number segfault beside torch's shared libstdc++ (reproduced on
    # Ubuntu 24.04; seen on an H200 host). Such a build has no NEEDED libstdc++.so and exports
    # libstdc++'s locale code itself (the dynamic symbol table survives stripping).
    dyn = subprocess.run([_tool("readelf"), "-d", ext.__file__], capture_output=True, text=True,
                         check=True).stdout
    assert "libstdc++.so" in dyn, dyn
    syms = subprocess.run([_tool("nm"), "-D", "-C", "--defined-only", ext.__file__],
                          capture_output=True, text=True, check=True).stdout
    leaked = [ln for ln in syms.splitlines() if "std::locale::" in ln or "codecvt<" in ln]
    assert not leaked, leaked[:5]


def test_build_refuses_fast_math():
    # Fast math would change the diagrams silently (on the GPU nvcc defines no macro the code
    # could test), so setup.py stops before compiling and names the variable.
    root = Path(__file__).resolve().parents[1]
    unsafe = ("CFLAGS", "CXXFLAGS", "CPPFLAGS", "NVCC_APPEND_FLAGS", "NVCC_PREPEND_FLAGS")
    base = {k: v for k, v in os.environ.items() if k not in unsafe}

    def name(extra):
        return subprocess.run([sys.executable, "setup.py", "--name"], cwd=root,
                              env=dict(base, **extra), capture_output=True, text=True,
                              timeout=120)

    for var, flags, bad in [("CXXFLAGS", "-O2 -ffast-math", "-ffast-math"),
                            ("NVCC_APPEND_FLAGS", "-use_fast_math", "-use_fast_math"),
                            ("NVCC_PREPEND_FLAGS", "-Xcompiler=-fPIC,-Ofast", "-Ofast"),
                            ("NVCC_APPEND_FLAGS", "-Xcompiler -O2,-freciprocal-math",
                             "-freciprocal-math"),
                            ("NVCC_APPEND_FLAGS", "--ftz true", "--ftz=true")]:
        out = name({var: flags})
        assert out.returncode != 0 and f"${var} contains {bad}," in out.stderr, out.stderr[-500:]
    # A later -O3 of ours cancels -Ofast in CFLAGS; --ftz false is the default.
    clean = name({"CXXFLAGS": "-O2 -Ofast", "NVCC_APPEND_FLAGS": "-lineinfo --ftz false"})
    assert clean.returncode == 0 and "tsloss_cuda" in clean.stdout, clean.stderr[-500:]
