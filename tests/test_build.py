"""How the extension was linked: facts that decide whether it can live beside torch."""
import shutil
import subprocess

import pytest

import tsloss_cuda._C as ext


def test_extension_shares_torchs_libstdcxx():
    # A static libstdc++ copy inside _C.so (e.g. from LDFLAGS=-static-libstdc++) made every
    # error message with a number segfault beside torch's dynamic libstdc++ (seen on an H200
    # host; reproduced on Ubuntu 24.04). Its locale/iostream code would be defined in _C.so.
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) not installed")
    out = subprocess.run([nm, "-C", "--defined-only", ext.__file__], capture_output=True,
                         text=True, check=True).stdout
    leaked = [ln for ln in out.splitlines() if "std::locale::" in ln or "codecvt<" in ln]
    assert not leaked, leaked[:5]
