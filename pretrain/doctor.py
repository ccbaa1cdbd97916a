"""`python -m pretrain.doctor`: which TensorFlow build and accelerator this machine has (pretrain/runtime/doctor.py)."""
from pretrain import cli
from pretrain.runtime.doctor import define_flags, main

if __name__ == "__main__":
    cli.start(main, define_flags)
