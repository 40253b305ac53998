#!/usr/bin/env bash
# One script for a lent GPU machine (nvcc, CuPy, PyTorch; no TensorFlow needed): builds the
# harness, runs the GPU tests and the GPU benchmark, writes everything under ${OUT:-gpu_out}.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 tests/gpu/build.py 2>&1 | tee "$OUT/build.txt"
python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_kernels.py 2>&1 | tail -40 | tee "$OUT/tests.txt"
python3 tests/gpu/bench_gpu.py --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench.txt"
