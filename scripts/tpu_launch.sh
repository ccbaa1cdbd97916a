#!/usr/bin/env bash
# Start a training run on the TPU VM (worker 0 of a pod slice) inside tmux, after checking
# that the output bucket is writable. The run outlives the ssh session. A rerun with the
# same OUTPUT resumes from its last checkpoint. One host: --tpu local. A pod slice: --tpu
# TPU_NAME, which reaches every host; the hosts' TPU runtime owns the chips, so this
# process does not load libtpu itself (TPU_LOAD_LIBRARY=0).
#   bash scripts/tpu_launch.sh
set -euo pipefail
# shellcheck source=scripts/tpu_env.sh
. "$(dirname "$0")/tpu_env.sh"
require PROJECT ZONE TPU_NAME BUCKET CONFIG DATA OUTPUT TMUX_SESSION LOG

read -r -d '' body <<'REMOTE' || true
set -euo pipefail
if tmux has-session -t "$TMUX_SESSION" 2>/dev/null; then
  echo "error: tmux session '$TMUX_SESSION' exists on this VM (a run in progress or" \
       "finished): look at it with tmux attach -t $TMUX_SESSION, end it with" \
       "tmux kill-session -t $TMUX_SESSION, or set TMUX_SESSION" >&2
  exit 1
fi
py="$HOME/$VENV/bin/python"
cd "$HOME/$REMOTE_DIR"
"$py" -m pretrain.gcs preflight --path "$OUTPUT"
read -r -a extra <<< "$RUN_FLAGS"
tpu=local
prefix=()
if [ "$HOSTS" -gt 1 ]; then
  tpu="$TPU_NAME"
  prefix=(env TPU_LOAD_LIBRARY=0)
fi
cmd=("${prefix[@]}" "$py" pretrain/run.py --config "$CONFIG" --tpu "$tpu" --data "$DATA"
     --output "$OUTPUT" "${extra[@]}")
line="$(printf '%q ' "${cmd[@]}") 2>&1 | tee -a $(printf '%q' "$HOME/$LOG")"
tmux new-session -d -s "$TMUX_SESSION" -c "$HOME/$REMOTE_DIR" \
  "$line; echo; echo 'run ended; this window stays open (exit to close it)'; exec bash"
echo "started in tmux session $TMUX_SESSION on $(hostname): ${cmd[*]}"
REMOTE
WORKER=0 tpu_bash "$(declare -p VENV REMOTE_DIR CONFIG DATA OUTPUT RUN_FLAGS TMUX_SESSION LOG \
  HOSTS TPU_NAME)
$body"

ssh_cmd="gcloud compute tpus tpu-vm ssh $TPU_NAME --project $PROJECT --zone $ZONE --worker 0"
echo "watch it:   $ssh_cmd --command 'tmux attach -t $TMUX_SESSION' -- -t"
echo "last lines: $ssh_cmd --command 'tail -n 40 ~/$LOG'"
echo "when done:  bash scripts/tpu_fetch.sh, then bash scripts/tpu_delete.sh"
