"""pretrain.finetune: a tiny export fine-tuned on real text (passages of three
books), its outputs, the bert4keras reload, determinism, bad input."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, shared_path
from pretrain.export import checkpoints
from pretrain.export import writer as export
from pretrain.finetune import classifier as finetune
from pretrain.finetune import data as finetune_data
from pretrain.finetune import __main__ as finetune_command
from pretrain.models import build as models
from pretrain.config import as_overrides, load_config, override

BOOKS = ("黄帝内经", "徐霞客游记", "战国策")  # medicine, travel, politics
ARGS = dict(task="classification", epochs=3, batch_size=16, learning_rate=1e-3,
            warmup_proportion=0.1, maxlen=48, seed=0, dropout=0.1, max_bad_fraction=0.05)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A 2-layer, 64-wide roberta_tiny export (shipped vocab) whose weights are
    the random init that `--baselines` draws for --seed 0, so the fine-tuned
    run and the random-init run start from the same weights (see
    test_training_is_deterministic_for_a_seed)."""
    cfg = override(load_config("roberta_tiny"), as_overrides({
        "model.num_hidden_layers": 2, "model.hidden_size": 64, "model.num_attention_heads": 2,
        "model.intermediate_size": 128, "model.embedding_size": 32}))
    out = str(tmp_path_factory.mktemp("export") / "tiny")
    export.export_bert4keras(cfg, models.build_model(cfg), out)
    bert, _ = finetune.build_classifier(out, len(BOOKS), seed=ARGS["seed"], random_init=True)
    checkpoints.save_checkpoint(bert, out)  # the encoder's names; the MLM head is not fine-tuned
    return out


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines("\t".join(r) + "\n" for r in rows)
    return str(path)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """600 sentences of 15-60 characters, 200 per book, at most 20 per chapter;
    split by chapter (the k-th chapter of a book: k % 5 < 3 train, 3 dev, 4 test),
    so no chapter is in two splits."""
    parts = {"train": [], "dev": [], "test": []}
    taken = dict.fromkeys(BOOKS, 0)
    chapters = dict.fromkeys(BOOKS, 0)
    with open(shared_path("corpus", "modern_translations.jsonl"), encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            book = record["book"]
            if book not in taken or taken[book] >= 200:
                continue
            rows = [s for s in record["text"].split("\n") if 15 <= len(s) <= 60]
            rows = rows[:min(20, 200 - taken[book])]
            split = ("train", "train", "train", "dev", "test")[chapters[book] % 5]
            parts[split].extend((s, book) for s in rows)
            taken[book] += len(rows)
            chapters[book] += 1
    assert taken == dict.fromkeys(BOOKS, 200)
    order = np.random.RandomState(0).permutation
    tmp = tmp_path_factory.mktemp("data")
    return {name: _write(tmp / (name + ".tsv"), [rows[i] for i in order(len(rows))])
            for name, rows in parts.items()}


@pytest.fixture(scope="module")
def finetuned(tiny_export, splits, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ft") / "run")
    args = dict(ARGS, model=tiny_export, output=out, baselines=True, **splits)
    lines = []
    result = finetune.run(args, log=lines.append)
    return args, result, lines


def _labels(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t")[-1] for line in f]


def _predictions(path):
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in f]
    return header, rows


def test_tiny_model_fine_tunes_well_above_the_majority_class(finetuned):
    args, result, lines = finetuned
    labels = sorted(BOOKS)
    assert result["labels"] == labels
    train_counts = {b: _labels(args["train"]).count(b) for b in labels}
    majority = max(labels, key=lambda b: (train_counts[b], -labels.index(b)))
    for split in ("dev", "test"):
        gold = _labels(args[split])
        oracle = np.mean([g == majority for g in gold])
        base = result["baselines"]["majority"][split]["accuracy"]
        assert base == pytest.approx(oracle)
        model = result["model"][split]
        assert model["accuracy"] > oracle + 0.3, (split, model, oracle)
        assert "%s accuracy: %.4f" % (split, model["accuracy"]) in lines
        assert "%s macro_f1: %.4f" % (split, model["macro_f1"]) in lines
        # the predictions file agrees with the reported accuracy and the gold labels
        header, rows = _predictions(os.path.join(args["output"], "predictions_%s.tsv" % split))
        assert header == ["where", "label", "prediction"] + ["p_" + l for l in labels]
        assert [r[1] for r in rows] == gold
        probs = np.array([[float(x) for x in r[3:]] for r in rows])
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        assert [labels[i] for i in probs.argmax(-1)] == [r[2] for r in rows]
        assert np.mean([r[1] == r[2] for r in rows]) == pytest.approx(model["accuracy"])
        assert result["baselines"]["tfidf_lr"][split]["accuracy"] > oracle + 0.3
    with open(os.path.join(args["output"], "metrics.json"), encoding="utf-8") as f:
        assert json.load(f) == json.loads(json.dumps(result, ensure_ascii=False))


def test_best_dev_epoch_is_kept_and_logged_to_tensorboard(finetuned):
    import tensorflow as tf
    args, result, _ = finetuned
    history = result["model"]["epochs"]
    accuracies = [e["dev"]["accuracy"] for e in history]
    best = result["model"]["best_epoch"]
    assert best == 1 + accuracies.index(max(accuracies))
    assert result["model"]["dev"] == history[best - 1]["dev"]  # dev rescored with the kept weights
    info = export.read_info(os.path.join(args["output"], "model"))
    assert info["finetune"]["epoch"] == best and info["finetune"]["labels"] == result["labels"]
    seen = {}
    for path in glob.glob(os.path.join(args["output"], "tensorboard", "dev", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                seen.setdefault(v.tag, []).append(
                    (event.step, float(tf.make_ndarray(v.tensor))))
    steps = result["model"]["steps_per_epoch"]
    assert [s for s, _ in seen["accuracy"]] == [steps * (i + 1) for i in range(len(history))]
    np.testing.assert_allclose([a for _, a in seen["accuracy"]], accuracies, rtol=1e-6)


def test_bert4keras_reload_of_the_saved_model_gives_the_same_predictions(finetuned):
    """Oracle: bert4keras's own build_transformer_model + Tokenizer on the saved
    files, the classifier applied with NumPy."""
    import tensorflow as tf
    from bert4keras.models import build_transformer_model
    from bert4keras.tokenizers import Tokenizer
    args, result, _ = finetuned
    saved = os.path.join(args["output"], "model")
    encoder = build_transformer_model(os.path.join(saved, "bert_config.json"),
                                      os.path.join(saved, "bert_model.ckpt"), model="roberta")
    reader = tf.train.load_checkpoint(os.path.join(saved, "bert_model.ckpt"))
    kernel, bias = reader.get_tensor("classifier/kernel"), reader.get_tensor("classifier/bias")
    tokenizer = Tokenizer(os.path.join(saved, "vocab.txt"), do_lower_case=True)
    with open(args["test"], encoding="utf-8") as f:
        texts = [line.split("\t")[0] for line in f]
    ids = np.zeros((len(texts), args["maxlen"]), np.int32)
    for i, t in enumerate(texts):
        tokens = tokenizer.encode(t, maxlen=args["maxlen"])[0]
        ids[i, :len(tokens)] = tokens
    logits = encoder.predict([ids, np.zeros_like(ids)], verbose=0)[:, 0] @ kernel + bias
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    _, rows = _predictions(os.path.join(args["output"], "predictions_test.tsv"))
    np.testing.assert_allclose(probs, [[float(x) for x in r[3:]] for r in rows], atol=2e-6)
    # and the package's own loader builds the same classifier
    model, info = finetune.load_finetuned(saved)
    np.testing.assert_allclose(model.predict([ids, np.zeros_like(ids)], verbose=0), logits,
                               atol=1e-5)
    assert info["finetune"]["task"] == "classification"


def test_the_data_summary_gives_examples_labels_and_bad_lines(finetuned, splits):
    args, result, lines = finetuned
    for split in ("train", "dev", "test"):
        labels = _labels(splits[split])
        want = "%s: %d examples from %s; labels %s; 0 bad lines skipped" % (
            split, len(labels), splits[split],
            ", ".join("%s %d" % (l, labels.count(l)) for l in result["labels"]))
        assert want in lines, [l for l in lines if l.startswith(split)]


def test_training_is_deterministic_for_a_seed(finetuned):
    """The fine-tuned run (weights loaded from the export by bert4keras) and the
    random-init baseline (the same weights drawn afresh) share weights, seed and
    data: two trainings in one process, so any unseeded random op (init,
    shuffle, dropout) would make them differ. They must agree exactly."""
    args, result, _ = finetuned
    model, again = result["model"], result["baselines"]["random_init"]
    assert model["epochs"] == again["epochs"]
    assert model["epochs"][0]["train_loss"] != model["epochs"][1]["train_loss"]  # it trained
    for split in ("dev", "test"):
        assert model[split] == again[split]
        name = "predictions_%s.tsv" % split
        with open(os.path.join(args["output"], name), encoding="utf-8") as f, \
                open(os.path.join(args["output"], "random_init", name), encoding="utf-8") as g:
            assert f.read() == g.read()


def test_formats_are_detected_and_bad_lines_reported_and_skipped(tmp_path):
    good = [("今天天气很好", "1"), ("这部电影太难看了", "0"), ("我们去公园散步", "1")]
    path = tmp_path / "train.tsv"
    with open(path, "wb") as f:
        f.write("text\tlabel\n".encode())  # a header
        for text, label in good[:2]:
            f.write(("%s\t%s\n" % (text, label)).encode())
        f.write(b"\xff\xfe broken\t1\n")  # line 4: not UTF-8
        f.write("只有一列\n".encode())  # line 5
        f.write("\t1\n".encode())  # line 6: empty text
        f.write(("%s\t%s\n" % good[2]).encode())
    log = []
    examples, skipped = finetune_data.read_examples(str(path), "classification",
                                                    max_bad_fraction=0.5, log=log.append)
    assert [(e.text_a, e.label) for e in examples] == good
    assert [e.where for e in examples] == ["%s:%d" % (path, n) for n in (2, 3, 7)]
    assert skipped == {"bad_utf8": 1, "1 tab-separated columns, expected 2": 1, "empty text": 1}
    assert log[:3] == ["%s:4: bad_utf8" % path,
                       "%s:5: 1 tab-separated columns, expected 2 (text, label)" % path,
                       "%s:6: empty text" % path]
    # the same lines are too many under the default 5%
    with pytest.raises(finetune_data.DataError, match=r"3 of 6 lines \(50.0%\) are bad"):
        finetune_data.read_examples(str(path), "classification", log=log.append)
    # CLUE-style JSON lines, single sentences and pairs; a label unseen in train
    single = tmp_path / "tnews.json"
    single.write_text('{"sentence": "股市今天大涨", "label": "103"}\n'
                      '{"sentence": "球队赢了", "label": "999"}\n{"oops"\n', encoding="utf-8")
    examples, skipped = finetune_data.read_examples(
        str(single), "classification", max_bad_fraction=1.0, labels={"103"}, log=log.append)
    assert [(e.text_a, e.label) for e in examples] == [("股市今天大涨", "103")]
    assert skipped == {"label '999' is not among the train labels": 1, "bad_json": 1}
    pairs = tmp_path / "afqmc.json"
    pairs.write_text('{"sentence1": "花呗怎么还款", "sentence2": "花呗如何还钱", "label": "1"}\n'
                     '{"sentence": "只有一句", "label": "0"}\n', encoding="utf-8")
    examples, skipped = finetune_data.read_examples(str(pairs), "pair", max_bad_fraction=1.0,
                                                    log=log.append)
    assert [(e.text_a, e.text_b, e.label) for e in examples] == [("花呗怎么还款", "花呗如何还钱", "1")]
    assert list(skipped) == ["no text field"]
    assert log[-1].endswith("skipped 1 of 2 lines (no text field: 1)")


def test_bad_input_is_a_one_line_error_without_traceback(tiny_export, splits, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("一\t二\t三\t四\n" * 5 + "好句子\t黄帝内经\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "pretrain.finetune", "--model", tiny_export,
                           "--task", "classification", "--train", str(bad), "--dev",
                           splits["dev"], "--output", str(tmp_path / "out")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "%s:1: 4 tab-separated columns, expected 2 (text, label)" % bad in done.stdout
    errors = [l for l in done.stderr.splitlines() if "max_bad_fraction" in l]
    assert len(errors) == 1 and "5 of 6 lines (83.3%) are bad" in errors[0], done.stderr[-2000:]


def test_a_missing_split_file_is_named_with_its_flag(tmp_path):
    train = _write(str(tmp_path / "train.tsv"), [("好句子", "a"), ("坏句子", "b")])
    for split in ("dev", "test"):
        args = dict(ARGS, model=str(tmp_path), train=train, dev=train, test=None)
        args[split] = str(tmp_path / "nope.tsv")
        with pytest.raises(finetune_data.DataError,
                           match=r"^--%s .*nope\.tsv: no such file$" % split):
            finetune.load_data(args)


def test_help_documents_every_flag():
    from absl import flags
    fv = flags.FlagValues()
    finetune_command.define_flags(fv)
    names = set(fv.flag_values_dict())
    assert {"model", "task", "train", "dev", "test", "output", "epochs", "batch_size",
            "learning_rate", "warmup_proportion", "maxlen", "seed", "baselines"} <= names
    for name in names:
        assert len(fv[name].help) > 15, name
