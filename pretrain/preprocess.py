"""`python -m pretrain.preprocess`: raw corpus to MLM TFRecords (pretrain/data/preprocess.py)."""
from pretrain import cli
from pretrain.data.preprocess import define_flags, main

if __name__ == "__main__":
    cli.start(main, define_flags)
