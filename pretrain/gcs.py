"""`python -m pretrain.gcs`: move records and exports between a folder and Cloud Storage (pretrain/cloud/gcs.py)."""
from pretrain import cli
from pretrain.cloud.gcs import define_flags, main

if __name__ == "__main__":
    cli.start(main, define_flags)
