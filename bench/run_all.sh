#!/usr/bin/env bash
# Run every benchmark in bench/ and keep its JSON lines and markdown table under bench/results/.
#   bash bench/run_all.sh                 # CPU, torch's default thread count
#   bash bench/run_all.sh --threads 1     # CPU, one thread (steadier on a shared machine)
#   bash bench/run_all.sh --device cuda   # GPU
# Extra arguments are passed to each benchmark script.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
mkdir -p bench/results
stamp="$(date +%Y%m%d-%H%M%S)"
for script in bench/bench_*.py; do
    name="$(basename "$script" .py)"
    echo "== $name $*" >&2
    "$PYTHON" "$script" "$@" \
        > "bench/results/$name-$stamp.jsonl" \
        2> >(tee "bench/results/$name-$stamp.md" >&2)
done
echo "results in bench/results/*-$stamp.*" >&2
