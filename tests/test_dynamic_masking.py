"""Dynamic masking (data.masking "dynamic"): records written once unmasked, masked by the
reader; its statistics against masking.Masker's on the same real text, epochs, resume, sharding."""
import json
import os

import numpy as np
import pytest

from conftest import shared_path
from pretrain import config
from pretrain.training import inputs
from pretrain.data import masking
from pretrain.data import preprocess
from pretrain.data import records
from pretrain.data import tokenization

import tensorflow as tf  # noqa: E402  (after pretrain set tf_keras)

SETTINGS = dict(seq_lens=[128, 512], heldout_fraction=0.1, shard_mb=0.03, seed=7, progress=False,
                workers=1)
MASK_ID, CLS_ID, SEP_ID = 103, 101, 102


@pytest.fixture(scope="module")
def cfg():
    cfg = config.load_config("roberta_tiny")
    cfg["data"]["masking"] = "dynamic"
    return cfg


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, cfg):
    """Dynamic records of the first 60 articles of the shared Chinese Wikipedia sample."""
    src = tmp_path_factory.mktemp("corpus") / "wiki.jsonl"
    with open(shared_path("corpus", "wiki_cmrc2018_zh_hans.jsonl"), encoding="utf-8") as f:
        src.write_text("".join(f.readlines()[:60]), encoding="utf-8")
    out = str(tmp_path_factory.mktemp("dynamic"))
    preprocess.run(cfg, str(src), out, dupe_factor=5, **SETTINGS)
    return out


def _unmasked_rows(data_dir, L):
    """(input_ids [n, L], word_starts [n, L], example_id [n]) of the train records, as stored."""
    m = records.read_manifest(data_dir, L)
    spec = inputs.feature_spec(L, m["max_predictions"], "dynamic")
    rows = [tf.io.parse_single_example(raw, spec) for s in m["train"]["shards"]
            for raw in records.iter_records(os.path.join(data_dir, "seq%d" % L, s["name"]))]
    return tuple(np.stack([r[k].numpy() for r in rows]).astype(np.int32) for k in
                 ("input_ids", "word_starts", "example_id"))


def _key(batch, row):
    """An example's unmasked ids (the labels put back): identifies it across epochs."""
    ids = batch["input_ids"][row].copy()
    k = int(batch["masked_lm_weights"][row].sum())
    ids[batch["masked_lm_positions"][row][:k]] = batch["masked_lm_ids"][row][:k]
    return ids.tobytes()


def _numpy(ds, n):
    return [{k: v.numpy() for k, v in b.items()} for b in ds.take(n)]


def _stats(ids, words, lens, input_ids, positions, labels, counts, P):
    """Masking statistics of examples: rows of the original tokens `ids`, word ids
    `words` (of the tokens between [CLS] and [SEP], lengths `lens`) and the masks."""
    out = {"tokens": 0, "masked": 0, "full_budget": 0, "mask": 0, "random": 0, "same": 0,
           "words": 0, "multi_token_masked": 0, "n": len(lens)}
    for r, n in enumerate(lens):
        k = int(counts[r])
        pos = positions[r][:k]
        budget = min(P, max(1, int(np.round(n * 0.15))))
        assert 1 <= k <= budget  # the budget, at most P
        assert (pos >= 1).all() and (pos <= n).all() and (np.diff(pos) > 0).all()
        assert input_ids[r][0] == CLS_ID and input_ids[r][n + 1] == SEP_ID  # never specials
        assert (labels[r][:k] == ids[r][pos - 1]).all()
        unchosen = np.setdiff1d(np.arange(1, n + 1), pos)
        assert (input_ids[r][unchosen] == ids[r][unchosen - 1]).all()
        w = words[r][:n]
        chosen_words, per_word = np.unique(w[pos - 1], return_counts=True)
        assert (per_word == np.bincount(w)[chosen_words]).all()  # whole words only
        got = input_ids[r][pos]
        out["tokens"] += n
        out["masked"] += k
        out["full_budget"] += k == budget
        out["mask"] += int((got == MASK_ID).sum())
        out["same"] += int((got == labels[r][:k]).sum())
        out["random"] += int(((got != MASK_ID) & (got != labels[r][:k])).sum())
        out["words"] += len(chosen_words)
        out["multi_token_masked"] += int(per_word[per_word > 1].sum())
    return out


@pytest.mark.parametrize("L", [128, 512])
def test_statistics_equal_static_masking_on_real_text(data_dir, cfg, L):
    """Four epochs of the reader's masks against masking.Masker's, four times, on the
    same stored sequences: rate, budget, whole words, 80/10/10, no special tokens."""
    P = config.max_predictions_for(cfg, L)
    ids_rows, starts, _ = _unmasked_rows(data_dir, L)
    lens = (ids_rows != 0).sum(1) - 2
    toks = [ids_rows[r, 1:n + 1] for r, n in enumerate(lens)]
    words = [np.cumsum(starts[r, 1:n + 1]) for r, n in enumerate(lens)]
    tok = tokenization.make_tokenizer(tokenization.tokenizer_spec(cfg))
    static_masker = masking.Masker(tok, L, P)
    flat_ids, flat_words = np.concatenate(toks), np.concatenate(
        [w + 10 ** 6 * r for r, w in enumerate(words)])  # distinct word ids per sequence
    ends = np.cumsum(lens)
    ranges = list(zip((ends - lens).tolist(), ends.tolist()))
    pad = lambda rows: np.stack([np.pad(x, (0, L - len(x))) for x in rows])  # noqa: E731
    static, dynamic = [], []
    for copy in range(4):
        arrays = static_masker.mask(ranges, flat_ids, flat_words, np.random.default_rng(copy))
        static.append(_stats(pad(toks), pad(words), lens, arrays[0], *arrays[2:], P))

    per_epoch = len(lens) // 16
    by_key = {ids_rows[r].tobytes(): r for r in range(len(lens))}
    for b in _numpy(inputs.mlm_dataset(data_dir, cfg, L, 16, seed=3), 4 * per_epoch):
        rows = [by_key[_key(b, i)] for i in range(16)]
        dynamic.append(_stats(pad([toks[r] for r in rows]), pad([words[r] for r in rows]),
                              lens[rows], b["input_ids"], b["masked_lm_positions"],
                              b["masked_lm_ids"], b["masked_lm_weights"].sum(1), P))

    def total(parts):
        t = {k: sum(p[k] for p in parts) for k in parts[0]}
        return {"rate": t["masked"] / t["tokens"], "full_budget": t["full_budget"] / t["n"],
                "mask": t["mask"] / t["masked"], "random": t["random"] / t["masked"],
                "same": t["same"] / t["masked"], "tokens_per_word": t["masked"] / t["words"],
                "multi_token": t["multi_token_masked"] / t["masked"]}

    s, d = total(static), total(dynamic)
    assert s["multi_token"] > 0.3  # jieba words: the statistic below can tell
    assert abs(s["rate"] - 0.15) < 0.01 and abs(d["rate"] - s["rate"]) < 0.003, (s, d)
    assert d["full_budget"] > 0.95 and abs(d["full_budget"] - s["full_budget"]) < 0.03, (s, d)
    for k in ("mask", "random", "same"):
        assert abs(d[k] - s[k]) < 0.015, (k, s, d)
    assert abs(d["mask"] - 0.8) < 0.015 and abs(d["random"] - 0.1) < 0.015
    assert abs(d["tokens_per_word"] / s["tokens_per_word"] - 1) < 0.03, (s, d)
    assert abs(d["multi_token"] - s["multi_token"]) < 0.03, (s, d)


def test_records_are_one_unmasked_copy_and_the_manifest_says_so(data_dir, cfg):
    m = records.read_manifest(data_dir, 128)
    assert m["masking"]["mode"] == "dynamic" and m["dupe_factor"] is None
    assert m["train"]["masked_tokens"] == 0
    ids, starts, example_ids = _unmasked_rows(data_dir, 128)
    assert len(ids) == m["train"]["examples"]
    assert len({r.tobytes() for r in ids}) > 0.98 * len(ids)  # one copy (dupe_factor ignored)
    assert (ids[:, 0] == CLS_ID).all() and not (ids == MASK_ID).any()
    assert (starts[:, 0] == 0).all() and (starts[:, 1] == 1).all()
    # word starts are jieba's words of the text: check one sequence against the segmenter
    tok = tokenization.make_tokenizer(tokenization.tokenizer_spec(cfg))
    row = next(r for r in range(len(ids)) if (ids[r] != 0).sum() == 128)  # a full one
    text = "".join(tok.tokens[i] for i in ids[row, 1:127])
    if all(len(tok.tokens[i]) == 1 for i in ids[row, 1:127]):  # one char per token
        cut = masking.Segmenter(backend=m["masking"]["segmenter"]).cut(text)
        inner = np.flatnonzero(starts[row, 1:127])
        boundaries = np.cumsum([len(w) for w in cut])[:-1]
        # the sequence may start or end inside a word; inside it, boundaries agree
        assert len(set(inner[1:-1].tolist()) - set(boundaries.tolist())) <= 2


def test_masks_differ_across_epochs_and_eval_masks_stay_fixed(data_dir, cfg):
    per_epoch = records.read_manifest(data_dir, 128)["train"]["examples"] // 8
    batches = _numpy(inputs.mlm_dataset(data_dir, cfg, 128, 8, seed=3), 2 * per_epoch)
    masks = [{}, {}]
    for i, b in enumerate(batches):
        for r in range(8):
            masks[i // per_epoch][_key(b, r)] = tuple(b["masked_lm_positions"][r])
    both = set(masks[0]) & set(masks[1])
    assert len(both) > 0.8 * len(masks[0])
    assert sum(masks[0][k] != masks[1][k] for k in both) > 0.9 * len(both)
    evals = [_numpy(inputs.mlm_dataset(data_dir, cfg, 128, 8, split="eval", seed=3,
                                         repeat=False), 3) for _ in range(2)]
    for a, b in zip(*evals):
        assert all((a[k] == b[k]).all() for k in a)


def _equal(a, b):
    return sorted(a) == sorted(b) and all((a[k] == b[k]).all() for k in a)


def test_resume_is_exact_across_an_epoch_boundary(data_dir, cfg):
    per_epoch = records.read_manifest(data_dir, 128)["train"]["examples"] // 8
    stream = _numpy(inputs.mlm_dataset(data_dir, cfg, 128, 8, seed=5), per_epoch + 2)
    for k in (per_epoch - 1, per_epoch, per_epoch + 1):
        resumed = _numpy(inputs.mlm_dataset(data_dir, cfg, 128, 8, seed=5,
                                              skip_batches=k), 1)[0]
        assert _equal(resumed, stream[k]), k
    other = _numpy(inputs.mlm_dataset(data_dir, cfg, 128, 8, seed=6), 1)[0]
    assert not _equal(other, stream[0])


def test_a_sharded_reader_gives_each_example_the_unsharded_masks(data_dir, cfg):
    """Two input pipelines: in each epoch, every example they read has the masks the
    single reader gives it, and each pipeline resumes exactly."""
    m = records.read_manifest(data_dir, 128)
    assert len([s for s in m["train"]["shards"] if s["count"]]) >= 2
    per_epoch = m["train"]["examples"] // 8
    single = [{}, {}, {}]  # a pipeline's epochs are shorter or longer: read three
    for i, b in enumerate(_numpy(inputs.mlm_dataset(data_dir, cfg, 128, 8, seed=5),
                                 3 * per_epoch)):
        for r in range(8):
            single[i // per_epoch][_key(b, r)] = {k: v[r] for k, v in b.items()}
    seen = 0
    for pipe in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipe,
                                         num_replicas_in_sync=2)
        ds = inputs.mlm_dataset(data_dir, cfg, 128, 8, seed=5, input_context=ctx)
        n_local = ds.element_spec["input_ids"].shape[0]
        stream = _numpy(ds, per_epoch * 3 // 2)  # within the single reader's three epochs
        epochs, unmatched = [0], 0
        for i, b in enumerate(stream):
            for r in range(n_local):
                key = _key(b, r)
                # an example's masks in some epoch of the single reader (and which)
                same = [e for e in (0, 1, 2) if key in single[e] and all(
                    (single[e][key][k] == b[k][r]).all() for k in b)]
                if same:
                    epochs.append(same[0])
                else:  # only where the single reader dropped it (its last partial batch)
                    assert any(key not in single[e] for e in epochs[-1:] + [epochs[-1] + 1]), (
                        "pipeline %d batch %d row %d: masks of no epoch" % (pipe, i, r))
                    unmatched += 1
        assert unmatched <= 16
        seen += len(epochs)
        # the epochs are the single reader's, in order, from 0 into a later one
        assert epochs[0] == 0 and epochs[-1] >= 1 and (np.diff(epochs) >= 0).all()
        k = len(stream) - 3
        resumed = _numpy(inputs.mlm_dataset(data_dir, cfg, 128, 8, seed=5, skip_batches=k,
                                              input_context=ctx), 1)[0]
        assert _equal(resumed, stream[k])
    assert seen > 0.8 * 1.5 * per_epoch * 8


def test_masking_mode_is_validated_and_checked_against_the_records(data_dir, cfg, tmp_path):
    raw = json.load(open(cfg["path"]))
    raw["data"]["masking"] = "sometimes"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(config.ConfigError, match="data.masking must be 'static' or 'dynamic'"):
        config.load_config(str(path))
    static_cfg = dict(cfg, data=dict(cfg["data"], masking="static"))
    with pytest.raises(records.ManifestError, match="dynamic-masked, config roberta_tiny has "
                                                    "data.masking 'static'"):
        inputs.mlm_dataset(data_dir, static_cfg, 128, 8)
