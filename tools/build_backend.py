"""PEP 517 backend: setuptools, building against the torch already installed for this Python.

Under pip's default build isolation the build environment has no torch, and asking for one
there would pull the registry's newest build (several GB of CUDA packages) instead of the
user's own (here the local CPU wheel). The extension must be built against the torch it will
be loaded into anyway, so the installed one is made importable to setup.py. With
`--no-build-isolation` this does nothing.
"""
import importlib.util
import os
import subprocess
import sys
from typing import Optional

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (the PEP 517 hooks)

# Where this interpreter imports torch from outside the isolation: the environment's
# site-packages, the user site, a --system-site-packages base or a .pth file's folder alike.
_FIND_TORCH = ("import importlib.util, os; s = importlib.util.find_spec('torch'); "
               "print(os.path.dirname(os.path.dirname(s.origin)) if s and s.origin else '')")


def installed_torch_dir() -> Optional[str]:
    """The folder holding the torch this Python imports when run as the user runs it (pip's
    isolation sets PYTHONNOUSERSITE and PYTHONPATH for its build only); None if it has none."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONNOUSERSITE", "PYTHONPATH")}
    try:
        out = subprocess.run([sys.executable, "-c", _FIND_TORCH], env=env, capture_output=True,
                             text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    path = out.stdout.strip() if out.returncode == 0 else ""
    return path if path and os.path.isdir(os.path.join(path, "torch")) else None


def _expose_installed_torch() -> None:
    if importlib.util.find_spec("torch") is not None:
        return
    path = installed_torch_dir()
    if path is not None and path not in sys.path:
        sys.path.append(path)  # after the isolated env, so its setuptools wins


_expose_installed_torch()
__all__ = [name for name in dir(_setuptools) if not name.startswith("_")]
