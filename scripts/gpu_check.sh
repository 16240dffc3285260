#!/usr/bin/env bash
# One command for a GPU session (issue: fast search engine), bounded by a deadline.
#
#   bash scripts/gpu_check.sh OUT_DIR FMNIST_ROOT [BUDGET_S] [EPOCHS]
#
# In order, each step bounded by what is left of BUDGET_S (default 560 s), each writing
# into OUT_DIR as it finishes (at most 8 files, no deep folders: what the device tool
# returns):
# 1. the CUDA tests (graph replay == eager engine; graph search == plain path)  -> tests.log
# 2. the speed benchmark at paper settings (NB201 C=16, N=5, batch 64, 25k/25k), plain,
#    fast and graph paths side by side in one process                             -> bench-*.json
# 3. full-scale searches on the full Fashion-MNIST training set (fmnist-paper preset):
#    BaLeNAS M=3, DARTS, BaLeNAS M=1 (seed 0), one after another while time is left  -> runs.tgz
#    (finished runs as exported records; an unfinished one whole, checkpoint included, so
#    that `python -m bayesnas_core.run --resume RUN_DIR` continues it on a later GPU)
#
# On the lent device machine (carry the four Fashion-MNIST .gz files in an ignored folder):
#   mkdir -p .carry/fmnist && cp ../shared/data/fashion-mnist/*.gz .carry/fmnist/
#   run (carry [".carry"]): bash scripts/gpu_check.sh $OUT .carry/fmnist 560
# then unpack runs.tgz into assets/results/full-scale/ and copy bench-*.json to assets/bench/.
#
# Environment overrides, for a dry run on a CPU: DEVICE (default cuda), BENCH_ARGS (default
# "--preset nb201-paper --steps 100 --plain-steps 5 --warmup 3"), RUN_ARGS (extra search flags).
set -uo pipefail
out=${1:?OUT_DIR}; root=${2:?FMNIST_ROOT}; budget=${3:-560}; epochs=${4:-50}
device=${DEVICE:-cuda}
bench_args=${BENCH_ARGS:---preset nb201-paper --steps 100 --plain-steps 5 --warmup 3}
run_args=${RUN_ARGS:-}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }
mkdir -p "$out"
work=$(mktemp -d)
{
  date -u; uname -m
  python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"
  [ "$device" != cpu ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
} > "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

if [ "$device" != cpu ]; then
  timeout 120 python3 -m pytest -q -o addopts="" -p no:cacheprovider -k cuda tests/test_engine.py \
      2>&1 | tee "$out/tests.log"
  if [ "${PIPESTATUS[0]}" -ne 0 ]; then  # keep the searches going on the eager fast path
    echo "CUDA tests failed: searches run with --no-cuda-graph" | tee -a "$out/tests.log"
    run_args="$run_args --no-cuda-graph"
  fi
fi

# shellcheck disable=SC2086
timeout $(( $(left) < 170 ? $(left) : 170 )) python3 -m bayesnas_core.bench --device "$device" \
    $bench_args --mc 1 3 --out "$out" 2>&1 | tee "$out/bench.log"

for spec in "balenas 3" "darts 1" "balenas 1"; do
  set -- $spec
  t=$(( $(left) - 25 ))
  if [ "$t" -lt 30 ]; then echo "no time left for $1 M=$2" | tee -a "$out/runs.log"; continue; fi
  echo "== $1 M=$2, at most $t s" | tee -a "$out/runs.log"
  t0=$(date +%s)
  # shellcheck disable=SC2086
  timeout "$t" python3 -m bayesnas_core.run --preset fmnist-paper \
      --device "$device" --data-root "$root" --method "$1" --mc-samples "$2" --epochs "$epochs" \
      --seed 0 --out "$work/runs" --no-progress $run_args 2>&1 | tee -a "$out/runs.log"
  echo "== $1 M=$2: exit ${PIPESTATUS[0]}, $(( $(date +%s) - t0 )) s wall (process)" | tee -a "$out/runs.log"
done

mkdir -p "$work/export"
finished=()
for d in "$work"/runs/*/; do
  [ -d "$d" ] || continue
  if [ -f "$d/result.json" ]; then finished+=("$d"); else mkdir -p "$work/export/unfinished" && cp -r "$d" "$work/export/unfinished/"; fi
done
[ ${#finished[@]} -gt 0 ] && python3 -m bayesnas_core.run export "${finished[@]}" --to "$work/export" 2>&1 | tee -a "$out/runs.log"
tar -czf "$out/runs.tgz" -C "$work/export" .
ls -la "$out"
echo "total $(( $(date +%s) - start )) s"
