#!/usr/bin/env bash
# Install pretrain with the TensorFlow build that matches this machine's accelerator.
#   bash scripts/install.sh                 # --device auto: TPU, GPU or CPU, as detected
#   bash scripts/install.sh --device tpu    # tensorflow-tpu 2.20.0 + its libtpu, tf-keras 2.20.1
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
device=auto dev=0 dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=${2:?--device needs auto, cpu, gpu or tpu}; shift ;;
    --device=*) device=${1#--device=} ;;
    --dev) dev=1 ;;
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$device" = auto ]; then
  # stdlib only: works before anything is installed
  device=$("$PY" -c 'from pretrain.runtime.hardware import detect_hardware; print(detect_hardware().device)')
  echo "install.sh: detected device: $device"
fi

# The TPU build is 2.20.0, the newest tensorflow-tpu on the package index.
# Its libtpu comes from Google's TF libtpu index: the index's newest libtpu is
# built for JAX and aborts TF 2.20 at import. Without that index (no network to
# it), fall back to the version tensorflow-tpu 2.20.0 declares (~=0.0.14).
LIBTPU_INDEX=${PRETRAIN_LIBTPU_INDEX-https://storage.googleapis.com/libtpu-tf-releases/index.html}
LIBTPU_FALLBACK=${PRETRAIN_LIBTPU:-libtpu==0.0.14}
case "$device" in
  cpu) tf_dist=tensorflow tf_req="tensorflow==2.21.0" keras_req="tf-keras==2.21.0" ;;
  gpu) tf_dist=tensorflow tf_req="tensorflow[and-cuda]==2.21.0" keras_req="tf-keras==2.21.0" ;;
  tpu) tf_dist=tensorflow-tpu tf_req="tensorflow-tpu==2.20.0" keras_req="tf-keras==2.20.1" ;;
  *) echo "install.sh: --device must be auto, cpu, gpu or tpu, not '$device'" >&2; exit 2 ;;
esac
extras=""
reqs=()
if [ "$dev" = 1 ]; then
  extras="[dev,hf]"
  # Pinned first so the hf extra's torch is the CPU build, not a multi-GB CUDA one.
  reqs+=("torch==2.13.0")
fi
PIP=("$PY" -m pip)

if [ "$dry" = 1 ]; then
  # One resolution of everything installed with dependencies, as on a fresh
  # machine; the --no-deps packages are listed, not resolved.
  [ "$device" = tpu ] && reqs+=("$LIBTPU_FALLBACK")
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
if [ "$device" = tpu ]; then
  # --force-reinstall: a newer libtpu already installed (by jax[tpu]) must go too.
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
"$PY" -m pretrain.doctor || {
  echo "install.sh: the install finished, but the doctor found a problem (above)." >&2
  exit 1
}
