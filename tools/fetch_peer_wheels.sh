#!/usr/bin/env bash
# Downloads the benchmark's peer libraries as CPython 3.12 x86-64 manylinux wheels into .whl/
# (git-ignored), for the GPU host, which has python3 3.12 and no network:
#
#   bash tools/fetch_peer_wheels.sh [DIR]      # DIR defaults to .whl
#
# Then call the device with carry [".whl"]; tools/gpu_check.sh installs them with --no-index
# --no-deps. --no-deps here too: their dependencies (numpy, scipy, scikit-learn, matplotlib,
# torch) are already on the host, and persim (ripser's plotting only) is left out on purpose.
# pip matches a manylinux_2_N tag only for the N named, so several are listed (the host's glibc
# is 2.39). About 7 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
case ${1:-} in  # not a folder: mkdir and rm would take the flag for their own
  -h | --help) sed -n '2,/^set -euo/p' tools/fetch_peer_wheels.sh | sed '$d;s/^# \{0,1\}//'; exit 0 ;;
  -*) echo "usage: bash tools/fetch_peer_wheels.sh [DIR] (--help: what it does)" >&2; exit 1 ;;
esac
DIR=${1:-.whl}
PKGS=(ripser==0.6.15 giotto-ph==0.2.4 gudhi==3.13.0 torch-topological==0.1.9 POT==0.9.5)
plats=()
for p in manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
         manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
  plats+=(--platform "$p")
done
mkdir -p "$DIR"
# Older copies of these packages would be installed side by side and stop the install there.
for name in ripser giotto_ph gudhi torch_topological POT pot; do rm -f "$DIR/$name"-*.whl; done
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none "${plats[@]}" -d "$DIR" "${PKGS[@]}"
ls -l "$DIR"
du -sh "$DIR"
