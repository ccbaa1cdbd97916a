#!/usr/bin/env bash
# Install pretrain with the TensorFlow build that matches this machine's accelerator.
#   bash scripts/install.sh                 # --device auto: TPU, GPU or CPU, as detected
#   bash scripts/install.sh --device tpu    # tensorflow-tpu 2.20.0 + the libtpu of its runtime, tf-keras 2.20.1
#        [--tpu-runtime auto|pjrt|legacy]   # auto: PJRT on TPU v5e/v5p/v6e (and when no TPU is
#                                           # seen), legacy on v2-v4; TPU7x has no TF runtime
#   bash scripts/install.sh --device gpu    # tensorflow[and-cuda] 2.21.0 (CUDA libraries from pip)
#   bash scripts/install.sh --device cpu    # tensorflow 2.21.0
#   bash scripts/install.sh --dev           # + test tools and the HF export extra (any device)
#   bash scripts/install.sh --dry-run ...   # resolve and list what a fresh install would get
# Safe to rerun, also with another --device: one TensorFlow distribution stays.
#
# Why not plain `pip install -e .`:
# - the TPU, GPU and CPU builds are different distributions that all write the
#   same tensorflow/ directory, so setup.py names none and this script picks one;
# - tf-keras declares `tensorflow`, which would pull the CPU build in beside
#   tensorflow-tpu, and bert4keras 0.11.5 declares keras<=2.3.1: both go in with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
device=auto dev=0 dry=0 tpu_runtime=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=${2:?--device needs auto, cpu, gpu or tpu}; shift ;;
    --device=*) device=${1#--device=} ;;
    --dev) dev=1 ;;
    --dry-run) dry=1 ;;
    --tpu-runtime) tpu_runtime=${2:?--tpu-runtime needs auto, pjrt or legacy}; shift ;;
    --tpu-runtime=*) tpu_runtime=${1#--tpu-runtime=} ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$device" = auto ]; then
  # stdlib only: works before anything is installed
  device=$("$PY" -c 'from pretrain.runtime.hardware import detect_hardware; print(detect_hardware().device)')
  echo "install.sh: detected device: $device"
fi

# The TPU build is 2.20.0, the newest tensorflow-tpu on the package index, for
# both TPU runtimes (pretrain/runtime/tpu_runtime.py; docs/tpus_and_gpus.md):
# - legacy (TPU v2, v3, v4): TF loads libtpu itself at import, so libtpu comes
#   from Google's TF libtpu index: the package index's newest libtpu is built
#   for JAX and aborts TF 2.20 at import (ConfigureDistributedTpuOp_DoWork not
#   available). Without that index (no network to it), fall back to the
#   version tensorflow-tpu 2.20.0 declares (~=0.0.14).
# - pjrt (TPU v5e, v5p, v6e): libtpu is a PJRT plugin that pretrain points TF
#   at (TF_PLUGGABLE_DEVICE_LIBRARY_PATH); the package index's libtpu at the
#   version tensorflow-tpu declares.
LIBTPU_INDEX=${PRETRAIN_LIBTPU_INDEX-https://storage.googleapis.com/libtpu-tf-releases/index.html}
LIBTPU_FALLBACK=${PRETRAIN_LIBTPU:-libtpu==0.0.14}
LIBTPU_PJRT=${PRETRAIN_LIBTPU:-libtpu==0.0.14}
case "$tpu_runtime" in auto|pjrt|legacy) ;;
  *) echo "install.sh: --tpu-runtime must be auto, pjrt or legacy, not '$tpu_runtime'" >&2; exit 2 ;;
esac
if [ "$device" = tpu ] && [ "$tpu_runtime" = auto ]; then
  # stdlib only, as the device detection; PRETRAIN_TPU_RUNTIME counts here too
  tpu_runtime=$("$PY" -c '
import os
from pretrain.runtime import hardware, tpu_runtime as t
env = {k: v for k, v in os.environ.items() if k != "TPU_LOAD_LIBRARY"}
hw = hardware.detect_hardware(hardware.sysroot(), environ=env)
plan = t.plan(hw, environ=env)
if plan.refusal:
    raise SystemExit("install.sh: " + plan.refusal)
print(plan.runtime or "pjrt", plan.reason if plan.chips else
      "no TPU seen here: TPU v5e, v5p, v6e and Colab v5e-1 run PJRT; pass --tpu-runtime legacy for v2-v4")
') || exit 2
  echo "install.sh: TPU runtime: ${tpu_runtime#* } -> ${tpu_runtime%% *}"
  tpu_runtime=${tpu_runtime%% *}
fi
case "$device" in
  cpu) tf_dist=tensorflow tf_req="tensorflow==2.21.0" keras_req="tf-keras==2.21.0" ;;
  gpu) tf_dist=tensorflow tf_req="tensorflow[and-cuda]==2.21.0" keras_req="tf-keras==2.21.0" ;;
  tpu) tf_dist=tensorflow-tpu tf_req="tensorflow-tpu==2.20.0" keras_req="tf-keras==2.20.1" ;;
  *) echo "install.sh: --device must be auto, cpu, gpu or tpu, not '$device'" >&2; exit 2 ;;
esac
extras=""
reqs=()
if [ "$dev" = 1 ]; then
  extras="[dev,hf,onnx]"
  # Pinned first so the hf extra's torch is the CPU build, not a multi-GB CUDA one.
  reqs+=("torch==2.13.0")
fi
PIP=("$PY" -m pip)

if [ "$dry" = 1 ]; then
  # One resolution of everything installed with dependencies, as on a fresh
  # machine; the --no-deps packages are listed, not resolved.
  if [ "$device" = tpu ]; then
    echo "tpu runtime: $tpu_runtime"
    if [ "$tpu_runtime" = legacy ]; then
      echo "libtpu: from $LIBTPU_INDEX (libtpu~=0.0.14), else $LIBTPU_FALLBACK from the package index"
      reqs+=("$LIBTPU_FALLBACK")
    else
      echo "libtpu: $LIBTPU_PJRT from the package index, loaded as TensorFlow's PJRT plugin"
      reqs+=("$LIBTPU_PJRT")
    fi
  fi
  report=$(mktemp)
  "${PIP[@]}" install --dry-run --ignore-installed --quiet --report "$report" \
    "$tf_req" "${reqs[@]}" -e ".${extras}"
  "$PY" - "$report" "$keras_req" <<'EOF'
import json, sys
from pretrain.runtime.doctor import TF_DISTRIBUTIONS
names = sorted("%s==%s" % (i["metadata"]["name"], i["metadata"]["version"])
               for i in json.load(open(sys.argv[1]))["install"])
for n in names:
    print("would install: " + n)
print("would install (--no-deps): %s bert4keras==0.11.5" % sys.argv[2])
tf = [n for n in names if n.split("==")[0].lower().replace("_", "-") in TF_DISTRIBUTIONS]
print("tensorflow distributions: " + " ".join(tf))
sys.exit(0 if len(tf) == 1 else 1)
EOF
  exit
fi

"${PIP[@]}" install --upgrade pip
# Remove every other TensorFlow build. They share files, so the chosen one is
# then reinstalled in full (--force-reinstall restores what the uninstall took).
force=()
for other in $("$PY" -c 'from pretrain.runtime.doctor import TF_DISTRIBUTIONS; print(*TF_DISTRIBUTIONS)'); do
  if [ "$other" != "$tf_dist" ] && "${PIP[@]}" show -q "$other" >/dev/null 2>&1; then
    echo "install.sh: removing $other (it shares the tensorflow/ directory with $tf_dist)"
    "${PIP[@]}" uninstall -y "$other"
    force=(--force-reinstall --no-deps)
  fi
done
if [ "$device" = tpu ] && [ "$tpu_runtime" = pjrt ]; then
  # --force-reinstall: a newer libtpu already installed (by jax[tpu]) must go too.
  "${PIP[@]}" install --force-reinstall --no-deps "$LIBTPU_PJRT"
elif [ "$device" = tpu ]; then
  if [ -n "$LIBTPU_INDEX" ] && "${PIP[@]}" install --no-index --find-links "$LIBTPU_INDEX" \
      --retries 1 --timeout 20 --force-reinstall --no-deps "libtpu~=0.0.14"; then
    echo "install.sh: libtpu from $LIBTPU_INDEX"
  else
    echo "install.sh: WARNING: Google's TF libtpu index ($LIBTPU_INDEX) was not reachable;" \
         "installing $LIBTPU_FALLBACK from the package index instead" >&2
    "${PIP[@]}" install --no-deps "$LIBTPU_FALLBACK"
  fi
fi
if [ "${#force[@]}" -gt 0 ]; then "${PIP[@]}" install "${force[@]}" "$tf_req"; fi
"${PIP[@]}" install "$tf_req" "${reqs[@]}"  # dependencies; the installed libtpu satisfies its pin
"${PIP[@]}" install -e ".${extras}"
"${PIP[@]}" install --no-deps "$keras_req" "bert4keras==0.11.5"
[ "$device" = tpu ] && echo "install.sh: installed $tf_req for the $tpu_runtime TPU runtime"
"$PY" -m pretrain.doctor || {
  echo "install.sh: the install finished, but the doctor found a problem (above)." >&2
  exit 1
}
