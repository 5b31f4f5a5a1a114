#!/usr/bin/env bash
# The GPU measurements in one go: for the released recipe (EN-B4, 256 px, batch 16) with
# random-init SD 1.5, SDXL and SD3.5 Medium teachers, the memory estimate (fake tensors, on
# the CPU) beside the memory matrix it predicts (real steps, torch.cuda peaks), the
# throughput bench (with MFU) and the data wait; then the estimate-vs-measured table
# (scripts/compare_estimate.py). Needs a CUDA GPU and `make install`; nothing is downloaded.
# Usage: scripts/bench_gpu.sh [OUT_DIR]   (JSON per measurement, and a log, in OUT_DIR)
set -euo pipefail
out="${1:-results/bench-gpu}"
mkdir -p "$out"
bin="${VENV:-.venv}/bin"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$bin/python" -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" \
  | tee -a "$out/gpu.txt"
base=(recipe=official_code teacher.random_init=true backbone.random_init=true)
for teacher in sd15 sdxl sd3; do
  recipe=("${base[@]}" "teacher=$teacher")
  "$bin/ablate" bench --estimate-memory "${recipe[@]}" --json > "$out/estimate-$teacher.json"
  "$bin/ablate" bench --memory-matrix "${recipe[@]}" --device cuda --json > "$out/matrix-$teacher.json"
  "$bin/ablate" bench "${recipe[@]}" --device cuda --json > "$out/bench-$teacher.json"
done
"$bin/ablate" bench --data-wait --loader-workers 4 "${base[@]}" --device cuda --json > "$out/datawait-sd15.json"
"$bin/python" scripts/compare_estimate.py "$out" | tee "$out/estimate-vs-measured.md"
echo "done: $out"
