"""Resident memory stays flat over many forward+backward calls (leaks would end long runs)."""
import gc
import os

import pytest
import torch

import tsloss_cuda as T


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_ten_thousand_forward_backward_calls_keep_memory_flat():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 8, generator=g).requires_grad_()
    step = lambda: T.loss(x, stability=0.5).backward()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test is about memory; keep it quick on a shared CI machine
    try:
        for _ in range(200):  # warm-up: allocator pools, thread workspaces
            step()
        gc.collect()
        before = resident_bytes()
        for _ in range(10_000):
            step()
        gc.collect()
        growth = resident_bytes() - before
    finally:
        torch.set_num_threads(threads)
    # A leak of even one small tensor per call would add well over 20 MB here.
    assert growth < 20 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB"
    assert torch.isfinite(x.grad).all()
