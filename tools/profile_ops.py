"""Where the time of the forward and of TSLoss goes, op by op and kernel by kernel.

    python tools/profile_ops.py [--device cuda] [--configs N,D,B ...] [--iters 5] [--out DIR]
                                [--no-trace] [--launches-only]

For each config (default: the benchmark's GPU-relevant sizes), one warm-up call, then --iters
calls of `vr_persistence` forward and --iters of `tsloss_cuda.loss` forward+backward under
torch.profiler (CPU activity, plus CUDA activity on a CUDA device, so every kernel of ours —
the default engine's pairwise_distance, topology, reduce_warp and finalize kernels, and TSLoss's
terms, edge-weight and gradient kernels — appears with its own time). Prints the top entries
by self device time (CPU: self CPU time) and writes, per config,
DIR/profile-<device>-<N>-<D>-<B>.txt and a Chrome trace (.json) for chrome://tracing (not with
--no-trace: a trace is megabytes, and tools/gpu_check.sh brings back little).

On CUDA it also reports, per config, the kernels launched by one TSLoss forward+backward
(counted with torch.profiler; the issue's budget is 8, engine included) and its time by CUDA
events (median of --iters), next to the forward's, and the names of both kernel lists;
`--launches-only` prints just that.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, List, Optional, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

import tsloss_cuda
from tsloss_cuda._cli import CLIError, check_writable
from tsloss_cuda._ops import MAX_POINTS

DEFAULT_CONFIGS = [(16, 768, 64), (64, 4096, 64), (256, 768, 4), (256, 768, 1024)]


def parse_config(text: str) -> Tuple[int, int, int]:
    try:
        n, d, b = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,D,B, got {text!r}") from None
    if min(n, d, b) < 1:  # argparse's message names --configs
        raise argparse.ArgumentTypeError(f"N, D and B must be >= 1, got {text!r}")
    if n > MAX_POINTS:  # the op's error, a traceback, came after the configs before it
        raise argparse.ArgumentTypeError(f"N = {n} points exceeds the supported maximum of "
                                         f"{MAX_POINTS}, got {text!r}")
    return n, d, b


def workload(n: int, d: int, b: int,
             device: torch.device) -> Tuple[Callable[[], None], Callable[[], None]]:
    """The two calls measured at (N, D, B): the forward on one Gaussian batch, and TSLoss
    forward+backward on a copy of it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, n, d, generator=g).to(device)
    prompts = x.clone().requires_grad_(True)

    def forward() -> None:
        tsloss_cuda.vr_persistence(x, maxdim=1)

    def loss_step() -> None:
        prompts.grad = None
        tsloss_cuda.loss(prompts).backward()

    return forward, loss_step


def launches_and_times(n: int, d: int, b: int, iters: int) -> str:
    """One line: kernels of a TSLoss forward+backward and of a forward, and their CUDA-event
    times (median of iters), at (N, D, B) on the current CUDA device."""
    forward, loss_step = workload(n, d, b, torch.device("cuda"))

    def kernels(fn) -> List[str]:
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return [e.name for e in prof.events()
                if e.device_type == torch.autograd.DeviceType.CUDA]

    def event_ms(fn) -> float:
        times = []
        for _ in range(max(iters, 3)):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]

    fwd_k, loss_k = kernels(forward), kernels(loss_step)
    fwd_ms, loss_ms = event_ms(forward), event_ms(loss_step)
    # `.backward()` on the scalar loss launches torch's own fill of its seed gradient (ones):
    # named apart from the op's kernels, and counted against the budget, as the profiler sees it.
    seed = [k for k in loss_k if "FillFunctor" in k]
    ours = len(loss_k) - len(seed)
    verdict = "met" if len(loss_k) <= 8 else "missed"
    return (f"(N, D, B) = ({n}, {d}, {b}): TSLoss forward+backward {len(loss_k)} kernels "
            f"(budget 8: {verdict}), {ours} ours and torch's {len(seed)} seed fill(s), "
            f"{loss_ms:.3f} ms; forward {len(fwd_k)} kernels, "
            f"{fwd_ms:.3f} ms (CUDA events, median of {max(iters, 3)})\n"
            f"  TSLoss kernels: {', '.join(loss_k)}\n"
            f"  forward kernels: {', '.join(fwd_k)}")


def profile_config(n: int, d: int, b: int, device: torch.device, iters: int, out_dir: str,
                   rows: int, trace: bool = True) -> str:
    forward, loss_step = workload(n, d, b, device)
    cuda = device.type == "cuda"
    forward()
    loss_step()  # warm-up: module load, allocator, thread workspaces
    if cuda:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        with torch.profiler.record_function("forward x%d" % iters):
            for _ in range(iters):
                forward()
        with torch.profiler.record_function("loss_fwd_bwd x%d" % iters):
            for _ in range(iters):
                loss_step()
        if cuda:
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=rows)
    stem = os.path.join(out_dir, f"profile-{device.type}-{n}-{d}-{b}")
    header = f"(N, D, B) = ({n}, {d}, {b}), device {device}, {iters} iterations of each\n"
    with open(stem + ".txt", "w") as f:
        f.write(header + table + "\n")
    if trace:
        prof.export_chrome_trace(stem + ".json")
    return header + table


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu or cuda (default: cuda where torch sees a CUDA device)")
    ap.add_argument("--configs", nargs="+", type=parse_config, default=DEFAULT_CONFIGS,
                    help="N,D,B triples")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rows", type=int, default=15, help="rows of each printed table")
    ap.add_argument("--out", default="profile-out")
    ap.add_argument("--no-trace", action="store_true", help="write no Chrome trace (.json)")
    ap.add_argument("--launches-only", action="store_true",
                    help="--device cuda only: just the launch counts and CUDA-event times of each "
                    "config")
    args = ap.parse_args(argv)
    if args.iters < 1:
        ap.error(f"--iters must be >= 1, got {args.iters}")
    try:  # 'gpu' was a RuntimeError traceback listing every device type torch knows
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        ap.error(f"--device {args.device}: expected cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch has no CUDA device here")
    if args.launches_only and device.type != "cuda":  # was ignored: full CPU tables instead
        ap.error("--launches-only needs --device cuda")
    try:  # a file there was a FileExistsError traceback
        check_writable(args.out, "--out")
    except CLIError as e:
        ap.error(str(e))
    os.makedirs(args.out, exist_ok=True)
    for n, d, b in args.configs:
        if device.type == "cuda":
            line = launches_and_times(n, d, b, args.iters)
            print(line, flush=True)
            with open(os.path.join(args.out, "launches.txt"), "a") as f:
                f.write(line + "\n")
            if args.launches_only:
                continue
        print(profile_config(n, d, b, device, args.iters, args.out, args.rows,
                             trace=not args.no_trace), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
