"""tools/gpu_check.sh rehearsed on the CPU: a device lease is 15 minutes, so a phase that can
only fail there (a bash array a phase's child shell never sees, a parse that finds nothing)
must fail here first. Fake tools on PATH stand in for the device's."""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ("pairwise_distance_kernel", "topology_kernel", "reduce_warp_kernel",
           "tsloss_grad_kernel")

# What ncu prints for the launches it profiled (the lines the phase reads, as ncu 2025 lays them
# out), one figure changed per kernel so that each check reads its own launch.
NCU_OUTPUT = "==PROF== Connected to process 1 (python3)\n" + "".join(f"""\
  void tsl::cuda::(anonymous namespace)::{k}<float>(float const*) (3, 64, 1)x(512, 1, 1), \
Context 1, Stream 7, Device 0, CC 9.0
    Section: GPU Speed Of Light Throughput
    ----------------------- ----------- ------------
    Memory Throughput                 %        12.34
    Duration                         ms         1.1{i}
    Compute (SM) Throughput           %        15.67
    Section: Launch Statistics
    Registers Per Thread    register/thread     128
    Section: Memory Workload Analysis
    Memory Throughput           Gbyte/second        99.99
    Section: Occupancy
    Achieved Occupancy                %        24.50
""" for i, k in enumerate(KERNELS))


def run_check(tmp_path: Path, *phases: str, ncu: str = None, **env) -> subprocess.CompletedProcess:
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("bash and coreutils' timeout are needed")
    repo = tmp_path / "repo"  # a bare copy: no .whl/ for host_info to install
    (repo / "tools").mkdir(parents=True)
    shutil.copy(ROOT / "tools" / "gpu_check.sh", repo / "tools")
    shutil.copy(ROOT / "tools" / "compare_launches.py", repo / "tools")
    path = os.environ["PATH"]
    if ncu is not None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        fake = bin_dir / "ncu"
        fake.write_text(f'#!/bin/sh\necho "$*" >> "{tmp_path}/ncu-args"\n{ncu}\n')
        fake.chmod(0o755)
        path = f"{bin_dir}{os.pathsep}{path}"
    else:
        env.setdefault("NCU", str(tmp_path / "no-ncu"))  # whatever this machine has
    full_env = dict(os.environ, PATH=path, **dict({"PYTHON": sys.executable}, **env))
    return subprocess.run(["bash", str(repo / "tools" / "gpu_check.sh"), str(tmp_path / "out"),
                           *phases], capture_output=True, text=True, env=full_env, timeout=300)


def test_dry_run_plans_every_default_phase(tmp_path):
    r = run_check(tmp_path, GPU_CHECK_DRYRUN="1")
    assert "RESULT:" in r.stdout, r.stdout + r.stderr
    for name in ("build", "cuda_tests", "global_tests", "tsloss", "sanitizer", "global_sanitizer",
                 "profile", "bench", "ncu"):
        assert f"=== {name}: " in r.stdout, name
    assert "UNKNOWN phase" not in r.stdout


NEXT_RUN = ("build", "cuda_tests", "tsloss", "profile", "block_profile", "slices_profile",
            "sanitizer", "block_sanitizer", "bench", "ncu_source")


def test_dry_run_charges_typical_times_and_reports_the_worst_case(tmp_path):
    """The dry run charged every phase its whole cap, so the next device run's plan (DEVELOPERS.md,
    README's GPU section) read INCOMPLETE although its phases' measured times fit the budget."""
    r = run_check(tmp_path / "a", *NEXT_RUN, GPU_CHECK_DRYRUN="1", GPU_CHECK_BUDGET_S="540")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT: DRY RUN: every phase runs at typical phase times" in r.stdout
    assert "build          dry run (about 85 s, up to 150 s)" in r.stdout
    worst = [ln for ln in r.stdout.splitlines() if ln.startswith("worst case")]
    assert worst == ["worst case (every phase to its cap): slices_profile (time) sanitizer (time) "
                     "block_sanitizer (time) bench (time) ncu_source (time)"], r.stdout
    r = run_check(tmp_path / "b", *NEXT_RUN, GPU_CHECK_DRYRUN="1", GPU_CHECK_BUDGET_S="300")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "RESULT: DRY RUN: at typical phase times, not run: sanitizer (time)" in r.stdout


def test_every_phase_has_a_cap_a_minimum_and_a_typical_time():
    import re
    text = (ROOT / "tools" / "gpu_check.sh").read_text()
    tables = {name: set(re.findall(r"\[(\w+)\]=", re.search(
        rf"declare -A {name}=\((.*?)\)\n", text, re.S).group(1)))
        for name in ("CAP", "MIN", "TYP")}
    phases = set(re.findall(r"^do_(\w+)\(\)", text, re.M))
    assert tables["CAP"] == tables["MIN"] == tables["TYP"] == phases, tables


def test_ncu_phase_profiles_each_kernel(tmp_path):
    r = run_check(tmp_path, "ncu", ncu=f"cat <<'EOF'\n{NCU_OUTPUT}EOF")
    assert r.returncode == 0, r.stdout + r.stderr
    checks = [ln for ln in r.stdout.splitlines() if ln.startswith("CHECK ncu ")]
    assert [ln.split()[2].rstrip(":") for ln in checks] == list(KERNELS)
    for i, ln in enumerate(checks):
        assert ln.endswith(f": mem 12.34 %,time 1.1{i} ms,SM 15.67 %,regs 128,"
                           "occupancy 24.50 %"), ln
    args = (tmp_path / "ncu-args").read_text()
    assert args.startswith("--clock-control none --set detailed --target-processes all -k "
                           f"regex:{'|'.join(KERNELS)} -c 4 "), args
    assert args.count("--clock-control") == 1  # one process, one start of torch under ncu
    with subprocess.Popen(["tar", "tzf", str(tmp_path / "out" / "results.tgz")],
                          stdout=subprocess.PIPE, text=True) as p:
        assert "results/ncu.txt" in p.stdout.read()


def test_ncu_phase_fails_for_a_kernel_it_did_not_profile(tmp_path):
    head = NCU_OUTPUT.index("  void", NCU_OUTPUT.index("reduce_warp_kernel") - 80)
    tail = NCU_OUTPUT.index("  void", head + 10)
    r = run_check(tmp_path, "ncu", ncu=f"cat <<'EOF'\n{NCU_OUTPUT[:head] + NCU_OUTPUT[tail:]}EOF")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "CHECK ncu reduce_warp_kernel: FAILED: not profiled" in r.stdout
    assert "CHECK ncu tsloss_grad_kernel: mem 12.34 %,time 1.13 ms" in r.stdout


def test_ncu_phase_skips_where_counters_cannot_be_read(tmp_path):
    r = run_check(tmp_path, "ncu", ncu="echo '==ERROR== Failed to initialize the profiler: "
                  "LibraryNotLoaded'; exit 1")
    assert r.returncode == 2, r.stdout + r.stderr  # INCOMPLETE: skipped, not failed
    assert "SKIP: ncu cannot read this host's counters" in r.stdout
    assert "RESULT: INCOMPLETE: not run: ncu (skipped)" in r.stdout


def test_ncu_phase_fails_when_nothing_was_profiled(tmp_path):
    r = run_check(tmp_path, "ncu", ncu="echo '==WARNING== No kernels were profiled.'")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "RESULT: FAILED" in r.stdout


def test_ncu_phase_skips_without_ncu(tmp_path):
    r = run_check(tmp_path, "ncu")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "SKIP: no ncu on this host" in r.stdout


# A python that stands in for tools/profile_ops.py (it needs a GPU): it writes the launches.txt
# line profile_ops writes, the split kernel among the kernels when TSLOSS_CUDA_DISTANCE_SLICES
# is 0 (and only then), twice as fast then; any other command goes to the real python.
FAKE_PROFILE = """#!/bin/sh
if [ "$1" = tools/profile_ops.py ]; then
  out=$(echo "$@" | sed 's/.*--out //; s/ .*//'); mkdir -p "$out"
  k=pairwise_distance_kernel; ms=2.000
  [ "$TSLOSS_CUDA_DISTANCE_SLICES" = 0 ] && [ "$SPLIT_WORKS" = 1 ] && k=pairwise_distance_split_kernel && ms=1.000
  for c in 16,768,1 64,4096,1 64,4096,64 256,768,16 256,768,64 64,768,4 32,2048,8 128,768,2 16,768,16; do
    # stdout too, as profile_ops prints it: these lines once crowded the compare lines out
    echo "(N, D, B) = ($(echo $c | sed 's/,/, /g')): TSLoss forward+backward 8 kernels (budget 8: met), 7 ours and torch's 1 seed fill(s), $ms ms; forward 5 kernels, $ms ms (CUDA events, median of 5)" | tee -a "$out/launches.txt"
    echo "  TSLoss kernels: void tsl::cuda::distance_kernel::$k<float>(float const*)" >> "$out/launches.txt"
  done
  exit 0
fi
exec %s "$@"
"""


@pytest.mark.parametrize("works", [True, False])
def test_slices_profile_checks_the_kernel_and_compares(tmp_path, works):
    (tmp_path / "a venv").mkdir()  # the script once split $PYTHON at a space
    fake = tmp_path / "a venv" / "python"
    fake.write_text(FAKE_PROFILE % shlex.quote(sys.executable))
    fake.chmod(0o755)
    r = run_check(tmp_path, "slices_profile", PYTHON=str(fake), SPLIT_WORKS="1" if works else "0")
    if works:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "CHECK pairwise_distance_split_kernel< launched" in r.stdout
        assert ("compare (64, 4096, 1): forward 2.000 / 1.000 ms (2.00x); "
                "TSLoss 2.000 / 1.000 ms (2.00x)") in r.stdout
    else:
        assert r.returncode == 1, r.stdout + r.stderr
        assert "CHECK FAILED: pairwise_distance_split_kernel< not launched" in r.stdout


# A python whose pytest writes a junit XML of 5 tests, 2 of them skipped.
FAKE_PYTEST = """#!/bin/sh
if [ "$1" = -m ] && [ "$2" = pytest ]; then
  for a in "$@"; do case $a in --junitxml=*) x=${a#--junitxml=};; esac; done
  echo '<testsuite tests="5" failures="0" errors="0" skipped="2"/>' > "$x"
  echo "=== 3 passed, 2 skipped in 1.00s ==="
  exit 0
fi
exec %s "$@"
"""


@pytest.mark.parametrize("phase,passes", [("suite", True), ("cuda_tests", False)])
def test_only_the_whole_suite_may_skip(tmp_path, phase, passes):
    """The whole suite skips some tests on a GPU host by design (a CPU-only README check,
    packages the image lacks): it once could only fail there. The CUDA tests may not skip."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTEST % shlex.quote(sys.executable))
    fake.chmod(0o755)
    r = run_check(tmp_path, phase, PYTHON=str(fake))
    assert "junit: tests 5, failures 0, errors 0, skipped 2" in r.stdout, r.stdout + r.stderr
    assert (r.returncode == 0) == passes, r.stdout + r.stderr


def test_a_budget_that_is_no_number_is_refused(tmp_path):
    r = run_check(tmp_path, "build", GPU_CHECK_BUDGET_S="9m", GPU_CHECK_DRYRUN="1")
    assert r.returncode == 1 and "GPU_CHECK_BUDGET_S must be a whole number" in r.stderr


@pytest.mark.parametrize("script,first", [
    ("gpu_check.sh", "The CUDA path end to end"),
    ("fetch_peer_wheels.sh", "Downloads the benchmark's peer libraries")])
def test_help_prints_the_header_and_touches_nothing(tmp_path, script, first):
    """--help was taken for the output folder: gpu_check.sh went on to plan its phases, the build
    first, and fetch_peer_wheels.sh handed it to mkdir and rm."""
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    shutil.copy(ROOT / "tools" / script, repo / "tools")
    env = dict(os.environ, GPU_CHECK_DRYRUN="1", PYTHON=sys.executable)  # nothing is built
    r = subprocess.run(["bash", str(repo / "tools" / script), "--help"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith(first), r.stdout + r.stderr
    if script == "gpu_check.sh":
        assert "build " in r.stdout and "ncu_source" in r.stdout
    assert [p.name for p in repo.iterdir()] == ["tools"] and list(tmp_path.iterdir()) == [repo]


def test_build_on_a_torch_without_cuda_keeps_the_extension(tmp_path):
    """Run by hand on a CPU machine, the build phase deleted the extension, then failed to build
    one with FORCE_CUDA=1 (an error with a CPU-only torch): the checkout was left without it."""
    import torch
    if torch.version.cuda is not None:
        pytest.skip("this torch has CUDA: the build phase would rebuild the extension")
    ext = tmp_path / "repo" / "tsloss_cuda" / "_C.test.so"
    ext.parent.mkdir(parents=True)
    ext.write_bytes(b"\x7fELF")
    r = run_check(tmp_path, "build")
    assert r.returncode == 1 and "has no CUDA" in r.stdout, r.stdout + r.stderr
    assert ext.exists()
