"""The GPU engine's kernels through the host warp emulation, as an op with vr_persistence's
signature, fake kernel and autograd (``TSLOSS_ENGINE=emulated``, see :mod:`.persistence`).

It runs on the CPU only; it exists so that the ripser.py-parity and loss suites check the
device's algorithm on machines without a GPU.
"""
from __future__ import annotations

import torch

from ._ops import _vr_persistence_backward, _vr_persistence_fake, _vr_persistence_setup, ops

torch.library.register_fake("tsloss_cuda::vr_persistence_emulated")(_vr_persistence_fake)
torch.library.register_autograd(
    "tsloss_cuda::vr_persistence_emulated", _vr_persistence_backward,
    setup_context=_vr_persistence_setup)

op = ops.vr_persistence_emulated
