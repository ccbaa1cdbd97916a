"""masking.py: sentence packing, Google-style whole-word selection, 80/10/10, segmenters."""
import json
import os

import numpy as np
import pytest

from conftest import shared_path
from pretrain.data import masking
from pretrain.data import tokenization

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "data", "sample", "clue_small.txt")


@pytest.fixture(scope="module")
def tok():
    return tokenization.WordPieceTokenizer(
        tokenization.read_vocab_file(os.path.join(REPO, "data", "vocab.txt")))


@pytest.fixture(scope="module")
def docs():
    with open(SAMPLE, encoding="utf-8") as f:
        return f.read().splitlines()[:200]


def test_pack_is_greedy_keeps_every_token_and_cuts_long_sentences():
    ends = np.array([3, 3, 7, 20, 22, 30])  # sentence lengths 3, 0, 4, 13, 2, 8
    assert masking.pack(ends, 8) == [(0, 7), (7, 15), (15, 22), (22, 30)]
    rng = np.random.default_rng(0)
    for _ in range(50):
        ends = np.cumsum(rng.integers(0, 40, rng.integers(1, 30)))
        for max_tokens in (5, 16, 126):
            ranges = masking.pack(ends, max_tokens)
            covered = [i for a, b in ranges for i in range(a, b)]
            assert covered == list(range(ends[-1]))  # nothing dropped, nothing twice
            assert all(0 < b - a <= max_tokens for a, b in ranges)
            # a range ends at a sentence end unless a sentence was too long to fit
            for a, b in ranges:
                assert b in ends or b - a == max_tokens


def _pack_sentence_by_sentence(ends, max_tokens):
    """The greedy packing, one sentence at a time."""
    out, start, prev = [], 0, 0
    for end in ends.tolist():
        if end <= prev:
            continue
        if end - start > max_tokens:
            if prev > start:
                out.append((start, prev))
                start = prev
            while end - start > max_tokens:
                out.append((start, start + max_tokens))
                start += max_tokens
        prev = end
    if prev > start:
        out.append((start, prev))
    return out


def test_pack_equals_packing_sentence_by_sentence():
    rng = np.random.default_rng(2)
    for _ in range(300):
        lens = rng.integers(0, rng.choice([8, 40, 300]), rng.integers(0, 60))
        lens[rng.random(len(lens)) < 0.2] = 0  # empty sentences (repeated ends)
        ends = np.cumsum(lens)
        for max_tokens in (1, 5, 126, 510):
            expected = _pack_sentence_by_sentence(ends, max_tokens)
            assert masking.pack(ends, max_tokens) == expected
            assert masking.pack(ends, max_tokens, 1000) == [(a + 1000, b + 1000)
                                                          for a, b in expected]


def _google_select(g_len, g_seq, budgets):
    """create_pretraining_data.py's loop, word by word."""
    take = np.zeros(len(g_len), bool)
    covered = {}
    for j, (size, s) in enumerate(zip(g_len.tolist(), g_seq.tolist())):
        have = covered.get(s, 0)
        if have >= budgets[s] or have + size > budgets[s]:
            continue
        covered[s] = have + size
        take[j] = True
    return take


def test_select_words_equals_googles_loop():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(1, 6))
        per = rng.integers(1, 30, n)
        g_seq = np.repeat(np.arange(n), per)
        g_len = rng.integers(1, 5, len(g_seq))
        budgets = rng.integers(1, 20, n)
        got = masking.select_words(g_len, g_seq, budgets)
        assert (got == _google_select(g_len, g_seq, budgets)).all()


@pytest.mark.parametrize("n", [5000, 40000])  # the radix path, and lexsort itself
def test_word_order_is_lexsort_of_sequence_then_key(n):
    rng = np.random.default_rng(3)
    seq = np.sort(rng.integers(0, n, 60000))
    keys = rng.random(len(seq))
    keys[100:110] = keys[100]  # ties keep index order, as lexsort's
    seq[100:110] = seq[100]
    assert (masking._shuffle_within(seq, keys, n) == np.lexsort((keys, seq))).all()


def test_sentence_breaks_equal_the_ends_of_each_match():
    text = "他说：“好。”然后走了！！真的？是的\n\n下一段……完"
    assert masking._sentence_breaks(text).tolist() == [
        m.end() for m in masking.SENTENCE_END.finditer(text)]
    assert masking._sentence_breaks("").tolist() == []


def test_sentence_breaks_of_random_and_real_text_equal_the_regex(docs):
    rng = np.random.default_rng(4)
    alphabet = list("。！？；!?;…\n”’\"'」』）)》a中 \uffff😀")
    texts = ["".join(rng.choice(alphabet, rng.integers(0, 40))) for _ in range(2000)] + docs
    for text in texts:
        assert masking._sentence_breaks(text).tolist() == [
            m.end() for m in masking.SENTENCE_END.finditer(text)], text


def test_prepare_document_words_and_sentences(tok):
    seg = masking.Segmenter(backend="jieba")
    ids, words, ends = masking.prepare_document("我爱北京天安门。今天天气很好！Hello world", tok, seg)
    assert tok.tokens[ids[0]] == "我" and len(ids) == 17
    # 北京 is one word of two tokens, 天安门 one of three
    assert words[2] == words[3] and words[4] == words[5] == words[6] and words[3] != words[4]
    assert ends.tolist() == [8, 15, 17]


def test_masker_whole_words_budget_and_80_10_10(tok, docs):
    seg = masking.Segmenter()
    parts = [masking.prepare_document(d, tok, seg) for d in docs]
    ids = np.concatenate([p[0] for p in parts])
    words = np.concatenate([p[1] + 10 ** 6 * i for i, p in enumerate(parts)])
    offsets = np.cumsum([0] + [len(p[0]) for p in parts])
    ranges = [(a + o, b + o) for p, o in zip(parts, offsets) for a, b in masking.pack(p[2], 126)]
    masker = masking.Masker(tok, 128, 20)
    input_ids, lengths, positions, labels, counts = masker.mask(ranges, ids, words,
                                                                np.random.default_rng(3))
    kinds = {"mask": 0, "random": 0, "same": 0}
    short = 0
    for row, (a, b), n, pos, lab, k in zip(input_ids, ranges, lengths, positions, labels, counts):
        original = ids[a:b]
        assert n == b - a + 2 and row[0] == tok.cls_id and row[n - 1] == tok.sep_id
        assert (row[n:] == tok.pad_id).all()
        # Google's loop: words in random order, skipping any that overshoot the
        # budget; so it stops short only when every word left is too long.
        budget = int(min(20, max(1, np.round((b - a) * 0.15))))
        w = words[a:b]
        chosen_words = set(w[pos[:k] - 1].tolist())
        ids_left, sizes_left = np.unique(w[~np.isin(w, list(chosen_words))], return_counts=True)
        assert k <= budget
        assert k == budget or (sizes_left > budget - k).all(), (k, budget, sizes_left)
        short += k < budget
        assert k >= 1 and (np.diff(pos[:k]) > 0).all() and (pos[k:] == 0).all()
        assert (lab[:k] == original[pos[:k] - 1]).all()
        # unmasked positions keep their token
        keep = np.ones(b - a, bool)
        keep[pos[:k] - 1] = False
        assert (row[1:n - 1][keep] == original[keep]).all()
        # whole words: a chosen token's whole word is chosen
        in_chosen_words = np.flatnonzero(np.isin(w, list(chosen_words)))
        assert set(in_chosen_words.tolist()) == set((pos[:k] - 1).tolist())
        for p, label in zip(pos[:k], lab[:k]):
            kinds["mask" if row[p] == tok.mask_id else "same" if row[p] == label else "random"] += 1
    assert 0 < short < len(ranges) / 2  # both cases occur, so both are checked
    total = sum(kinds.values())
    assert total > 3000
    assert abs(kinds["mask"] / total - 0.8) < 0.03
    assert abs(kinds["random"] / total - 0.1) < 0.03  # (a random token may equal the original)
    assert abs(kinds["same"] / total - 0.1) < 0.03


def test_masker_is_seeded(tok, docs):
    parts = masking.prepare_document(docs[0], tok, masking.Segmenter())
    ranges = masking.pack(parts[2], 126)
    masker = masking.Masker(tok, 128, 20)
    a = masker.mask(ranges, parts[0], parts[1], np.random.default_rng(7))
    b = masker.mask(ranges, parts[0], parts[1], np.random.default_rng(7))
    c = masker.mask(ranges, parts[0], parts[1], np.random.default_rng(8))
    assert all((x == y).all() for x, y in zip(a, b))
    assert not (a[2] == c[2]).all()


@pytest.mark.parametrize("backend", ["jieba", "rjieba"])
def test_user_dict_works_with_both_segmenters(backend):
    if backend == "rjieba":
        pytest.importorskip("rjieba")
    text = "蓝莓芝士蛋糕真好吃"
    plain = masking.Segmenter(backend=backend).cut(text)
    assert "蓝莓芝士蛋糕" not in plain
    seg = masking.Segmenter("蓝莓芝士蛋糕 10 n\n", backend=backend)
    assert seg.backend == backend
    assert "蓝莓芝士蛋糕" in seg.cut(text)
    assert "蓝莓芝士蛋糕" in masking.Segmenter("蓝莓芝士蛋糕\n", backend=backend).cut(text)
    # a user's words stay in its segmenter (rjieba's shared default has none)
    assert masking.Segmenter(backend=backend).cut(text) == plain


def test_segmenters_cover_the_text_exactly(docs):
    for backend in ("jieba", "rjieba"):
        if backend == "rjieba":
            pytest.importorskip("rjieba")
        seg = masking.Segmenter(backend=backend)
        for d in docs[:50] + ["a\r\n b\u3000c\t😀 d\x00e"]:
            assert "".join(seg.cut(d)) == d


@pytest.mark.parametrize("backend", ["jieba", "rjieba"])
def test_words_of_text_cut_at_sentence_breaks_equal_one_cut(backend, docs, monkeypatch):
    """_word_numbers hands the segmenter pieces of text that end at sentence
    breaks; the words must be those of one call on the whole text."""
    if backend == "rjieba":
        pytest.importorskip("rjieba")
    with open(shared_path("corpus", "modern_translations.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for _, line in zip(range(30), f)]
    with open(shared_path("corpus", "albert_zh_news_zh_1.txt"), encoding="utf-8") as f:
        texts.append(f.read(200000))
    rng = np.random.default_rng(7)
    alphabet = list("。！？；!?;…\n\r”’\"'」』）)》中国人民银行 ab.C-9+#&_% \t\u3000😀，、")
    texts += ["".join(rng.choice(alphabet, rng.integers(1, 300))) for _ in range(300)] + docs
    seg = masking.Segmenter(backend=backend)
    for cut_chars in (1, 7, 4000):  # a piece per sentence; a few sentences; the default
        monkeypatch.setattr(masking, "CUT_CHARS", cut_chars)
        for text in texts:
            ends = np.cumsum([len(w) for w in seg.cut(text)])
            one_cut = np.searchsorted(ends, np.arange(len(text)), side="right")  # word of each char
            got = masking._word_numbers(seg, text, masking._sentence_breaks(text),
                                        np.arange(len(text)))
            assert got.tolist() == one_cut.tolist(), (cut_chars, text[:60])
