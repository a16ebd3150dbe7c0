"""TSLoss forward+backward before and after the fused op, against the forward, in one run.

    python tools/tsloss_before_after.py [--configs N,D,B ...] [--rounds 3] [--one-thread]

Per config: `vr_persistence` forward, `tsloss_cuda.loss` forward+backward (the fused op) and the
composition it replaced (tests/reference_loss.py: pairwise_distance + vr_persistence + tensor
ops), same float32 inputs, interleaved, in --rounds rounds of adaptive repetitions (>= 0.25 s
or 5 calls each). Prints µs per cloud (median over rounds, and the range) and the ratios to the
forward. `--one-thread` times one torch thread by its CPU time (time.thread_time), which a
shared machine disturbs much less than wall time; by default all threads, wall time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # profile_ops, when imported

import tsloss_cuda  # noqa: E402
from profile_ops import parse_config  # noqa: E402
from reference_loss import reference_loss  # noqa: E402
from tsloss_cuda._cli import positive_int  # noqa: E402

CONFIGS = [(16, 768, 64), (32, 2048, 64), (64, 2048, 64), (64, 4096, 16), (128, 2048, 16),
           (256, 768, 4)]


def timed(fn, clock, min_total=0.25, min_reps=5):
    fn()
    times = []
    while len(times) < min_reps or sum(times) < min_total:
        t0 = clock()
        fn()
        times.append(clock() - t0)
        if len(times) >= 200:
            break
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Each >= 1 (B = 0 divided by zero, --rounds 0 took the median of nothing: tracebacks).
    ap.add_argument("--configs", nargs="+", type=parse_config, default=CONFIGS)
    ap.add_argument("--rounds", type=positive_int, default=3)
    ap.add_argument("--one-thread", action="store_true")
    args = ap.parse_args(argv)
    clock = time.perf_counter
    if args.one_thread:
        torch.set_num_threads(1)
        clock = time.thread_time
    print(f"torch threads {torch.get_num_threads()}, clock "
          f"{'thread CPU time' if args.one_thread else 'wall'}, load average "
          f"{os.getloadavg()[0]:.2f}")
    print("| N | D | B | forward µs/cloud | TSLoss f+b after | after / fwd | TSLoss f+b before "
          "| before / fwd | before / after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, d, b in args.configs:
        x = torch.randn(b, n, d, generator=torch.Generator().manual_seed(0))
        xr = x.clone().requires_grad_()

        def fwd():
            tsloss_cuda.vr_persistence(x, maxdim=1)

        def after():
            xr.grad = None
            tsloss_cuda.loss(xr).backward()

        def before():
            xr.grad = None
            reference_loss(xr).backward()

        runs = {"fwd": [], "after": [], "before": []}
        for _ in range(args.rounds):
            for name, fn in (("fwd", fwd), ("after", after), ("before", before)):
                runs[name].append(timed(fn, clock) / b * 1e6)
        med = {k: statistics.median(v) for k, v in runs.items()}
        rng = {k: f"{min(v):.0f}–{max(v):.0f}" for k, v in runs.items()}
        print(f"| {n} | {d} | {b} | {med['fwd']:.1f} ({rng['fwd']}) | {med['after']:.1f} "
              f"({rng['after']}) | {med['after'] / med['fwd']:.2f}× | {med['before']:.1f} "
              f"({rng['before']}) | {med['before'] / med['fwd']:.2f}× | "
              f"{med['before'] / med['after']:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
