#!/usr/bin/env bash
# One command for a GPU session (issue: fast search engine), bounded by a deadline.
#
#   bash scripts/gpu_check.sh OUT_DIR FMNIST_ROOT [BUDGET_S] [EPOCHS]
#
# In order, each step bounded by what is left of BUDGET_S (default 540 s), each writing
# into OUT_DIR as it finishes (the device tool returns at most 8 files of 16 MiB, no deep
# folders):
# 1. checks.log: the GPU, versions, and the CUDA tests (graph replay == eager engine,
#    graph search == plain path, for every cell implementation, in first and second order)
# 2. bench-cuda-*.json, bench.log: the speed benchmark at paper settings (NB201 C=16, N=5,
#    batch 64, 25k/25k): plain, fast, graph, graph-conv and compiled side by side in one process;
#    then bench-cuda-nb201-paper-o12-*.json (its log appended to bench.log): second order
#    beside first order, plain and graph, at most 120 s
# 3. run-*.tgz, runs.log: full-scale searches on the full Fashion-MNIST training set
#    (fmnist-paper preset), seed 0, one after another while time is left: first the runs
#    carried in RESUME_DIR (default .carry/resume, each a run directory with its
#    checkpoint, resumed with --resume), then those of BaLeNAS M=3, DARTS, BaLeNAS M=1 that
#    were not carried. All of them use the fastest of graph, graph-conv and compiled (from
#    the bench; compiled only once its search check passes on the GPU; a speed option may
#    change on resume). Each run comes back whole, checkpoint included, so an unfinished one can be
#    carried in RESUME_DIR next time.
#
# On the lent device machine (carry the four Fashion-MNIST .gz files in an ignored folder):
#   mkdir -p .carry/fmnist && cp ../shared/data/fashion-mnist/*.gz .carry/fmnist/
#   run (carry [".carry"]): bash scripts/gpu_check.sh $OUT .carry/fmnist 540
# then: bench JSON -> assets/bench/; finished runs: `python -m bayesnas_core.run export
# RUN_DIR... --to assets/results/full-scale`; unfinished ones -> .carry/resume/, and a
# second call goes straight to them: SEARCH_PATH=<path chosen> bash scripts/gpu_check.sh ...
#
# Environment overrides, for a dry run on a CPU: DEVICE (default cuda), BENCH_ARGS (default
# "--preset nb201-paper --steps 100 --plain-steps 5 --warmup 3 --paths plain fast graph
# graph-conv compiled"), BENCH2_ARGS (the second-order bench's, default "--preset
# nb201-paper --steps 50 --plain-steps 3 --warmup 3 --order 1 2 --mc 3 1 --paths plain
# graph"), RUN_ARGS (extra search flags), RESUME_DIR. SEARCH_PATH (graph,
# graph-conv or compiled) skips the tests and the bench and goes straight to the searches on
# that path: for a session's second call, after the first one's bench chose it.
set -uo pipefail
out=${1:?OUT_DIR}; root=${2:?FMNIST_ROOT}; budget=${3:-540}; epochs=${4:-50}
device=${DEVICE:-cuda}
bench_args=${BENCH_ARGS:---preset nb201-paper --steps 100 --plain-steps 5 --warmup 3 --paths plain fast graph graph-conv compiled}
bench2_args=${BENCH2_ARGS:---preset nb201-paper --steps 50 --plain-steps 3 --warmup 3 --order 1 2 --mc 3 1 --paths plain graph}
run_args=${RUN_ARGS:-}
resume_dir=${RESUME_DIR:-.carry/resume}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }
# at most $1 s and never past the deadline; at least 1 s (timeout 0 would mean no limit)
cap() { local l; l=$(left); (( l > $1 )) && l=$1; echo $(( l < 1 ? 1 : l )); }
mkdir -p "$out"
work=$(mktemp -d)
{
  date -u; uname -m
  python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"
  [ "$device" != cpu ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
} > "$out/checks.log" 2>&1
cat "$out/checks.log"

check_and_bench() {  # sets $choice: the path the searches use
  if [ "$device" != cpu ]; then
    # the CUDA tests only (seconds); the compile tests pass on a CPU with BAYESNAS_COMPILE_TESTS=1
    # and would spend minutes of device time compiling tiny graphs
    timeout "$(cap 120)" python3 -m pytest -q -o addopts="" -p no:cacheprovider -k "cuda and not compile" \
        tests/test_engine.py 2>&1 | tee -a "$out/checks.log"
    if [ "${PIPESTATUS[0]}" -ne 0 ]; then
      echo "CUDA tests failed: see above" | tee -a "$out/checks.log"
    fi
  fi

  # M=3 first: its rows pick the searches' path, so a cut-short bench still has them
  # shellcheck disable=SC2086
  timeout "$(cap 260)" python3 -m bayesnas_core.bench --device "$device" $bench_args --mc 3 1 \
      --out "$out" 2>&1 | tee "$out/bench.log"
  # the fastest working fast path for the searches: from the M=3 rows, else from any rows
  local ranking next
  ranking=$(python3 - "$out" <<'PY'
import glob, json, sys
rows = [r for f in glob.glob(sys.argv[1] + "/bench-*.json") for r in json.load(open(f))["rows"]
        if "error" not in r and r.get("order", 1) == 1 and r["path"] in ("graph", "graph-conv", "compiled")]
best = {}
for r in sorted(rows, key=lambda r: r.get("mc_samples") != 3):  # M=3 rows win ties of path
    best.setdefault(r["path"], r["ms_per_step"])
print(" ".join(sorted(best, key=best.get)) or "graph")
PY
)
  choice=${ranking%% *}
  if [ "$choice" = compiled ] && [ "$device" != cpu ]; then
    # compiled cells have been checked against the eager ones on a CPU only: check the
    # compiled search on this GPU before trusting it with the runs, else take the runner-up
    timeout "$(cap 150)" python3 -m pytest -q -o addopts="" -p no:cacheprovider \
        -k "search_with_compiled_cells" tests/test_engine.py 2>&1 | tee -a "$out/checks.log"
    if [ "${PIPESTATUS[0]}" -ne 0 ]; then
      next=$(echo "$ranking" | awk '{print $2}')
      echo "compiled search check failed: using ${next:-graph} instead" | tee -a "$out/checks.log"
      choice=${next:-graph}
    fi
  fi

  # second order beside first order (issue goal: within 2.5x), after the path is chosen
  # shellcheck disable=SC2086
  timeout "$(cap 120)" python3 -m bayesnas_core.bench --device "$device" $bench2_args \
      --out "$out" 2>&1 | tee -a "$out/bench.log"
}
if [ -n "${SEARCH_PATH:-}" ]; then  # a later call of the session: straight to the searches
  choice=$SEARCH_PATH
  echo "SEARCH_PATH=$choice: tests and bench skipped" | tee -a "$out/checks.log"
else
  check_and_bench
fi
speed_args=""
[ "$choice" = compiled ] && speed_args="--compile-cells --cell-impl elementwise"
[ "$choice" = graph-conv ] && speed_args="--cell-impl conv"
echo "searches use the $choice path" | tee -a "$out/runs.log"

one_run() {  # $1: label, rest: arguments of bayesnas_core.run
  local label=$1; shift
  local t; t=$(( $(left) - 30 ))
  if [ "$t" -lt 30 ]; then echo "no time left for $label" | tee -a "$out/runs.log"; return; fi
  echo "== $label, at most $t s" | tee -a "$out/runs.log"
  local t0; t0=$(date +%s)
  timeout "$t" python3 -m bayesnas_core.run "$@" --no-progress 2>&1 | tee -a "$out/runs.log"
  echo "== $label: exit ${PIPESTATUS[0]}, $(( $(date +%s) - t0 )) s wall (process)" | tee -a "$out/runs.log"
}
carried=""
for d in "$resume_dir"/*/; do
  [ -f "$d/checkpoint.pt" ] || continue
  carried="$carried $(basename "$d")"
  # shellcheck disable=SC2086
  one_run "resume $(basename "$d")" --resume "$d" --device "$device" $speed_args
  mkdir -p "$work/runs" && cp -r "$d" "$work/runs/"
done
for spec in "balenas 3 -balenas-o1-m3-s0" "darts 1 -darts-o1-s0" "balenas 1 -balenas-o1-m1-s0"; do
  set -- $spec
  case "$carried" in *"$3"*) continue ;; esac  # carried in and resumed above
  # shellcheck disable=SC2086
  one_run "$1 M=$2" --preset fmnist-paper --device "$device" --data-root "$root" --method "$1" \
      --mc-samples "$2" --epochs "$epochs" --seed 0 --out "$work/runs" $run_args $speed_args
done
for d in "$work"/runs/*/; do
  [ -d "$d" ] || continue
  tar -czf "$out/run-$(basename "$d").tgz" -C "$work/runs" "$(basename "$d")"
done
ls -la "$out"
echo "total $(( $(date +%s) - start )) s"
