#!/usr/bin/env bash
# What a TensorFlow TPU build does under the PJRT variables on this machine:
# for each libtpu directory given (an unpacked libtpu wheel, e.g. made with
# `pip download --no-deps libtpu==0.0.52` and `python -m zipfile -e`), import
# TensorFlow with PJRT_DEVICE=TPU, NEXT_PLUGGABLE_DEVICE_USE_C_API=true,
# TF_PLUGGABLE_DEVICE_LIBRARY_PATH=that libtpu.so and the MLIR bridge flags,
# time the import, then ask for the local TPU. On a machine without chips this
# says which libtpu versions TF survives at import, and the error a run meets.
#   PYTHON=venv/bin/python bash scripts/tpu_pjrt_probe.sh DIR [DIR ...]
# TPU_LOAD_LIBRARY is left as the caller set it (unset: TF's legacy loader runs too).
set -uo pipefail
PY=${PYTHON:-python}
for dir in "$@"; do
  so="$dir/libtpu/libtpu.so"
  [ -f "$so" ] || { echo "$dir: no libtpu/libtpu.so" >&2; continue; }
  echo "== $(basename "$dir") TPU_LOAD_LIBRARY=${TPU_LOAD_LIBRARY-unset}"
  PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}" PJRT_DEVICE=TPU NEXT_PLUGGABLE_DEVICE_USE_C_API=true \
  TF_PLUGGABLE_DEVICE_LIBRARY_PATH="$so" \
  TF_XLA_FLAGS="--tf_mlir_enable_mlir_bridge=true --tf_mlir_enable_convert_control_to_data_outputs_pass=true --tf_mlir_enable_merge_control_flow_pass=true" \
  timeout "${PROBE_TIMEOUT:-600}" "$PY" - <<'PY' 2>&1 | grep -v '^\s*$' | tail -n "${PROBE_LINES:-6}"
import time
start = time.time()
import tensorflow as tf
print("import tensorflow %s: %.1f s; devices: %s" % (
    tf.__version__, time.time() - start,
    [d.device_type for d in tf.config.list_physical_devices()]))
try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
    tf.tpu.experimental.initialize_tpu_system(resolver)
    print("TPU initialised:", tf.config.list_logical_devices("TPU"))
except Exception as e:
    print("TPU init: %s: %s" % (type(e).__name__, str(e).strip().splitlines()[0][:300]))
PY
  echo "exit status: ${PIPESTATUS[0]}"
done
