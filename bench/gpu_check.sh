#!/usr/bin/env bash
# The device check, for a session that is lent a GPU: environment, CUDA tests, then the GPU
# benchmarks, in one command that ends within GPU_CHECK_BUDGET seconds (default 480: 8 minutes;
# every step runs under `timeout`, and a step is skipped when too little of the budget is left).
# Runs on the device machine from the repository root, with torch+CUDA already installed there:
#   bash bench/gpu_check.sh            # results under $OUT (or bench/results/ without $OUT)
# Optional: PYTHON (default `python` from PATH, else `python3`), JAX_PYTHON (the python that runs Optimistix;
# default the same one: JAX with CUDA is expected beside torch there, and without it the
# Optimistix lines say why they are skipped), GPU_CHECK_BUDGET.
#
# At most 8 files (what the device tool brings back), all in $OUT:
#   gpu_check.log                  environment, every step's timeout/rc/seconds, test tails,
#                                  the tables and the acceptance verdicts
#   gpu_tests.txt                  pytest output: `-m cuda` over tests/, then test_cuda_graph.py
#   optimistix_cuda.jsonl / .md    bench_optimistix.py --device cuda: quadratic and exponential
#                                  fits, forward + backward, GPU acceptance (in the .md)
#   optimistix_cuda_rotation.jsonl the rotation fit, if time remains
#   check_every_cuda.jsonl         bench_check_every.py --device cuda --repeats 7
#   curve_fit_cuda.txt, layer_cuda.txt   bench_curve_fit / bench_layer on cuda, if time remains
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
OUT="${OUT:-bench/results}"
BUDGET="${GPU_CHECK_BUDGET:-480}"
JAX_PYTHON="${JAX_PYTHON:-$(command -v "$PYTHON")}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
TESTS="$OUT/gpu_tests.txt"
: >"$LOG"
: >"$TESTS"
export PYTHONUNBUFFERED=1
# nlls importable from the checkout even if the editable install below fails (no network there)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

log() { echo "$*" | tee -a "$LOG"; }

# step NAME CAP MIN STDOUT STDERR COMMAND...: COMMAND under `timeout`, for CAP seconds or what is
# left of the budget (less a 20 s reserve), skipped when that is under MIN; output appended to
# the files STDOUT and STDERR (the same file for both is fine)
step() {
    local name="$1" cap="$2" min="$3" out="$4" err="$5"
    shift 5
    local limit=$((BUDGET - SECONDS - 20))
    ((limit > cap)) && limit=$cap
    if ((limit < min)); then
        log "== $name: skipped (${limit} s of the budget left, needs ${min} s)"
        return 0
    fi
    log "== $name: start at ${SECONDS} s, timeout ${limit} s"
    local begin=$SECONDS rc
    if [ "$out" = "$err" ]; then
        timeout -k 15 "$limit" "$@" >>"$out" 2>&1
    else
        timeout -k 15 "$limit" "$@" >>"$out" 2>>"$err"
    fi
    rc=$?
    log "== $name: rc=$rc after $((SECONDS - begin)) s$([ "$rc" = 124 ] && echo ' (timed out)')"
}

log "== environment ($(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET} s)"
{
    uname -srm
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,compute_mode --format=csv \
        2>&1 || echo "nvidia-smi not available"
    timeout 60 "$PYTHON" - <<'EOF'
import sys
import torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
    # JAX in a process of its own (it never shares one with torch), without taking GPU memory
    XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 90 "$JAX_PYTHON" - <<'EOF'
try:
    import jax
    print("jax", jax.__version__, "backend", jax.default_backend(), "devices", jax.devices())
    import optimistix
    print("optimistix", optimistix.__version__)
except Exception as exc:  # reported, not fatal: the Optimistix lines then say skipped
    print("jax/optimistix not usable here:", type(exc).__name__, str(exc)[:200])
EOF
} 2>&1 | tee -a "$LOG"
log "JAX_PYTHON=$JAX_PYTHON"

# the editable install, offline (the device machine reaches no package index)
timeout 120 "$PYTHON" -m pip install -q --no-deps --no-index --no-build-isolation -e . >>"$LOG" 2>&1 \
    || log "pip install -e . failed: nlls comes from the checkout through PYTHONPATH"

# every test marked cuda, then the whole CUDA-graph test file (its CPU stand-in tests included)
step "pytest -m cuda" 150 30 "$TESTS" "$TESTS" "$PYTHON" -m pytest -q -p no:cacheprovider tests -m cuda
step "pytest test_cuda_graph.py" 100 20 "$TESTS" "$TESTS" \
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/solve/test_cuda_graph.py
tail -25 "$TESTS" | tee -a "$LOG"

# nlls beside Optimistix on the GPU: the acceptance problems and the gradients first (~2-4 min:
# every shape compiles once in XLA and captures once in a CUDA graph before it is timed)
step "bench_optimistix (quadratic, exponential, grad)" 270 120 /dev/null "$LOG" \
    "$PYTHON" bench/bench_optimistix.py --device cuda --problems quadratic,exponential \
    --repeats 10 --max-seconds 4 --warmup 2 --jax-python "$JAX_PYTHON" \
    --output "$OUT/optimistix_cuda.jsonl"
step "bench_check_every" 75 30 "$OUT/check_every_cuda.jsonl" "$LOG" \
    "$PYTHON" bench/bench_check_every.py --device cuda --repeats 7
step "bench_optimistix (rotation)" 90 45 "$OUT/optimistix_cuda_rotation.jsonl" "$LOG" \
    "$PYTHON" bench/bench_optimistix.py --device cuda --problems rotation --grad-batch-sizes "" \
    --repeats 10 --max-seconds 4 --warmup 2 --jax-python "$JAX_PYTHON" --output ""
step "bench_curve_fit" 90 60 "$OUT/curve_fit_cuda.txt" "$OUT/curve_fit_cuda.txt" \
    "$PYTHON" bench/bench_curve_fit.py --device cuda --methods handwritten,nlls_analytic,nlls_autodiff \
    --repeats 5 --max-seconds 5
step "bench_layer" 90 60 "$OUT/layer_cuda.txt" "$OUT/layer_cuda.txt" \
    "$PYTHON" bench/bench_layer.py --device cuda --no-theseus --repeats 5
log "== done at ${SECONDS} s of ${BUDGET} s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
