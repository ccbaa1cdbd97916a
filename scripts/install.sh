#!/usr/bin/env bash
# Install pretrain and its dependencies into the current Python environment.
#   bash scripts/install.sh          # runtime only
#   bash scripts/install.sh --dev    # + test tools (pytest, GCS emulator, nbclient, rjieba)
#                                    #   and the HF export extra (CPU torch 2.13.0, transformers)
# bert4keras is installed with --no-deps: its metadata pins keras<=2.3.1,
# which conflicts with tf-keras 2.21 although the code runs fine on it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
extra=""
"$PY" -m pip install --upgrade pip
if [ "${1:-}" = "--dev" ]; then
  extra="[dev,hf]"
  # Pinned first so the hf extra's `torch` is already satisfied by the CPU
  # build instead of resolving to a multi-GB CUDA one.
  "$PY" -m pip install "torch==2.13.0"
fi
"$PY" -m pip install -e ".${extra}"
"$PY" -m pip install --no-deps "bert4keras==0.11.5"
"$PY" -c "import pretrain, bert4keras, tensorflow as tf; print('pretrain ready: tensorflow', tf.__version__, 'bert4keras', bert4keras.__version__)"
