#!/usr/bin/env bash
# Settings for the Cloud TPU VM scripts (tpu_create, tpu_setup, tpu_launch, tpu_fetch,
# tpu_delete). Sourced by each of them; not run on its own.
# Edit the defaults below, or override any of them from the environment:
#   BUCKET=my-bucket TPU_NAME=tpu1 bash scripts/tpu_launch.sh

# --- Google Cloud: where the TPU VM lives
PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}"
ZONE="${ZONE:-europe-west4-a}"            # v3-8 zones include europe-west4-a and us-central1-a
TPU_NAME="${TPU_NAME:-pretrain-tpu}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v3-8}"  # any slice: v3-8 (one host), v3-32 (4 hosts), ...
# The TPU VM runtime image. The base image has no TensorFlow; tpu_setup.sh installs the TPU
# build with scripts/install.sh --device tpu. The tpu-vm-tf-* images carry an older TF.
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
SPOT="${SPOT:-0}"                          # 1: a spot TPU (cheaper, can be preempted)
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-}"     # empty: the project's default compute account
SCOPES="${SCOPES:-https://www.googleapis.com/auth/cloud-platform}"  # lets the VM use GCS
WORKER="${WORKER:-0}"                      # the host that runs the training program

# --- Cloud Storage: data in, checkpoints and exports out (bucket in the TPU's region)
BUCKET="${BUCKET:-}"                       # required: the bucket name, without gs://
RUN_NAME="${RUN_NAME:-tiny}"
DATA="${DATA:-gs://${BUCKET}/records}"     # uploaded with: python -m pretrain.gcs upload
OUTPUT="${OUTPUT:-gs://${BUCKET}/runs/${RUN_NAME}}"
EXPORT_SRC="${EXPORT_SRC:-${OUTPUT}/export}"  # run.py exports each phase under OUTPUT/export/
EXPORT_LOCAL="${EXPORT_LOCAL:-exports/${RUN_NAME}}"  # where tpu_fetch.sh puts them

# --- The run on the VM
REPO_URL="${REPO_URL:-$(git -C "$(dirname "${BASH_SOURCE[0]}")" remote get-url origin 2>/dev/null || true)}"
REPO_BRANCH="${REPO_BRANCH:-main}"
REMOTE_DIR="${REMOTE_DIR:-pretrain}"       # checkout, relative to the VM user's home
VENV="${VENV:-pretrain-venv}"              # virtualenv, relative to the VM user's home
CONFIG="${CONFIG:-roberta_tiny.json}"
RUN_FLAGS="${RUN_FLAGS:-}"                 # more run.py flags, e.g. "--precision bf16"
TMUX_SESSION="${TMUX_SESSION:-pretrain}"
LOG="${LOG:-${RUN_NAME}.log}"              # run log on the VM, relative to home
PYTHON="${PYTHON:-python}"                 # local Python with pretrain installed (tpu_fetch)

# --- Helpers

# Hosts in the slice: 8 TensorCores or chips per host (v3-32: 4 hosts; v3-8, v4-8: 1).
size="${ACCELERATOR_TYPE##*-}"
# shellcheck disable=SC2034  # read by the scripts that source this file
if [[ "$size" =~ ^[0-9]+$ ]] && [ "$size" -gt 8 ]; then
  HOSTS=$((size / 8))
else
  HOSTS=1
fi

# Fail with a message naming each required setting that is empty.
require() {
  local name missing=0
  for name in "$@"; do
    if [ -z "${!name}" ]; then
      echo "error: set $name (edit scripts/tpu_env.sh or export $name=...)" >&2
      missing=1
    fi
  done
  [ "$missing" = 0 ] || exit 2
}

# Run a bash script on the TPU VM. The caller puts the values it needs in front with
# `declare -p`, so no value is ever re-parsed by a shell on the way.
tpu_bash() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project "$PROJECT" --zone "$ZONE" \
    --worker "$WORKER" --command "bash -c $(printf '%q' "$1")"
}
