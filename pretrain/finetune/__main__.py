"""`python -m pretrain.finetune`: fine-tune an export on a labelled task (classifier.py)."""
from pretrain import cli
from pretrain.finetune.classifier import define_flags, main

if __name__ == "__main__":
    cli.start(main, define_flags)
