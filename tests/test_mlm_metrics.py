"""MLM metrics by kind of position ([MASK], kept, random) and the frequency
baseline, against NumPy on a constructed batch, a direct count over real
records, and a short real run."""
import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from pretrain.config import load_config
from pretrain.data import records
from pretrain.export import writer as export
from pretrain.training import monitor, tasks
from pretrain.training import trainer as train

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_train import make_records, tiny_config  # noqa: E402

V, MASK = 200, 3


def _constructed(n=4000, seed=0):
    """Labels from a skewed distribution, kinds 80/10/10, and the inputs a
    masker gives: [MASK], the label, or another (non-[MASK]) token."""
    rng = np.random.RandomState(seed)
    p = 1.0 / np.arange(1, V + 1)
    p[MASK] = 0
    labels = rng.choice(V, size=n, p=p / p.sum()).astype(np.int32)
    kinds = np.repeat([0, 1, 2], [n * 8 // 10, n // 10, n // 10])
    rng.shuffle(kinds)
    other = (labels + rng.randint(1, V - 1, size=n)) % V
    other = np.where(other == MASK, (other + 1) % V, other)
    other = np.where(other == labels, (other + 1) % V, other)
    other = np.where(other == MASK, (other + 1) % V, other)
    inputs = np.where(kinds == 0, MASK, np.where(kinds == 1, labels, other)).astype(np.int32)
    assert np.all(inputs[kinds == 2] != labels[kinds == 2])
    return labels, kinds, inputs, rng


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_a_copying_frequency_model_scores_the_baseline_on_mask_positions():
    labels, kinds, inputs, rng = _constructed()
    train_counts = np.bincount(labels[rng.permutation(len(labels))[:3000]], minlength=V)
    top = int(np.argmax(train_counts))
    # the model copies the kept tokens and predicts the most frequent token elsewhere
    predicted = np.where(kinds == 1, labels, top)
    logits = rng.normal(0, 1, (len(labels), V)).astype(np.float32)
    logits[np.arange(len(labels)), predicted] += 20.0
    weights = np.ones(len(labels), np.float32)
    weights[::97] = 0.0  # padding positions count nowhere

    _, sums = tasks.masked_lm_sums(tf.constant(logits), tf.constant(labels), tf.constant(weights),
                                   tf.constant(inputs), MASK)
    task = tasks.MlmTask(load_config("roberta_tiny"), None)
    assert set(sums) == set(task.sums)
    denom = weights.sum()
    got = monitor.with_ratios({k: float(v) / (1.0 if k not in task.metrics else denom)
                               for k, v in sums.items()}, task.ratios)

    # NumPy reference
    ce = -_log_softmax(logits)[np.arange(len(labels)), labels]
    hit = (np.argmax(logits, -1) == labels)
    for i, kind in enumerate(tasks.KINDS):
        w = weights * (kinds == i)
        assert got["mlm_acc_" + kind] == pytest.approx((hit * w).sum() / w.sum(), abs=1e-6)
        assert got["mlm_loss_" + kind] == pytest.approx((ce * w).sum() / w.sum(), rel=1e-4,
                                                        abs=1e-6)
    assert got["mlm_acc"] == pytest.approx((hit * weights).sum() / denom, abs=1e-6)
    assert got["mlm_loss"] == pytest.approx((ce * weights).sum() / denom, rel=1e-4)
    assert not any(k.startswith(("mlm_hits", "mlm_count", "mlm_ce_sum")) for k in got)

    # the baseline on the [MASK] positions, by tasks.frequency_baseline and by hand
    at_mask = labels[(kinds == 0) & (weights > 0)]
    base = tasks.frequency_baseline(train_counts, at_mask)
    assert base["baseline_acc"] == pytest.approx(np.mean(at_mask == top))
    p = (train_counts + 1.0) / (train_counts.sum() + V)
    assert base["baseline_loss"] == pytest.approx(-np.mean(np.log(p[at_mask])))
    assert got["mlm_acc_masked"] == pytest.approx(base["baseline_acc"], abs=1e-6)
    assert got["mlm_acc_kept"] == 1.0
    assert got["mlm_acc_random"] == pytest.approx(base["baseline_acc"], abs=0.05)
    # overall: 10% copied for free on top of the plateau (0.1 + 0.9 x baseline)
    assert got["mlm_acc"] == pytest.approx(0.1 + 0.9 * base["baseline_acc"], abs=0.02)
    assert got["mlm_acc"] == pytest.approx(0.1 + base["baseline_acc"], abs=0.03)
    assert 0.05 < base["baseline_acc"] < 0.3


def test_a_window_pools_ratio_parts_over_updates():
    ratios = (("acc_a", "hits_a", "n_a"),)
    window = monitor.Window(ratios)
    window.add(1, 1.0, np.ones(1), np.ones(1), {"m": 0.5, "hits_a": 1.0, "n_a": 1.0})
    window.add(1, 1.0, np.ones(1), np.ones(1), {"m": 0.7, "hits_a": 0.0, "n_a": 3.0})
    out = window.scalars(8)
    assert out["acc_a"] == 0.25 and out["m"] == pytest.approx(0.6)
    assert "hits_a" not in out and "n_a" not in out
    assert np.isnan(monitor.with_ratios({"hits_a": 0.0, "n_a": 0.0}, ratios)["acc_a"])


def _static_config(tmp_path):
    cfg = tiny_config(tmp_path, name="static", phases=((128, 2),), eval_every=2, eval_steps=1)
    with open(cfg["path"]) as f:
        raw = json.load(f)
    raw["data"]["masking"] = "static"
    with open(cfg["path"], "w") as f:
        json.dump(raw, f)
    return load_config(cfg["path"])


def _records(data_dir, prefix):
    spec = {"input_ids": tf.io.FixedLenFeature([128], tf.int64),
            "masked_lm_positions": tf.io.FixedLenFeature([20], tf.int64),
            "masked_lm_ids": tf.io.FixedLenFeature([20], tf.int64),
            "masked_lm_weights": tf.io.FixedLenFeature([20], tf.float32)}
    seq = records.seq_dir(data_dir, 128)
    files = sorted(os.path.join(seq, f) for f in os.listdir(seq) if f.startswith(prefix))
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP" if files[0].endswith(
            ".gz") else ""):
        yield {k: v.numpy() for k, v in tf.io.parse_single_example(raw, spec).items()}


def test_the_baseline_matches_a_direct_count_over_static_records(tmp_path):
    cfg = _static_config(tmp_path)
    data = make_records(tmp_path, cfg, seq_lens=(128,), docs=200)
    assert records.read_manifest(data, 128)["max_predictions"] == 20
    counts = np.zeros(cfg["model"]["vocab_size"])
    for ex in _records(data, "part-"):
        counts += np.bincount(ex["masked_lm_ids"][ex["masked_lm_weights"] > 0],
                              minlength=len(counts))
    assert counts.sum() < tasks.BASELINE_LABELS  # all counted
    task = tasks.MlmTask(cfg, data)
    at_mask = []
    for ex in _records(data, "eval-"):
        real = ex["masked_lm_weights"] > 0
        at_mask.extend(ex["masked_lm_ids"][real & (ex["input_ids"][ex["masked_lm_positions"]]
                                                   == task.mask_id)])
    # batch 1 x every eval example: the eval batches are the whole split
    got = task.baseline(128, 1, len(list(_records(data, "eval-"))), seed=0)
    p = (counts + 1.0) / (counts.sum() + len(counts))
    assert got["baseline_acc"] == pytest.approx(np.mean(np.array(at_mask) == np.argmax(counts)))
    assert got["baseline_loss"] == pytest.approx(-np.mean(np.log(p[at_mask])), rel=1e-6)


def test_a_run_logs_metrics_by_kind_and_the_baseline(tmp_path, caplog):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "scripts"))
    import plot_curves
    cfg = tiny_config(tmp_path, phases=((128, 2),), eval_every=2, eval_steps=2)  # dynamic
    data = make_records(tmp_path, cfg, seq_lens=(128,), docs=200)
    out = str(tmp_path / "run")
    with caplog.at_level("INFO"):
        trainer = train.Trainer(cfg, tasks.MlmTask(cfg, data), out, steps_per_loop=2)
        exports = trainer.run()
    kinds = ["mlm_%s_%s" % (m, k) for m in ("acc", "loss") for k in tasks.KINDS]
    eval_scalars = plot_curves.read_scalars(os.path.join(out, "tensorboard", "eval"))
    train_scalars = plot_curves.read_scalars(os.path.join(out, "tensorboard", "train"))
    for tag in kinds + ["mlm_acc", "mlm_loss"]:
        assert [s for s, _ in eval_scalars[tag]] == [2], tag
        assert [s for s, _ in train_scalars[tag]] == [2], tag
    assert 0 <= eval_scalars["mlm_acc_masked"][0][1] <= 1
    assert 0 < eval_scalars["baseline_acc"][0][1] < 1 and eval_scalars["baseline_loss"][0][1] > 0
    lines = [r.getMessage() for r in caplog.records]
    assert sum("heldout baseline, seq_len 128: baseline_acc=" in l for l in lines) == 1, lines
    heldout = [l for l in lines if l.startswith("heldout step 2/2")]
    assert len(heldout) == 1 and "mlm_acc_masked=" in heldout[0], lines
    with open(os.path.join(out, "run.json")) as f:
        record = json.load(f)["heldout"]
    assert record["global_step"] == 2 and set(kinds + ["baseline_acc", "loss"]) <= set(record)
    assert export.read_info(exports[0])["run"]["heldout"] == record
