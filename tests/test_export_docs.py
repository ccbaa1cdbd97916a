"""docs/export.md stays true: its bert4keras fine-tune of a RoBERTa export runs
as written (on a real export and real LCQMC pairs, a few steps)."""
import os
import re
import subprocess
import sys

import numpy as np

from conftest import shared_path
from pretrain.config import load_config
from pretrain.export import writer
from pretrain.models import build as models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "export.md")


def doc_block(heading, index=0):
    """The index-th ```python block under the Markdown heading `heading`."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    section = text.split(heading + "\n", 1)[1]
    section = re.split(r"\n#{1,3} ", section, maxsplit=1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[index]


def test_bert4keras_fine_tune_of_a_roberta_export_runs_as_documented(tmp_path):
    code = doc_block("### Fine-tuning a RoBERTa export with bert4keras")
    assert "with_pool=False" in code and "bert4keras.optimizers" not in code
    cfg = load_config("roberta_tiny")
    export = str(tmp_path / "export")
    writer.export_bert4keras(cfg, models.build_model(cfg), export)
    train = tmp_path / "train.tsv"
    with open(shared_path("similarity", "lcqmc", "lcqmc_dev.tsv"), encoding="utf-8") as f:
        train.write_text("".join(f.readline() for _ in range(96)), encoding="utf-8")
    code, n = re.subn(r'(?m)^export = ".*"$', "export = %r" % export, code)
    code, m = re.subn(r'(?m)^train_file = ".*"$', "train_file = %r" % str(train), code)
    assert n == m == 1
    code += ("\nimport json\nprint('RESULT', json.dumps({'loss': history.history['loss'], "
             "'steps': steps, 'updates': int(model.optimizer.iterations.numpy())}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    import json
    line = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")][0]
    result = json.loads(line.split(" ", 1)[1])
    assert result["steps"] == result["updates"] == 3  # 96 pairs, batch 32, 1 epoch
    assert np.isfinite(result["loss"]).all()
