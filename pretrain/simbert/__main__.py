"""`python -m pretrain.simbert`: encode, search and paraphrase with a SimBERT export (use.py)."""
from pretrain import cli
from pretrain.simbert.use import define_flags, main

if __name__ == "__main__":
    cli.start(main, define_flags)
