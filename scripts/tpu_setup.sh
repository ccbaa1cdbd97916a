#!/usr/bin/env bash
# Set up the TPU VM, on every host of the slice: clone (or update) this repo, install it
# into a virtualenv with scripts/install.sh --device tpu (the TPU build of TensorFlow and
# its libtpu), and on a one-host slice check that the TPU shows up. Safe to rerun.
#   bash scripts/tpu_setup.sh
set -euo pipefail
# shellcheck source=scripts/tpu_env.sh
. "$(dirname "$0")/tpu_env.sh"
require PROJECT ZONE TPU_NAME REPO_URL REPO_BRANCH REMOTE_DIR VENV

read -r -d '' body <<'REMOTE' || true
set -euo pipefail
cd "$HOME"
sudo apt-get update -qq
sudo apt-get install -y -qq git tmux python3-venv >/dev/null
if [ -d "$REMOTE_DIR/.git" ]; then
  git -C "$REMOTE_DIR" fetch -q origin "$REPO_BRANCH"
  git -C "$REMOTE_DIR" checkout -q "$REPO_BRANCH"
  git -C "$REMOTE_DIR" merge -q --ff-only "origin/$REPO_BRANCH"
else
  git clone -q -b "$REPO_BRANCH" "$REPO_URL" "$REMOTE_DIR"
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PYTHON="$HOME/$VENV/bin/python" bash "$REMOTE_DIR/scripts/install.sh" --device tpu
cd "$REMOTE_DIR"
if [ "$HOSTS" -gt 1 ]; then
  echo "pod slice of $HOSTS hosts: the TPU is checked when the run starts on worker 0"
  exit 0
fi
"$HOME/$VENV/bin/python" - <<'PY'
import pretrain  # selects tf_keras before TensorFlow loads
import tensorflow as tf
from pretrain.runtime.strategy import make_strategy
strategy = make_strategy("local")
print("TensorFlow", tf.__version__, "- TPU replicas:", strategy.num_replicas_in_sync)
PY
REMOTE
WORKER=all tpu_bash "$(declare -p REPO_URL REPO_BRANCH REMOTE_DIR VENV HOSTS)
$body"
echo "TPU VM $TPU_NAME is ready; next: bash scripts/tpu_launch.sh"
