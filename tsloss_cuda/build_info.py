"""Which sources the loaded extension was compiled from.

An editable install (``pip install -e .``) keeps running the extension of its last build after
``csrc/`` changes, and nothing else tells the two apart: a benchmark once recorded a clean
checkout while its extension predated the kernel change it was said to measure. The build
stores a digest of the sources it compiled; :func:`build_info` compares it with the checkout's.

This module imports nothing but the standard library at its top: ``setup.py`` loads it by path,
before the package (or torch's extension) can be imported.
"""
from __future__ import annotations

import hashlib
import os
from typing import Optional

# What the compiler reads: every C++/CUDA source and header under csrc/, and setup.py (its
# flags). Not csrc/generated/, which holds the digest itself, nor the native tests, which the
# extension does not compile.
_SUFFIXES = (".h", ".cuh", ".cpp", ".cu")
_SKIPPED = ("generated", "native_tests")


def source_digest(root: str) -> Optional[str]:
    """A 16-hex-digit digest of the compiled sources under checkout ``root`` (the folder that
    holds ``setup.py`` and ``csrc/``), or None where ``csrc/`` is absent (an installed wheel)."""
    csrc = os.path.join(root, "csrc")
    if not os.path.isdir(csrc):
        return None
    files = []
    for folder, dirs, names in os.walk(csrc):
        dirs[:] = sorted(d for d in dirs
                         if not (folder == csrc and d in _SKIPPED) and not d.startswith("."))
        files += [os.path.join(folder, n) for n in names if n.endswith(_SUFFIXES)]
    setup_py = os.path.join(root, "setup.py")
    if os.path.isfile(setup_py):
        files.append(setup_py)
    h = hashlib.sha256()
    for path in sorted(files, key=lambda p: os.path.relpath(p, root)):
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        with open(path, "rb") as f:
            data = f.read()
        # Lengths delimit the fields, so no renaming or splitting of files collides.
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


def build_info() -> dict:
    """The loaded extension's build, as a dict:

    - ``source_digest``: digest of the sources it was compiled from (``"unknown"`` for a build
      made without ``setup.py``);
    - ``checkout_digest``: the same digest of the checkout the package was imported from, or
      None when the package has no ``csrc/`` beside it (an installed wheel);
    - ``stale``: True when the two differ (the sources changed since the build: rebuild with
      ``pip install -e . --no-build-isolation``), None when there is no checkout to compare;
    - ``cpu_isa``: the x86 build of the CPU kernels now active (:func:`tsloss_cuda.cpu_isa`);
    - ``parallel``: whether the CPU ops spread a batch over torch's threads; False for a macOS
      build or one whose compiler had no OpenMP (``setup.py`` warned then): one thread.
    """
    from . import _C
    from .cpu_isa import cpu_isa

    built = _C.source_digest()
    checkout = source_digest(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return dict(source_digest=built, checkout_digest=checkout,
                stale=None if checkout is None else built != checkout, cpu_isa=cpu_isa(),
                parallel=bool(_C.parallel_build()))
