#!/usr/bin/env bash
# The issue-19 GPU benchmark as one short run (about 5 minutes on one H200 with 16 cores; at most
# 590 s, the sum of the steps' timeouts: run it with a 600 s limit):
#   OUT=/some/dir bash benchmarks/serving_gpu.sh
# Needs python3 with torch (CUDA), onnxruntime (onnxruntime-gpu for its CUDA provider; without it
# the cloud runs its tails on torch's CUDA and the report says so), onnx, grpcio, numpy; installs
# nothing. Writes under $OUT (default benchmarks/results/gpu):
#   env.txt               GPU, driver, torch / ONNX Runtime versions and providers
#   tail_devices.md/json  batch-64 tails of he-cifar-cnn and resnet18: ONNX Runtime and torch on the
#                         CPU (1 and all cores) against ONNX Runtime's CUDA provider and torch on CUDA
#   serving-cuda.md/json  the whole pipeline (edge heads and cloud tails on CUDA), he-cifar-cnn
#   serving-cpu.md/json   the same pipeline on the CPU of that machine, for the ratio
# Each step has its own timeout, so a slow one cannot eat the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" SPLITLAB_THREADS=1
mkdir -p "$OUT"
CORES=$(nproc)
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PY" -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.cuda.is_available()); print('onnxruntime', o.__version__, o.get_available_providers())" 2>&1
  "$PY" -c "from cloud_server.placement import ort_cuda_status; print('ONNX Runtime CUDA usable:', ort_cuda_status())" 2>&1
} > "$OUT/env.txt"
cat "$OUT/env.txt"
status=0
timeout 240 "$PY" -m benchmarks.tail_devices --models he-cifar-cnn resnet18 --cpu-threads 1 "$CORES" \
  --out "$OUT/tail_devices.md" --json "$OUT/tail_devices.json" 2>&1 | tee "$OUT/tail_devices.log" || status=1
timeout 200 "$PY" -m benchmarks.serving --quick --device cuda --models he-cifar-cnn \
  --out "$OUT/serving-cuda.md" --json "$OUT/serving-cuda.json" 2>&1 | tee "$OUT/serving-cuda.log" || status=1
timeout 150 "$PY" -m benchmarks.serving --quick --device cpu --models he-cifar-cnn \
  --out "$OUT/serving-cpu.md" --json "$OUT/serving-cpu.json" 2>&1 | tee "$OUT/serving-cpu.log" || status=1
exit $status
