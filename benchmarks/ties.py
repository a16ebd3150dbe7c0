"""Tie-heavy clouds on one CPU thread: tsloss_cuda against ripser.py and giotto-ph.

Regular polygons, integer lattices and integer-valued clouds have many exactly equal lengths,
where the reduction chases pivots through long runs of equal diameters (a 512-gon's longest
column adds ~15k apparent facets). Each cloud's float64 distance matrix (ours,
``pairwise_distance``) goes to every implementation; peers' diagrams must agree with ours to
1e-6 of the diameter (ripser.py and giotto-ph compute in float32), bar for bar.

    python benchmarks/ties.py                      # all clouds, median of 3 calls each
    python benchmarks/ties.py --clouds polygon512 --reps 5 --impls ours,ripser
    python benchmarks/ties.py --save a.npz         # then, on another build: --compare a.npz

``--save``/``--compare`` keep our outputs (every field of every cloud) to check that two builds
give the same bits. Every call of ours is a fresh process-level state for the engine's
buffers (they are trimmed after each call), so the times include their growth.
"""
from __future__ import annotations

import argparse
import itertools
import os
import time
import zipfile

import numpy as np
import torch

import tsloss_cuda
from tsloss_cuda._cli import CLIError, check_writable, first_line, positive_int

FIELDS = ("h0", "h0_edges", "h1", "h1_edges", "h1_count", "truncated")


def clouds() -> dict:
    rng = np.random.default_rng(0)

    def polygon(n):
        t = 2 * np.pi * np.arange(n) / n
        return np.stack([np.cos(t), np.sin(t)], 1)

    def lattice(k, dim):
        return np.array(list(itertools.product(range(k), repeat=dim)), float)

    return {
        "polygon512": polygon(512),
        "polygon256": polygon(256),
        "lattice22^2": lattice(22, 2),
        "lattice8^3": lattice(8, 3),
        "integer500x3": rng.integers(0, 4, (500, 3)).astype(float),
        "rounded400x2": np.round(rng.standard_normal((400, 2)) * 4),
    }


def median_time(fn, reps):
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def bars(dgm):
    """Finite bars of nonzero persistence, sorted, as float64 (K, 2)."""
    a = np.asarray(dgm, dtype=np.float64).reshape(-1, 2)
    a = a[np.isfinite(a).all(axis=1) & (a[:, 1] > a[:, 0])]
    return a[np.lexsort((a[:, 1], a[:, 0]))]


def agree(ours, peer, tol):
    for k in (0, 1):
        a, b = bars(ours[k]), bars(peer[k])
        if len(a) != len(b) or (len(a) and np.abs(a - b).max() > tol):
            return False
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clouds", default=",".join(clouds()),
                    help=f"comma-separated subset of {','.join(clouds())}")
    ap.add_argument("--impls", default="ours,ripser,gph", help="comma-separated subset")
    ap.add_argument("--reps", type=positive_int, default=3)
    ap.add_argument("--save",
                    help="write our diagrams to this .npz file (its folder made if missing)")
    ap.add_argument("--compare", help="an .npz file of --save: flag clouds whose bits differ")
    args = ap.parse_args(argv)
    # Checked before the first cloud is timed (KeyError, AttributeError tracebacks before).
    for flag, given, known in (("--clouds", args.clouds, clouds()),
                               ("--impls", args.impls, ("ours", "ripser", "gph"))):
        unknown = [v for v in given.split(",") if v not in known]
        if unknown:
            ap.error(f"{flag}: unknown {', '.join(map(repr, unknown))}; known: {','.join(known)}")
    for flag in ("save", "compare"):  # np.savez appends .npz to a name without it
        path = getattr(args, flag)
        if path is not None and not path.endswith(".npz"):
            ap.error(f"--{flag} {path}: name a .npz file")
    if args.save is not None:  # its folder, made at the end; a traceback there before
        if os.path.isdir(args.save):  # np.savez's IsADirectoryError, after every cloud
            ap.error(f"--save {args.save}: a folder, not a file")
        try:
            check_writable(os.path.dirname(os.path.abspath(args.save)), "--save")
        except CLIError as e:
            ap.error(str(e))
    torch.set_num_threads(1)
    impls = args.impls.split(",")
    saved = {}
    try:
        before = dict(np.load(args.compare)) if args.compare else None
    except OSError as e:
        ap.error(f"--compare {args.compare}: {e}")
    except (ValueError, TypeError, zipfile.BadZipFile) as e:  # np.load took it for a pickle,
        # an .npy array or a broken zip: a traceback before
        ap.error(f"--compare {args.compare}: not an .npz of --save ({first_line(e)})")
    print(f"{'cloud':14} {'N':>4} {'h1':>5} " + " ".join(f"{i + ' s':>9}" for i in impls)
          + "  check")
    for name in args.clouds.split(","):
        x = torch.tensor(clouds()[name], dtype=torch.float64)
        dm = tsloss_cuda.pairwise_distance(x)[0]
        m = dm.numpy()
        tol = 1e-6 * float(m.max())
        times, notes = {}, []
        t, d = median_time(lambda: tsloss_cuda.vr_persistence(dm, distances=True), args.reps)
        ours = d.to_numpy()[0]
        if "ours" in impls:
            times["ours"] = t
        absent = []  # fields the --compare file lacks: it was saved for other clouds
        for f in FIELDS:
            key = f"{name}/{f}"
            saved[key] = getattr(d, f).numpy()
            if before is not None and key not in before:
                absent.append(f)
            elif before is not None and not np.array_equal(before[key], saved[key]):
                notes.append(f"{f} differs from {args.compare}")
        if absent:
            what = name if len(absent) == len(FIELDS) else ",".join(absent)
            notes.append(f"{what} not in {args.compare}")
        if "ripser" in impls:
            from ripser import ripser
            times["ripser"], r = median_time(
                lambda: ripser(m, maxdim=1, distance_matrix=True)["dgms"], args.reps)
            notes += [] if agree(ours, r, tol) else ["ripser.py differs"]
        if "gph" in impls:
            from gph import ripser_parallel
            times["gph"], g = median_time(
                lambda: ripser_parallel(m, maxdim=1, metric="precomputed", n_threads=1)["dgms"],
                args.reps)
            notes += [] if agree(ours, g, tol) else ["giotto-ph differs"]
        row = " ".join(f"{times[i]:9.3f}" for i in impls)
        print(f"{name:14} {len(m):4d} {int(d.h1_count[0]):5d} {row}  {'; '.join(notes) or 'ok'}")
    if args.save:
        os.makedirs(os.path.dirname(os.path.abspath(args.save)), exist_ok=True)  # as checked
        np.savez(args.save, **saved)


if __name__ == "__main__":
    main()
