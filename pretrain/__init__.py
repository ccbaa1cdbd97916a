"""pretrain: pretrain small Chinese BERT-family models with TF 2 + bert4keras.

Importing the package selects tf_keras (Keras 2) for TensorFlow and
bert4keras, and sets up the TPU runtime of this machine's TPU generation
(`pretrain/runtime/tpu_runtime.py`: PJRT on v5e/v5p/v6e, legacy on v2-v4; on a
machine without TPU chips the TPU build of TensorFlow is kept from loading
libtpu). This must happen before TensorFlow is first imported: Keras 3 is
TF's default and bert4keras does not support it (see README,
"Troubleshooting"), and libtpu is chosen when TF loads.

It also quiets TensorFlow's start: TF_CPP_MIN_LOG_LEVEL=2 hides the INFO and
WARNING lines of its C++ side (TF 2.21.0 still prints its oneDNN and
CUDA-driver INFO notices, logged before it reads the variable), and on a
machine with neither an NVIDIA device nor TPU chips TF is told to use the CPU
only, so it does not probe for CUDA (`failed call to cuInit ... UNKNOWN ERROR
(303)`). C++ errors still print. A variable already set in the environment wins.
"""
import os

os.environ.setdefault("TF_KERAS", "1")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # noqa: E402

from pretrain.runtime import tpu_runtime  # noqa: E402  (stdlib only: cheap, imports no TF)

# Without chips TPU_LOAD_LIBRARY=0: the TPU build of TF would load libtpu at
# import, wait minutes for a TPU VM's metadata server, then abort.
try:
    _chips = tpu_runtime.configure(tpu_runtime.requested_in(sys.argv)).chips
except tpu_runtime.TpuRuntimeError:  # a bad PRETRAIN_TPU_RUNTIME on a TPU: commands say so
    _chips = 1
# An NVIDIA driver creates /dev/nvidiactl (WSL2: /dev/dxg); without one, or
# chips, there is nothing for TF to find but the CPU.
if not _chips and not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/proc/driver/nvidia",
                                                       "/dev/dxg")):
    os.environ.setdefault("TF_ENABLED_DEVICE_TYPES", "CPU")

__version__ = "0.1.0"
