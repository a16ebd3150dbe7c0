"""PEP 517 backend: setuptools, building against the torch already installed for this Python.

Under pip's default build isolation the build environment has no torch, and asking for one
there would pull the registry's newest build (several GB of CUDA packages) instead of the
user's own (here the local CPU wheel). The extension must be built against the torch it will
be loaded into anyway, so the installed one is made importable to setup.py. With
`--no-build-isolation` this does nothing.
"""
import importlib.util
import os
import sys
import sysconfig

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (the PEP 517 hooks)


def _expose_installed_torch() -> None:
    if importlib.util.find_spec("torch") is not None:
        return
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths()[key]
        if os.path.isdir(os.path.join(path, "torch")) and path not in sys.path:
            sys.path.append(path)  # after the isolated env, so its setuptools wins


_expose_installed_torch()
__all__ = [name for name in dir(_setuptools) if not name.startswith("_")]
