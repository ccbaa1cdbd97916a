"""pretrain: pretrain small Chinese BERT-family models with TF 2 + bert4keras.

Importing the package selects tf_keras (Keras 2) for TensorFlow and
bert4keras, and, on a machine without TPU chips, keeps the TPU build of
TensorFlow from loading libtpu. This must happen before TensorFlow is first
imported: Keras 3 is TF's default and bert4keras does not support it (see
README, "Troubleshooting").
"""
import os

os.environ.setdefault("TF_KERAS", "1")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if "TPU_LOAD_LIBRARY" not in os.environ:
    from pretrain.hardware import tpu_chips  # stdlib only: cheap, and imports no TF
    if not tpu_chips()[0]:
        # The TPU build of TF loads libtpu at import. With no chips it waits
        # minutes for a TPU VM's metadata server, then aborts: skip it, TF runs on CPU.
        os.environ["TPU_LOAD_LIBRARY"] = "0"

__version__ = "0.1.0"
