"""Forward and TSLoss times of two or more profile_ops.py runs, config by config, as ratios
against the first run: whether a setting (TSLOSS_CUDA_REDUCE_WARPS, TSLOSS_CUDA_DISTANCE_SLICES)
should become the default is then one line per size in gpu_check.sh's output.

    python tools/compare_launches.py RUN_A/launches.txt RUN_B/launches.txt [...]

Each file is a launches.txt that tools/profile_ops.py wrote on CUDA (CUDA-event medians). Prints
one line per config that every file has: "compare (N, D, B): forward a / b ms (a/b x), TSLoss
..."; a ratio above 1 means the later run was faster. Exits 1 if no config is common to all.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Dict, List, Optional, Tuple

LINE = re.compile(r"^\(N, D, B\) = \((\d+), (\d+), (\d+)\): TSLoss forward\+backward \d+ kernels"
                  r".*?, ([0-9.]+) ms; forward \d+ kernels, ([0-9.]+) ms")

Config = Tuple[int, int, int]


def read_times(path: str) -> Dict[Config, Tuple[float, float]]:
    """(N, D, B) -> (forward ms, TSLoss forward+backward ms) of one launches.txt."""
    times = {}
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if m:
                n, d, b, loss, fwd = m.groups()
                times[(int(n), int(d), int(b))] = (float(fwd), float(loss))
    return times


def compare(paths: List[str]) -> List[str]:
    runs = [read_times(p) for p in paths]
    common = [c for c in runs[0] if all(c in r for r in runs[1:])]
    lines = []
    for c in common:
        f0, l0 = runs[0][c]
        parts = [f"forward {f0:.3f}", f"TSLoss {l0:.3f}"]
        for r in runs[1:]:
            f, l = r[c]
            parts[0] += f" / {f:.3f} ms ({f0 / f:.2f}x)"
            parts[1] += f" / {l:.3f} ms ({l0 / l:.2f}x)"
        lines.append(f"compare ({c[0]}, {c[1]}, {c[2]}): {parts[0]}; {parts[1]}")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    # --help was read as a file name (or, alone, printed the usage line and exited 2)
    ap = argparse.ArgumentParser(prog="compare_launches.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="LAUNCHES_TXT",
                    help="launches.txt of tools/profile_ops.py, two or more; the first is the "
                         "baseline of the ratios")
    paths = ap.parse_args(argv).runs
    if len(paths) < 2:
        ap.error(f"needs two or more launches.txt files to compare, got {len(paths)}")
    try:
        lines = compare(paths)
    except OSError as e:  # a missing or unreadable file: a FileNotFoundError traceback before
        print(f"compare_launches.py: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    print("compare runs:", ", ".join(paths))
    for line in lines:
        print(line)
    if not lines:
        print("compare: no config common to every run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
