#!/usr/bin/env bash
# The trainer (test_train.py: the step, accumulation, resume, strategies,
# dropout; its failure paths do not depend on the build), export, SimBERT,
# notebook and doctor tests on the TPU build of
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
  "$venv/bin/python" -m pytest -q -n auto --dist loadfile tests/test_train.py \
    tests/test_export.py tests/test_simbert.py tests/test_notebook.py tests/test_doctor.py
fi
