#!/usr/bin/env bash
# The trainer, export, SimBERT, notebook and doctor tests on the TPU build of
# TensorFlow (tensorflow-tpu 2.20.0, which also runs on a CPU machine), in a
# fresh venv made by `scripts/install.sh --device tpu --dev`.
#   bash scripts/test_tpu_build.sh            # venv in .venv-tpu (or $TPU_VENV)
# The venv first gets the CPU build, as an earlier install may have left it:
# the TPU install must replace it, and a rerun must leave TensorFlow working.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TPU_VENV:-.venv-tpu}
PY=${PYTHON:-python}
rm -rf "$venv"
"$PY" -m venv "$venv"
"$venv/bin/python" -m pip install -q --no-deps "tensorflow==2.21.0"
PYTHON="$venv/bin/python" bash scripts/install.sh --device tpu --dev
PYTHON="$venv/bin/python" bash scripts/install.sh --device tpu  # the rerun
"$venv/bin/python" -m pytest -q tests/test_train.py tests/test_export.py tests/test_simbert.py \
  tests/test_notebook.py tests/test_doctor.py
