"""A run's start: nothing written to the run dir before the config, the data
and the output pass their checks; a resume on records other than the run's
refused (by the records' fingerprint, not their path); a refusal names the
changed key; a missing vocab is one line before anything is written."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from pretrain.data import records
from pretrain.training import run_dir
from pretrain.training import trainer as train
from pretrain.training.tasks import MlmTask
from test_train import ROOT, _train, make_records, records_dir, tiny_config  # noqa: F401


def test_a_start_refused_on_its_data_writes_nothing_and_the_fixed_command_runs(
        tmp_path, records_dir):
    data = str(tmp_path / "records")
    shutil.copytree(records_dir, data)
    shutil.rmtree(os.path.join(data, "seq512"))
    run = str(tmp_path / "run")
    cfg = tiny_config(tmp_path, phases=((128, 2), (512, 2)))
    with pytest.raises(records.ManifestError, match="no records for seq_len 512"):
        train.Trainer(cfg, MlmTask(cfg, data), run).run()
    assert not os.path.exists(run) or os.listdir(run) == []
    # the fixed command (no seq-512 phase) is a new run, not a changed one
    fixed = tiny_config(tmp_path, phases=((128, 2),))
    assert [s for s, _, _ in _train(fixed, data, run)] == [1, 2]


def test_a_resume_on_other_records_is_refused_unless_allowed(tmp_path, records_dir):
    run = str(tmp_path / "run")
    cfg = tiny_config(tmp_path, phases=((128, 6),))
    _train(cfg, records_dir, run, max_steps=3)  # saved at save_every=3
    # the same records under another path are the same data
    moved = str(tmp_path / "moved")
    shutil.copytree(records_dir, moved)
    assert [s for s, _, _ in _train(cfg, moved, run, max_steps=1)] == [4]
    (tmp_path / "other").mkdir()
    other = make_records(tmp_path / "other", cfg, seq_lens=(128,), docs=150)
    with pytest.raises(run_dir.TrainingError) as e:
        train.Trainer(cfg, MlmTask(cfg, other), run).run()
    message = str(e.value)
    assert moved in message and other in message and "--allow_data_change" in message
    assert "\n" not in message
    trainer = train.Trainer(cfg, MlmTask(cfg, other), run, allow_data_change=True)
    trainer.run()
    assert [s for s, _, _ in trainer.history] == [4, 5, 6]  # from the checkpoint at 3
    # accepted once: the run dir now records the new records
    with open(os.path.join(run, "run_config.json")) as f:
        assert json.load(f)["records"]["path"] == other


def test_a_changed_data_setting_is_named_in_the_refusal(tmp_path):
    cfg = tiny_config(tmp_path, phases=((128, 2),))
    run = str(tmp_path / "run")
    run_dir.check_output_dir(cfg, run)
    changed = tiny_config(tmp_path, phases=((128, 2),))
    changed["data"]["masked_lm_prob"] = 0.2
    with pytest.raises(run_dir.TrainingError, match=r"data\.masked_lm_prob: 0\.15 -> 0\.2"):
        run_dir.check_output_dir(changed, run)


def test_a_missing_vocab_is_one_line_before_anything_is_written(tmp_path, records_dir):
    out = tmp_path / "run"
    missing = str(tmp_path / "gone" / "vocab.txt")
    proc = subprocess.run(
        [sys.executable, "pretrain/run.py", "--config", "roberta_tiny", "--data", records_dir,
         "--output", str(out), "--set", "tokenizer.vocab=" + missing],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "tokenizer.vocab" in errors[0] and missing in errors[0], \
        proc.stderr[-2000:]
    assert not out.exists()
