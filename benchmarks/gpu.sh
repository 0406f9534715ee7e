#!/usr/bin/env bash
# GPU comparison (issue 7): W1-W4 + torchrl's GPU shapes vs cuDNN nn.LSTM and torchrl's
# pad/scan/triton backends, jaxlstm hoisted and per_step. Needs CUDA builds of jax and torch.
# Not run yet (no GPU was available); results go to benchmarks/results/gpu.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
exec timeout 480 python -m benchmarks.gpu "$@"
