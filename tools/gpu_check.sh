#!/usr/bin/env bash
# The CUDA path end to end on a GPU host, in one go (a lent GPU is short of time, not memory):
#
#   bash tools/gpu_check.sh OUT_DIR [phase ...]
#
# Phases, in this order unless named: build cuda_tests warp_tests tsloss bench profile sanitizer
# train suite.
#   build       pip install -e . with the host's CUDA torch (README's GPU build), TORCH_CUDA_ARCH_LIST
#               defaulting to 9.0 (H100/H200); checks the CUDA kernels are registered
#   cuda_tests  tests/test_cuda.py, the fused TSLoss op's tests (tests/test_cuda_tsloss.py and
#               tests/test_tsloss_op.py, which also run every option on CUDA) and the mixed-devices
#               test, skips listed (-rs)
#   tsloss      TSLoss forward+backward: kernels launched (budget 8) and CUDA-event time at
#               (64, 4096, 64) and two more sizes, under OUT_DIR/tsloss/launches.txt
#   warp_tests  tests/test_cuda.py with the warp-cooperative kernels switched on
#               (TSLOSS_CUDA_TOPOLOGY=block, TSLOSS_CUDA_REDUCE=warp), then their compute-sanitizer
#               racecheck/synccheck run
#   bench       benchmarks/run.py on the GPU; results under OUT_DIR/bench. Plain GUDHI (RipsComplex +
#               SimplexTree, 1.3 s per N=256 cloud) is left out by default, gudhi-sklearn stands
#               for GUDHI (GPU_CHECK_IMPLS sets the list)
#   profile     tools/profile_ops.py: torch.profiler time per kernel of the forward and of TSLoss
#               at the GPU sizes, with the reduce kernel's automatic mapping and again with 32
#               clouds per warp (the mapping before 86d43fd), under OUT_DIR/profile{,-32-per-warp}
#   sanitizer   compute-sanitizer memcheck and racecheck on tools/gpu_smoke.py
#   train       the main job with --device cuda (model from GPU_CHECK_MODEL, default: the package)
#   suite       the whole test suite (pytest-xdist when present)
# GPU_CHECK_BUDGET_S (default 570: one device command may run 600 s at most; 0: none) caps the
# whole run: each phase's time limit is cut to what is left, and a phase with under 20 s left is
# skipped, so the SUMMARY is printed inside the command's limit. Name the phases that matter most
# first (e.g. build cuda_tests warp_tests): a fresh device machine rebuilds the extension. Wheels in .whl/ (peers for the tests and
# the benchmark, on a host without a registry) are installed first into /tmp/site. Exits 1 if
# any phase failed or ran out of time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:?usage: bash tools/gpu_check.sh OUT_DIR [phase ...]}")
shift
mkdir -p "$OUT"
PHASES=("$@")
[ ${#PHASES[@]} -eq 0 ] && PHASES=(build cuda_tests warp_tests tsloss bench profile sanitizer train suite)
BUDGET=${GPU_CHECK_BUDGET_S:-570}
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SUMMARY=()
FAILED=0

phase() {  # name limit_s command...: runs with a time limit, output appended to the log
  local name=$1 limit=$2
  shift 2
  if [ "$BUDGET" -gt 0 ] && [ $((SECONDS + limit)) -gt "$BUDGET" ]; then
    limit=$((BUDGET - SECONDS))
  fi
  if [ "$limit" -lt 20 ]; then
    SUMMARY+=("$name: skipped, out of time")
    return 0
  fi
  echo "=== $name (limit ${limit} s, started at ${SECONDS} s)" | tee -a "$LOG"
  local t=$SECONDS rc
  timeout --kill-after=5 "$limit" bash -c '"$@"' _ "$@" >>"$LOG" 2>&1
  rc=$?
  SUMMARY+=("$name: rc=$rc, $((SECONDS - t)) s")
  [ $rc -eq 0 ] || FAILED=1
  echo "=== $name rc=$rc ($((SECONDS - t)) s)" | tee -a "$LOG"
  return 0
}

{
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  command -v compute-sanitizer && compute-sanitizer --version | tail -1
  nproc
} >>"$LOG" 2>&1

if compgen -G ".whl/*.whl" >/dev/null && [ ! -d /tmp/site/ripser ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 || echo "wheel install failed" | tee -a "$LOG"
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}

do_build() {
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=$(nproc) \
    $PY -m pip install --no-build-isolation --no-deps --no-index -e . &&
    $PY -c "
import torch, tsloss_cuda
for op in ('pairwise_distance', 'vr_persistence', 'vr_persistence_backward', 'tsloss_forward',
           'tsloss_backward'):
    assert torch._C._dispatch_has_kernel_for_dispatch_key('tsloss_cuda::' + op, 'CUDA'), op
print('CUDA kernels registered')"
}

do_sanitizer() {
  local rc=0
  for tool in memcheck racecheck; do
    echo "--- compute-sanitizer --tool $tool"
    # No caching allocator: memcheck sees each tensor's own bounds, not a cached block's.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 3 \
      --print-limit 20 $PY tools/gpu_smoke.py || rc=$?
  done
  return $rc
}

do_warp_tests() {
  local rc=0
  TSLOSS_CUDA_TOPOLOGY=block TSLOSS_CUDA_REDUCE=warp $PY -m pytest -q -rs -p no:cacheprovider \
    tests/test_cuda.py || rc=$?
  for tool in memcheck racecheck synccheck; do
    echo "--- compute-sanitizer --tool $tool (warp kernels)"
    TSLOSS_CUDA_TOPOLOGY=block TSLOSS_CUDA_REDUCE=warp PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 20 $PY tools/gpu_smoke.py || rc=$?
  done
  return $rc
}

do_profile() {
  $PY tools/profile_ops.py --device cuda --out "$OUT/profile" &&
    TSLOSS_CUDA_REDUCE_CLOUDS_PER_WARP=32 $PY tools/profile_ops.py --device cuda \
      --out "$OUT/profile-32-per-warp"
}

do_train() {
  local model=${GPU_CHECK_MODEL:-}
  $PY -m tsloss_cuda.train --device cuda ${model:+--model "$model"} --output-dir /tmp/gpu-train \
    --quiet && tar czf "$OUT/train.tgz" -C /tmp gpu-train
}

do_suite() {
  local par=()
  $PY -c "import xdist" 2>/dev/null && par=(-n 8)
  $PY -m pytest -q -rs -p no:cacheprovider "${par[@]}" tests
}

export -f do_build do_warp_tests do_profile do_sanitizer do_train do_suite
export PY OUT
for p in "${PHASES[@]}"; do
  case $p in
    build) phase build 300 do_build ;;
    cuda_tests) phase cuda_tests 260 $PY -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py \
                  tests/test_cuda_tsloss.py tests/test_tsloss_op.py \
                  tests/test_inputs.py::test_mixed_devices ;;
    tsloss) phase tsloss 120 $PY tools/profile_ops.py --device cuda --launches-only \
              --configs 64,4096,64 16,768,64 64,2048,64 --out "$OUT/tsloss" ;;
    warp_tests) phase warp_tests 300 do_warp_tests ;;
    bench) phase bench 300 $PY benchmarks/run.py --no-progress --out "$OUT/bench" \
             --impls "${GPU_CHECK_IMPLS:-ours,ripser,gph-1t,gph-all,gudhi-sklearn,torch-topological}" ;;
    profile) phase profile 240 do_profile ;;
    sanitizer) phase sanitizer 240 do_sanitizer ;;
    train) phase train 180 do_train ;;
    suite) phase suite 300 do_suite ;;
    *) echo "unknown phase $p" | tee -a "$LOG" ;;
  esac
done
printf '%s\n' "${SUMMARY[@]}" | tee -a "$LOG"
exit $FAILED
