"""SimBERT: group reader, pair batches, losses against NumPy, a tiny model that overfits, eval."""
import collections
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pretrain.export import writer as export
from pretrain.models import build as models
from pretrain.simbert import use as simbert
from pretrain.simbert import data as simbert_data
from pretrain.simbert import evaluate as simbert_eval
from pretrain.simbert import task as simbert_task
from pretrain.config import bert4keras_config, load_config
from tests.conftest import REPO_ROOT, shared_path

MAXLEN = 32


def tiny_cfg(maxlen=MAXLEN):
    """simbert_tiny's data and vocab with a 2-layer, 64-wide model."""
    cfg = load_config("simbert_tiny", smoke=True)
    cfg["model"].update(hidden_size=64, embedding_size=None, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg["simbert"] = {"maxlen": maxlen}
    cfg["train"]["phases"][0]["seq_len"] = 2 * maxlen
    return cfg


def b4k_model(cfg, seed=1):
    """The model straight from bert4keras (softmax MLM head): an independent oracle."""
    tf.keras.utils.set_random_seed(seed)
    return simbert.build_unilm(bert4keras_config(cfg))


def _bundle(model):
    return collections.namedtuple("Bundle", "encoder")(model)


# ---------------------------------------------------------------- reader


def test_reader_joins_the_four_wrapped_records_of_the_upstream_sample():
    path = shared_path("similarity", "simbert_data_sample.json")
    stats = simbert_data.GroupStats()
    groups = list(simbert_data.read_groups(path, stats))
    assert len(groups) == stats.groups == 14
    assert [w.rsplit(":", 1)[1] for w in stats.broken] == ["2-3", "13-14", "15-16", "17-18"]
    assert stats.bad == [] and stats.too_small == 0
    # a joined record is whole: its last synonym is the one that was split
    joined = [g for g in groups if g.where.endswith(":2-3")][0]
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    record = json.loads(lines[1] + lines[2])
    assert joined.sentences == [record["text"]] + record["synonyms"]


def test_reader_counts_small_groups_and_reports_bad_lines(tmp_path):
    path = tmp_path / "groups.json"
    good = {"text": "今天天气怎么样", "synonyms": ["今天天气如何", "今天天气怎么样"]}
    wrapped = json.dumps({"text": "明天下雨吗", "synonyms": ["明天会下雨吗"]},
                         ensure_ascii=False)
    path.write_text("\n".join([
        json.dumps(good, ensure_ascii=False),           # 1: good, duplicate dropped
        "",                                             # 2: blank
        wrapped[:20], wrapped[20:],                     # 3-4: wrapped record
        '{"text": "只有一句"}',                           # 5: one sentence
        '{"text": "重复", "synonyms": ["重复", " 重复 "]}',  # 6: one distinct sentence
        "this is not json",                             # 7: garbage
        json.dumps(["a", "b"]),                         # 8: JSON but not a record
        '{"text": "尾巴", "synonyms": ["截断'])           # 9: file ends inside it
                    + "\n", encoding="utf-8")
    stats = simbert_data.GroupStats()
    groups = list(simbert_data.read_groups(str(path), stats))
    assert [g.sentences for g in groups] == [["今天天气怎么样", "今天天气如何"],
                                             ["明天下雨吗", "明天会下雨吗"]]
    assert [g.where.rsplit(":", 1)[1] for g in groups] == ["1", "3-4"]
    assert stats.too_small == 2
    assert [w.rsplit(":", 1)[1] for w in stats.bad] == ["7", "8", "9"]
    assert "2 groups read; 1 records broken" in stats.summary("x")


def test_split_is_by_group_and_stable():
    path = shared_path("similarity", "bert4torch_data_similarity.json")
    groups = list(simbert_data.read_groups(path))
    splits = [simbert_data.group_split(g, 0.05) for g in groups]
    assert splits == [simbert_data.group_split(g, 0.05) for g in simbert_data.read_groups(path)]
    share = splits.count("heldout") / len(splits)
    assert 0.03 < share < 0.07, share
    by_text = collections.defaultdict(set)
    for g, s in zip(groups, splits):
        by_text[g.sentences[0]].add(s)
    assert all(len(s) == 1 for s in by_text.values())  # duplicates never straddle


def test_groups_are_held_out_by_the_rule_preprocessing_holds_out_documents_by():
    import zlib
    path = shared_path("similarity", "bert4torch_data_similarity.json")
    texts = [g.sentences[0] for g in simbert_data.read_groups(path)]
    for fraction in (0.0, 0.05, 0.5):  # the documented rule: crc32 of the text below a share
        want = ["heldout" if zlib.crc32(t.encode("utf-8")) < fraction * 2 ** 32 else "train"
                for t in texts]
        got = [simbert_data.group_split(simbert_data.Group("", [t, "x"]), fraction)
               for t in texts]
        assert got == want
    assert 0 < want.count("heldout") < len(want)


# ---------------------------------------------------------------- batches


def test_pair_rows_layout():
    cfg = tiny_cfg(maxlen=8)
    tok = simbert_data.config_tokenizer(cfg)
    token_ids, segment_ids = simbert_data.pair_rows(tok, "今天天气怎么样啊朋友们", "天气好吗", 8, 16)
    a = tok.encode("今天天气怎么样啊朋友们", maxlen=8)[0]  # cut to [CLS] + 6 + [SEP]
    b = tok.encode("天气好吗")[0]
    assert len(a) == 8 and a[-1] == b[-1] == tok._token_end_id
    np.testing.assert_array_equal(token_ids[0], a + b[1:] + [0] * (16 - len(a) - len(b) + 1))
    np.testing.assert_array_equal(token_ids[1], b + a[1:] + [0] * (16 - len(a) - len(b) + 1))
    np.testing.assert_array_equal(segment_ids[0][:len(a) + len(b) - 1],
                                  [0] * len(a) + [1] * (len(b) - 1))
    assert segment_ids[0][len(a) + len(b) - 1:].sum() == 0
    np.testing.assert_array_equal(segment_ids[1][:len(a) + len(b) - 1],
                                  [0] * len(b) + [1] * (len(a) - 1))


def _batches(ds, n):
    return [{k: v.numpy() for k, v in b.items()} for b in ds.take(n)]


@pytest.mark.tpu_build
def test_dataset_static_partners_deterministic_resumable_and_sharded():
    path = shared_path("similarity", "bert4torch_data_similarity.json")
    cfg = tiny_cfg(maxlen=16)
    tok = simbert_data.config_tokenizer(cfg)
    ds = simbert_task.pair_dataset(cfg, path, 8, seed=3)
    assert ds.element_spec["token_ids"].shape == (8, 32)
    assert ds.element_spec["segment_ids"].shape == (8, 32)
    first = _batches(ds, 4)
    again = _batches(simbert_task.pair_dataset(cfg, path, 8, seed=3), 4)
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x["token_ids"], y["token_ids"])
    resumed = _batches(simbert_task.pair_dataset(cfg, path, 8, seed=3, skip_batches=3), 1)[0]
    np.testing.assert_array_equal(resumed["token_ids"], first[3]["token_ids"])
    other = _batches(simbert_task.pair_dataset(cfg, path, 8, seed=4), 1)[0]
    assert not np.array_equal(other["token_ids"], first[0]["token_ids"])

    groups = collections.defaultdict(set)  # a sentence's ids (as cut to maxlen) -> groups
    for g in simbert_data.read_groups(path):
        for s in g.sentences:
            groups[tuple(tok.encode(s, maxlen=16)[0][1:-1])].add(g.where)
    t, s = first[0]["token_ids"], first[0]["segment_ids"]

    def bodies(r):  # [CLS] a [SEP] b [SEP] -> (a, b)
        return t[r][(s[r] == 0) & (t[r] > 0)][1:-1].tolist(), t[r][s[r] == 1][:-1].tolist()

    for row in range(0, 8, 2):  # rows 2i, 2i+1 are a->b and b->a of one group
        a, b = bodies(row)
        assert bodies(row + 1) == (b, a)
        assert groups[tuple(a)] & groups[tuple(b)]

    # two input pipelines split the pairs between them
    shards = []
    for i in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i,
                                         num_replicas_in_sync=2)
        shards.append(_batches(simbert_task.pair_dataset(cfg, path, 8, seed=3,
                                                    input_context=ctx), 1)[0])
    assert shards[0]["token_ids"].shape == (4, 32)
    np.testing.assert_array_equal(shards[0]["token_ids"][:2], first[0]["token_ids"][:2])
    np.testing.assert_array_equal(shards[1]["token_ids"][:2], first[0]["token_ids"][2:4])


def test_validation_split_one_pass_is_finite_and_disjoint():
    path = shared_path("similarity", "bert4torch_data_similarity.json")
    cfg = tiny_cfg(maxlen=16)
    val = list(simbert_task.pair_dataset(cfg, path, 16, split="heldout", repeat=False))
    n_groups = sum(1 for _ in simbert_data.split_groups(path, "heldout", 0.05))
    assert len(val) == n_groups * 2 // 16
    with pytest.raises(ValueError, match="even"):
        simbert_task.pair_dataset(cfg, path, 7)
    with pytest.raises(ValueError, match="seq_len >= 63"):
        simbert_task.pair_dataset(tiny_cfg(maxlen=32), path, 8, seq_len=32)


# ---------------------------------------------------------------- losses


def _numpy_losses(pooled, probs, token_ids, segment_ids):
    """Independent reference: -log p of the next token on segment 1; row partners."""
    nll, count = 0.0, 0
    for r in range(token_ids.shape[0]):
        for t in range(1, token_ids.shape[1]):
            if segment_ids[r, t] == 1:
                nll -= np.log(probs[r, t - 1, token_ids[r, t]])
                count += 1
    v = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    sims = 30.0 * v @ v.T
    ce, hits = [], []
    for i in range(len(v)):
        partner = i + 1 if i % 2 == 0 else i - 1
        others = [j for j in range(len(v)) if j != i]
        logz = np.log(np.sum(np.exp(sims[i, others] - sims[i, others].max()))) + \
            sims[i, others].max()
        ce.append(logz - sims[i, partner])
        hits.append(others[int(np.argmax(sims[i, others]))] == partner)
    return nll / count, np.mean(ce), np.mean(hits)


@pytest.mark.tpu_build
def test_forward_loss_matches_numpy_on_bert4keras_outputs():
    path = shared_path("similarity", "bert4torch_data_similarity.json")
    cfg = tiny_cfg(maxlen=16)
    model = b4k_model(cfg)
    batch = next(iter(simbert_task.pair_dataset(cfg, path, 8)))
    loss, metrics = simbert_task.forward_loss(_bundle(model), batch, training=False)
    pooled, probs = model.predict([batch["token_ids"], batch["segment_ids"]], verbose=0)
    s2s, sim, acc = _numpy_losses(pooled, probs, batch["token_ids"].numpy(),
                                  batch["segment_ids"].numpy())
    np.testing.assert_allclose(float(metrics["seq2seq_loss"]), s2s, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["similarity_loss"]), sim, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["similarity_acc"]), acc)
    np.testing.assert_allclose(float(loss), s2s + sim, rtol=1e-4)


def test_rank_metrics_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.RandomState(0)
    scores = np.round(rng.rand(200), 2)  # rounding makes ties
    labels = (scores + rng.rand(200) * 0.8 > 0.9).astype(int)
    assert simbert_eval.spearman(scores, labels) == pytest.approx(
        stats.spearmanr(scores, labels).correlation, abs=1e-12)
    acc, threshold = simbert_eval.best_threshold_accuracy(scores, labels)
    assert simbert_eval.pair_metrics(scores, labels)["accuracy"] == acc
    brute = max(np.mean((scores >= t) == labels) for t in np.append(scores, 2.0))
    assert acc == pytest.approx(brute)
    assert np.mean((scores >= threshold) == labels) == pytest.approx(acc)


# ---------------------------------------------------------------- a tiny model overfits


def _train(bundle, batches, lr=3e-3):
    """Adam on forward_loss: a stand-in for pretrain/training/trainer.py, which runs
    forward_loss the same way inside its compiled step. Per-step metrics."""
    model = bundle.encoder
    optimizer = tf.keras.optimizers.Adam(lr)

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            loss, metrics = simbert_task.forward_loss(bundle, batch, training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return metrics

    return [{k: float(v) for k, v in step(b).items()} for b in batches]


def test_heldout_seq2seq_loss_falls(tmp_path):
    """Trained on the shipped groups' training split, the model generates the
    partner of groups it never saw better than before training."""
    path = os.path.join(REPO_ROOT, "data", "sample", "similarity_groups.json")
    cfg = tiny_cfg()
    bundle = models.build_model(cfg)
    before = simbert_eval.heldout_losses(cfg, bundle.encoder, path, "heldout", 32)
    _train(bundle, simbert_task.pair_dataset(cfg, path, 32, seed=0).take(60))
    after = simbert_eval.heldout_losses(cfg, bundle.encoder, path, "heldout", 32)
    assert after["seq2seq_loss"] < before["seq2seq_loss"] - 1.0, (before, after)


def test_tiny_model_overfits_a_handful_of_groups(tmp_path):
    """Both losses fall and similarity top-1 on the trained groups reaches ~1."""
    path = shared_path("similarity", "simbert_data_sample.json")
    cfg = tiny_cfg(maxlen=24)
    cfg["data"]["heldout_fraction"] = 0.0
    bundle = models.build_model(cfg)  # what the trainer trains
    model = bundle.encoder
    ds = simbert_task.pair_dataset(cfg, path, 28, seed=0)  # 14 groups: one epoch per batch
    history = _train(bundle, ds.take(40))
    for key in ("seq2seq_loss", "similarity_loss"):
        start = np.mean([h[key] for h in history[:3]])
        end = np.mean([h[key] for h in history[-3:]])
        assert end < 0.7 * start, (key, start, end)
    groups = list(simbert_data.read_groups(path))
    sim = simbert.SimBERT(model, simbert_data.config_tokenizer(cfg), 24)
    top1 = simbert_eval.retrieval_top1(simbert_eval.cosine_matrix(sim.encode), groups)
    assert top1["retrieval_top1"] >= 0.9, top1
    held = simbert_eval.heldout_losses(cfg, model, path, "all", 28)
    assert held["similarity_acc"] >= 0.9, held


# ---------------------------------------------------------------- export, use, eval CLI


@pytest.mark.tpu_build
def test_export_reloads_to_the_same_vectors_and_the_eval_cli_runs(tmp_path):
    pairs_path = shared_path("similarity", "lcqmc", "lcqmc_dev.tsv")
    groups_path = shared_path("similarity", "simbert_data_sample.json")
    cfg = tiny_cfg(maxlen=16)
    bundle = models.build_model(cfg)
    out = str(tmp_path / "export")
    export.export_bert4keras(cfg, bundle, out)
    live = simbert.SimBERT(bundle.encoder, simbert_data.config_tokenizer(cfg), 16)
    loaded = simbert.SimBERT.load(out, 16)  # bert4keras build_transformer_model
    pairs = simbert_data.read_pairs(pairs_path, limit=200)
    texts = pairs[0][:32] + pairs[1][:32]
    vecs = loaded.encode(texts)
    np.testing.assert_allclose(vecs, live.encode(texts), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    batch = next(iter(simbert_task.pair_dataset(cfg, groups_path, 8, split="all")))
    np.testing.assert_allclose(
        simbert_task.forward_loss(_bundle(loaded.model), batch, False)[0],
        simbert_task.forward_loss(bundle, batch, False)[0], rtol=1e-5)

    hits = loaded.search(["他的数学不怎么好"], texts, k=3)[0]
    assert [s for _, s in hits] == sorted([s for _, s in hits], reverse=True)
    generated = loaded.generate(texts[0], n=4, k=3, seed=1)
    assert generated == loaded.generate(texts[0], n=4, k=3, seed=1)
    assert all(text != texts[0] for text, _ in generated)

    cmd = [sys.executable, "-m", "pretrain.simbert", "eval", "--model", out,
           "--pairs", pairs_path, "--limit", "200", "--groups", groups_path,
           "--groups_split", "all", "--batch_size", "8", "--maxlen", "16"]
    run = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    expected = simbert_eval.pair_metrics(simbert_eval.cosine_scores(loaded.encode, *pairs[:2]), pairs[2])
    value = float(re.search(r"spearman: (-?[0-9.]+)", run.stdout).group(1))
    assert value == pytest.approx(expected["spearman"], abs=1e-4)
    assert re.search(r"groups: 14 .*retrieval_top1: [0-9.]+ seq2seq_loss: [0-9.]+ "
                     r"similarity_loss: [0-9.]+", run.stdout), run.stdout


def test_jaccard_baseline_matches_set_arithmetic():
    texts = ["今天天气好", "今天天气不好", "明天见", "今天"]
    m = simbert_eval.jaccard_matrix(texts)
    for i, a in enumerate(texts):
        for j, b in enumerate(texts):
            assert m[i, j] == pytest.approx(len(set(a) & set(b)) / len(set(a) | set(b)))
    np.testing.assert_allclose(simbert_eval.jaccard_scores(texts, texts[::-1]),
                               [m[i, len(texts) - 1 - i] for i in range(len(texts))])
    groups = [simbert_data.Group("x:1", texts[:2]), simbert_data.Group("x:2", texts[2:])]
    # "今天" is nearest to "今天天气好" (2/4), which is in the other group
    assert simbert_eval.retrieval_top1(simbert_eval.jaccard_matrix, groups)["retrieval_top1"] == 0.75


# ---------------------------------------------------------------- trainer data checks


@pytest.mark.tpu_build
def test_trainer_refuses_an_empty_validation_split_before_the_first_step(tmp_path):
    from pretrain.training import trainer as train
    path = os.path.join(REPO_ROOT, "data", "sample", "similarity_groups.json")
    cfg = tiny_cfg()
    cfg["data"]["heldout_fraction"] = 0.0
    cfg["train"].update(save_every=2, eval_every=2, log_every=2)
    cfg["train"]["phases"][0]["steps"] = 4
    trainer = train.Trainer(cfg, simbert_task.SimbertTask(cfg, path), str(tmp_path / "run"))
    with pytest.raises(train.TrainingError, match=r"no groups in split 'heldout'.*"
                       r"heldout_fraction=0.0.*eval_steps"):
        trainer.run_phase(0)
    assert trainer.history == []
