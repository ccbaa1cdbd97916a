"""tokenization.py: ids identical to bert4keras's tokenizers on real text; vocab shrink."""
import io
import json
import os
import unicodedata

import numpy as np
import pytest

from conftest import shared_path
from pretrain import config
from pretrain.data import tokenization

from bert4keras.tokenizers import SpTokenizer, Tokenizer  # noqa: E402  (after pretrain)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(REPO, "data", "vocab.txt")
SAMPLE = os.path.join(REPO, "data", "sample", "clue_small.txt")

EDGE_CASES = [
    "Ａｂｃ café naïve İstanbul ΣΑΣ ΟΔΟΣ x\u200by z\x00w\ufffd\u2028v ß ﬁ 한국어 \U00020000 ＡＢ",
    "hello\x0bworld\x1cagain\x85end", "a" * 250, "ābc" * 70, "iPhone11很好用，3.14159元",
    "unaffable unbelievable 123456789012 don't", "\u3000全角空格\u00a0nbsp\t制表",
    "emoji 😀👍 and \u0301 leading mark", "", "   ", "\ud800 lone surrogate",
    "[CLS] [MASK] 不是特殊符号", "##ing", "Straße ÉCOLE ǅ ﬀ Ⅻ ①",
]


@pytest.fixture(scope="module")
def tokens():
    return tokenization.read_vocab_file(VOCAB)


def _compare(reference, fast, lines):
    mismatches = [(line, reference(line), fast(line)) for line in lines
                  if reference(line) != fast(line)]
    assert not mismatches, mismatches[:3]


@pytest.mark.parametrize("lower", [True, False])
def test_ids_match_bert4keras_on_sample_and_edge_cases(tokens, lower):
    b4k = Tokenizer(VOCAB, do_lower_case=lower)
    fast = tokenization.WordPieceTokenizer(tokens, do_lower_case=lower)
    with open(SAMPLE, encoding="utf-8") as f:
        lines = f.read().splitlines()
    lines = (lines if lower else lines[:300]) + EDGE_CASES
    _compare(lambda t: b4k.encode(t)[0][1:-1], fast.encode, lines)


def test_ids_match_bert4keras_on_10k_shared_lines(tokens):
    lines = []
    with open(shared_path("corpus", "wiki_cmrc2018_zh_hans.jsonl"), encoding="utf-8") as f:
        for row in f:
            lines += json.loads(row)["text"].split("\n")
    with open(shared_path("corpus", "albert_zh_news_zh_1.txt"), encoding="utf-8") as f:
        lines += f.read().splitlines()
    with open(shared_path("corpus", "modern_translations.jsonl"), encoding="utf-8") as f:
        for _, row in zip(range(60), f):
            lines += json.loads(row)["text"].split("\n")
    assert len(lines) >= 10000
    b4k = Tokenizer(VOCAB, do_lower_case=True)
    fast = tokenization.WordPieceTokenizer(tokens)
    _compare(lambda t: b4k.encode(t)[0][1:-1], fast.encode, lines)


def test_char_table_follows_bert4keras_rules():
    table = tokenization.char_table()
    for code in list(range(0, 0x3000)) + list(range(0x3000, 0x110000, 7)):
        if 0xD800 <= code <= 0xDFFF:
            continue
        ch = chr(code)
        if Tokenizer._is_punctuation(ch) or Tokenizer._is_cjk_character(ch):
            want = tokenization.SINGLE
        elif Tokenizer._is_space(ch):
            want = tokenization.SEP
        elif code in (0, 0xFFFD) or Tokenizer._is_control(ch):
            want = tokenization.DROP
        elif ch.isspace():
            want = tokenization.SEP
        elif unicodedata.category(ch) == "Mn":
            want = tokenization.MARK
        else:
            want = tokenization.WORD
        assert table[code] == want, hex(code)


def test_offsets_point_at_each_token(tokens):
    fast = tokenization.WordPieceTokenizer(tokens)
    text = "北京欢迎你！Hello WORLD, unaffable\u200b人工智能 3.14"
    norm, ids, starts = fast.encode_with_offsets(text)
    assert len(ids) == len(starts) and (np.diff(starts) >= 0).all()
    for i, s in zip(ids.tolist(), starts.tolist()):
        token = tokens[i]
        if not token.startswith("##") and token != "[UNK]":
            assert norm[s:s + len(token)] == token


def _tiny_spm(tmp_path, symbols=("[CLS]", "[SEP]", "[MASK]")):
    import sentencepiece as spm
    with open(SAMPLE, encoding="utf-8") as f:
        lines = f.read().splitlines()[:400]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=2000,
        user_defined_symbols=list(symbols), pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
        pad_piece="[PAD]", unk_piece="[UNK]", character_coverage=0.98, minloglevel=2)
    path = tmp_path / "tiny.model"
    path.write_bytes(model.getvalue())
    return str(path), lines


def test_sentencepiece_matches_bert4keras_sptokenizer(tmp_path):
    path, lines = _tiny_spm(tmp_path)
    b4k = SpTokenizer(path)
    ours = tokenization.SentencePieceTokenizer(open(path, "rb").read())
    _compare(lambda t: b4k.encode(t)[0][1:-1], ours.encode, lines[:300] + EDGE_CASES[:6])
    text = "我爱北京天安门，iPhone很好用。"
    norm, ids, starts = ours.encode_with_offsets(text)
    assert ids.tolist() == ours.encode(text)
    assert norm[starts[1]] == "爱" or ours.tokens[ids[1]].lstrip("▁")[0] == norm[starts[1]]
    assert ours.mask_id not in ours.random_ids()
    cfg = config.load_config("roberta_tiny")
    cfg["tokenizer"].update(vocab=None, spm_model=path)
    vocab = tokenization.load_vocab(cfg)
    assert len(vocab) == 2000 and vocab.tokens[ours.mask_id] == "[MASK]"


def test_sentencepiece_without_mask_piece_is_an_error(tmp_path):
    path, _ = _tiny_spm(tmp_path, symbols=("[CLS]", "[SEP]"))
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        tokenization.SentencePieceTokenizer(open(path, "rb").read())


def test_shrink_vocab_keeps_specials_first_then_seen_tokens(tokens):
    counts = np.zeros(len(tokens), np.int64)
    fast = tokenization.WordPieceTokenizer(tokens)
    for i in fast.encode("我爱北京天安门 hello"):
        counts[i] += 1
    keep = tokenization.shrink_vocab(tokens, counts)
    assert [tokens[i] for i in keep[:5]] == list(tokenization.SPECIAL_TOKENS)
    assert keep[5:] == sorted(set(np.flatnonzero(counts).tolist()) - set(keep[:5]))
    shrunk = [tokens[i] for i in keep]
    small = tokenization.WordPieceTokenizer(shrunk)
    assert [shrunk[i] for i in small.encode("我爱北京天安门 hello")] == \
        [tokens[i] for i in fast.encode("我爱北京天安门 hello")]


def test_load_vocab_with_keep_tokens_and_missing_specials(tmp_path, tokens):
    keep_path = tmp_path / "keep.json"
    keep_path.write_text(json.dumps([0, 100, 101, 102, 103, 2769]))
    cfg = config.load_config("roberta_tiny")
    cfg["tokenizer"]["keep_tokens"] = str(keep_path)
    vocab = tokenization.load_vocab(cfg)
    assert vocab.tokens == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", tokens[2769]]
    assert vocab.keep_tokens == [0, 100, 101, 102, 103, 2769]
    bad = tmp_path / "bad_vocab.txt"
    bad.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n我\n", encoding="utf-8")
    cfg = config.load_config("roberta_tiny")
    cfg["tokenizer"]["vocab"] = str(bad)
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        tokenization.load_vocab(cfg)


def test_every_code_point_gives_bert4keras_ids(tokens):
    """All 1,114,112 code points (surrogates too), each as a word of its own and
    run together in blocks, through bert4keras's Tokenizer(vocab,
    do_lower_case=True) and ours (the README's claim; about 22 s here)."""
    b4k = Tokenizer(VOCAB, do_lower_case=True)
    fast = tokenization.WordPieceTokenizer(tokens, do_lower_case=True)
    block = 4096
    for start in range(0, 0x110000, block):
        chars = [chr(c) for c in range(start, min(start + block, 0x110000))]
        for text in (" ".join(chars), "".join(chars)):
            want, got = b4k.encode(text)[0][1:-1], fast.encode(text)
            if want != got:
                i = next((i for i, (x, y) in enumerate(zip(want, got)) if x != y),
                         min(len(want), len(got)))
                raise AssertionError("block U+%04X: first difference at id %d: bert4keras %s, "
                                     "ours %s" % (start, i, want[i:i + 5], got[i:i + 5]))
