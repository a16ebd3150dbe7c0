"""Which x86 build of the CPU kernels runs: ``baseline`` (SSE2), ``avx2`` or ``avx512``.

Every build gives the same bits: the distances follow one canonical order of operations
(``csrc/core/pairwise_distance.h``) and the rest of the engine only compares. The choice is one
of speed, so the fastest build the CPU supports runs by default. Tests and benchmarks cap it to
exercise each build a machine supports; the environment variable ``TSLOSS_CPU_ISA`` sets the cap
when the package is imported. Non-x86 CPUs run the portable build, reported as ``baseline``.
"""
from __future__ import annotations

import os

import torch  # noqa: F401  (first: the extension links against its libraries)

from . import _C

ISAS = ("baseline", "avx2", "avx512")
_LEVELS = {"baseline": 0, "avx2": 3, "avx512": 4}
_NAMES = {level: name for name, level in _LEVELS.items()}


def cpu_isa() -> str:
    """The build the CPU kernels run now: ``"baseline"``, ``"avx2"`` or ``"avx512"``."""
    return _NAMES[_C.cpu_levels()[1]]


def supported_cpu_isas() -> tuple[str, ...]:
    """The builds this CPU can run, slowest first."""
    detected = _C.cpu_levels()[0]
    return tuple(name for name in ISAS if _LEVELS[name] <= detected)


def set_cpu_isa(isa: str | None) -> str:
    """Caps the CPU kernels at build ``isa`` (``None``: no cap) and returns the build now active.

    Raises ValueError, naming ``isa``, for an unknown name or a build this CPU cannot run: the
    cap never rounds a request down silently.
    """
    if isa is None:
        _C.set_cpu_level(-1)
        return cpu_isa()
    if not isinstance(isa, str):
        raise TypeError(f"set_cpu_isa: isa must be one of {', '.join(ISAS)} or None, got "
                        f"{type(isa).__name__}")
    if isa not in _LEVELS:
        raise ValueError(f"set_cpu_isa: isa must be one of {', '.join(ISAS)} or None, got {isa!r}")
    if not _C.set_cpu_level(_LEVELS[isa]):
        raise ValueError(f"set_cpu_isa: isa={isa!r} is not supported by this CPU "
                         f"(supported: {', '.join(supported_cpu_isas())})")
    return cpu_isa()


def _apply_environment() -> None:
    isa = os.environ.get("TSLOSS_CPU_ISA")
    if isa:
        try:
            set_cpu_isa(isa)
        except ValueError as err:
            why = str(err).split(": ", 1)[1].replace(" or None", "")  # a name, not None
            raise ValueError(f"TSLOSS_CPU_ISA={isa!r}: {why}") from None
