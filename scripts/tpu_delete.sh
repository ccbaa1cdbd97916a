#!/usr/bin/env bash
# Delete the TPU VM (it bills while it exists). Checkpoints and exports in the bucket stay.
# gcloud asks for confirmation.
#   bash scripts/tpu_delete.sh
set -euo pipefail
# shellcheck source=scripts/tpu_env.sh
. "$(dirname "$0")/tpu_env.sh"
require PROJECT ZONE TPU_NAME
gcloud compute tpus tpu-vm delete "$TPU_NAME" --project "$PROJECT" --zone "$ZONE"
