"""The HF export's model card states the figures of the run that trained it."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="HF export is the optional extra 'hf' (torch)")
pytest.importorskip("transformers", reason="HF export is the optional extra 'hf'")

from pretrain.finetune import classifier as finetune  # noqa: E402
from test_finetune import ARGS, splits  # noqa: E402,F401  (splits: a fixture)
from test_train import ROOT, make_records, tiny_config  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import plot_curves  # noqa: E402  (its own TensorBoard reader: the oracle for the eval figures)


def _header(card):
    lines = card.split("\n")
    assert lines[0] == "---"
    return lines[1:lines.index("---", 1)]


def test_card_of_a_short_real_run_states_its_figures(tmp_path, splits):  # noqa: F811
    cfg = tiny_config(tmp_path, phases=((128, 4),))
    records = make_records(tmp_path, cfg, seq_lens=(128,), docs=120)
    run = str(tmp_path / "run")
    done = subprocess.run([sys.executable, "-m", "pretrain.run", "--config", cfg["path"],
                           "--data", records, "--output", run, "--steps_per_loop", "2"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    export = os.path.join(run, "export", "p1_seq128")  # the trainer's bert4keras export
    ft = str(tmp_path / "ft")
    finetune.run(dict(ARGS, epochs=1, model=export, output=ft, **splits), log=lambda _: None)
    out = str(tmp_path / "hf")
    done = subprocess.run(
        [sys.executable, "-m", "pretrain.export", "--config", cfg["path"], "--format", "hf",
         "--checkpoint", os.path.join(run, "checkpoints", "p1_seq128"), "--output", out,
         "--finetune", ft, "--license", "apache-2.0"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
        card = f.read()
    assert _header(card)[:5] == ["language: zh", "license: apache-2.0", "pipeline_tag: fill-mask",
                                 "library_name: transformers", "tags:"]
    with open(os.path.join(records, "seq128", "manifest.json")) as f:
        manifest = json.load(f)
    # the data, the schedule and the optimizer of this run
    assert "%d documents (%d held out)" % (manifest["docs"], manifest["eval_docs"]) in card
    assert "`corpus.txt`" in card
    assert "%d training sequences, %d held-out" % (manifest["train"]["examples"],
                                                    manifest["eval"]["examples"]) in card
    assert "- optimizer: lamb, weight decay 0.01; batch 8 x 2 accumulation steps" in card
    assert "- phase p1_seq128: 4 steps at seq_len 128" in card
    assert "- optimizer updates run: 4\n" in card
    assert "| layers | 2 |" in card and "| hidden size | 64 |" in card
    assert "| transformers class | ElectraForMaskedLM |" in card
    # held-out MLM loss and accuracy, as TensorBoard recorded them
    scalars = plot_curves.read_scalars(os.path.join(run, "tensorboard", "eval"))
    assert "at step 4:" in card
    for tag in ("mlm_loss", "mlm_acc"):
        assert "| %s | %.4f |" % (tag, scalars[tag][-1][1]) in card
    # the fine-tune's dev and test scores, from its metrics.json
    with open(os.path.join(ft, "metrics.json")) as f:
        model = json.load(f)["model"]
    for split in ("dev", "test"):
        assert "| %s | %.4f | %.4f |" % (split, model[split]["accuracy"],
                                         model[split]["macro_f1"]) in card
    assert "4 optimizer updates: not a usable model" in card
    assert "BertForMaskedLM` finds none of its weights" in card
    assert "build_transformer_model('bert_config.json', 'bert_model.ckpt', " \
           "application='encoder', model='roberta', with_mlm='linear')" in card


def test_card_without_a_run_says_so(tmp_path):
    from pretrain.export import hf as hf_export
    from pretrain.models import build as models
    from test_models import small_cfg
    cfg = small_cfg("simbert_tiny", num_hidden_layers=1)
    hf_export.export_hf(cfg, models.build_model(cfg), str(tmp_path))
    card = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "pipeline_tag: sentence-similarity" in _header(card)
    assert "library_name: sentence-transformers" in _header(card)
    assert "No run record came with this export" in card
    assert "An untrained model: not a usable model" in card
    assert "SentenceTransformer(PATH)" in card
