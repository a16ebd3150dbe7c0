"""How the extension was linked: facts that decide whether it can live beside torch."""
import shutil
import subprocess

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
