#!/usr/bin/env bash
# The tests marked tpu_build (the trainer, export, SimBERT and doctor tests
# whose code depends on the build; see below) on the TPU build of
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
  # The tests marked tpu_build: the trainer's (the step, accumulation,
  # resume, dropout; its failure paths do not depend on the build), the
  # doctor's, and of the export tests those that write, reload and import
  # checkpoints (the rest is file handling that does not depend on the build).
  # Left to the TF 2.21 suite, as their code does not depend on the build
  # either: the notebook (the same run.py as the trainer tests),
  # MirroredStrategy over logical CPUs (a TPU runs TPUStrategy), TensorBoard
  # events, the T5s replay of the dropout that the resume test replays,
  # SimBERT's two Keras fits (held-out quality, overfitting a few groups) and
  # its TensorFlow-free data tests; SimBERT's model, loss, reader, export and
  # trainer check stay.
  "$venv/bin/python" -m pytest -q -n auto --dist loadfile --no-loadscope-reorder -m tpu_build tests
fi
