"""preprocess.py end to end: determinism across worker counts, resume after a kill,
bad-input limits, the vocab command."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import read_tree, shared_path
from pretrain import config
from pretrain.training import inputs
from pretrain.data import preprocess
from pretrain.data import state as preprocess_state
from pretrain.data import records
from pretrain.data import tokenization

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "data", "sample", "clue_small.txt")
SETTINGS = dict(seq_lens=[128, 512], dupe_factor=2, heldout_fraction=0.05, shard_mb=0.04,
                seed=7, progress=False)


@pytest.fixture(scope="module")
def cfg():
    """Static masking: these tests read the masks in the records (dynamic: test_dynamic_masking.py)."""
    cfg = config.load_config("roberta_tiny")
    cfg["data"]["masking"] = "static"
    return cfg


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    with open(SAMPLE, encoding="utf-8") as f:
        path.write_text("".join(f.readlines()[:250]), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cfg, small_corpus):
    out = str(tmp_path_factory.mktemp("one_worker"))
    summary = preprocess.run(cfg, small_corpus, out, workers=1, **SETTINGS)
    return out, summary


def test_output_is_identical_whatever_the_worker_count(reference, cfg, small_corpus, tmp_path):
    ref_dir, summary = reference
    assert summary["docs"] > 200 and summary["lengths"][128]["train"]["sequences"] > 0
    manifest = records.read_manifest(ref_dir, 128)
    assert len(manifest["train"]["shards"]) >= 4  # several chunks, so workers share work
    summary2 = preprocess.run(cfg, small_corpus, str(tmp_path), workers=2, **SETTINGS)
    assert read_tree(str(tmp_path)) == read_tree(ref_dir)
    for key in ("docs", "tokens", "lengths", "skipped", "unk_rate"):
        assert summary2[key] == summary[key]


def test_forked_and_spawned_workers_write_the_same_bytes(reference, small_corpus, tmp_path):
    """The CLI (no TensorFlow loaded) forks workers that share the driver's tokenizer and
    segmenter; a process that loaded TensorFlow spawns fresh ones. Both equal one worker."""
    import tensorflow  # noqa: F401  (loaded here: this process must spawn)
    from pretrain.data import pool as preprocess_pool
    ref_dir, _ = reference
    assert preprocess_pool._context().get_start_method() == "spawn"
    spawned = str(tmp_path / "spawned")
    preprocess.run(config.load_config("roberta_tiny"), small_corpus, spawned, workers=2,
                   masking="static", **SETTINGS)
    forked = str(tmp_path / "forked")
    run = subprocess.run(
        [sys.executable, "-m", "pretrain.preprocess", "--config", "roberta_tiny", "--input",
         small_corpus, "--output", forked, "--seq_lens", "128,512", "--dupe_factor", "2",
         "--heldout_fraction", "0.05", "--shard_mb", "0.04", "--seed", "7", "--masking", "static",
         "--workers", "2", "--progress=false"],
        cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert "2 worker processes, started by fork" in run.stderr
    assert read_tree(spawned) == read_tree(ref_dir)
    assert read_tree(forked) == read_tree(ref_dir)


def test_manifest_contents(reference):
    ref_dir, summary = reference
    for L, P in ((128, 20), (512, 80)):
        m = records.read_manifest(ref_dir, L)
        assert (m["seq_len"], m["max_predictions"], m["dupe_factor"], m["seed"]) == (L, P, 2, 7)
        assert m["vocab"]["size"] == 21128 and len(m["vocab"]["sha256"]) == 64
        assert m["masking"]["whole_word_mask"] and m["masking"]["masked_lm_prob"] == 0.15
        assert m["sources"][0]["bytes"] > 0 and m["compression"] == "gzip"
        assert m["train"]["examples"] == sum(s["count"] for s in m["train"]["shards"])
        assert 0 < m["eval_docs"] < m["docs"] / 5
        for split in ("train", "eval"):
            for shard in m[split]["shards"]:
                path = os.path.join(ref_dir, "seq%d" % L, shard["name"])
                assert sum(1 for _ in records.iter_records(path)) == shard["count"]


def test_dupe_copies_hold_the_same_sequences_with_different_masks(reference):
    import tensorflow as tf
    ref_dir, _ = reference
    m = records.read_manifest(ref_dir, 128)
    path = os.path.join(ref_dir, "seq128", m["train"]["shards"][0]["name"])
    spec = inputs.feature_spec(128, 20)
    copies = {}
    for raw in records.iter_records(path):
        ex = {k: v.numpy() for k, v in tf.io.parse_single_example(raw, spec).items()}
        ids = ex["input_ids"].copy()
        k = int(ex["masked_lm_weights"].sum())
        ids[ex["masked_lm_positions"][:k]] = ex["masked_lm_ids"][:k]
        copies.setdefault(ids.tobytes(), []).append(tuple(ex["masked_lm_positions"][:k]))
    assert all(len(v) % 2 == 0 for v in copies.values())  # (the corpus repeats a few texts)
    assert sum(len(set(v)) > 1 for v in copies.values()) > 0.8 * len(copies)


def test_resume_after_kill_gives_identical_output(reference, small_corpus, tmp_path):
    """SIGKILL the CLI once a shard is done; the same command then finishes the job."""
    ref_dir, _ = reference
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "pretrain.preprocess", "--config", "roberta_tiny",
           "--input", small_corpus, "--output", out, "--seq_lens", "128,512",
           "--masking", "static", "--dupe_factor", "2", "--heldout_fraction", "0.05",
           "--shard_mb", "0.04", "--seed", "7", "--workers", "1", "--progress=false"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = os.path.join(out, preprocess_state.STATE_DIR)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(state) and any(f.startswith("chunk-") and f.endswith(".json")
                                        for f in os.listdir(state)):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {f: os.stat(os.path.join(state, f)).st_mtime_ns for f in os.listdir(state)
                   if f.startswith("chunk-") and f.endswith(".json")}
    assert done_before, "the run was killed before any chunk finished"
    assert not os.path.exists(os.path.join(out, "seq128", "manifest.json"))
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["docs"] > 200
    assert read_tree(out) == read_tree(ref_dir)
    for f, mtime in done_before.items():  # finished chunks were skipped, not redone
        assert os.stat(os.path.join(state, f)).st_mtime_ns == mtime


def test_resume_with_other_settings_is_refused(reference, cfg, small_corpus):
    ref_dir, _ = reference
    other = dict(SETTINGS, seed=8)
    with pytest.raises(preprocess.PreprocessError, match="seed"):
        preprocess.run(cfg, small_corpus, ref_dir, workers=1, **other)


def test_bad_input_limit_and_counts(cfg, tmp_path):
    path = shared_path("similarity", "simbert_data_sample.json")  # 4 records broken in two
    with pytest.raises(preprocess.PreprocessError) as err:
        preprocess.run(cfg, path, str(tmp_path / "a"), workers=1, progress=False)
    message = str(err.value)
    assert "8 of 18 input records" in message and "bad_json 8" in message
    assert "simbert_data_sample.json:" in message
    summary = preprocess.run(cfg, path, str(tmp_path / "b"), workers=1, progress=False,
                             max_bad_fraction=0.5, heldout_fraction=0.0, seq_lens=[128])
    assert summary["docs"] == 10 and summary["skipped"] == {"bad_json": 8}
    assert summary["warnings"] == ["the held-out split is empty. heldout_fraction is 0, so no "
                                   "document is held out: preprocess into a new --output with "
                                   "--heldout_fraction > 0, or set train.eval_steps to 0 to "
                                   "train without eval."]
    assert records.read_manifest(str(tmp_path / "b"), 128)["skipped"] == {"bad_json": 8}


def test_empty_corpus_is_an_error(cfg, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n\n', encoding="utf-8")
    with pytest.raises(preprocess.PreprocessError, match="no documents"):
        preprocess.run(cfg, str(empty), str(tmp_path / "out"), workers=1, progress=False,
                       max_bad_fraction=1.0)


def test_vocab_command_shrinks_to_the_corpus(cfg, small_corpus, tmp_path):
    out = str(tmp_path / "vocab")
    summary = preprocess.run_vocab(cfg, small_corpus, out, workers=1, progress=False)
    keep = json.load(open(os.path.join(out, "keep_tokens.json")))
    assert summary["vocab_size"] == len(keep) < 21128 / 2
    shrunk_cfg = json.loads(json.dumps(cfg))
    shrunk_cfg["tokenizer"]["keep_tokens"] = os.path.join(out, "keep_tokens.json")
    vocab = tokenization.load_vocab(shrunk_cfg)
    assert vocab.tokens == tokenization.read_vocab_file(os.path.join(out, "vocab.txt"))
    assert vocab.tokens[:5] == list(tokenization.SPECIAL_TOKENS)
    # the corpus tokenizes to the same tokens with the shrunk vocab
    full = tokenization.WordPieceTokenizer(tokenization.load_vocab(cfg).tokens)
    small = tokenization.WordPieceTokenizer(vocab.tokens)
    with open(small_corpus, encoding="utf-8") as f:
        for line in f.read().splitlines()[:100]:
            assert [vocab.tokens[i] for i in small.encode(line)] == \
                [full.tokens[i] for i in full.encode(line)]
    counts = json.load(open(os.path.join(out, "token_counts.json"), encoding="utf-8"))
    assert counts["的"] > 100 and np.all(np.array(list(counts.values())[5:]) >= 1)



def test_sentencepiece_config_end_to_end(cfg, small_corpus, tmp_path):
    import io
    import sentencepiece as spm
    with open(small_corpus, encoding="utf-8") as f:
        lines = f.read().splitlines()
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=2000,
        user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"], pad_id=0, unk_id=1, bos_id=-1,
        eos_id=-1, pad_piece="[PAD]", unk_piece="[UNK]", character_coverage=0.98, minloglevel=2)
    (tmp_path / "sp.model").write_bytes(model.getvalue())
    sp_cfg = json.loads(json.dumps(cfg))
    sp_cfg["tokenizer"].update(vocab=None, spm_model=str(tmp_path / "sp.model"))
    out = str(tmp_path / "out")
    preprocess.run(sp_cfg, small_corpus, out, seq_lens=[128], dupe_factor=1, workers=1,
                   progress=False)
    m = records.read_manifest(out, 128)
    assert m["tokenizer"]["kind"] == "spm" and m["vocab"]["size"] == 2000
    batch = next(iter(inputs.mlm_dataset(out, sp_cfg, 128, 4)))
    tok = tokenization.SentencePieceTokenizer(model.getvalue())
    ids = batch["input_ids"].numpy()
    assert (ids[:, 0] == tok.cls_id).all() and (ids < 2000).all()
    assert (ids == tok.mask_id).any()
    with pytest.raises(records.ManifestError, match="vocab differs"):
        inputs.mlm_dataset(out, cfg, 128, 4)


def test_user_dict_words_are_masked_whole(cfg, tmp_path):
    import tensorflow as tf
    word = "蓝莓芝士蛋糕"
    (tmp_path / "dict.txt").write_text(word + "\n", encoding="utf-8")
    doc = "".join("第%d天我吃了%s，真好吃。" % (i, word) for i in range(8))
    (tmp_path / "docs.txt").write_text((doc + "\n") * 40, encoding="utf-8")
    out = str(tmp_path / "out")
    preprocess.run(cfg, str(tmp_path / "docs.txt"), out, seq_lens=[128], dupe_factor=1,
                   workers=1, progress=False, heldout_fraction=0.0,
                   user_dict=str(tmp_path / "dict.txt"))
    m = records.read_manifest(out, 128)
    assert m["masking"]["user_dict_sha256"]
    vocab = tokenization.load_vocab(cfg)
    word_ids = [vocab.token_to_id[c] for c in word]
    spec = inputs.feature_spec(128, 20)
    whole = 0
    for raw in records.iter_records(os.path.join(out, "seq128", m["train"]["shards"][0]["name"])):
        ex = {k: v.numpy() for k, v in tf.io.parse_single_example(raw, spec).items()}
        k = int(ex["masked_lm_weights"].sum())
        ids = ex["input_ids"].copy()
        ids[ex["masked_lm_positions"][:k]] = ex["masked_lm_ids"][:k]
        masked = set(ex["masked_lm_positions"][:k].tolist())
        for start in range(1, 128 - 6):
            if ids[start:start + 6].tolist() == word_ids:
                span = set(range(start, start + 6))
                assert not (span & masked) or span <= masked  # all six or none
                whole += span <= masked
    assert whole > 10


def test_output_that_is_a_file_is_one_line_error(small_corpus, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = subprocess.run([sys.executable, "-m", "pretrain.preprocess", "--config",
                             "roberta_tiny", "--input", small_corpus, "--output", str(afile),
                             "--workers", "1", "--progress=false"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "--output %s: %s is a file, not a directory" % (afile, afile) in result.stderr


def test_a_missing_length_can_be_added_later(reference, cfg, small_corpus, tmp_path):
    ref_dir, _ = reference
    out = str(tmp_path / "out")
    preprocess.run(cfg, small_corpus, out, workers=1, **dict(SETTINGS, seq_lens=[128]))
    assert not os.path.exists(os.path.join(out, "seq512"))
    preprocess.run(cfg, small_corpus, out, workers=1, **dict(SETTINGS, seq_lens=[512]))
    for L in ("seq128", "seq512"):
        assert read_tree(os.path.join(out, L)) == read_tree(os.path.join(ref_dir, L))
    # the run with both lengths now finds everything done
    before = read_tree(out)
    preprocess.run(cfg, small_corpus, out, workers=1, **SETTINGS)
    assert read_tree(out) == before


def test_changed_setting_is_one_line_naming_old_and_new_value(cfg, small_corpus, tmp_path):
    out = str(tmp_path / "out")
    one = dict(SETTINGS, seq_lens=[128], dupe_factor=1)
    preprocess.run(cfg, small_corpus, out, workers=1, segmenter="jieba", **one)
    with pytest.raises(preprocess.PreprocessError) as e:
        preprocess.run(cfg, small_corpus, out, workers=1, segmenter="rjieba", **one)
    message = str(e.value)
    assert "\n" not in message
    assert "segmenter was 'jieba', now 'rjieba'" in message
    assert "--segmenter jieba" in message and "new --output" in message


def test_a_failed_run_does_not_block_a_good_corpus(cfg, small_corpus, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n', encoding="utf-8")
    out = str(tmp_path / "out")
    one = dict(SETTINGS, seq_lens=[128], dupe_factor=1)
    with pytest.raises(preprocess.PreprocessError, match="no documents"):
        preprocess.run(cfg, str(empty), out, workers=1, max_bad_fraction=1.0, **one)
    summary = preprocess.run(cfg, small_corpus, out, workers=1, **one)
    assert summary["docs"] > 200


def test_smoke_records_are_rebuilt_when_settings_differ(tmp_path):
    from pretrain import run
    pytest.importorskip("rjieba")
    cfg = config.load_config("roberta_tiny", smoke=True)
    out = str(tmp_path / "smoke")
    seq_lens = sorted({p["seq_len"] for p in cfg["train"]["phases"]})
    preprocess.run(cfg, [run.SAMPLE_CORPUS], os.path.join(out, "records"), seq_lens=seq_lens,
                   dupe_factor=1, workers=1, seed=cfg["train"]["seed"], segmenter="jieba",
                   progress=False)
    records_dir = run.smoke_data(cfg, out)
    with open(os.path.join(records_dir, preprocess_state.STATE_DIR, "settings.json")) as f:
        assert json.load(f)["segmenter"] == "rjieba"
    assert records.read_manifest(records_dir, 128)["masking"]["segmenter"] == "rjieba"


def _children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_end_with_their_parent(tmp_path, sig):
    """Kill the CLI mid-run: its worker processes end too and write no more chunks."""
    import gzip
    source = shared_path("corpus", "modern_translations.jsonl")
    with open(source, "rb") as f:
        data = f.read(6 << 20)
    data = data[:data.rindex(b"\n") + 1]
    half = data.index(b"\n", len(data) // 2) + 1
    inputs = []
    for i, part in enumerate((data[:half], data[half:])):  # a .gz file is one task
        path = tmp_path / ("part%d.jsonl.gz" % i)
        path.write_bytes(gzip.compress(part, 1))
        inputs.append(str(path))
    out = str(tmp_path / "out")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pretrain.preprocess", "--config", "roberta_tiny", "--input",
         ",".join(inputs), "--output", out, "--seq_lens", "128", "--dupe_factor", "3",
         "--shard_mb", "0.25", "--segmenter", "jieba", "--workers", "2", "--progress=false"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = os.path.join(out, preprocess_state.STATE_DIR)

    def markers():
        return sorted(f for f in os.listdir(state) if f.startswith("chunk-")
                      and f.endswith(".json")) if os.path.isdir(state) else []

    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not markers():
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert proc.poll() is None and len(workers) >= 2, "the run ended before the test could kill it"
    proc.send_signal(sig)
    proc.wait(timeout=30)
    killed_at = markers()
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    left = [p for p in workers if _alive(p)]
    for p in left:  # do not leave them behind if the test fails
        os.kill(p, signal.SIGKILL)
    assert not left, "workers still running 5 s after their parent got signal %d" % sig
    assert markers() == killed_at


def test_documents_tokenized_together_equal_one_by_one(cfg):
    """masking.prepare_documents (one tokenizer and segmenter call on many documents)
    gives each document what prepare_document gives it alone: ids, sentence ends and
    word boundaries, on real short and long documents and on edge cases."""
    from pretrain.data import masking
    with open(shared_path("corpus", "uer_CLUECorpusSmall_sampled.txt"), encoding="utf-8") as f:
        texts = [line.strip() for _, line in zip(range(300), f)]
    with open(shared_path("corpus", "wiki_cmrc2018_zh_hans.jsonl"), encoding="utf-8") as f:
        texts += [json.loads(line)["text"] for _, line in zip(range(20), f)]
    texts += ["", "   ", "”开头的引号。", "结尾。", "”", "ΟΔΟΣ", "abc", "def ghi。”",
              "cafe\u0301 Straße", "\t换行\n\n符", "UPPER lower 123abc", "[MASK]是特殊的"]
    tok = tokenization.make_tokenizer(tokenization.tokenizer_spec(cfg))
    seg = masking.Segmenter()
    together = masking.prepare_documents(texts, tok, seg)
    assert len(together) == len(texts)
    for text, (ids, words, ends) in zip(texts, together):
        ids1, words1, ends1 = masking.prepare_document(text, tok, seg)
        assert ids.tolist() == ids1.tolist() and ends.tolist() == ends1.tolist(), text[:30]
        if len(ids1):
            assert (np.diff(words) != 0).tolist() == (np.diff(words1) != 0).tolist(), text[:30]


# ---------------------------------------------------------------- the held-out split

@pytest.fixture(scope="module")
def one_document(tmp_path_factory):
    """The small corpus as one long line: one document, which is not held out."""
    path = tmp_path_factory.mktemp("one_doc") / "one.txt"
    with open(SAMPLE, encoding="utf-8") as f:
        path.write_text("".join(line.strip() for line in f.readlines()[:250]) + "\n",
                        encoding="utf-8")
    return str(path)


def test_an_empty_heldout_split_is_warned_of_with_the_reason(cfg, one_document, tmp_path,
                                                             caplog):
    out = str(tmp_path / "out")
    one = dict(SETTINGS, seq_lens=[128], dupe_factor=1)
    with caplog.at_level("WARNING"):
        summary = preprocess.run(cfg, one_document, out, workers=1, **one)
    assert summary["docs"] == 1 and summary["heldout_docs"] == 0
    assert summary["lengths"][128]["train"]["sequences"] > 8
    [warning] = summary["warnings"]
    assert warning in caplog.text
    assert "held-out split is empty" in warning and "0 of 1 documents" in warning
    assert "held out whole" in warning and "--heldout_fraction" in warning
    # the trainer's refusal gives the same reason, and the flag that exists
    with pytest.raises(records.ManifestError) as err:
        records.check_records(out, cfg, 128, 8)
    message = str(err.value)
    assert "held out whole" in message and "0 of 1 documents" in message
    assert "--eval_fraction" not in message and "heldout_fraction > 0" not in message


def test_a_heldout_split_under_one_batch_is_warned_of(reference, cfg, small_corpus, tmp_path):
    _, summary = reference  # ~5% of 250 documents: fewer sequences than a batch of 800
    held = summary["lengths"][128]["heldout"]["sequences"]
    assert 0 < held < cfg["train"]["batch_size"] == 800
    [warning] = summary["warnings"]
    assert ("seq_len 128: %d sequences" % held) in warning
    assert "one batch of 800 (train.batch_size)" in warning
    small = config.override(cfg, ["train.batch_size=2", 'data.masking="static"'])
    quiet = preprocess.run(small, small_corpus, str(tmp_path / "out"), workers=1,
                           **dict(SETTINGS, seq_lens=[128], dupe_factor=1))
    assert quiet["heldout_docs"] > 0 and "warnings" not in quiet


# ---------------------------------------------------------------- inputs by other names

def test_the_same_corpus_by_another_path_resumes_and_another_corpus_is_refused(
        cfg, tmp_path, monkeypatch):
    (tmp_path / "adv").mkdir()
    with open(SAMPLE, encoding="utf-8") as f:
        lines = f.readlines()
    (tmp_path / "base.txt").write_text("".join(lines[:60]), encoding="utf-8")
    (tmp_path / "other.txt").write_text("".join(lines[60:120]), encoding="utf-8")
    os.symlink(tmp_path / "base.txt", tmp_path / "adv" / "link.txt")
    out = str(tmp_path / "out")
    one = dict(SETTINGS, seq_lens=[128], dupe_factor=1)
    monkeypatch.chdir(tmp_path)
    first = preprocess.run(cfg, "base.txt", out, workers=1, **one)
    before = read_tree(out)
    for name, cwd in (("adv/../base.txt", tmp_path), (str(tmp_path / "base.txt"), tmp_path),
                      ("../base.txt", tmp_path / "adv"), ("link.txt", tmp_path / "adv")):
        monkeypatch.chdir(cwd)
        again = preprocess.run(cfg, name, out, workers=1, **one)
        assert again["lengths"] == first["lengths"] and read_tree(out) == before, name
    # settings written before the names were resolved hold them as given
    settings_path = os.path.join(out, preprocess_state.STATE_DIR, "settings.json")
    with open(settings_path) as f:
        settings = json.load(f)
    assert settings["sources"][0]["path"] == str(tmp_path / "base.txt")
    settings["sources"][0]["path"] = "base.txt"
    with open(settings_path, "w") as f:
        json.dump(settings, f)
    monkeypatch.chdir(tmp_path)
    preprocess.run(cfg, "base.txt", out, workers=1, **one)
    with pytest.raises(preprocess.PreprocessError, match="records made with other settings: "
                       "sources was"):
        preprocess.run(cfg, "other.txt", out, workers=1, **one)
    with pytest.raises(preprocess.PreprocessError, match="sources was"):
        preprocess.run(cfg, "base.txt,other.txt", out, workers=1, **one)
