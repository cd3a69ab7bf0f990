#!/usr/bin/env bash
# Issue 2's GPU checks as one run on a lent GPU machine, results under OUT_DIR (default $OUT):
#   1. pytest -m gpu tests/unidiffuser/test_gpu.py   (every dtype, determinism, CUDA fp32 vs CPU)
#   2. bench/engine.py --full-size --uvit-h, bf16, batch 8, 20 steps: end-to-end ratio against diffusers,
#      peak GPU memory per mode, U-ViT-H forward MFU
# Prepare here first with `bash bench/gpu/wheels.sh`; then the device call is
#   run(command="bash bench/gpu/check.sh", carry=[".whl"], timeout_s=540)
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-${OUT:?give an output folder}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import platform, torch, diffusers, transformers; print(platform.python_version(), "torch",
torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__)'
} 2>&1 | tee "$out/machine.txt"

timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/unidiffuser/test_gpu.py 2>&1 \
  | tee "$out/test_gpu.log"
tests=${PIPESTATUS[0]}

timeout 330 python3 bench/engine.py --full-size --uvit-h --device cuda --dtype bfloat16 --steps 20 \
  --repeats 2 --json "$out/engine_gpu.json" 2>&1 | tee "$out/engine_gpu.log"
bench=${PIPESTATUS[0]}

echo "gpu tests exit $tests, engine benchmark exit $bench" | tee -a "$out/machine.txt"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
