#!/usr/bin/env bash
# Create the Cloud TPU VM described in scripts/tpu_env.sh (does nothing if it exists).
#   bash scripts/tpu_create.sh
set -euo pipefail
# shellcheck source=scripts/tpu_env.sh
. "$(dirname "$0")/tpu_env.sh"
require PROJECT ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION

if gcloud compute tpus tpu-vm describe "$TPU_NAME" --project "$PROJECT" --zone "$ZONE" \
    >/dev/null 2>&1; then
  echo "TPU VM $TPU_NAME already exists in $ZONE; next: bash scripts/tpu_setup.sh"
  exit 0
fi

args=(--project "$PROJECT" --zone "$ZONE" --accelerator-type "$ACCELERATOR_TYPE"
      --version "$RUNTIME_VERSION" --scopes "$SCOPES")
if [ "$SPOT" = 1 ]; then args+=(--spot); fi
if [ -n "$SERVICE_ACCOUNT" ]; then args+=(--service-account "$SERVICE_ACCOUNT"); fi

gcloud compute tpus tpu-vm create "$TPU_NAME" "${args[@]}"
echo "created $ACCELERATOR_TYPE TPU VM $TPU_NAME in $ZONE; next: bash scripts/tpu_setup.sh"
