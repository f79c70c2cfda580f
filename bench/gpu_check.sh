#!/usr/bin/env bash
# Check cnnstress on a GPU in under 9 minutes, from the repository root:
#
#   bash bench/gpu_check.sh                # every step on the first CUDA GPU
#   bash bench/gpu_check.sh --device cpu   # the same steps, tiny, on the CPU
#   bash bench/gpu_check.sh --data /data/cifar10.zip   # real images instead of synthetic ones
#
# What it needs: Python >= 3.10 with the project's dependencies (pyproject.toml: torch with CUDA,
# torchvision, lightning, hydra-core, torchmetrics, grad-cam, ...). It uses, in this order,
# $PYTHON, the project's .venv/bin/python, or python3 from PATH; it runs the checkout's code
# (PYTHONPATH=src), so no install of cnnstress itself is needed. When that Python lacks a
# dependency it says which and tries `pip install -e .` (which needs a package index; the
# device machines are offline, so prepare the environment there beforehand). No dataset is
# needed: without --data it makes a synthetic CIFAR-10-layout zip.
#
# Steps and what each prints: see bench/gpu_check.py. The log (every process's output) and the
# run directories go to $OUT when set, else bench/gpu_check_out/. Exit status 1 when a step
# failed. Record the numbers per card in bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
  py=.venv/bin/python
else
  py="$(command -v python3 || command -v python)"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export CNNSTRESS_ROOT="$PWD"

need='import torch, torchvision, lightning, hydra, omegaconf, torchmetrics, pytorch_grad_cam, matplotlib, scipy, statsmodels, tensorboard'
if ! "$py" -c "$need" 2>/dev/null; then
  echo "gpu_check: $py lacks a dependency:" >&2
  "$py" -c "$need" 2>&1 | tail -1 >&2 || true
  echo "gpu_check: trying pip install -e . (needs a package index)" >&2
  "$py" -m pip install -q -e . >&2
fi

out="${OUT:-bench/gpu_check_out}"
mkdir -p "$out"
exec "$py" bench/gpu_check.py --out "$out" "$@"
