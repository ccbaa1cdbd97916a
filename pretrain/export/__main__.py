"""`python -m pretrain.export`: a checkpoint to a bert4keras, h5 or Hugging Face directory (writer.py)."""
from pretrain import cli
from pretrain.export.writer import define_flags, main

if __name__ == "__main__":
    cli.start(main, define_flags)
