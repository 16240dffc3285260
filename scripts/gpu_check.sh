#!/usr/bin/env bash
# One command for a GPU session (issue: fast search engine).
#
#   bash scripts/gpu_check.sh OUT_DIR FMNIST_ROOT [EPOCHS] [SEARCH_TIMEOUT_S]
#
# 1. the speed benchmark at paper settings (NB201 C=16, N=5, batch 64, 25k/25k),
#    plain and fast paths side by side in one process -> OUT_DIR/bench/*.json
# 2. full-scale searches on the full Fashion-MNIST training set (fmnist-paper preset):
#    DARTS, BaLeNAS M=1, BaLeNAS M=3 (seed 0), each bounded by SEARCH_TIMEOUT_S and
#    checkpointed every epoch (resume later with --resume RUN_DIR)
# 3. exports the finished runs (no checkpoints) -> OUT_DIR/full-scale/ + summary.json
#
# On the lent device machine (carry the four Fashion-MNIST .gz files in an ignored folder):
#   mkdir -p .carry/fmnist && cp ../shared/data/fashion-mnist/*.gz .carry/fmnist/
#   run: bash scripts/gpu_check.sh /tmp/gpu .carry/fmnist 50 420 && cp /tmp/gpu/results.tgz $OUT/
#   (carry: [".carry"]); then unpack results.tgz into assets/ (bench/ and results/full-scale/).
#
# Environment overrides, for a dry run on a CPU: DEVICE (default cuda), BENCH_ARGS (default
# "--preset nb201-paper --steps 20 --warmup 5"), RUN_ARGS (extra search flags, default none).
#
# FMNIST_ROOT holds FashionMNIST/raw/*-ubyte, or the four original *-ubyte.gz files
# (unpacked once into ~/.cache/bayesnas). Needs torch, torchvision,
# numpy, tqdm and scipy, which the lent GPU machines have; run from the repo root.
set -uo pipefail
out=${1:?OUT_DIR}; root=${2:?FMNIST_ROOT}; epochs=${3:-50}; limit=${4:-420}
device=${DEVICE:-cuda}; bench_args=${BENCH_ARGS:---preset nb201-paper --steps 20 --warmup 5}
run_args=${RUN_ARGS:-}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out/runs"
if [ "$device" != cpu ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
fi
# shellcheck disable=SC2086
timeout 240 python3 -m bayesnas_core.bench --device "$device" $bench_args --mc 1 3 \
    --out "$out/bench" 2>&1 | tee "$out/bench.log"
for spec in "darts 1" "balenas 3" "balenas 1"; do
  set -- $spec
  # shellcheck disable=SC2086
  /usr/bin/time -f "%e s wall" timeout "$limit" python3 -m bayesnas_core.run --preset fmnist-paper \
      --device "$device" --data-root "$root" --method "$1" --mc-samples "$2" --epochs "$epochs" \
      --seed 0 --out "$out/runs" --no-progress $run_args 2>&1 | tee "$out/run-$1-m$2.log"
done
done_runs=$(ls -d "$out"/runs/*/ 2>/dev/null | while read -r d; do [ -f "$d/result.json" ] && echo "$d"; done)
[ -n "$done_runs" ] && python3 -m bayesnas_core.run export $done_runs --to "$out/full-scale"
# one archive of everything but checkpoints (the device tool returns few, shallow files)
tar -czf "$out/results.tgz" -C "$out" --exclude=runs --exclude=results.tgz .
ls -R "$out" | head -50
