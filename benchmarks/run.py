#!/usr/bin/env python
"""Benchmark tsloss_cuda against peer Vietoris–Rips persistence libraries.

One run measures, on identical seeded float32 Gaussian prompt clouds (B, N, D):

* ``ours``          ``tsloss_cuda.vr_persistence`` forward (H0+H1), all CPU threads / CUDA;
* ``ours``          ``tsloss_cuda.loss`` forward+backward (op ``loss_fwd_bwd``);
* ``ripser``        ripser.py, a Python loop over clouds;
* ``gph-1t``/``gph-all``  giotto-ph ``ripser_parallel`` with 1 thread / all cores;
* ``gudhi``         ``RipsComplex`` + ``SimplexTree(max_dimension=2).persistence()``, loop;
* ``gudhi-sklearn`` ``gudhi.sklearn.rips_persistence.RipsPersistence`` (all cores), if importable;
* ``torch-topological`` ``VietorisRipsComplex(dim=1)`` forward+backward of the sum of all finite
  persistences (op ``loss_fwd_bwd``; its ratio is to our TSLoss forward+backward).

Peers are timed both on points and on a precomputed float64 distance matrix; the faster is
kept and recorded (``input``). The matrix is computed *outside* the timed region (a
conservative choice: it favours peers; its cost is recorded as ``matrix_precompute_s``).

Each timing is the median of at least ``--reps`` repetitions after one warm-up (calls faster
than 50 ms are repeated until ~0.25 s is timed, at most 200 times, for every implementation).
Ours is timed before the peers and again after them; its median pools both, and a config whose
two timings differ by more than ``DRIFT`` is marked for a rerun (as one whose thread probe read
a busy machine).
Every result is checked against ripser.py (float64 distance matrix): bottleneck distance of H0
and H1 per cloud within 16 float32 steps of the cloud's diameter (``TOL``), the same infinite
bars (and for ours the same bar counts), else the row is ``correct: false`` and gets no ratio.
Our TSLoss row is checked by value (each cloud's loss against the one from ripser.py's
diagrams, ``LOSS_RTOL``) and by gradient (the timed backward's gradient along a seeded
direction against a float64 central difference, ``GRAD_RTOL``, at a step within which no bar
changes its edges); torch-topological's by its
diagrams. ripser.py's own matrix row is the reference itself, so it cannot fail its check.

Usage::

    python benchmarks/run.py                 # all configs of this device
    python benchmarks/run.py --quick         # a small subset, < 1 minute
    python benchmarks/run.py --gpu-configs   # only the issue's GPU sizes (tools/gpu_check.sh)
    python benchmarks/run.py --configs 16,768,64 64,2048,64 --reps 7 --impls ours,ripser
    python benchmarks/run.py --scaling       # also fit time ~ N^a, B^b, D^c for ours
    python benchmarks/run.py --isa avx2      # our CPU kernels' AVX2 build (same bits, its speed)

The JSON and markdown are rewritten after every config, so a run cut short keeps what finished
(``meta.configs_done`` of ``meta.configs_planned``); the plots are drawn at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

import tsloss_cuda
from tsloss_cuda._cli import CLIError, Parser, check_writable, positive_int, positive_threads
from tsloss_cuda._ops import MAX_POINTS

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parent
CPU_CONFIGS = [(16, 768, 64), (32, 2048, 64), (64, 2048, 64), (64, 4096, 16), (128, 2048, 16),
               (256, 768, 4)]
# The GPU sizes of the issue, written there as (B, N, D): (1, 64, 4096), (64, 64, 4096) and
# (1024, 256, 768).
GPU_EXTRA = [(64, 4096, 1), (64, 4096, 64), (256, 768, 1024)]
# Peers handle clouds independently (a loop, or parallel across clouds), so on batches larger
# than this they and the ripser.py reference check run on the first PEER_CLOUDS clouds and the
# peers' time is scaled by B / clouds, an estimate (recorded as ``peer_clouds``). Ours always
# runs the whole batch and is checked on those clouds.
PEER_CLOUDS = 64
QUICK_CONFIGS = [(16, 768, 16), (64, 256, 8)]
ALL_IMPLS = ["ours", "ripser", "gph-1t", "gph-all", "gudhi", "gudhi-sklearn", "torch-topological"]
# Diagrams pass within 16 float32 units in the last place of the cloud's diameter (~1e-6 of it):
# ours and ripser.py give the same floats (committed runs: 0.0); the worst peer, pytorch-
# topological with its float32 distances, was 6.6e-7. A looser bound (it was 1e-4) let a
# diagram missing its short bars pass: at N = 256 the median gap between distinct distances is
# 1.8e-6 of the diameter.
TOL = 16 * 2.0 ** -23
# Ours must also have exactly ripser.py's number of bars (both round distances to float32 and
# drop zero-length bars); a peer computing in float64 (GUDHI) may keep bars shorter than a float32
# step, so for peers the bottleneck bound alone decides (no bar longer than 2 * TOL goes missing).
# The loss's value: its reference from ripser.py's diagrams (connectivity + redundancy over the
# mean distance) within float32 rounding of the sums.
LOSS_RTOL = 1e-5
# The float32 gradient along one direction against a float64 central difference (step 1e-6
# of the largest coordinate, smaller where a bar changes its edges within it: difference_step):
# float32 rounding and the difference's own error are ~1e-6.
GRAD_RTOL = 1e-4
GRAD_STEP = 1e-6
# The smallest step tried, relative to the largest coordinate: float64 rounding of the loss then
# costs ~1e-6 of the derivative at the suite's sizes.
GRAD_STEP_FLOOR = 1e-9
# A peer's input kind whose warm-up is this much slower than the other's (and slower than
# SLOW_S seconds) is not repeated: its warm-up time is recorded instead.
SLOW_S = 1.0
SLOW_FACTOR = 1.5


# --------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpuinfo() -> Dict[str, str]:
    """The first CPU's family, model, stepping and flags from /proc/cpuinfo ({} without it)."""
    info: Dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("cpu family", "model", "stepping", "flags") and key not in info:
                info[key] = value.strip()
    except OSError:
        return {}
    return info


def cpu_id() -> str:
    """Family, model and stepping, and the vector extensions: CPUs sold under one model name
    (the VMs' "AMD EPYC") differ in these."""
    info = _cpuinfo()
    if not info:
        return platform.machine()
    flags = set(info.get("flags", "").split())
    vec = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return (f"family {info.get('cpu family', '?')} model {info.get('model', '?')} stepping "
            f"{info.get('stepping', '?')}; {' '.join(vec) or 'no AVX2'}")


def device_name(use_cuda: bool) -> str:
    if use_cuda:
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
    model = cpu_model().lower()
    model = re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*$", " ", model)
    words = [w for w in re.split(r"[^a-z0-9]+", model) if w][:3]
    if not any(ch.isdigit() for w in words for ch in w):
        # A model name without a number (a VM's "Intel(R) Xeon(R) Processor", "AMD EPYC") is
        # shared by CPU generations: the family and model keep one's results from overwriting
        # another's.
        info = _cpuinfo()
        if "cpu family" in info and "model" in info:
            words.append(f"f{info['cpu family']}m{info['model']}")
    return "cpu-" + "-".join(words or ["unknown"]) + f"-{os.cpu_count()}c"


def engine_version() -> dict:
    """The git commit of the checkout, the digest of the sources the loaded extension was
    compiled from (and whether the checkout still holds them) and the extension's build time."""
    info = dict(tsloss_cuda.build_info())
    info.pop("cpu_isa", None)  # recorded in meta, after --isa applies
    try:
        import subprocess
        info["git_head"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT.parent, capture_output=True,
            text=True, timeout=10).stdout.strip() or None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "csrc", "tsloss_cuda"], cwd=ROOT.parent,
            capture_output=True, text=True, timeout=10)
        # Not a checkout, or no git: unknown, not clean.
        info["git_dirty_csrc"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except Exception:
        pass
    try:
        import tsloss_cuda._C as ext
        info["extension_mtime"] = time.strftime("%Y-%m-%dT%H:%M:%S",
                                                time.localtime(os.path.getmtime(ext.__file__)))
    except Exception:
        pass
    return info


def make_clouds(n: int, d: int, b: int, seed: int = 0) -> torch.Tensor:
    """Gaussian-ish prompt clouds: a shared random mean direction plus isotropic noise."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + n * 7919 + d * 31 + b)
    mean = torch.randn(1, 1, d, generator=g) * 0.5
    return (mean + torch.randn(b, n, d, generator=g)).float().contiguous()


# --------------------------------------------------------------------------------------------
# correctness
# --------------------------------------------------------------------------------------------
def _finite(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
    return a[np.isfinite(a[:, 1])]


def _ninf(a) -> int:
    a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
    return int((~np.isfinite(a[:, 1])).sum())


def bottleneck(a: np.ndarray, b: np.ndarray) -> float:
    import gudhi
    if len(a) == 0 and len(b) == 0:
        return 0.0
    return float(gudhi.bottleneck_distance(a, b, 0.0))


def check_diagrams(ref, got, diam, reports_inf=True, same_count=False):
    """(passes, worst bottleneck / diameter over clouds and dimensions): per cloud and dimension
    the bottleneck distance of the finite bars within TOL of the diameter, the infinite bars
    equal in number (``reports_inf``) and, with ``same_count``, the finite ones too."""
    worst = 0.0
    ok = len(ref) == len(got)
    for r, g, dm in zip(ref, got, diam):
        for dim in (0, 1):
            if reports_inf and _ninf(r[dim]) != _ninf(g[dim]):
                ok = False
                worst = math.inf
            fr, fg = _finite(r[dim]), _finite(g[dim])
            if same_count and len(fr) != len(fg):
                ok = False
            e = bottleneck(fr, fg) / max(dm, 1e-30)
            worst = max(worst, e)
    return bool(ok and worst <= TOL), float(worst)


def reference_loss(ref, dm) -> np.ndarray:
    """TSLoss per cloud with the default options, from ripser.py's diagrams and float64
    distance matrices ``dm`` (k, N, N): mean H0 death plus the sum of H1 persistences, both over
    the mean distance between distinct points (H0's deaths summed over N - 1: ripser.py drops
    the zero-length bars of duplicate points)."""
    out = []
    for r, m in zip(ref, dm):
        n = len(m)
        scale = m.sum() / (n * (n - 1)) if n > 1 else 1.0
        h0, h1 = _finite(r[0]), _finite(r[1])
        conn = h0[:, 1].sum() / max(n - 1, 1) / scale
        out.append(conn + (h1[:, 1] - h1[:, 0]).sum() / scale)
    return np.asarray(out, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# implementations: each returns (run_fn, result_to_diagrams) per input kind
# --------------------------------------------------------------------------------------------
class Inputs:
    def __init__(self, x: torch.Tensor):
        self.x = x
        self.np64 = x.double().numpy()
        xd = x.double()
        self.dm = torch.cdist(xd, xd).numpy()
        # exact symmetric, zero diagonal
        self.dm = 0.5 * (self.dm + self.dm.transpose(0, 2, 1))
        for m in self.dm:
            np.fill_diagonal(m, 0.0)
        self.diam = self.dm.reshape(len(self.dm), -1).max(axis=1)
        # What a user pays to hand a peer a float64 matrix, by the fastest of the usual ways
        # (all threads): torch.cdist is slow on some CPUs, where the Gram form that sklearn (and
        # so ripser.py on points) uses is several times faster. Its fastest repetition, not the
        # median: on the 2-core VM the Gram form took 5.2 ms in some runs of the suite and a
        # median 9.6 ms in others, which would have lifted our "matrix timed" ratio by a third.
        # A lower bound on the user's cost keeps that column from flattering us.
        self.dm_times = {name: min(time_fn(fn, 5)[2]) for name, fn in matrix_builders(x).items()}
        self.dm_method = min(self.dm_times, key=self.dm_times.__getitem__)
        self.dm_time = self.dm_times[self.dm_method]


def matrix_builders(x: torch.Tensor) -> dict:
    """Ways to build the batch's float64 distance matrices from points, by name."""
    xd = x.double()
    xn = xd.numpy()

    def gram():  # sklearn's euclidean_distances recipe, batched
        sq = np.einsum("bij,bij->bi", xn, xn)
        g = sq[:, :, None] + sq[:, None, :] - 2.0 * np.matmul(xn, xn.transpose(0, 2, 1))
        return np.sqrt(np.maximum(g, 0.0))

    return {"torch.cdist": lambda: torch.cdist(xd, xd), "numpy Gram": gram}


def peer_ripser(inp: Inputs, kind: str):
    import ripser
    if kind == "points":
        def run():
            return [ripser.ripser(p, maxdim=1)["dgms"] for p in inp.np64]
    else:
        def run():
            return [ripser.ripser(m, maxdim=1, distance_matrix=True)["dgms"] for m in inp.dm]
    return run, lambda out: out


def peer_gph(inp: Inputs, kind: str, threads: int):
    from gph import ripser_parallel
    if kind == "points":
        def run():
            return [ripser_parallel(p, maxdim=1, n_threads=threads)["dgms"] for p in inp.np64]
    else:
        def run():
            return [ripser_parallel(m, maxdim=1, metric="precomputed", n_threads=threads)["dgms"]
                    for m in inp.dm]
    return run, lambda out: out


def peer_gudhi(inp: Inputs, kind: str):
    import gudhi

    def one(rc):
        st = rc.create_simplex_tree(max_dimension=2)
        st.persistence(homology_coeff_field=2, min_persistence=0.0)
        return [st.persistence_intervals_in_dimension(0), st.persistence_intervals_in_dimension(1)]
    if kind == "points":
        def run():
            return [one(gudhi.RipsComplex(points=p)) for p in inp.np64]
    else:
        def run():
            return [one(gudhi.RipsComplex(distance_matrix=m)) for m in inp.dm]
    return run, lambda out: out


def peer_gudhi_sklearn(inp: Inputs, kind: str):
    from gudhi.sklearn.rips_persistence import RipsPersistence
    itype = "point cloud" if kind == "points" else "full distance matrix"
    rp = RipsPersistence(homology_dimensions=[0, 1], input_type=itype, homology_coeff_field=2,
                         n_jobs=os.cpu_count())
    data = list(inp.np64) if kind == "points" else list(inp.dm)

    def run():
        return rp.fit_transform(data)
    return run, lambda out: out


def peer_torch_topological(inp: Inputs, kind: str):
    from torch_topological.nn import VietorisRipsComplex
    if kind not in ("points", ONE_THREAD):
        # fwd+bwd must reach the points, as ours does: a precomputed matrix would skip the
        # distance computation and its backward, so only points are timed.
        raise NotImplementedError("torch-topological is timed on points only")
    vr = VietorisRipsComplex(dim=1)
    xr = inp.x.clone().requires_grad_(True)

    def once():
        xr.grad = None  # a fresh backward each rep, without timing a copy of the points
        out = vr(xr)
        total = sum((info.diagram[:, 1] - info.diagram[:, 0]).sum()
                    for cloud in out for info in cloud)
        total.backward()
        return out, float(total.detach())

    def run():
        # Its torch calls on every thread, or on one: many small tensor ops per cloud, which
        # threads can slow down (1 thread was 58x faster on a 2-core VM with a busy core).
        with torch_threads(1 if kind == ONE_THREAD else None):
            return once()

    def to_dgms(res):
        out, _ = res
        return [[c[0].diagram.detach().double().numpy(), c[1].diagram.detach().double().numpy()]
                for c in out]
    return run, to_dgms


ONE_THREAD = "points, 1 thread"
# The input kinds each peer is timed on; the fastest that passes the check is its time.
KINDS = {"torch-topological": ("points", ONE_THREAD)}
PEERS = {
    "ripser": (peer_ripser, "forward"),
    "gph-1t": (lambda i, k: peer_gph(i, k, 1), "forward"),
    "gph-all": (lambda i, k: peer_gph(i, k, os.cpu_count() or 1), "forward"),
    "gudhi": (peer_gudhi, "forward"),
    "gudhi-sklearn": (peer_gudhi_sklearn, "forward"),
    "torch-topological": (peer_torch_topological, "loss_fwd_bwd"),
}


def available(impl: str) -> bool:
    try:
        if impl == "ours":
            import tsloss_cuda  # noqa: F401
        elif impl == "ripser":
            import ripser  # noqa: F401
        elif impl.startswith("gph"):
            import gph  # noqa: F401
        elif impl == "gudhi":
            import gudhi  # noqa: F401
        elif impl == "gudhi-sklearn":
            import gudhi.sklearn.rips_persistence  # noqa: F401
        elif impl == "torch-topological":
            import torch_topological.nn  # noqa: F401
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------
# Fast calls are repeated until about MIN_TOTAL_S has been timed (at most MAX_REPS), the same
# rule for every implementation: five back-to-back calls of a sub-millisecond op mostly measure
# cold caches and waking threads.
MIN_TOTAL_S = 0.25
MAX_REPS = 200


def parallel_speedup() -> float:
    """How much faster torch's threads run a plain parallel op than one thread, now: about the
    thread count on an idle machine, below 1 when another process holds a core (each thread
    then waits for the busy one at every barrier: a 2-core VM with one core taken ran torch.exp
    2.6x and our pairwise_distance 80x slower on two threads than on one). The load average
    cannot tell: it lags by minutes and counts this suite's own earlier configs."""
    x = torch.rand(1 << 22)
    y = torch.empty_like(x)
    best = {}
    for n in (1, torch.get_num_threads()):
        with torch_threads(n):
            torch.exp(x, out=y)
            best[n] = min(time_fn(lambda: torch.exp(x, out=y), 5, adaptive=False)[2])
    return best[1] / best[torch.get_num_threads()]


# Below this, a config's times say more about the other process than about the code.
BUSY_SPEEDUP = 1.2
# Ours is timed before and after the peers (median after / median before); past this ratio either
# way the machine's speed changed in between.
DRIFT = 1.25


def time_fn(run, reps: int, cuda: bool = False, adaptive: bool = True):
    """(warm-up result, warm-up seconds, list of rep seconds): at least ``reps`` reps, more for
    fast calls when ``adaptive``."""
    def sync():
        if cuda:
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    first = run()
    sync()
    warm = time.perf_counter() - t0
    if adaptive and reps > 0:
        reps = max(reps, min(MAX_REPS, int(MIN_TOTAL_S / max(warm, 1e-6))))
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            run()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    return first, warm, times


def ours_runs(x: torch.Tensor, cuda: bool):
    import tsloss_cuda
    x = x.cuda() if cuda else x

    def fwd():
        return tsloss_cuda.vr_persistence(x, maxdim=1)

    xr = x.detach().clone().requires_grad_(True)

    def loss():
        xr.grad = None  # a fresh backward each rep, without timing a copy of the points
        v = tsloss_cuda.loss(xr)
        v.backward()
        return float(v.detach()) if not cuda else v.detach()

    def per_cloud():  # untimed, for the check: the same batch, the loss of each cloud
        return tsloss_cuda.loss(x, reduction="none").detach().double().cpu().numpy()

    def grad_err() -> tuple:
        """Untimed: gradient_check of the timed backward's gradient (left in ``xr.grad`` by the
        last rep)."""
        if xr.grad is None:
            return math.inf, math.nan, 0
        return gradient_check(xr.grad, x.detach())
    return fwd, loss, per_cloud, grad_err


def gradient_check(grad: torch.Tensor, x: torch.Tensor) -> tuple:
    """TSLoss's gradient ``grad`` at ``x`` along a seeded direction u, against the float64
    loss's central difference along u: the backward against the forward, whose value is checked
    against ripser.py. u is zero on the clouds whose bars x's dtype pairs with other edges than
    float64 does (distances that tie in float32 only): there the float32 gradient is right for
    the float32 loss and differs from the float64 one (10 of the 1,024 clouds at
    (256, 768, 1024) read 4e-4 together). Returns the relative error, the step (relative to the
    largest coordinate) and how many clouds were left out."""
    x64 = x.double()
    u = torch.randn(x64.shape, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64).to(x64.device)
    want = _pairing(x64)  # once: a float64 persistence of the whole batch
    apart = paired_apart(x, x64, want)
    u[apart.to(u.device)] = 0.0
    err, step = directional_error(grad, x64, u, want)
    return err, step, int(apart.sum())


def _pairing(x64: torch.Tensor) -> tuple:
    d = tsloss_cuda.vr_persistence(x64, maxdim=1)
    return d.h0_edges, d.h1_edges, d.h1_count


def paired_apart(x: torch.Tensor, x64: torch.Tensor, want: Optional[tuple] = None) -> torch.Tensor:
    """``(B,)`` bool: clouds whose bars x (its own dtype) pairs with other edges than x64
    does, each cloud's H0 and H1 edge rows compared as sets (bars of equal persistence may
    come in either order). ``want``: x64's ``_pairing``, where the caller has it."""
    a, b = _pairing(x), (want if want is not None else _pairing(x64))

    def rows(e: torch.Tensor) -> list:
        return [sorted(map(tuple, c.tolist())) for c in e.cpu()]

    out = [not (ca == cb and ha == hb and na == nb)
           for ca, cb, ha, hb, na, nb in zip(rows(a[0]), rows(b[0]), rows(a[1]), rows(b[1]),
                                              a[2].tolist(), b[2].tolist())]
    return torch.tensor(out, dtype=torch.bool)


def difference_step(x64: torch.Tensor, u: torch.Tensor, want: Optional[tuple] = None,
                    scale: Optional[float] = None) -> float:
    """The step of the central difference along ``u``, relative to the largest coordinate:
    GRAD_STEP, divided by ten (down to GRAD_STEP_FLOOR) while x +- h u pairs some bar by other
    edges than x does. TSLoss is smooth only between such changes; a difference across one
    measures a jump, not the derivative (at (128, 2048, 16) one cloud's H1 edges changed within
    1e-6, and a correct backward read 0.5 % off). ``want`` and ``scale``: x64's ``_pairing``
    and largest coordinate, where the caller has them."""
    if scale is None:
        scale = float(x64.abs().max())
    if want is None:
        want = _pairing(x64)
    rel = GRAD_STEP
    while rel > GRAD_STEP_FLOOR * 1.5:
        h = rel * scale
        if all(all(torch.equal(a, b) for a, b in zip(want, _pairing(x64 + s * h * u)))
               for s in (1.0, -1.0)):
            break
        rel /= 10
    return rel


def directional_error(grad: torch.Tensor, x64: torch.Tensor, u: torch.Tensor,
                      want: Optional[tuple] = None) -> tuple:
    """|grad . u - central difference of tsloss_cuda.loss along u| / |difference|, in float64,
    at difference_step's step; returns (that error, the step). ``want``: as difference_step's."""
    scale = float(x64.abs().max())
    rel = difference_step(x64, u, want, scale)
    h = rel * scale
    with torch.no_grad():
        fd = float(tsloss_cuda.loss(x64 + h * u) - tsloss_cuda.loss(x64 - h * u)) / (2 * h)
    an = float((grad.double() * u).sum())
    return abs(an - fd) / max(abs(fd), 1e-30), rel


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """torch's thread count set to ``n`` inside the block (None: unchanged). ``--threads``
    applies to ours only: pytorch-topological's torch calls and the matrix builders keep
    every thread, as the peers' users would."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bench_config(cfg, impls, reps, cuda, progress=None, peer_clouds=PEER_CLOUDS,
                 threads: Optional[int] = None):
    import ripser
    n, d, b = cfg
    dev = "cuda" if cuda else "cpu"
    x = make_clouds(n, d, b)
    k = min(b, peer_clouds) if peer_clouds else b
    inp = Inputs(x[:k])  # what peers and the reference see
    scale = b / k        # peers' time for the whole batch = time on k clouds x scale
    ref = [ripser.ripser(m, maxdim=1, distance_matrix=True)["dgms"] for m in inp.dm]
    recs = []
    speedup = round(parallel_speedup(), 2)

    def base(impl, op):
        # the 1-minute load average when this measurement started, and the config's probe of
        # whether the threads had their cores (other jobs skew timings)
        return dict(impl=impl, device=dev, N=n, D=d, B=b, op=op, reps=reps,
                    load_1m=round(os.getloadavg()[0], 2), parallel_speedup=speedup)

    if "ours" in impls:
        with torch_threads(threads):
            fwd, loss, per_cloud, grad_err = ours_runs(x, cuda)
            # One untimed call of each first, as the peers get: time_fn sizes its repetitions
            # from its own first call, and a cold one (a CUDA context, first-touch pages) asked
            # too few.
            fwd()
            loss()
            if cuda:
                torch.cuda.synchronize()
            first, warm, times = time_fn(fwd, reps, cuda)
            ok, err = check_diagrams(ref, first.to_numpy()[:k], inp.diam, same_count=True)
            # Only the first k clouds are checked against ripser; a cloud past them whose H1
            # overflowed its capacity would otherwise pass as correct.
            truncated = bool(first.truncated.any())
            fwd_rec = r = base("ours", "forward")
            r.update(median_s=statistics.median(times), warmup_s=warm, times_s=times,
                     correct=ok and not truncated, reps=len(times),
                     max_bottleneck_over_diam=err, input="points", truncated=truncated)
            recs.append(r)
            if progress:
                progress.update(1)
            first, warm, times = time_fn(loss, reps, cuda)
            val = float(first)
            # Each cloud's loss against its reference from ripser.py's diagrams, and the timed
            # call's mean against the whole batch's.
            each = per_cloud()
            want = reference_loss(ref, inp.dm)
            loss_err = float(np.max(np.abs(each[:k] - want) / np.maximum(np.abs(want), 1e-30)))
            mean_err = abs(val - each.mean()) / max(abs(each.mean()), 1e-30)
            g_err, g_step, g_apart = grad_err()
            loss_rec = r = base("ours", "loss_fwd_bwd")
            r.update(median_s=statistics.median(times), warmup_s=warm, times_s=times,
                     reps=len(times), loss_value=val, input="points", truncated=truncated,
                     max_loss_rel_err=loss_err, grad_rel_err=g_err, grad_step=g_step,
                     grad_clouds_left_out=g_apart,
                     correct=bool(math.isfinite(val) and loss_err <= LOSS_RTOL
                                  and mean_err <= LOSS_RTOL and g_err <= GRAD_RTOL
                                  and not truncated))
            recs.append(r)
            if progress:
                progress.update(1)
        ours_timed = [(fwd_rec, fwd), (loss_rec, loss)]
    for impl in impls:
        if impl == "ours":
            continue
        make, op = PEERS[impl]
        dev_peer = "cpu"
        cand: dict[str, tuple | Exception] = {}
        for kind in KINDS.get(impl, ("points", "matrix")):
            try:
                run, to_dgms = make(inp, kind)
                first, warm, _ = time_fn(run, 0)
                cand[kind] = (run, to_dgms, first, warm)
            except NotImplementedError:  # a kind the peer is not timed on, by design: no error
                continue
            except Exception as e:  # an input kind a peer does not support
                cand[kind] = e
        good = {k: v for k, v in cand.items() if not isinstance(v, Exception)}
        errors = {k: repr(v) for k, v in cand.items() if isinstance(v, Exception)}
        r = base(impl, op)
        r["device"] = dev_peer
        results = {}
        if good:
            fastest_warm = min(v[3] for v in good.values())
        for kind, (run, to_dgms, first, warm) in good.items():
            if warm > SLOW_S and warm > SLOW_FACTOR * fastest_warm:
                results[kind] = (first, to_dgms, [warm], True)  # clearly slower: not repeated
                continue
            try:
                _, _, times = time_fn(run, reps)
            except Exception as e:  # a peer failing on a later call: that kind errored
                errors[kind] = repr(e)
                continue
            results[kind] = (first, to_dgms, times, False)
        if errors:
            r["errors"] = errors  # per input kind, whether or not another kind ran
        if not results:
            r.update(correct=False, median_s=None,
                     error="; ".join(f"{k}: {v}" for k, v in errors.items())
                     or "no input kind is timed for this peer")
            r["note"] = f"ERROR: {r['error']}"
            recs.append(r)
            if progress:
                progress.update(1)
            continue
        checks = {}
        for c, (first, to_dgms, _, _) in results.items():
            ok, err = check_diagrams(ref, to_dgms(first), inp.diam,
                                     reports_inf=impl != "torch-topological")
            if impl == "torch-topological":
                ok = ok and math.isfinite(first[1])
            checks[c] = (ok, err)
        # The fastest kind that passed (a faster kind that failed would make the whole peer
        # WRONG and drop it from the best-peer verdicts), else the fastest.
        passed = [c for c in results if checks[c][0]] or list(results)
        kind = min(passed, key=lambda c: statistics.median(results[c][2]))
        first, to_dgms, times, _ = results[kind]
        ok, err = checks[kind]
        if impl == "torch-topological":
            r["loss_value"] = first[1]
        r.update(median_s=scale * statistics.median(times), times_s=[scale * t for t in times],
                 correct=ok,
                 reps=len(times), max_bottleneck_over_diam=err, input=kind, peer_clouds=k,
                 alternatives={c: dict(median_s=scale * statistics.median(v[2]), reps=len(v[2]),
                                       warmup_only=v[3], correct=checks[c][0])
                               for c, v in results.items()},
                 matrix_precompute_s=scale * inp.dm_time,
                 matrix_precompute_method=inp.dm_method)
        recs.append(r)
        if progress:
            progress.update(1)
    if "ours" in impls and len(impls) > 1:
        # Ours again after the peers (A-B-A): a machine whose speed changed while the peers ran
        # shows as drift between ours' two timings, instead of skewing the ratios unseen.
        with torch_threads(threads):
            for r, run in ours_timed:
                _, _, again = time_fn(run, reps, cuda)
                r.update(times_after_s=again,
                         drift=statistics.median(again) / statistics.median(r["times_s"]),
                         median_s=statistics.median(r["times_s"] + again),
                         reps=len(r["times_s"]) + len(again))
    derive(recs)
    return recs


def derive(recs: list) -> list:
    """The fields derived from the timings, in place, for the live run and ``--render`` alike:
    ``per_cloud_us``, ``ratio_to_ours`` (peer median / our median for the same op and config;
    None unless both passed their checks) and, for a peer fastest on the matrix,
    ``ratio_to_ours_incl_matrix``."""
    ours = {(r["N"], r["D"], r["B"], r["op"]): r for r in recs if r["impl"] == "ours"}
    for r in recs:
        if r.get("median_s") is None:
            continue
        r["per_cloud_us"] = r["median_s"] / r["B"] * 1e6
        o = ours.get((r["N"], r["D"], r["B"], r["op"]))
        r["ratio_to_ours"] = (r["median_s"] / o["median_s"]
                              if o and o.get("median_s") and r["correct"] and o["correct"]
                              else None)
        r.pop("ratio_to_ours_incl_matrix", None)
        if o is not None and r["ratio_to_ours"] is not None and r.get("input") == "matrix":
            r["ratio_to_ours_incl_matrix"] = incl_matrix_ratio(r, o["median_s"])
        if not r["correct"]:
            r["note"] = "WRONG: result failed the check; not reported as a speed"
        elif str(r.get("note", "")).startswith("WRONG"):
            del r["note"]
    return recs


def incl_matrix_ratio(r: dict, ours_s: float) -> float:
    """Peer / ours if the peer, fastest on a precomputed matrix, had to compute that matrix in
    the timed region: the matrix's cost added, unless the peer's own run on the points was
    faster still (then that run)."""
    costs = [r["median_s"] + r["matrix_precompute_s"]]
    points = r.get("alternatives", {}).get("points")
    # The points run counts unless its diagrams failed the check. Files from before the check
    # was recorded per kind (the H200's) carry none: counted, since a peer's time can only
    # lower our ratio.
    if points and points.get("median_s") is not None and points.get("correct", True):
        costs.append(points["median_s"])
    return min(costs) / ours_s


# --------------------------------------------------------------------------------------------
# scaling
# --------------------------------------------------------------------------------------------
SCALING_SWEEPS = {
    "N": [(n, 768, 16) for n in (16, 32, 64, 128, 256)],
    "B": [(64, 768, b) for b in (4, 16, 64, 256)],
    "D": [(64, d, 16) for d in (64, 256, 1024, 4096)],
}


def scaling(reps, cuda, progress_cls, threads: Optional[int] = None, sweeps=None):
    """Ours' forward over one size at a time, and the fitted exponent of each axis. Each point
    starts with the configs' thread probe (:func:`parallel_speedup`): a point that read below
    :data:`BUSY_SPEEDUP` is ``busy``, and so is its axis (its exponent mixes two speeds)."""
    import tsloss_cuda
    sweeps = SCALING_SWEEPS if sweeps is None else sweeps
    out = {}
    bar = progress_cls(total=sum(len(v) for v in sweeps.values()), desc="scaling")
    for axis, cfgs in sweeps.items():
        pts = []
        for (n, d, b) in cfgs:
            x = make_clouds(n, d, b)
            x = x.cuda() if cuda else x
            speedup = round(parallel_speedup(), 2)
            with torch_threads(threads):
                _, _, times = time_fn(lambda: tsloss_cuda.vr_persistence(x, maxdim=1), reps,
                                      cuda)
            pts.append(dict(N=n, D=d, B=b, median_s=statistics.median(times),
                            parallel_speedup=speedup,
                            busy=bool(speedup < BUSY_SPEEDUP and (os.cpu_count() or 1) > 1)))
            bar.update(1)
        key = axis
        xs = np.log([p[key] for p in pts])
        ys = np.log([p["median_s"] for p in pts])
        slope = float(np.polyfit(xs, ys, 1)[0])
        out[axis] = dict(points=pts, exponent=slope, busy=any(p["busy"] for p in pts))
    bar.close()
    return out


# --------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------
def fmt_t(s):
    if s is None:
        return "–"
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def busy_configs(records, meta) -> list:
    """(N, D, B, probe) of the configs whose thread probe read below :data:`BUSY_SPEEDUP`."""
    return sorted({(r["N"], r["D"], r["B"], r["parallel_speedup"]) for r in records
                   if r.get("parallel_speedup", BUSY_SPEEDUP) < BUSY_SPEEDUP
                   and meta.get("cores", 1) > 1})


def unsteady_configs(records) -> list:
    """(N, D, B, drift) of the configs where ours' time before the peers and after them differ
    by more than :data:`DRIFT` either way (the largest drift of the config's ops)."""
    worst: dict[tuple, float] = {}
    for r in records:
        d = r.get("drift")
        if r["impl"] == "ours" and d is not None and not 1 / DRIFT <= d <= DRIFT:
            k = (r["N"], r["D"], r["B"])
            worst[k] = max(worst.get(k, 1.0), d, key=lambda v: max(v, 1 / v))
    return sorted(k + (d,) for k, d in worst.items())


def shown(value: float, limit: float, at_least: bool) -> str:
    """``value`` with 2 decimals, or as many more as it takes for the number shown to agree with
    the verdict ``value >= limit`` (``at_least``) or ``value <= limit``: 2.0005 against "≤ 2" is
    missed, and "2.00" would read as met."""
    met = value >= limit if at_least else value <= limit
    for digits in range(2, 13):
        text = f"{value:.{digits}f}"
        r = float(text)
        if (r >= limit if at_least else r <= limit) == met:
            return text
    return repr(value)


def goals(records, busy=frozenset(), unsteady=frozenset()) -> list:
    """The issue's speed goals checked against this run's ratios, one line per config.
    ``busy``: the configs (N, D, B) whose thread probe read low; ``unsteady``: those where ours'
    time drifted while the peers ran. Their verdicts are marked."""
    keys = sorted({(r["N"], r["D"], r["B"]) for r in records})
    gpu = any(r["device"] == "cuda" for r in records if r["impl"] == "ours")
    ran = {(r["N"], r["D"], r["B"]) for r in records if r["impl"] == "ours"}
    if not ran:  # every goal is a ratio to ours
        return ["", "## Goals", "", "Not checked: ours was not run (`--impls` without `ours`), "
                "so no peer has a ratio to ours."]
    # As markdown()'s introduction says it: older runs timed torch.cdist alone.
    builder = ("the faster of torch.cdist and a numpy Gram form, float64"
               if any(r.get("matrix_precompute_method") for r in records) else
               "a float64 torch.cdist, the only builder this run timed")
    lines = ["", "## Goals", "",
             "Forward: ours ≥ 2× the best peer at every config, ≥ 10× at N ≤ 32, checked both "
             f"with the peer's distance matrix free and with its cost added ({builder}; or the "
             "peer's run on the points, where faster). "
             # The GPU factor is issue 6's goal for a GPU host; 3x on the CPU is issue 19's.
             f"TSLoss forward+backward: ≥ {100 if gpu else 3}× torch-topological, and at most "
             "2× our forward (1.5× where N ≥ 128) in the same run.", "",
             "| N | D | B | forward, matrix free | forward, matrix timed | TSLoss fwd+bwd | "
             "TSLoss fwd+bwd / forward |",
             "|---|---|---|---|---|---|---|"]

    forward_peers = [i for i in ALL_IMPLS if PEERS.get(i, (None, ""))[1] == "forward"]
    partial = {}  # config -> the forward peers its verdicts leave out

    def verdict(ratio, need, of=""):
        if ratio is None:
            return "not measured"
        return (f"{shown(ratio, need, True)}× "
                f"({'met' if ratio >= need else f'missed, needs {need}×'}{of})")

    def ours_wrong(k, op):  # ours failed its check: no peer has a ratio, and none is to blame
        return any(r["impl"] == "ours" and r["op"] == op and not r["correct"]
                   and (r["N"], r["D"], r["B"]) == k for r in records)

    for k in keys:
        rs = [r for r in records if (r["N"], r["D"], r["B"]) == k
              and r["impl"] != "ours" and r.get("ratio_to_ours") is not None]
        fwd = [r for r in rs if r["op"] == "forward"]
        # "The best peer" is the best of those that ran and passed: say so where some did not.
        if k not in ran:
            lines.append(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(["ours not run"] * 4)
                         + " |")
            continue
        missing = [i for i in forward_peers if i not in {r["impl"] for r in fwd}]
        of = f"; {len(forward_peers) - len(missing)} of {len(forward_peers)} peers" if missing else ""
        if missing and not ours_wrong(k, "forward"):
            partial[k] = missing
        need = 10 if k[0] <= 32 else 2
        free = min((r["ratio_to_ours"] for r in fwd), default=None)
        timed = min((r.get("ratio_to_ours_incl_matrix", r["ratio_to_ours"]) for r in fwd),
                    default=None)
        loss = min((r["ratio_to_ours"] for r in rs if r["op"] == "loss_fwd_bwd"), default=None)
        ours = {r["op"]: r.get("median_s") for r in records if r["impl"] == "ours"
                and (r["N"], r["D"], r["B"]) == k and r["correct"]}
        cap = 1.5 if k[0] >= 128 else 2.0
        over = (ours["loss_fwd_bwd"] / ours["forward"]
                if ours.get("loss_fwd_bwd") and ours.get("forward") else None)
        own = ("not measured" if over is None else
               f"{shown(over, cap, False)}× "
               f"({'met' if over <= cap else f'missed, needs ≤ {cap}×'})")
        cells = [verdict(free, need, of), verdict(timed, need, of),
                 verdict(loss, 100 if gpu else 3), own]
        for i, op in ((0, "forward"), (1, "forward"), (2, "loss_fwd_bwd")):
            if ours_wrong(k, op):
                cells[i] = "ours WRONG"
        if ours_wrong(k, "forward") or ours_wrong(k, "loss_fwd_bwd"):
            cells[3] = "ours WRONG"
        why = "busy" if k in busy else "unsteady" if k in unsteady else None
        if why:  # a verdict from times another process or a changing machine skewed
            cells = [c if c in ("not measured", "ours WRONG") else c + f", {why}: rerun"
                     for c in cells]
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(cells) + " |")
    left_out: dict[str, list] = {}  # what is missing and why -> the configs
    for k, missing in partial.items():
        reasons = []
        for impl in missing:
            rec = [r for r in records if r["impl"] == impl and (r["N"], r["D"], r["B"]) == k
                   and r["op"] == "forward"]
            # WRONG only for a peer whose own check failed; a peer that passed but has no ratio
            # (ours had no forward time here) is not to blame
            state = ("not run" if not rec else "ERROR" if rec[0].get("error")
                     else "WRONG" if not rec[0]["correct"] else "no ratio to ours")
            reasons.append(f"{impl} ({state})")
        left_out.setdefault(", ".join(reasons), []).append(k)
    for why, ks in left_out.items():
        where = "; ".join("%d,%d,%d" % k for k in ks)
        lines.append(f"\nN,D,B = {where}: the forward verdicts compare against the peers that "
                     f"ran and passed, not against {why}.")
    if gpu:  # the GPU issues' targets for an H200 (18: the engine, 19: TSLoss), as (N, D, B)
        def ours_s(k, op):
            rs = [r for r in records if r["impl"] == "ours" and r["op"] == op and r["correct"]
                  and (r["N"], r["D"], r["B"]) == k and r.get("median_s") is not None]
            return rs[0]["median_s"] if rs else None

        lines += ["", "| GPU target | measured | verdict |", "|---|---|---|"]
        for k, op, limit in [((64, 4096, 1), "forward", 0.15e-3),
                             ((256, 768, 1024), "forward", 20e-3),
                             ((64, 4096, 64), "loss_fwd_bwd", 0.25e-3)]:
            got = ours_s(k, op)
            lines.append(f"| {op} at N,D,B = {'%d,%d,%d' % k} ≤ {fmt_t(limit)} | "
                         f"{'not measured' if got is None else fmt_t(got)} | "
                         f"{'' if got is None else 'met' if got <= limit else 'missed'} |")
        one, many = ours_s((64, 4096, 1), "forward"), ours_s((64, 4096, 64), "forward")
        if one and many:
            lines.append(f"| forward t(64,4096,64) / t(64,4096,1) ≤ 3 | {many / one:.2f} | "
                         f"{'met' if many / one <= 3 else 'missed'} |")
    return lines


def markdown(records, meta, scal) -> str:
    impls = [i for i in ALL_IMPLS if any(r["impl"] == i for r in records)]
    # What this run did, from its own records (a file re-rendered later keeps its rules).
    tol = meta.get("tolerance_bottleneck_over_diameter", TOL)
    checked_loss = any("max_loss_rel_err" in r for r in records)
    checked_grad = any("grad_step" in r for r in records)
    builders = ("the faster of a batched float64 torch.cdist and a batched float64 numpy Gram "
                "form (sklearn's recipe) of the points, at its fastest repetition (a lower bound "
                "on what a user pays)"
                if any(r.get("matrix_precompute_method") for r in records) else
                "a batched float64 torch.cdist of the points (the only builder this run timed)")
    engine = meta.get("engine") or {}
    lines = [f"# Benchmarks on {meta['device']}", "",
             f"{meta['cpu']}, {meta['cores']} cores, torch {meta['torch']} "
             f"({meta['threads']} threads), our CPU kernels' build: "
             f"{meta.get('cpu_isa', 'not recorded')}; load average at start {meta['load_start']}, "
             f"at end {meta['load_end']}; median of at least {meta['reps']} reps after a warm-up "
             f"(calls under 50 ms repeated until ~{MIN_TOTAL_S} s is timed, at most {MAX_REPS})."
             + (" Ours was timed before the peers and again after them; its median pools both."
                if any("drift" in r for r in records) else "")
             + (f" Not run (not importable here): {', '.join(meta['skipped_impls'])}."
                if meta.get("skipped_impls") else "")
             + (f" Engine: commit {engine.get('git_head')}, sources {engine['source_digest']}."
                if engine.get("source_digest") else "")
             + (" CUDA settings: " + (", ".join(f"`{k}={v}`" for k, v in
                                               meta["cuda_settings"].items()) or "the defaults")
                + "." if meta.get("cuda_settings") is not None else ""),
             ""]
    if engine.get("stale"):
        lines += ["**The extension was built from other sources than the checkout held "
                  f"(built {engine.get('source_digest')}, checkout {engine.get('checkout_digest')}):"
                  " these times are not the commit's.**", ""]
    lines += [
        "Cells: median time of the whole batch, and in parentheses the ratio peer / ours "
        "(> 1 means ours is faster). `points`/`matrix`: the peer's fastest input kind that "
        "passed the check (the distance matrix precomputed outside the timed region; "
        "`points, 1 thread`: pytorch-topological's torch calls on one thread). "
        "`forward`: H0+H1 diagrams; `loss_fwd_bwd`: ours = TSLoss forward+backward, "
        "torch-topological = VietorisRipsComplex(dim=1) + sum of persistences, "
        "forward+backward. WRONG = failed the check against ripser.py's diagrams "
        f"(bottleneck distance within {tol:.2g} of the diameter"
        + ("; ours: also the same number of bars, and TSLoss's value within "
           f"{LOSS_RTOL:g} of the one computed from ripser.py's diagrams" if checked_loss
           else "; TSLoss rows: a finite value")
        + (f", and its gradient along a seeded direction within {GRAD_RTOL:g} of a float64 "
           "central difference whose step no bar changes its edges within (the direction zero "
           "on clouds whose float32 distances pair a bar with other edges than float64's)"
           if checked_grad else "")
        + "); ERROR = the peer raised on every input kind (messages below).", "",
        "The last column is the best peer's ratio if its distance matrix had been computed "
        f"inside the timed region: {builders}, or the peer's own run on the points where "
        "that was faster (unless it failed the check).", "",
        "| N | D | B | op | " + " | ".join(impls) + " | best peer × | incl. matrix × |",
        "|---|---|---|---|" + "---|" * len(impls) + "---|---|"]
    keys = sorted({(r["N"], r["D"], r["B"], r["op"]) for r in records},
                  key=lambda k: (k[0], k[1], k[2], k[3]))
    for k in keys:
        cells, best, best_incl = [], None, None
        for i in impls:
            rs = [r for r in records if (r["N"], r["D"], r["B"], r["op"]) == k and r["impl"] == i]
            if not rs:
                cells.append("")
                continue
            r = rs[0]
            if not r["correct"]:
                cells.append("ERROR" if r.get("error") else "WRONG")
                continue
            c = fmt_t(r["median_s"])
            if i != "ours":
                ratio = r.get("ratio_to_ours")
                c += f" ({ratio:.2f}×, {r['input']})" if ratio is not None else f" ({r['input']})"
                if r.get("peer_clouds", r["B"]) < r["B"]:
                    c += " †"
                if ratio is not None:
                    best = ratio if best is None else min(best, ratio)
                    incl = r.get("ratio_to_ours_incl_matrix", ratio)
                    best_incl = incl if best_incl is None else min(best_incl, incl)
            cells.append(c)
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | " + " | ".join(cells)
                     + f" | {'' if best is None else f'{best:.2f}×'}"
                     + f" | {'' if best_incl is None else f'{best_incl:.2f}×'} |")
    busy = busy_configs(records, meta)
    if busy:
        lines += [""] + [f"**N,D,B = {n},{d},{b}: the machine was busy** (all threads ran a probe "
                         f"only {s:.2f}× as fast as one thread at the start of this config): its "
                         "times say more about the other process than about the code; rerun it."
                         for n, d, b, s in busy]
    unsteady = unsteady_configs(records)
    if unsteady:
        lines += [""] + [f"**N,D,B = {n},{d},{b}: ours ran {v:.2f}× as long after the peers as "
                         "before them**: the machine's speed changed while the peers ran, so "
                         "the ratios mix two speeds; rerun it." for n, d, b, v in unsteady]
    sub = sorted({(r["N"], r["D"], r["B"], r["peer_clouds"]) for r in records
                  if r.get("peer_clouds", r["B"]) < r["B"]})
    if sub:
        lines += [""] + [f"† N,D,B = {n},{d},{b}: the peer ran on the first {k} clouds (and was "
                         f"checked on them); its time is scaled by {b}/{k}, an estimate. Ours ran "
                         f"all {b} (checked on those {k})." for n, d, b, k in sub]
    failed = [r for r in records if r.get("errors")]
    if failed:
        lines += ["", "Peer errors (an input kind that raised; the other kind, if any, was timed):"]
        lines += [f"- {r['impl']} at N,D,B = {r['N']},{r['D']},{r['B']} ({r['op']}), "
                  f"{kind}: {msg[:200]}" for r in failed for kind, msg in r["errors"].items()]
    lines += goals(records, {b[:3] for b in busy}, {u[:3] for u in unsteady})
    if scal:
        probed = any("parallel_speedup" in p for s in scal.values() for p in s["points"])
        lines += ["", "## Scaling of ours (forward H0+H1)", "",
                  "| axis | sizes (N, D, B) | median times | fitted exponent |", "|---|---|---|---|"]
        for axis, s in scal.items():
            sizes = ", ".join(f"({p['N']},{p['D']},{p['B']})" for p in s["points"])
            ts = ", ".join(fmt_t(p["median_s"]) + (" (busy)" if p.get("busy") else "")
                           for p in s["points"])
            fit = f"{s['exponent']:.2f}" + (", busy: rerun" if s.get("busy") else "")
            lines.append(f"| {axis} | {sizes} | {ts} | {fit} |")
        busy_axes = [a for a, s in scal.items() if s.get("busy")]
        if busy_axes:
            lines += ["", f"**Scaling along {', '.join(busy_axes)}: the machine was busy** at the "
                      f"points marked (busy) (the thread probe read below {BUSY_SPEEDUP}× before "
                      "them): the fitted exponent mixes two speeds; rerun it."]
        elif not probed:
            lines += ["", "(This sweep's points were timed without the thread probe: whether the "
                      "machine was busy is not known.)"]
    return "\n".join(lines) + "\n"


# The plots' x axes; each config's other two sizes are held in its series and written beside it.
AXIS_LABEL = {"N": "N (points per cloud)", "B": "B (clouds per batch)"}
OTHER_SIZES = {"N": ("D", "B"), "B": ("N", "D")}
MARKERS = {"ours": "o", "ripser": "s", "gph-1t": "^", "gph-all": "v", "gudhi": "D",
           "gudhi-sklearn": "P", "torch-topological": "X"}


def plot_series(records, axis: str) -> tuple:
    """What the vs-``axis`` plot draws, from the correct forward rows: (series, labels).
    A series is one impl's configs whose other two sizes are equal (only ``axis`` varies along
    it, so only its points are joined): dict(impl, fixed, x, y, estimate), ``y`` in µs per
    cloud, ``estimate`` true for a peer time scaled from its first ``peer_clouds`` clouds (the
    table's †). A label is one per config: dict(x, y, text), the config's other sizes, at ours'
    point where ours has one, else at the config's lowest point."""
    other = OTHER_SIZES[axis]
    fwd = [r for r in records if r["op"] == "forward" and r["correct"] and r.get("median_s")]
    series = []
    for impl in [i for i in ALL_IMPLS if any(r["impl"] == i for r in fwd)]:
        groups: dict[tuple, list] = {}
        for r in fwd:
            if r["impl"] == impl:
                groups.setdefault(tuple(r[o] for o in other), []).append(r)
        for fixed, rs in sorted(groups.items()):
            rs.sort(key=lambda r: r[axis])
            series.append(dict(impl=impl, fixed=dict(zip(other, fixed)),
                               x=[r[axis] for r in rs],
                               y=[r["median_s"] / r["B"] * 1e6 for r in rs],
                               estimate=[r["impl"] != "ours"
                                         and r.get("peer_clouds", r["B"]) < r["B"] for r in rs]))
    labels = []
    for key in sorted({(r["N"], r["D"], r["B"]) for r in fwd}):
        rs = [r for r in fwd if (r["N"], r["D"], r["B"]) == key]
        at = ([r for r in rs if r["impl"] == "ours"]
              or sorted(rs, key=lambda r: r["median_s"]))[0]
        size = dict(zip("NDB", key))
        labels.append(dict(x=size[axis], y=at["median_s"] / at["B"] * 1e6,
                           text=", ".join(f"{o}={size[o]}" for o in other)))
    return series, labels


def plots(records, scal, path_prefix: Path):
    """``<stem>-vs-N.png`` and ``<stem>-vs-B.png``: µs per cloud of each impl's correct forward
    rows against N or B. The suite's configs vary N, D and B together, so points are joined
    only where the other two sizes are equal, and each config is labelled with them."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except Exception:
        return []
    written = []
    colors = {i: f"C{n}" for n, i in enumerate(ALL_IMPLS)}
    for axis in ("N", "B"):
        series, labels = plot_series(records, axis)
        fig, ax = plt.subplots(figsize=(8, 5))
        handles: dict[str, Line2D] = {}
        joined, hollow = False, False
        for sr in series:
            c, m = colors[sr["impl"]], MARKERS.get(sr["impl"], "o")
            if len(sr["x"]) > 1:
                ax.plot(sr["x"], sr["y"], "-", color=c, alpha=0.6, lw=1)
                joined = True
            for x, y, est in zip(sr["x"], sr["y"], sr["estimate"]):
                ax.plot([x], [y], m, color=c, ms=7, alpha=0.9, mec=c,
                        mfc="none" if est else c, mew=1.3)
                hollow |= est
            handles.setdefault(sr["impl"], Line2D([], [], color=c, marker=m, ls="",
                                                  label=sr["impl"]))
        last: dict[int, tuple] = {}  # x -> (y, text offset) of the label below: stacked
        rightmost = max((lb["x"] for lb in labels), default=None)
        for lb in sorted(labels, key=lambda lb: (lb["x"], lb["y"])):
            y0, dy0 = last.get(lb["x"], (None, -3))
            dy = dy0 + 8 if y0 is not None and math.log10(lb["y"] / y0) < 0.08 else -3
            last[lb["x"]] = (lb["y"], dy)
            # The rightmost configs' labels go left of their points: to the right they ran past
            # the frame (B = 1024's "N=256, D=768").
            left = lb["x"] == rightmost and len({l["x"] for l in labels}) > 1
            ax.annotate(lb["text"], (lb["x"], lb["y"]), xytext=(-6 if left else 6, dy),
                        textcoords="offset points", fontsize=6.5, color="0.25",
                        ha="right" if left else "left")
        legend = list(handles.values())
        if scal and axis in scal:
            sp = scal[axis]["points"]
            fixed = ", ".join(f"{o}={sp[0][o]}" for o in OTHER_SIZES[axis])
            legend += ax.plot([p[axis] for p in sp], [p["median_s"] / p["B"] * 1e6 for p in sp],
                              "k-", label=f"ours sweep, {fixed} (slope "
                                          f"{scal[axis]['exponent']:.2f} in batch time"
                                          + ("; busy: rerun" if scal[axis].get("busy") else "")
                                          + ")")
        if joined:
            legend.append(Line2D([], [], color="0.5", lw=1,
                                 label=f"line: same {' and '.join(OTHER_SIZES[axis])}, "
                                       f"only {axis} varies"))
        if hollow:
            legend.append(Line2D([], [], color="0.3", marker="o", mfc="none", ls="",
                                 label="hollow: peer timed on a subset of the clouds,\n"
                                       "scaled to B (an estimate, † in the table)"))
        xs = [x for sr in series for x in sr["x"]] + (
            [p[axis] for p in scal[axis]["points"]] if scal and axis in scal else [])
        if xs:  # room on the right for the labels
            ax.set_xlim(min(xs) / 1.4, max(xs) * 2.6)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(AXIS_LABEL[axis])
        ax.set_ylabel("µs per cloud (forward H0+H1)")
        # Two lines: in one, centred over axes that the legend narrows, the title began left
        # of the figure and lost its first words.
        ax.set_title(f"forward time per cloud vs {axis} ({path_prefix.name})\n"
                     f"each config labelled with its {' and '.join(OTHER_SIZES[axis])}",
                     fontsize=9)
        if legend:
            ax.legend(handles=legend, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        p = path_prefix.parent / f"{path_prefix.name}-vs-{axis}.png"
        fig.savefig(p, dpi=110, bbox_inches="tight")  # the legend beside the axes included
        plt.close(fig)
        written.append(str(p))
    return written


def parse_cfg(s: str):
    try:
        parts = [int(v) for v in s.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"config must be N,D,B, each an integer >= 1, got {s!r}")
    return tuple(parts)


def result_stem(dev: str, isa: Optional[str], args) -> str:
    """The default file stem: the device, its CPU build, and for a partial run (a subset of the
    configs or of the implementations) what was left out, so that a partial run never overwrites
    the full suite's files (`--quick` into benchmarks/results once did)."""
    stem = f"{dev}-{isa}" if isa else dev
    requested = {i.strip() for i in args.impls.split(",") if i.strip()}
    partial = ["quick" if args.quick else "gpu-configs" if args.gpu_configs
               else "configs" if args.configs else "",
               "impls" if requested != set(ALL_IMPLS) else "",
               f"{args.threads}t" if args.threads else ""]
    return "-".join([stem] + [p for p in partial if p])


PROG = "benchmarks/run.py"


def build_parser() -> argparse.ArgumentParser:
    # tsloss_cuda's parser: an argument error is one line, "PROG: error: ... (see --help)"
    ap = Parser(prog=PROG, description=__doc__.split("\n")[0])
    # One of the three: the file stem (result_stem) names the one given, so a combination ran
    # one set into another's file name (--gpu-configs --configs ... into -gpu-configs.json).
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--configs", nargs="+", type=parse_cfg,
                       help=f"N,D,B triples (N at most {MAX_POINTS} with ours)")
    which.add_argument("--quick", action="store_true", help="a small subset (< 1 minute)")
    which.add_argument("--gpu-configs", action="store_true",
                       help="only the GPU sizes of the issue (%s)" % " ".join(
                           "%d,%d,%d" % c for c in GPU_EXTRA))
    ap.add_argument("--reps", type=positive_int, default=5,
                    help="repetitions (timed calls on the whole batch) per implementation, op "
                         "and config, after one untimed warm-up; the median is reported (default "
                         "5; calls under 50 ms "
                         f"are repeated until ~{MIN_TOTAL_S} s is timed, at most {MAX_REPS} times)")
    ap.add_argument("--impls", default=",".join(ALL_IMPLS), help="comma-separated subset")
    ap.add_argument("--out", default=str(ROOT / "results"), help="output directory")
    ap.add_argument("--name", help="file stem, no folder (default: the device name, then "
                                   "-<isa> with --isa, then -quick/-gpu-configs/-configs, "
                                   "-impls and -<T>t (--threads T) as they apply, for a partial "
                                   "run)")
    ap.add_argument("--scaling", action="store_true", help="fit time exponents in N, B, D")
    ap.add_argument("--cpu", action="store_true", help="run ours on CPU even if CUDA exists")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--threads", type=positive_threads,
                    help="torch threads for ours, 1 to 1024 (default: all); peers keep all "
                         "threads")
    ap.add_argument("--isa", choices=("baseline", "avx2", "avx512"),
                    help="x86 build of our CPU kernels (default: the best this CPU runs); the "
                         "result files are named after it")
    ap.add_argument("--peer-clouds", type=int, default=PEER_CLOUDS,
                    help="peers run on at most this many clouds of a batch, their time scaled "
                         "to the whole batch (0: all clouds)")
    ap.add_argument("--render", metavar="JSON",
                    help="only re-render .md/.png from a results JSON (and refresh its derived "
                         "fields: per_cloud_us, ratio_to_ours, ratio_to_ours_incl_matrix)")
    return ap


# What every record needs for --render to derive its fields and draw the tables.
RECORD_KEYS = ("impl", "op", "N", "D", "B", "correct")


def render(src: Path, ap) -> dict:
    """--render: the JSON's derived fields recomputed (:func:`derive`, as the live run does),
    then the JSON, markdown and plots rewritten. A file this script did not write is one line
    naming --render, before anything is written."""
    def bad(why):
        ap.error(f"--render {src}: not a results JSON of this script ({why})")
    try:
        payload = json.loads(src.read_text())
        recs, meta = payload["records"], payload["meta"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        bad(f"{type(e).__name__}: {e}")
    if not isinstance(recs, list) or not isinstance(meta, dict):
        bad("'records' is not a list or 'meta' not an object")
    for i, r in enumerate(recs):
        if not isinstance(r, dict):
            bad(f"record {i} is not an object")
        lack = [k for k in RECORD_KEYS if k not in r]
        if lack:
            bad(f"record {i} ({r.get('impl', '?')}) lacks {', '.join(map(repr, lack))}")
    try:
        for r in recs:
            r["correct"] = bool(r["correct"])
        derive(recs)
        md = markdown(recs, meta, payload.get("scaling"))
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        bad(f"{type(e).__name__}: {e}")
    src.write_text(json.dumps(payload, indent=1, default=float))
    src.with_suffix(".md").write_text(md)
    plots(recs, payload.get("scaling"), src.with_suffix(""))
    print(md)
    return payload


def check_out(out: Path, ap) -> None:
    """--out must be a folder this process can create and write, checked before any timing (a
    failure in write() came after the first config's). Left created: write() fills it."""
    if out.exists() and not out.is_dir():
        ap.error(f"--out {out}: not a folder")
    try:
        check_writable(str(out), "--out")
        out.mkdir(parents=True, exist_ok=True)
    except CLIError as e:
        ap.error(str(e))
    except OSError as e:  # made writable by check_writable, then gone or changed meanwhile
        ap.error(f"--out {out} cannot be created: {e.strerror or e}")


def check_name(name: Optional[str], ap) -> None:
    """--name is a file stem in --out: a path separator would make write() fail (or write
    elsewhere) after the first config was timed."""
    if name is None:
        return
    seps = {os.sep, os.altsep or os.sep, "/"}
    if not name.strip() or name in (".", "..") or any(c in name for c in seps):
        ap.error(f"--name {name!r}: a file stem without a folder (use --out for the folder)")


def check_reference(ap) -> None:
    """ripser.py computes the reference diagrams every result is checked against and GUDHI the
    bottleneck distances of that check: without either, a run would time ours and then fail."""
    need = {"ripser": "ripser.py computes the reference diagrams every result is checked against",
            "gudhi": "GUDHI computes the bottleneck distances of that check"}
    for mod, why in need.items():
        try:
            __import__(mod)
        except Exception as e:
            ap.error(f"{mod} is not importable ({type(e).__name__}: {e}); {why}; "
                     "pip install ripser gudhi")


def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.render:
        return render(Path(args.render), ap)

    cuda = torch.cuda.is_available() and not args.cpu
    if args.isa:
        try:
            tsloss_cuda.set_cpu_isa(args.isa)
        except ValueError as err:
            ap.error(f"--isa: {err}")
    # A build capped below the CPU's best (--isa, or TSLOSS_CPU_ISA) names its files, so that a
    # capped run never takes the full-speed run's file.
    isa = tsloss_cuda.cpu_isa()
    capped = isa if isa != tsloss_cuda.supported_cpu_isas()[-1] else args.isa
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    if not impls:
        ap.error("--impls: no implementation given")
    unknown = set(impls) - set(ALL_IMPLS)
    if unknown:
        ap.error(f"--impls: unknown {sorted(unknown)}; choose from {ALL_IMPLS}")
    # Checked here, not in parse_cfg: the limit is our op's (the peers time larger clouds), and
    # its error came after the configs before it were timed.
    big = [c for c in args.configs or [] if c[0] > MAX_POINTS]
    if big and "ours" in impls:
        ap.error(f"--configs {','.join(map(str, big[0]))}: N = {big[0][0]} points exceeds the "
                 f"maximum of {MAX_POINTS} that ours computes (leave ours out of --impls)")
    if args.peer_clouds < 0:
        ap.error(f"--peer-clouds must be >= 0 (0: all clouds), got {args.peer_clouds}")
    check_name(args.name, ap)
    out = Path(args.out)
    check_reference(ap)
    skipped = [i for i in impls if not available(i)]
    impls = [i for i in impls if i not in skipped]
    if not impls:
        ap.error(f"--impls: none of {', '.join(skipped)} is importable here")
    check_out(out, ap)  # creates the folder: the last check before timing
    if skipped:  # also in the markdown's header and the JSON's meta.skipped_impls
        print(f"skipped (not importable): {', '.join(skipped)}", flush=True)
    if args.configs:
        configs = args.configs
    elif args.gpu_configs:
        configs = GPU_EXTRA
    elif args.quick:
        configs = QUICK_CONFIGS
    else:
        configs = CPU_CONFIGS + (GPU_EXTRA if cuda else [])
    reps = args.reps

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None

    class _Null:
        def __init__(self, *a, **k):
            pass

        def update(self, *a):
            pass

        def close(self):
            pass

        def set_postfix_str(self, *a):
            pass
    bar_cls = _Null if (args.no_progress or tqdm is None) else tqdm

    n_runs = sum((2 if i == "ours" else 1) for i in impls) * len(configs)
    dev = device_name(cuda)
    meta = dict(device=dev, cpu=cpu_model(), cpu_id=cpu_id(), cores=os.cpu_count(),
                threads=args.threads or torch.get_num_threads(), cpu_isa=isa,
                # what times torch.cdist and pytorch-topological (not capped by --isa)
                torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
                torch=torch.__version__, cuda=torch.cuda.get_device_name(0) if cuda else None,
                python=sys.version.split()[0], reps=reps, impls=impls, skipped_impls=skipped,
                load_start=" ".join(f"{v:.2f}" for v in os.getloadavg()),
                tolerance_bottleneck_over_diameter=TOL,
                time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), engine=engine_version(),
                # the CUDA engine's switches (README: CUDA run-time settings), the engine's
                # with their values in effect (the defaults changed once), and any other set
                cuda_settings=dict(sorted({"TSLOSS_CUDA_TOPOLOGY": "block", "TSLOSS_CUDA_REDUCE": "warp",
                                           **{k: v for k, v in os.environ.items()
                                              if k.startswith("TSLOSS_CUDA_") and v}}.items()))
                if cuda else None)
    records = []
    t_start = time.perf_counter()
    stem = args.name or result_stem(dev, None if cuda else capped, args)
    if meta["engine"].get("stale"):
        print("WARNING: the extension was built from other sources than csrc/ now holds; these "
              "times are not the checkout's (rebuild: pip install -e . --no-build-isolation)",
              file=sys.stderr, flush=True)

    def write(scal):
        """The JSON and markdown of what has finished so far: rewritten after every config, so
        that a run cut short (a time limit) keeps its finished configs."""
        meta["load_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
        meta["wall_s"] = time.perf_counter() - t_start
        meta["configs_done"] = len({(r["N"], r["D"], r["B"]) for r in records})
        meta["configs_planned"] = len(configs)
        payload = dict(meta=meta, records=records, scaling=scal)
        md = markdown(records, meta, scal)
        for path, text in ((out / f"{stem}.json", json.dumps(payload, indent=1, default=float)),
                           (out / f"{stem}.md", md)):
            tmp = path.with_name(path.name + ".tmp")  # a kill mid-write leaves the last full file
            tmp.write_text(text)
            os.replace(tmp, path)
        return payload, md

    bar = bar_cls(total=n_runs, desc="benchmarks")
    for cfg in configs:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str("N,D,B=%d,%d,%d" % cfg)
        records += bench_config(cfg, impls, reps, cuda, progress=bar,
                                peer_clouds=args.peer_clouds, threads=args.threads)
        write(None)
        if args.no_progress:
            print("N,D,B=%d,%d,%d done, %.0f s" % (cfg + (time.perf_counter() - t_start,)),
                  flush=True)
    bar.close()
    scal = scaling(reps, cuda, bar_cls, args.threads) if args.scaling else None
    payload, md = write(scal)
    pngs = plots(records, scal, out / stem)
    print(md)
    print(f"wrote {out / (stem + '.json')}, {out / (stem + '.md')}" +
          (", " + ", ".join(pngs) if pngs else "") + f"  ({meta['wall_s']:.0f} s)")
    return payload


if __name__ == "__main__":
    main()
