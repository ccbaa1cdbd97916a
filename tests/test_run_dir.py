"""What a run leaves in its directory besides checkpoints: run.json (the
resolved config, the command line and its flags, the package versions), read
back from a real `python pretrain/run.py` run, and the same record in the
export's pretrain_export.json."""
import importlib.metadata
import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from pretrain.export import writer as export
from test_train import ROOT, make_records, tiny_config


def test_a_run_records_its_config_command_flags_and_versions(tmp_path):
    cfg = tiny_config(tmp_path, name="rec", phases=((128, 2),), grad_accum_steps=1,
                      log_every=1, save_every=2, eval_steps=0)
    records_dir = make_records(tmp_path, cfg, seq_lens=(128,), docs=120)
    out = str(tmp_path / "run")
    args = ["pretrain/run.py", "--config", cfg["path"], "--data", records_dir,
            "--output", out, "--steps_per_loop", "2"]
    run = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    with open(os.path.join(out, "run.json")) as f:
        record = json.load(f)
    assert record["config"] == json.loads(json.dumps(cfg))  # what load_config resolved
    assert record["config"]["overrides"] == []
    assert record["argv"] == args
    flags = record["flags"]
    assert flags["config"] == cfg["path"] and flags["data"] == records_dir
    assert flags["output"] == out and flags["steps_per_loop"] == 2
    assert flags["precision"] == "auto" and flags["smoke"] is False  # defaults resolved
    versions = record["versions"]
    assert versions["tensorflow"] == tf.__version__
    assert versions["numpy"] == np.__version__
    assert versions["bert4keras"] == importlib.metadata.version("bert4keras")
    assert versions["tf_keras"] == importlib.metadata.version("tf_keras")
    assert set(versions) == {"tensorflow", "tf_keras", "bert4keras", "numpy", "pretrain"}

    info = export.read_info(os.path.join(out, "export", "p1_seq128"))
    assert info["run"] == record
    assert info["source"]["checkpoint"] == "ckpt-2"  # the export's own fields are kept
    assert info["reload_max_abs_diff"] is not None
