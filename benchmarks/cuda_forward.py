"""Time the CUDA forward (H0 + H1) against the CPU engine and giotto-ph.

    python benchmarks/cuda_forward.py [--reps 5] [--cpu-reps 5] [--configs 1,64,4096 ...]

CUDA timings: CUDA events on the current stream, recorded after a device synchronize, one
warm-up call, then the median of --reps calls. CPU engine (tsloss_cuda on CPU, all torch
threads) and giotto-ph (`ripser_parallel`, all cores, loop over clouds, precomputed float64
distances made outside the timed region): wall clock, warm-up, median of --cpu-reps.
Writes benchmarks/results/<gpu-name>-cuda-forward.json. Needs a CUDA device.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

import tsloss_cuda  # noqa: F401  (registers the ops)

ops = torch.ops.tsloss_cuda
CONFIGS = [(1, 64, 4096), (64, 64, 4096), (1024, 256, 768)]  # (B, N, D)
MAX_H1 = 64


def make_clouds(b: int, n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g, dtype=torch.float32)


def time_cuda(x: torch.Tensor, reps: int) -> list:
    ops.vr_persistence(x, 1, False, MAX_H1)  # warm-up: allocator, module load
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        ops.vr_persistence(x, 1, False, MAX_H1)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def time_wall(fn, reps: int) -> list:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def gph_runner(x: torch.Tensor):
    try:
        from gph import ripser_parallel
    except ImportError:
        return None
    mats = [m.numpy() for m in torch.cdist(x.double(), x.double())]
    threads = os.cpu_count() or 1

    def run():
        return [ripser_parallel(m, maxdim=1, metric="precomputed", n_threads=threads) for m in mats]

    return run


def check_against_cpu(gpu_out, cpu_out) -> dict:
    """Agreement of the timed CUDA result with the CPU engine (same points)."""
    h0g, _, h1g, _, ng, _ = [t.cpu() for t in gpu_out]
    h0c, _, h1c, _, nc, _ = cpu_out
    return {
        "h1_count_equal": bool(torch.equal(ng, nc)),
        "h0_max_abs_diff": float((h0g - h0c).abs().max()) if h0c.numel() else 0.0,
        "h1_max_abs_diff": float((h1g - h1c).abs().max()) if h1c.numel() else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cpu-reps", type=int, default=5)
    ap.add_argument("--configs", nargs="*", default=None, help="B,N,D triples")
    ap.add_argument("--no-gph", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("cuda_forward.py: no CUDA device")
    reps = max(5, args.reps)
    configs = [tuple(int(v) for v in c.split(",")) for c in args.configs] if args.configs else CONFIGS
    gpu = torch.cuda.get_device_name()
    records = []
    for b, n, d in configs:
        x = make_clouds(b, n, d)
        xc = x.cuda()
        t_cuda = time_cuda(xc, reps)
        cpu_out = ops.vr_persistence(x, 1, False, MAX_H1)
        t_cpu = time_wall(lambda: ops.vr_persistence(x, 1, False, MAX_H1), args.cpu_reps)
        rec = {
            "B": b, "N": n, "D": d, "max_h1": MAX_H1,
            "cuda_median_s": statistics.median(t_cuda), "cuda_times_s": t_cuda,
            "cpu_median_s": statistics.median(t_cpu), "cpu_times_s": t_cpu,
            "check": check_against_cpu(ops.vr_persistence(xc, 1, False, MAX_H1), cpu_out),
        }
        rec["speedup_vs_cpu"] = rec["cpu_median_s"] / rec["cuda_median_s"]
        run = None if args.no_gph else gph_runner(x)
        if run is not None:
            t_gph = time_wall(run, args.cpu_reps)
            rec.update(gph_median_s=statistics.median(t_gph), gph_times_s=t_gph,
                       speedup_vs_gph=statistics.median(t_gph) / rec["cuda_median_s"])
        records.append(rec)
        print(f"B={b:5d} N={n:4d} D={d:5d}  cuda {rec['cuda_median_s'] * 1e3:9.3f} ms  "
              f"cpu {rec['cpu_median_s'] * 1e3:9.3f} ms"
              + (f"  gph {rec['gph_median_s'] * 1e3:9.3f} ms" if "gph_median_s" in rec else ""),
              flush=True)
    meta = {
        "gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
        "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
        "cores": os.cpu_count(), "reps": reps, "cpu_reps": args.cpu_reps, "dtype": "float32",
    }
    os.makedirs(args.out, exist_ok=True)
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in gpu.lower()).strip("-")
    path = os.path.join(args.out, f"{stem}-cuda-forward.json")
    with open(path, "w") as fh:
        json.dump({"meta": meta, "records": records}, fh, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
