"""The GPU engine's kernels through the host warp emulation, as an op with vr_persistence's
signature, fake kernel and autograd (``TSLOSS_ENGINE=emulated``, see :mod:`.persistence`).

It runs on the CPU only; it exists so that the ripser.py-parity and loss suites check the
device's algorithm on machines without a GPU.
"""
from __future__ import annotations

from ._ops import ops  # registers the op's fake kernel and autograd with the others

op = ops.vr_persistence_emulated
