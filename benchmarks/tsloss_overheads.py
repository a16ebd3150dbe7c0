"""What the fused TSLoss op costs beside the suite: its backward alone, and the main job's
regulariser step, hot and after other work.

    python benchmarks/tsloss_overheads.py [--threads 2]

Prints (1) ``torch.autograd.grad`` of ``tsloss_cuda.loss`` alone, µs per cloud, best of 7, at
the suite's CPU configs; (2) one regulariser step as the training job runs it
(``tsloss_cuda/training.py``: the regulariser on one (8, 384) prompt, its own ``autograd.grad``,
added into the prompt's gradient) for TSLoss, L2 and
``torch.pdist(p).mean()``: median µs of 200 steps back to back ("hot") and each right after
twenty 512 x 512 matmuls ("after other work"); (3) the op's forward with and without grad and
its backward through autograd for one (8, 64) prompt; (4) one prompt (B = 1) at the suite's
(N, D): ``pairwise_distance``, ``vr_persistence`` and TSLoss forward+backward, median ms of 21
(``--one-prompt``: this table alone, in every build the CPU supports); (5) ``--vr``: this table
alone, in every build: ``vr_persistence``'s forward, its backward op alone (an upstream gradient
of ones on every bar) and forward+backward through autograd, median µs per cloud of 21, at the
suite's configs and at B = 1. Numbers are in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import tsloss_cuda
from tsloss_cuda._cli import positive_threads  # 0 was a RuntimeError traceback

CONFIGS = [(16, 768, 64), (32, 2048, 64), (64, 2048, 64), (64, 4096, 16), (128, 2048, 16),
           (256, 768, 4)]


def best_us(f, reps: int, per: int = 1) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best / per * 1e6


def backward_alone() -> None:
    print("| (N, D, B) | backward alone, µs per cloud |\n|---|--:|")
    for n, d, b in CONFIGS:
        x = torch.randn(b, n, d, generator=torch.Generator().manual_seed(0)).requires_grad_()
        value = tsloss_cuda.loss(x)
        us = best_us(lambda: torch.autograd.grad(value, x, retain_graph=True), 7, b)
        print(f"| ({n}, {d}, {b}) | {us:.0f} |")


def regulariser_step() -> None:
    prompt = torch.nn.Parameter(torch.randn(8, 384) * 0.05)
    prompt.grad = torch.zeros_like(prompt)
    other = torch.randn(512, 512)
    fns = {"tsloss": tsloss_cuda.TSLoss(), "l2": lambda p: (p ** 2).sum(-1).mean(),
           "pdist": lambda p: torch.pdist(p).mean()}
    print("\n| regulariser | hot, µs | after other work, µs |\n|---|--:|--:|")
    for name, fn in fns.items():
        def step():
            reg = fn(prompt)
            (g,) = torch.autograd.grad(0.1 * reg, prompt)
            prompt.grad.add_(g)
        medians = []
        for cold in (False, True):
            times = []
            for _ in range(200):
                if cold:
                    for _ in range(20):
                        other @ other
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            medians.append(statistics.median(times) * 1e6)
        print(f"| {name} | {medians[0]:.0f} | {medians[1]:.0f} |")


def op_overhead() -> None:
    ops = torch.ops.tsloss_cuda
    args = (None, None, 1, 32, True, False, 0.0, 1.0, 1.0, 1.0, 0.0, 1)
    x = torch.randn(1, 8, 64)
    xg = x.clone().requires_grad_()
    out = ops.tsloss_forward(xg, *args)
    print("\n| one (8, 64) prompt | µs |\n|---|--:|")
    print(f"| forward | {best_us(lambda: ops.tsloss_forward(x, *args), 300):.0f} |")
    print(f"| forward with grad | {best_us(lambda: ops.tsloss_forward(xg, *args), 300):.0f} |")
    grad = lambda: torch.autograd.grad(out[0], xg, retain_graph=True)  # noqa: E731
    print(f"| backward through autograd | {best_us(grad, 300):.0f} |")


def median_ms(f, reps: int = 21) -> float:
    f()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def each_build(isas):
    """Sets each build in turn; puts back the caller's (a TSLOSS_CPU_ISA cap too) at the end."""
    before = tsloss_cuda.cpu_isa()
    try:
        for isa in isas:
            tsloss_cuda.set_cpu_isa(isa)
            yield isa
    finally:
        tsloss_cuda.set_cpu_isa(before)


def one_prompt(isas) -> None:
    """A training step's case: one prompt, B = 1, the work split among the threads."""
    print("\n| build | (N, D) | pairwise_distance, ms | vr_persistence, ms | TSLoss fwd+bwd, ms |"
          "\n|---|---|--:|--:|--:|")
    for isa in each_build(isas):
        for n, d, _ in CONFIGS:
            x = torch.randn(1, n, d, generator=torch.Generator().manual_seed(0))
            xg = x.clone().requires_grad_()

            def loss_step():
                xg.grad = None
                tsloss_cuda.loss(xg).backward()
            print(f"| {isa} | ({n}, {d}) | {median_ms(lambda: tsloss_cuda.pairwise_distance(x)):.3f}"
                  f" | {median_ms(lambda: tsloss_cuda.vr_persistence(x)):.3f}"
                  f" | {median_ms(loss_step):.3f} |")


def vr_gradient(isas) -> None:
    """vr_persistence's backward from points (cpu/edge_gradients.h) beside its forward."""
    ops = torch.ops.tsloss_cuda
    print("\n| build | (N, D, B) | forward, µs | backward op, µs | forward+backward, µs |"
          "\n|---|---|--:|--:|--:|")
    for isa in each_build(isas):
        for n, d, b in [c for n, d, b in CONFIGS for c in ((n, d, b), (n, d, 1))]:
            x = torch.randn(b, n, d, generator=torch.Generator().manual_seed(0))
            h0, e0, h1, e1, _count, _trunc = ops.vr_persistence(x, 1, False, 4 * n)
            g0, g1 = torch.ones_like(h0), torch.ones_like(h1)
            xg = x.clone().requires_grad_()

            def both():
                dgm = tsloss_cuda.vr_persistence(xg)
                torch.autograd.grad(dgm.h0.sum() + dgm.h1.sum(), xg)
            us = [median_ms(f) * 1e3 / b for f in (
                lambda: tsloss_cuda.vr_persistence(x),
                lambda: ops.vr_persistence_backward(g0, g1, x, e0, e1, False), both)]
            print(f"| {isa} | ({n}, {d}, {b}) | {us[0]:.0f} | {us[1]:.0f} | {us[2]:.0f} |")


def main(argv=None) -> None:
    # the docstring's first paragraph (its first line cut the sentence)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=positive_threads, default=2,
                    help="torch threads, 1 to 1024 (default 2)")
    ap.add_argument("--one-prompt", action="store_true",
                    help="only the one-prompt table, in every build this CPU supports")
    ap.add_argument("--vr", action="store_true",
                    help="only vr_persistence's forward and backward, in every build this CPU "
                         "supports")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one_prompt:
        one_prompt(tsloss_cuda.supported_cpu_isas())
        return
    if args.vr:
        vr_gradient(tsloss_cuda.supported_cpu_isas())
        return
    backward_alone()
    regulariser_step()
    op_overhead()
    one_prompt([tsloss_cuda.cpu_isa()])


if __name__ == "__main__":
    main()
