"""A small CUDA workload for compute-sanitizer: every op forward and backward, both dtypes,
points and distance input, the loss with all terms, float32 clouds in a few hundred dimensions
(the ones TSLOSS_CUDA_DISTANCE_SLICES splits), N = 256 split over several launches (one and
a few clouds per launch), a tie-heavy ring (exact), an H1 overflow, a NaN cloud, invalid distance
matrices and overflowing distances.

    compute-sanitizer --tool memcheck python tools/gpu_smoke.py
Exits non-zero if a CUDA result differs from the CPU one. The engine's switches
(TSLOSS_CUDA_TOPOLOGY, TSLOSS_CUDA_REDUCE, ...) are taken from the environment and printed first,
so that each sanitizer report says which path it covered. Every check line carries the seconds
since the start, so a sanitizer that timed out shows how far it got. GPU_SMOKE_LIGHT=1 leaves out
the N = 256 sections (the slow ones under racecheck and initcheck).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import tsloss_cuda

ops = torch.ops.tsloss_cuda
START = time.monotonic()


def check(name: str, ok: bool) -> bool:
    print(f"{'ok  ' if ok else 'FAIL'} {name} ({time.monotonic() - START:.1f} s)", flush=True)
    return ok


def main(argv=None) -> int:
    # No options: --help says what it runs (and the environment it reads) without running it.
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    if not torch.cuda.is_available():  # an AssertionError ('not compiled with CUDA') before
        print("gpu_smoke.py: error: needs a CUDA device (torch sees none)", file=sys.stderr)
        return 2
    print("engine:", " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                              if k.startswith("TSLOSS_CUDA_")) or "defaults", flush=True)
    good = True
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(4, 24, 16, generator=g, dtype=dtype)
        for distances in (False, True):
            inp = ops.pairwise_distance(x) if distances else x
            cpu = ops.vr_persistence(inp, 1, distances, 64)
            gpu = ops.vr_persistence(inp.cuda(), 1, distances, 64)
            good &= check(f"vr_persistence {dtype} distances={distances} counts",
                          torch.equal(cpu[4], gpu[4].cpu()))
            good &= check(f"vr_persistence {dtype} distances={distances} h1",
                          torch.allclose(cpu[2], gpu[2].cpu(), rtol=1e-5, atol=1e-5))
            g0 = torch.randn(cpu[0].shape, generator=g, dtype=dtype)
            g1 = torch.randn(cpu[2].shape, generator=g, dtype=dtype)
            bc = ops.vr_persistence_backward(g0, g1, inp, cpu[1], cpu[3], distances)
            bg = ops.vr_persistence_backward(g0.cuda(), g1.cuda(), inp.cuda(), gpu[1], gpu[3],
                                             distances)
            good &= check(f"vr_persistence_backward {dtype} distances={distances}",
                          torch.allclose(bc, bg.cpu(), rtol=1e-5, atol=1e-5))
        xc = x.clone().requires_grad_(True)
        xg = x.cuda().requires_grad_(True)
        vc, tc = tsloss_cuda.loss(xc, stability=0.5, return_terms=True)
        vg, tg = tsloss_cuda.loss(xg, stability=0.5, return_terms=True)
        v2 = tsloss_cuda.loss(xg, stability=0.5, previous=tg["topology"])
        vc.backward()
        vg.backward()  # the CPU's loss: their gradients are compared (only values were before)
        assert xc.grad is not None and xg.grad is not None  # leaves, after their backward
        grad_gpu = xg.grad.clone()
        v2.backward()  # the stability term's backward, under the sanitizer (topology detached)
        good &= check(f"loss {dtype}", torch.allclose(vc, vg.cpu(), rtol=1e-5, atol=1e-6))
        tol = 1e-5 if dtype == torch.float32 else 1e-10  # as tests/test_cuda.py's
        good &= check(f"loss {dtype} gradient",
                      torch.allclose(xc.grad, grad_gpu.cpu(), rtol=tol, atol=tol))
    good &= wide_clouds(g)
    if os.environ.get("GPU_SMOKE_LIGHT", "0") != "1":
        good &= large_clouds(g)
    else:
        print("GPU_SMOKE_LIGHT=1: the N = 256 sections are left out", flush=True)
    good &= ring_and_invalid_inputs(g)
    torch.cuda.synchronize()
    print("gpu_smoke:", "all checks passed" if good else "FAILED", flush=True)
    return 0 if good else 1


def wide_clouds(g: torch.Generator) -> bool:
    """float32 clouds in a few hundred dimensions, one and two per batch: the batches that
    TSLOSS_CUDA_DISTANCE_SLICES=0 splits over several blocks a tile (one with repeated points,
    whose tiles sum again canonically)."""
    good = True
    for b, n, d in ((1, 40, 300), (2, 33, 200)):
        x = torch.randn(b, n, d, generator=g)
        if b == 1:
            x[:, 1::3] = x[:, 0:-1:3]
        good &= check(f"pairwise_distance ({b}, {n}, {d}) float32",
                      torch.equal(ops.pairwise_distance(x), ops.pairwise_distance(x.cuda()).cpu()))
        cpu = ops.vr_persistence(x, 1, False, 64)
        gpu = ops.vr_persistence(x.cuda(), 1, False, 64)
        good &= check(f"vr_persistence ({b}, {n}, {d}) float32",
                      all(torch.equal(c, v.cpu()) for c, v in zip(cpu, gpu)))
        xg = x.cuda().requires_grad_(True)
        tsloss_cuda.loss(xg).backward()
        assert xg.grad is not None  # a leaf, after its backward
        good &= check(f"loss ({b}, {n}, {d}) float32 gradient",
                      bool(torch.isfinite(xg.grad).all()))
    return good


def large_clouds(g: torch.Generator) -> bool:
    good = True
    # N = 256 with the default capacities, run as several launches (a 1 MB workspace budget
    # takes one cloud per launch).
    z = torch.randn(3, 256, 8, generator=g)
    os.environ["TSLOSS_CUDA_WORKSPACE_MB"] = "1"
    out = ops.vr_persistence(z.cuda(), 1, False, 64)
    del os.environ["TSLOSS_CUDA_WORKSPACE_MB"]
    ref = ops.vr_persistence(z, 1, False, 64)
    good &= check("N=256, one cloud per launch: counts", torch.equal(out[4].cpu(), ref[4]))
    good &= check("N=256, one cloud per launch: h1",
                  torch.allclose(out[2].cpu(), ref[2], rtol=1e-5, atol=1e-5))
    # Several clouds per launch and a partial last launch, for both ops (about 2.4 MB per cloud
    # at N = 256: a 6 MB budget takes two).
    z = torch.randn(7, 256, 8, generator=g)
    os.environ["TSLOSS_CUDA_WORKSPACE_MB"] = "6"
    out = ops.vr_persistence(z.cuda(), 1, False, 64)
    loss_gpu = tsloss_cuda.loss(z.cuda(), reduction="none")
    del os.environ["TSLOSS_CUDA_WORKSPACE_MB"]
    ref = ops.vr_persistence(z, 1, False, 64)
    good &= check("N=256, B=7, a few clouds per launch: counts", torch.equal(out[4].cpu(), ref[4]))
    good &= check("N=256, B=7, a few clouds per launch: h1",
                  torch.allclose(out[2].cpu(), ref[2], rtol=1e-5, atol=1e-5))
    good &= check("N=256, B=7, a few clouds per launch: loss",
                  torch.allclose(loss_gpu.cpu(), tsloss_cuda.loss(z, reduction="none"),
                                 rtol=1e-5, atol=1e-6))
    return good


def ring_and_invalid_inputs(g: torch.Generator) -> bool:
    good = True
    # A bare 100-point ring: every chord ties, the H1 working set reaches ~2,000 entries, so the
    # warp reduction seals its tail into runs and merges them; with a 1,500-entry heap it also
    # compacts them (or reports the overflow).
    t = torch.arange(100, dtype=torch.float64) * (2 * torch.pi / 100)
    ring = torch.stack([t.cos(), t.sin()], 1)[None]
    for dtype in (torch.float32, torch.float64):
        d = ops.pairwise_distance(ring.to(dtype))
        ref = ops.vr_persistence(d, 1, True, 64)
        out = ops.vr_persistence(d.cuda(), 1, True, 64)
        good &= check(f"ring of 100 {dtype}: exact",
                      all(torch.equal(a, b.cpu()) for a, b in zip(ref, out)))
        os.environ["TSLOSS_CUDA_H1_HEAP"] = "1500"
        out = ops.vr_persistence(d.cuda(), 1, True, 64)
        del os.environ["TSLOSS_CUDA_H1_HEAP"]
        good &= check(f"ring of 100 {dtype}, 1,500-entry heap: exact or flagged",
                      int(out[4]) == -1 or all(torch.equal(a, b.cpu()) for a, b in zip(ref, out)))
    # A cloud that overflows a tiny H1 workspace, and a NaN cloud: flagged, not crashing.
    os.environ["TSLOSS_CUDA_H1_HEAP"] = "4"
    y = torch.randn(3, 40, 8, generator=g).cuda()
    out = ops.vr_persistence(y, 1, False, 16)
    ref = ops.vr_persistence(y.cpu(), 1, False, 16)[4]
    print("tiny heap: counts", out[4].tolist(), "(-1 = overflow) vs CPU", ref.tolist())
    good &= check("tiny heap: exact or flagged", bool(((out[4].cpu() == -1) | (out[4].cpu() == ref)).all()))
    del os.environ["TSLOSS_CUDA_H1_HEAP"]
    y[1, 3, 2] = float("nan")
    dg = tsloss_cuda.vr_persistence(y)
    good &= check("nan flagged", dg.h1_count[1].item() == tsloss_cuda.persistence.INVALID_INPUT)
    # Distance matrices with a NaN entry or negative entries: they end, flagged.
    d = ops.pairwise_distance(y.cpu()[[0, 2]].double())
    d[0, 7, 3] = d[0, 3, 7] = float("nan")
    d[1] = torch.round(8 * (d[1] - 2)) / 8
    d[1].fill_diagonal_(0)
    dg = tsloss_cuda.vr_persistence(d.cuda(), distances=True)
    good &= check("NaN and negative distance matrices flagged",
                  dg.h1_count.tolist() == [tsloss_cuda.persistence.INVALID_INPUT] * 2)
    # Finite float64 points whose distance overflows (the CPU raises): flagged by the engine.
    z = torch.randn(2, 12, 4, generator=g, dtype=torch.float64)
    z[1, 0, 0], z[1, 5, 0] = 1e308, -1e308
    dg = tsloss_cuda.vr_persistence(z.cuda())
    good &= check("overflowing distances flagged",
                  dg.h1_count.tolist()[1] == tsloss_cuda.persistence.INVALID_INPUT
                  and bool(torch.isnan(dg.h0[1]).all()))
    return good


if __name__ == "__main__":
    sys.exit(main())
