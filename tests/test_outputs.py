"""No command deletes or overwrites a file it did not write: an output that is
not empty and is not the command's own earlier output is refused in one line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pretrain import config, fs
from pretrain.config import REPO_ROOT
from pretrain.data import preprocess

SAMPLE = os.path.join(REPO_ROOT, "data", "sample", "clue_small.txt")
TINY = dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64)


def _cli(*args):
    return subprocess.run([sys.executable, "-m"] + list(args), cwd=REPO_ROOT,
                          capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO_ROOT))


def _refused(result, *needles):
    """Exit 2 with one `error:` line holding every needle, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), result.stderr[-3000:]


def _user_files(path):
    """A folder as a user leaves it: notes, a TSV and a subfolder."""
    os.makedirs(os.path.join(path, "old"), exist_ok=True)
    files = {"notes.txt": "my notes\n", "train.tsv": "好\t1\n", "old/run.log": "step 1\n"}
    for name, text in files.items():
        with open(os.path.join(path, name), "w", encoding="utf-8") as f:
            f.write(text)
    return files


def _unchanged(path, files):
    for name, text in files.items():
        with open(os.path.join(path, name), encoding="utf-8") as f:
            assert f.read() == text, name


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    with open(os.path.join(REPO_ROOT, "configs", "roberta_tiny.json")) as f:
        raw = json.load(f)
    raw["model"].update(TINY)
    raw["tokenizer"]["vocab"] = os.path.join(REPO_ROOT, "data", "vocab.txt")
    path = str(tmp_path_factory.mktemp("cfg") / "tiny.json")
    with open(path, "w") as f:
        json.dump(raw, f)
    return path


def test_export_refuses_a_users_folder_and_a_run_dir_and_replaces_its_own(tmp_path,
                                                                        tiny_config):
    users = str(tmp_path / "mine")
    files = _user_files(users)
    _refused(_cli("pretrain.export", "--config", tiny_config, "--output", users),
             "--output", users, "not empty", "notes.txt", "train.tsv")
    _unchanged(users, files)

    # A run directory: checkpoints, TensorBoard, its record and earlier exports.
    run = str(tmp_path / "run")
    run_files = {"run.json": "{}", "run_config.json": "{}", "checkpoints/checkpoint": "x",
                 "tensorboard/train/events.out": "e",
                 "export/phase1/pretrain_export.json": "{}"}
    for name, text in run_files.items():
        os.makedirs(os.path.dirname(os.path.join(run, name)), exist_ok=True)
        with open(os.path.join(run, name), "w") as f:
            f.write(text)
    _refused(_cli("pretrain.export", "--config", tiny_config, "--output", run,
                  "--format", "hf"), "--output", "checkpoints", "run.json")
    _refused(_cli("pretrain.export", "--config", tiny_config, "--output", run),
             "--output", "checkpoints", "run.json")
    _unchanged(run, run_files)

    # Its own earlier export is replaced, twice over.
    out = str(tmp_path / "export")
    for _ in range(2):
        result = _cli("pretrain.export", "--config", tiny_config, "--output", out)
        assert result.returncode == 0, result.stderr[-3000:]
    assert "pretrain_export.json" in os.listdir(out)
    # ... but not once a user put a file into it.
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("about this model\n")
    _refused(_cli("pretrain.export", "--config", tiny_config, "--output", out), "README.md")
    assert os.path.exists(os.path.join(out, "README.md"))


def test_finetune_refuses_a_users_folder(tmp_path):
    users = str(tmp_path / "mine")
    files = _user_files(users)
    _refused(_cli("pretrain.finetune", "--model", str(tmp_path / "none"), "--task",
                  "classification", "--train", "t.tsv", "--dev", "d.tsv", "--output", users),
             "--output", "notes.txt", "fine-tuning output")
    _unchanged(users, files)


def test_finetune_recognises_its_own_output(tmp_path):
    out = str(tmp_path / "ft")
    for d in ("model", "random_init/model", "tensorboard/train"):
        os.makedirs(os.path.join(out, d))
    for name in ("model/pretrain_export.json", "model/bert_config.json",
                 "model/bert_model.ckpt.index", "random_init/model/pretrain_export.json",
                 "metrics.json", "predictions_dev.tsv", "random_init/metrics.json"):
        open(os.path.join(out, name), "w").close()
    assert fs.is_finetune_output(out, os.listdir(out))
    open(os.path.join(out, "model", "notes.txt"), "w").close()  # a user's file in model/
    assert not fs.is_finetune_output(out, os.listdir(out))


def test_simbert_encode_refuses_to_overwrite_a_file_it_did_not_write(tmp_path):
    mine = tmp_path / "vectors.txt"
    mine.write_text("my vectors\n")
    for output in (str(mine), str(tmp_path)):
        _refused(_cli("pretrain.simbert", "encode", "--model", str(tmp_path / "none"),
                      "--text", "你好", "--output", output), "--output", output)
    assert mine.read_text() == "my vectors\n"
    earlier = tmp_path / "earlier.npy"
    np.save(str(earlier), np.zeros(3))
    assert fs.is_npy(str(earlier)) and not fs.is_npy(str(mine))
    assert fs.check_output_file(str(earlier), fs.is_npy, ".npy") is None


def test_the_export_names_are_the_exporters():
    from pretrain.export import checkpoints, h5_weights
    assert fs.EXPORT_INFO == checkpoints.INFO_NAME
    assert {checkpoints.CONFIG_NAME, h5_weights.H5_NAME} <= set(fs.EXPORT_FILES)
    assert fs.is_export([checkpoints.INFO_NAME, checkpoints.CKPT_NAME + ".index"])


def test_preprocess_refuses_a_users_folder_and_resumes_its_own(tmp_path):
    cfg = config.load_config("roberta_tiny")
    corpus = tmp_path / "docs.txt"
    with open(SAMPLE, encoding="utf-8") as f:
        corpus.write_text("".join(f.readlines()[:40]), encoding="utf-8")
    users = str(tmp_path / "mine")
    files = _user_files(users)
    one = dict(seq_lens=[128], dupe_factor=1, workers=1, progress=False)
    with pytest.raises(fs.OutputPathError, match="not empty.*notes.txt"):
        preprocess.run(cfg, str(corpus), users, **one)
    _unchanged(users, files)
    assert sorted(os.listdir(users)) == ["notes.txt", "old", "train.tsv"]
    with pytest.raises(fs.OutputPathError, match="not an earlier vocab output.*notes.txt"):
        preprocess.run_vocab(cfg, str(corpus), users, workers=1, progress=False)
    _unchanged(users, files)
    out = str(tmp_path / "records")
    first = preprocess.run(cfg, str(corpus), out, **one)
    assert preprocess.run(cfg, str(corpus), out, **one)["docs"] == first["docs"]
