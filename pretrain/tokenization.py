"""Vocabularies and tokenizers: ids identical to bert4keras's Tokenizer.

`load_vocab(cfg)` is the single place that turns a config's `tokenizer`
section into the token list the model uses (full, simplified, or shrunk with
keep_tokens) and the indices into the original vocab (`keep_tokens`) that
warm starts need.
"""
import hashlib
import json

import tensorflow as tf

from pretrain.config import resolve_path

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class Vocab(object):
    """A model vocabulary: `tokens` in id order, `keep_tokens` (or None)."""

    def __init__(self, tokens, keep_tokens, source_path):
        self.tokens = tokens
        self.keep_tokens = keep_tokens
        self.source_path = source_path
        self.token_to_id = {t: i for i, t in enumerate(tokens)}
        missing = [t for t in SPECIAL_TOKENS if t not in self.token_to_id]
        if missing:
            raise ValueError("%s: vocab lacks special token(s) %s; a BERT vocab needs "
                             "%s" % (source_path, ", ".join(missing), ", ".join(SPECIAL_TOKENS)))

    def __len__(self):
        return len(self.tokens)

    @property
    def sha256(self):
        return hashlib.sha256("\n".join(self.tokens).encode("utf-8")).hexdigest()

    def write(self, path):
        with tf.io.gfile.GFile(path, "w") as f:
            f.write("".join(t + "\n" for t in self.tokens))


def read_vocab_file(path):
    """Tokens of a BERT vocab.txt, one per line, in id order."""
    with tf.io.gfile.GFile(path, "rb") as f:
        lines = f.read().decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.strip() for line in lines]


def load_vocab(cfg):
    """The config's vocabulary (see the module docstring)."""
    tok = cfg["tokenizer"]
    if tok["vocab"] is None:
        raise ValueError("config %s uses a SentencePiece model; it has no BERT vocab"
                         % cfg["name"])
    path = resolve_path(tok["vocab"])
    tokens = read_vocab_file(path)
    keep = None
    if tok["keep_tokens"]:
        with tf.io.gfile.GFile(resolve_path(tok["keep_tokens"])) as f:
            keep = json.load(f)
        tokens = [tokens[i] for i in keep]
    elif tok["simplified"]:
        from bert4keras.tokenizers import load_vocab as b4k_load_vocab
        token_dict, keep = b4k_load_vocab(path, simplified=True,
                                          startswith=list(tok["startswith"]))
        tokens = sorted(token_dict, key=token_dict.get)
    return Vocab(tokens, keep, path)
