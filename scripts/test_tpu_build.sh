#!/usr/bin/env bash
# The trainer (test_train.py: the step, accumulation, resume,
# dropout; its failure paths do not depend on the build), export (writing,
# reloading, importing), SimBERT and doctor tests on the TPU build of
# TensorFlow (tensorflow-tpu 2.20.0, which also runs on a CPU machine), in a
# fresh venv made by `scripts/install.sh --device tpu --dev`.
#   bash scripts/test_tpu_build.sh                 # make the venv in .venv-tpu ($TPU_VENV), test
#   bash scripts/test_tpu_build.sh --install-only  # only make the venv
#   bash scripts/test_tpu_build.sh --tests-only    # only test, in the venv made before
# The venv first gets the CPU build, as an earlier install may have left it:
# the TPU install must replace it, and a rerun must leave TensorFlow working.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TPU_VENV:-.venv-tpu}
PY=${PYTHON:-python}
mode=${1:-all}
case "$mode" in all|--install-only|--tests-only) ;; *) echo "usage: $0 [--install-only|--tests-only]" >&2; exit 2 ;; esac
if [ "$mode" != --tests-only ]; then
  rm -rf "$venv"
  "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --no-deps "tensorflow==2.21.0"
  PYTHON="$venv/bin/python" bash scripts/install.sh --device tpu --dev
  PYTHON="$venv/bin/python" bash scripts/install.sh --device tpu  # the rerun
fi
if [ "$mode" != --install-only ]; then
  # Of the export tests, those that write, reload and import checkpoints
  # (the rest is file handling that does not depend on the build). Left to
  # the TF 2.21 suite, as their code does not depend on the build either: the
  # notebook (the same run.py as the trainer tests), MirroredStrategy over
  # logical CPUs (a TPU runs TPUStrategy), TensorBoard events, the T5s replay
  # of the dropout that the resume test replays, SimBERT's two Keras fits
  # (held-out quality, overfitting a few groups) and its TensorFlow-free data
  # tests; SimBERT's model, loss, reader, export and trainer check stay.
  e=tests/test_export.py t=tests/test_train.py s=tests/test_simbert.py
  "$venv/bin/python" -m pytest -q -n auto --dist loadfile --no-loadscope-reorder "$t" tests/test_doctor.py \
    --deselect "$t::test_mirrored_strategy_over_two_cpus_matches_one_device" \
    --deselect "$t::test_tensorboard_events_hold_train_and_eval_scalars" \
    --deselect "$t::test_t5s_dropout_replays_after_resume_whatever_the_import_order" \
    "$s::test_dataset_static_partners_deterministic_resumable_and_sharded" \
    "$s::test_forward_loss_matches_numpy_on_bert4keras_outputs" \
    "$s::test_export_reloads_to_the_same_vectors_and_the_eval_cli_runs" \
    "$s::test_trainer_refuses_an_empty_validation_split_before_the_first_step" \
    "$e::test_bert4keras_reload_reproduces_outputs" "$e::test_simbert_export_has_pool_and_unilm" \
    "$e::test_check_notices_a_swapped_pair_of_zero_free_weights" \
    "$e::test_warm_start_shrinks_vocab_with_keep_tokens" "$e::test_cli_exports_a_trainer_checkpoint" \
    "$e::test_warm_start_from_googles_layout"
fi
