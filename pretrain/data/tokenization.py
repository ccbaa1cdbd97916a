"""Vocabularies and tokenizers: ids identical to bert4keras's Tokenizer, fast.

`load_vocab(cfg)` is the single place that turns a config's `tokenizer`
section into the token list the model uses (full, simplified, or shrunk with
keep_tokens) and the indices into the original vocab (`keep_tokens`) that
warm starts need.

`WordPieceTokenizer` reproduces `bert4keras.tokenizers.Tokenizer(vocab,
do_lower_case)` id for id (tests check this on real corpora), about 20x
faster: instead of a Python loop per character it classifies all characters
of a text at once with NumPy tables built from the same rules (punctuation
and CJK characters split, spaces separate, control characters vanish), and
runs WordPiece only on the few Latin/digit runs, with a cache.
`SentencePieceTokenizer` does the same job for a SentencePiece model, like
bert4keras's SpTokenizer. Both also return where each token starts in the
normalized text, which whole-word masking needs.

`shrink_vocab` picks the tokens a corpus uses (the `vocab` command of
preprocess.py), giving `keep_tokens` for warm starts from a larger vocab.
"""
import hashlib
import json
import re
import unicodedata

import numpy as np
import sentencepiece as spm

from pretrain import fs
from pretrain.config import ConfigError, resolve_path

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class Vocab(object):
    """A model vocabulary: `tokens` in id order, `keep_tokens` (or None)."""

    def __init__(self, tokens, keep_tokens, source_path, specials=SPECIAL_TOKENS):
        self.tokens = tokens
        self.keep_tokens = keep_tokens
        self.source_path = source_path
        self.token_to_id = {t: i for i, t in enumerate(tokens)}
        missing = [t for t in specials if t not in self.token_to_id]
        if missing:
            raise ValueError("%s: vocab lacks special token(s) %s; a BERT vocab needs "
                             "%s" % (source_path, ", ".join(missing), ", ".join(specials)))

    def __len__(self):
        return len(self.tokens)

    @property
    def sha256(self):
        return hashlib.sha256("\n".join(self.tokens).encode("utf-8")).hexdigest()

    def write(self, path):
        with fs.open(path, "w") as f:
            f.write("".join(t + "\n" for t in self.tokens))


def read_vocab_file(path):
    """Tokens of a BERT vocab.txt, one per line, in id order."""
    with fs.open(path, "rb") as f:
        lines = f.read().decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.strip() for line in lines]


def _load_spm(path):
    with fs.open(path, "rb") as f:
        proto = f.read()
    return proto, spm.SentencePieceProcessor(model_proto=proto)


def load_vocab(cfg):
    """The config's vocabulary (see the module docstring).

    For a SentencePiece config, the tokens are the model's pieces; it must
    define [CLS], [SEP] and [MASK] pieces (user_defined_symbols) and a pad id.
    """
    tok = cfg["tokenizer"]
    if tok["spm_model"] is not None:
        path = resolve_path(tok["spm_model"])
        _, sp = _load_spm(path)
        pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
        pad = sp.id_to_piece(sp.pad_id()) if sp.pad_id() >= 0 else "[PAD]"
        vocab = Vocab(pieces, None, path,
                      specials=(pad, sp.id_to_piece(sp.unk_id()), "[CLS]", "[SEP]", "[MASK]"))
        _check_pad_first(cfg, "spm_model %s" % path, vocab.token_to_id[pad])
        return vocab
    path = resolve_path(tok["vocab"])
    tokens = read_vocab_file(path)
    keep, key = None, "vocab %s" % path
    if tok["keep_tokens"]:
        with fs.open(resolve_path(tok["keep_tokens"]), "r") as f:
            keep = json.load(f)
        tokens = [tokens[i] for i in keep]
        key = "keep_tokens %s" % resolve_path(tok["keep_tokens"])
    elif tok["simplified"]:
        # lazy: bert4keras loads TensorFlow; preprocessing workers must not
        from bert4keras.tokenizers import load_vocab as b4k_load_vocab
        token_dict, keep = b4k_load_vocab(path, simplified=True,
                                          startswith=list(tok["startswith"]))
        tokens = sorted(token_dict, key=token_dict.get)
        key = "startswith %s" % (tok["startswith"],)
    vocab = Vocab(tokens, keep, path)
    _check_pad_first(cfg, key, vocab.token_to_id["[PAD]"])
    return vocab


def _check_pad_first(cfg, key, pad_id):
    # The models treat id 0 as padding (attention mask, input_mask, loss weights).
    if pad_id != 0:
        raise ConfigError("%s: tokenizer.%s %s [PAD] at id %d, not 0; the models mask id 0 as "
                          "padding, so [PAD] must come first" % (
                              cfg.get("path", cfg.get("name")), key,
                              "puts" if key.startswith(("keep", "start")) else "has", pad_id))


def tokenizer_spec(cfg, vocab=None):
    """A small picklable description from which worker processes rebuild the tokenizer."""
    tok = cfg["tokenizer"]
    if tok["spm_model"] is not None:
        proto, _ = _load_spm(resolve_path(tok["spm_model"]))
        return {"kind": "spm", "model_proto": proto}
    vocab = vocab or load_vocab(cfg)
    return {"kind": "wordpiece", "tokens": vocab.tokens, "do_lower_case": tok["do_lower_case"]}


def make_tokenizer(spec):
    if spec["kind"] == "spm":
        return SentencePieceTokenizer(spec["model_proto"])
    return WordPieceTokenizer(spec["tokens"], spec["do_lower_case"])


# ---------------------------------------------------------------- character classes

WORD, SINGLE, SEP, DROP, MARK = 0, 1, 2, 3, 4
_TABLE = None


# bert4keras Tokenizer._is_cjk_character
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def char_table():
    """uint8 class of every code point under bert4keras's rules, in its order.

    SINGLE: punctuation or CJK, a token of its own. SEP: splits words (the
    `_is_space` set, plus whatever `str.split()` splits on that is not
    dropped). DROP: NUL, U+FFFD and control/format characters, removed.
    MARK: combining marks (Mn), removed when lower-casing (NFD accent strip).
    WORD: the rest, joined into runs for WordPiece. Built once per process
    (~0.15 s); later rules override earlier ones, so they run in reverse
    order of bert4keras's checks.
    """
    global _TABLE
    if _TABLE is None:
        table = np.full(0x110000, WORD, np.uint8)
        # Planes 4-13 are unassigned and 15-16 private use (all WORD): skip them.
        for lo, hi in ((0, 0x40000), (0xE0000, 0xE1000)):
            chars = np.arange(lo, hi, dtype=np.uint32).tobytes().decode("utf-32-le",
                                                                         "surrogatepass")
            cats = np.array(list(map(unicodedata.category, chars)))
            part = table[lo:hi]
            part[cats == "Mn"] = MARK
            part[[m.start() for m in re.finditer(r"\s", chars)]] = SEP  # str.split() separators
            part[(cats == "Cc") | (cats == "Cf")] = DROP
            part[cats == "Zs"] = SEP
            part[np.char.startswith(cats, "P")] = SINGLE
        table[[0, 0xFFFD]] = DROP
        table[[ord(c) for c in " \n\r\t"]] = SEP
        for lo, hi in ((33, 47), (58, 64), (91, 96), (123, 126)) + _CJK_RANGES:
            table[lo:hi + 1] = SINGLE
        _TABLE = table
    return _TABLE


def normalize(text, do_lower_case=True):
    """bert4keras's `lowercase_and_normalize` minus the accent strip, which the
    character table does (MARK); returns text whose positions tokens refer to."""
    if not do_lower_case:
        return text
    text = text.lower()
    return text if text.isascii() else unicodedata.normalize("NFD", text)


class WordPieceTokenizer(object):
    """bert4keras `Tokenizer(token_dict, do_lower_case)` ids, computed with NumPy."""

    def __init__(self, tokens, do_lower_case=True, word_maxlen=200):
        self.tokens = list(tokens)
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        self.do_lower_case = do_lower_case
        self.word_maxlen = word_maxlen
        self.unk_id = self.vocab["[UNK]"]
        self.pad_id = self.vocab["[PAD]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.mask_id = self.vocab["[MASK]"]
        self.vocab_size = len(self.tokens)
        self._classes = char_table().copy()
        self._classes[self._classes == MARK] = DROP if do_lower_case else WORD
        # id of each code point as a one-character token
        self._char_ids = np.full(0x110000, self.unk_id, np.int32)
        for token, i in self.vocab.items():
            if len(token) == 1:
                self._char_ids[ord(token)] = i
        self._word_cache = {}
        self._random_ids = None

    def random_ids(self):
        """Ids the 10% random replacement draws from: no [PAD]/[CLS]/[unused1]-style tokens."""
        if self._random_ids is None:  # one array for all maskers
            self._random_ids = np.array([i for i, t in enumerate(self.tokens)
                                         if not (t[:1] == "[" and t[-1:] == "]")], np.int32)
        return self._random_ids

    def _word_piece(self, word):
        # bert4keras Tokenizer._word_piece_tokenize, then token_to_id
        ids = self._word_cache.get(word)
        if ids is not None:
            return ids
        if len(word) > self.word_maxlen:
            ids = [self.vocab.get(word, self.unk_id)]
        else:
            ids, start = [], 0
            while start < len(word):
                end = len(word)
                while end > start:
                    sub = word[start:end] if start == 0 else "##" + word[start:end]
                    if sub in self.vocab:
                        break
                    end -= 1
                if end == start:  # no piece fits: the whole word is one (unknown) token
                    ids = [self.vocab.get(word, self.unk_id)]
                    break
                ids.append(self.vocab[sub])
                start = end
        if len(self._word_cache) > 200000:  # bounded memory on long corpora
            self._word_cache.clear()
        self._word_cache[word] = ids
        return ids

    def encode_with_offsets(self, text):
        """(normalized text, ids int32[n], starts int64[n]) with no [CLS]/[SEP].

        starts[i] is the index in the normalized text where token i's
        character run begins (all WordPiece pieces of a run share it).
        """
        norm = normalize(text, self.do_lower_case)
        return (norm,) + self.encode_normalized(norm)

    def encode_normalized(self, norm):
        """(ids, starts) of text that `normalize` already made (see encode_with_offsets)."""
        codes = np.frombuffer(norm.encode("utf-32-le", "surrogatepass"), np.uint32)
        classes = self._classes[codes]
        positions = None
        if (classes == DROP).any():
            keep = np.flatnonzero(classes != DROP)
            codes, classes, positions = codes[keep], classes[keep], keep
        single = classes == SINGLE
        word = classes == WORD
        prev_word = np.zeros_like(word)
        prev_word[1:] = word[:-1]
        run_start = word & ~prev_word
        starts = np.flatnonzero(single | run_start)
        ids = self._char_ids[codes[starts]]
        if run_start.any():
            next_word = np.zeros_like(word)
            next_word[:-1] = word[1:]
            run_ends = np.flatnonzero(word & ~next_word) + 1
            run_starts = np.flatnonzero(run_start)
            # one decode for the whole text, then a slice and a cache hit per run
            kept = norm if positions is None else codes.tobytes().decode(
                "utf-32-le", "surrogatepass")
            cache, word_piece = self._word_cache, self._word_piece
            pieces = [cache.get(run) or word_piece(run) for run in map(
                kept.__getitem__, map(slice, run_starts.tolist(), run_ends.tolist()))]
            slots = np.searchsorted(starts, run_starts)
            counts = np.ones(len(starts), np.int64)
            counts[slots] = np.fromiter(map(len, pieces), np.int64, len(pieces))
            if (counts != 1).any():
                out_at = np.cumsum(counts) - counts
                new_ids = np.empty(int(counts.sum()), np.int32)
                new_ids[out_at] = ids
                for slot, piece_ids in zip(slots.tolist(), pieces):
                    new_ids[out_at[slot]:out_at[slot] + len(piece_ids)] = piece_ids
                ids, starts = new_ids, np.repeat(starts, counts)
            else:
                ids[slots] = [p[0] for p in pieces]
        if positions is not None:
            starts = positions[starts]
        return ids, starts

    def encode(self, text):
        """Token ids of `text` without [CLS]/[SEP], as a list."""
        return self.encode_with_offsets(text)[1].tolist()


class SentencePieceTokenizer(object):
    """bert4keras `SpTokenizer` ids; the model must define [CLS], [SEP], [MASK]."""

    def __init__(self, model_proto):
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self.sp.get_piece_size()
        self.tokens = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
        self.unk_id = self.sp.unk_id()
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else 0
        ids = {t: self.sp.piece_to_id(t) for t in ("[CLS]", "[SEP]", "[MASK]")}
        missing = [t for t, i in ids.items() if i == self.unk_id]
        if missing:
            raise ValueError("SentencePiece model lacks %s; train it with "
                             "user_defined_symbols=[CLS],[SEP],[MASK]" % ", ".join(missing))
        self.cls_id, self.sep_id, self.mask_id = ids["[CLS]"], ids["[SEP]"], ids["[MASK]"]

    def random_ids(self):
        special = {self.unk_id, self.pad_id, self.cls_id, self.sep_id, self.mask_id}
        return np.array([i for i in range(self.vocab_size)
                         if i not in special and not self.sp.is_control(i)], np.int32)

    def encode_with_offsets(self, text):
        proto = self.sp.encode(text, return_type="proto")
        ids = np.array([p.id for p in proto.pieces], np.int32)
        # piece offsets are UTF-8 byte offsets: map them to character offsets
        raw = np.frombuffer(text.encode("utf-8"), np.uint8)
        char_of_byte = np.append(np.cumsum((raw & 0xC0) != 0x80) - 1, len(text))
        starts = char_of_byte[np.array([p.begin for p in proto.pieces], np.int64)]
        return text, ids, starts.astype(np.int64)

    def encode(self, text):
        return self.sp.encode(text)


# ---------------------------------------------------------------- vocab shrink

def shrink_vocab(tokens, counts, min_count=1, keep_first=SPECIAL_TOKENS):
    """keep_tokens: indices into `tokens` of `keep_first` (in that order), then
    every token seen at least `min_count` times (`counts[i]`), in vocab order.

    This is the shape bert4keras's `load_vocab(simplified=True)` gives, so
    `keep_tokens` feeds `build_transformer_model(keep_tokens=...)` unchanged.
    """
    index = {t: i for i, t in enumerate(tokens)}
    missing = [t for t in keep_first if t not in index]
    if missing:
        raise ValueError("vocab lacks %s" % ", ".join(missing))
    keep = [index[t] for t in keep_first]
    first = set(keep)
    keep += [i for i in range(len(tokens)) if counts[i] >= min_count and i not in first]
    return keep
