"""pretrain: pretrain small Chinese BERT-family models with TF 2 + bert4keras.

Importing the package selects tf_keras (Keras 2) for TensorFlow and
bert4keras. This must happen before TensorFlow is first imported: Keras 3 is
TF 2.21's default and bert4keras does not support it (see README,
"Troubleshooting").
"""
import os

os.environ.setdefault("TF_KERAS", "1")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
