#!/usr/bin/env bash
# Copy a run's exports (bert4keras checkpoints, one folder per phase) from Cloud Storage to
# this machine. Files already here and identical are skipped; each file appears only complete.
#   bash scripts/tpu_fetch.sh
set -euo pipefail
# shellcheck source=scripts/tpu_env.sh
. "$(dirname "$0")/tpu_env.sh"
require BUCKET EXPORT_SRC EXPORT_LOCAL
cd "$(dirname "$0")/.."
"$PYTHON" -m pretrain.gcs download --src "$EXPORT_SRC" --dst "$EXPORT_LOCAL"
echo "exports in $EXPORT_LOCAL"
