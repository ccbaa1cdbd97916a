"""A label typo must not become a class: `--labels` declares the set (other
labels are bad lines); without it a rare label, or one missing from dev or
test, is warned of by name and first lines. Real LCQMC pairs."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, shared_path
from pretrain.finetune import data as finetune_data

TYPO_ROWS = range(7, 1000, 100)  # 10 of 1000 train rows get the label `l` (a typo of `1`)


def _lines(name, start, n):
    with open(shared_path("similarity", "lcqmc", name), encoding="utf-8") as f:
        return f.readlines()[start:start + n]


def _write(path, lines):
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lcqmc")
    train = _lines("lcqmc_dev.tsv", 0, 1000)
    for i in TYPO_ROWS:
        train[i] = train[i].rsplit("\t", 1)[0] + "\tl\n"
    return {"train": _write(tmp / "train.tsv", train),
            "dev": _write(tmp / "dev.tsv", _lines("lcqmc_dev.tsv", 1000, 300)),
            "test": _write(tmp / "test.tsv", _lines("lcqmc_test.tsv", 0, 300))}


def test_declared_labels_make_a_typo_a_bad_line(splits):
    lines = []
    examples, skipped = finetune_data.read_examples(splits["train"], "pair", 0.05, {"0", "1"},
                                                    lines.append, declared=True)
    assert len(examples) == 990 and {e.label for e in examples} == {"0", "1"}
    assert skipped == {"label 'l' is not among the --labels": 10}
    wheres = ["%s:%d" % (splits["train"], i + 1) for i in TYPO_ROWS]
    assert lines[:10] == ["%s: label 'l' is not among the --labels (0, 1)" % w for w in wheres]
    # More typos than --max_bad_fraction allows stop the run.
    with pytest.raises(finetune_data.DataError, match="10 of 1000 lines"):
        finetune_data.read_examples(splits["train"], "pair", 0.005, {"0", "1"}, lines.append,
                                    declared=True)


def test_without_labels_a_rare_or_missing_label_is_warned_of(splits):
    train, _ = finetune_data.read_examples(splits["train"], "pair", log=lambda _: None)
    assert finetune_data.label_list(train) == ["0", "1", "l"]  # what used to train silently
    others = {s: (splits[s], finetune_data.read_examples(splits[s], "pair", 0.05)[0])
              for s in ("dev", "test")}
    warnings = finetune_data.label_warnings(train, others)
    assert len(warnings) == 1, warnings
    first = ", ".join("%s:%d" % (splits["train"], i + 1) for i in list(TYPO_ROWS)[:5])
    assert "only" not in warnings[0]  # 10 of 1000 is 1%, not under it
    for needle in ("label 'l'", "absent from dev (%s)" % splits["dev"],
                   "absent from test (%s)" % splits["test"], "first at " + first, "--labels"):
        assert needle in warnings[0], warnings[0]
    # 9 of 1000 is under 1%.
    rare = [e for e in train if e.label != "l"] + [e for e in train if e.label == "l"][:9]
    assert "only 9 of 999 train rows (0.90%)" in finetune_data.label_warnings(rare, {})[0]
    clean = [e for e in train if e.label != "l"]
    assert finetune_data.label_warnings(clean, others) == []


def test_cli_with_labels_trains_two_classes(splits, tmp_path):
    from pretrain.export import writer as export
    from pretrain.models import build as models
    from pretrain.config import as_overrides, load_config, override
    cfg = override(load_config("roberta_tiny"), as_overrides({
        "model.num_hidden_layers": 1, "model.hidden_size": 32, "model.num_attention_heads": 2,
        "model.intermediate_size": 64, "model.embedding_size": 16}))
    model = str(tmp_path / "export")
    export.export_bert4keras(cfg, models.build_model(cfg), model)
    # Without --labels the typo still becomes a class, but is named in a warning.
    from pretrain.finetune import classifier
    lines = []
    data = classifier.load_data(dict(model=model, task="pair", maxlen=32, max_bad_fraction=0.05,
                                     **splits), log=lines.append)
    assert data["labels"] == ["0", "1", "l"]
    assert [l for l in lines if l.startswith("warning: label 'l': ")], lines
    out = str(tmp_path / "ft")
    result = subprocess.run(
        [sys.executable, "-m", "pretrain.finetune", "--model", model, "--task", "pair",
         "--train", splits["train"], "--dev", splits["dev"], "--test", splits["test"],
         "--output", out, "--labels", "0,1", "--epochs", "1", "--maxlen", "32",
         "--batch_size", "64"],
        cwd=REPO_ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "%s:8: label 'l' is not among the --labels (0, 1)" % splits["train"] in result.stdout
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["labels"] == ["0", "1"] and metrics["examples"]["train"] == 990
