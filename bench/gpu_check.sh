#!/usr/bin/env bash
# The device check, for a session that is lent a GPU: CUDA tests, then the GPU benchmarks.
# Runs on the device machine from the repository root, with torch+CUDA already installed there:
#   bash bench/gpu_check.sh            # results under $OUT (or bench/results/ without $OUT)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
"$PYTHON" -m pip install -q -e . --no-deps >/dev/null 2>&1 || true
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/gpu_env.txt"
# every test that runs on CUDA when it is there (dense path, sparse CUDA backends)
"$PYTHON" -m pytest -q -x tests/solve tests/test_layer.py -k "cuda or device" 2>&1 | tail -20 | tee "$OUT/gpu_tests.txt"
for script in bench_curve_fit bench_layer; do
    timeout 240 "$PYTHON" "bench/$script.py" --device cuda > "$OUT/$script-cuda.jsonl" 2> "$OUT/$script-cuda.md"
    tail -40 "$OUT/$script-cuda.md"
done
