"""SimBERT's data, without TensorFlow: similar-sentence groups, their split, pair
rows, and the task's config section.

Data: JSON lines `{"text": str, "synonyms": [str, ...]}`, one group of
paraphrases per record. `read_groups` streams them, joins records that were
hard-wrapped across lines (reported with file:line), and counts and skips
groups with fewer than two distinct sentences. A group's split
(train/heldout) is `corpus.is_heldout` of its first sentence, the rule
preprocessing uses for documents, so it never changes between runs.

`pair_texts` streams two sentences of each group, shuffled and sharded;
`pair_rows` turns a pair into the rows `[CLS] a [SEP] b [SEP]` and
`[CLS] b [SEP] a [SEP]` (tf.data around it: `simbert.task.pair_dataset`).
`read_pairs` reads LCQMC-format labelled pairs for evaluation.
"""
import collections
import json

import numpy as np
from absl import logging

from pretrain import fs
from pretrain.data import corpus
from pretrain.config import ConfigError, check_value, resolve_path, where
from pretrain.errors import PretrainError
from pretrain.data.tokenization import load_vocab

MAX_JOINED_LINES = 8  # a record wrapped over more lines than this is treated as garbage
SHUFFLE_PAIRS = 10000  # pairs held in the streaming shuffle buffer
# The config section "simbert" (the task's own; data.task "simbert" selects it).
SETTINGS = {"maxlen": 32}  # tokens per sentence, [CLS] and [SEP] included


def settings(cfg):
    """The simbert section of `cfg` with defaults filled (ConfigError if it is bad).

    Every phase must hold a pair: 2 * maxlen - 1 tokens (the second [CLS] is dropped).
    """
    section = dict(SETTINGS, **cfg.get("simbert", {}))
    for key in section:
        if key not in SETTINGS:
            raise ConfigError("%s: unknown key simbert.%s (allowed: %s)"
                              % (where(cfg), key, ", ".join(sorted(SETTINGS))))
    maxlen = section["maxlen"]
    check_value(where(cfg), "simbert.maxlen", maxlen, ("int", 2))
    for i, phase in enumerate(cfg["train"]["phases"]):
        if 2 * maxlen - 1 > phase["seq_len"]:
            raise ConfigError("%s: simbert.maxlen=%d needs train.phases[%d].seq_len >= %d for "
                              "a pair, got %d" % (where(cfg), maxlen, i, 2 * maxlen - 1,
                                                  phase["seq_len"]))
    return section


class GroupStats(object):
    """What the reader saw; `broken` and `bad` hold "file:line" locations."""

    def __init__(self, verbose=True):
        self.verbose = verbose  # log each problem as it is found
        self.groups = 0
        self.too_small = 0
        self.broken = []  # records joined from several physical lines
        self.bad = []  # lines that are not a usable record

    def summary(self, path):
        return ("%s: %d groups read; %d records broken across lines (joined); %d bad lines "
                "skipped; %d groups with fewer than 2 distinct sentences skipped" % (
                    path, self.groups, len(self.broken), len(self.bad), self.too_small))


Group = collections.namedtuple("Group", "where sentences")


def _records(path, stats):
    """(where, obj) for each JSON record; joins records wrapped over lines."""
    pending, start = None, None
    with fs.open(path, "rb") as f:
        lineno = 0
        for raw in f:
            lineno += 1
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if pending is None:
                if not line.strip():
                    continue
                try:
                    yield "%s:%d" % (path, lineno), json.loads(line)
                except ValueError:
                    pending, start = line, lineno
                continue
            # The upstream sample is hard-wrapped in the middle of a string, so the
            # pieces join with nothing between them.
            joined = pending + line
            try:
                obj = json.loads(joined)
            except ValueError:
                pass
            else:
                where = "%s:%d-%d" % (path, start, lineno)
                stats.broken.append(where)
                if stats.verbose:
                    logging.warning("%s: record broken across %d lines; joined", where,
                                    lineno - start + 1)
                yield where, obj
                pending = None
                continue
            try:  # the new line is a record of its own: what was pending is garbage
                obj = json.loads(line)
            except ValueError:
                if lineno - start + 1 >= MAX_JOINED_LINES:
                    _bad(stats, "%s:%d" % (path, start), "not JSON (no join of the next "
                         "%d lines parses either)" % (MAX_JOINED_LINES - 1))
                    pending, start = line, lineno
                else:
                    pending = joined
            else:
                _bad(stats, "%s:%d" % (path, start), "not JSON")
                pending = None
                yield "%s:%d" % (path, lineno), obj
    if pending is not None:
        _bad(stats, "%s:%d" % (path, start), "not JSON (file ends inside the record)")


def _bad(stats, where, why):
    stats.bad.append(where)
    if stats.verbose:
        logging.warning("%s: %s; skipped", where, why)


def read_groups(path, stats=None):
    """Stream `Group(where, sentences)` from JSON-lines files (path may be a glob).

    Sentences are the record's `text` followed by its `synonyms`, stripped, with
    exact duplicates removed (a pair of identical sentences teaches nothing).
    """
    stats = GroupStats() if stats is None else stats
    try:
        files = corpus.expand_inputs([path])
    except FileNotFoundError:
        raise FileNotFoundError("no SimBERT group file matches %r" % path) from None
    for name in files:
        for where, obj in _records(name, stats):
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                _bad(stats, where, 'not a {"text": str, "synonyms": [...]} record')
                continue
            synonyms = obj.get("synonyms") or []
            if not isinstance(synonyms, list):
                _bad(stats, where, "synonyms is not a list")
                continue
            sentences = []
            for s in [obj["text"]] + synonyms:
                s = s.strip() if isinstance(s, str) else ""
                if s and s not in sentences:
                    sentences.append(s)
            if len(sentences) < 2:
                stats.too_small += 1
                continue
            stats.groups += 1
            yield Group(where, sentences)


def group_split(group, heldout_fraction):
    """'heldout' or 'train', fixed by a hash of the group's first sentence
    (the rule preprocessing uses for held-out documents)."""
    return "heldout" if corpus.is_heldout(group.sentences[0], heldout_fraction) else "train"


def split_groups(path, split, heldout_fraction, stats=None):
    """The groups of one split ("train", "heldout" or "all")."""
    if split not in ("train", "heldout", "all"):
        raise ValueError("split must be 'train', 'heldout' or 'all', got %r" % split)
    for group in read_groups(path, stats):
        if split == "all" or group_split(group, heldout_fraction) == split:
            yield group


class EmptySplitError(PretrainError, ValueError):
    """A split of the groups file holds no group."""


def check_splits(cfg, path, splits=("train", "heldout")):
    """Raise EmptySplitError unless each of `splits` holds a group (reads until they do).

    The trainer calls this before its first step: an empty split would otherwise
    fail only when its first batch is drawn.
    """
    fraction = cfg["data"]["heldout_fraction"]
    wanted = set(splits)
    for group in read_groups(resolve_path(path), GroupStats(verbose=False)):
        wanted.discard(group_split(group, fraction))
        if not wanted:
            return
    raise EmptySplitError("%s has no groups in split %s (heldout_fraction=%s)"
                     % (path, ", ".join(repr(w) for w in sorted(wanted)), fraction))


# ---------------------------------------------------------------- tokens and batches


def make_tokenizer(tokens, do_lower_case=True):
    """bert4keras's Tokenizer over a token list in id order."""
    from bert4keras.tokenizers import Tokenizer  # lazy: it loads TensorFlow
    return Tokenizer({t: i for i, t in enumerate(tokens)}, do_lower_case=do_lower_case)


def config_tokenizer(cfg):
    return make_tokenizer(load_vocab(cfg).tokens, cfg["tokenizer"]["do_lower_case"])


def pair_rows(tokenizer, a, b, maxlen, seq_len):
    """token_ids, segment_ids int32 [2, seq_len]: rows a->b and b->a.

    Each sentence is encoded alone as `[CLS] s [SEP]` cut to `maxlen` tokens, so a
    row is at most 2 * maxlen - 1 long.
    """
    ida = tokenizer.encode(a, maxlen=maxlen)[0]
    idb = tokenizer.encode(b, maxlen=maxlen)[0]
    token_ids = np.zeros((2, seq_len), np.int32)
    segment_ids = np.zeros((2, seq_len), np.int32)
    for row, (first, second) in enumerate(((ida, idb), (idb, ida))):
        ids = first + second[1:]  # the second [CLS] is dropped
        token_ids[row, :len(ids)] = ids
        segment_ids[row, len(first):len(ids)] = 1
    return token_ids, segment_ids


def pair_seq_len(cfg, seq_len):
    seq_len = seq_len or cfg["train"]["phases"][0]["seq_len"]
    maxlen = settings(cfg)["maxlen"]
    if 2 * maxlen - 1 > seq_len:
        raise ConfigError("config %s: simbert.maxlen=%d needs seq_len >= %d for a pair "
                         "(got %d)" % (cfg["name"], maxlen, 2 * maxlen - 1, seq_len))
    return seq_len


def pair_texts(cfg, path, split, seed, repeat, shuffle, shard):
    """Stream of sentence pairs (endless if `repeat`), the same for the same seed.

    One pair per group per epoch. The shuffle buffer holds SHUFFLE_PAIRS pairs
    and carries over epochs; a split that fits in it is shuffled epoch by epoch
    (so a small file never puts one group twice in a batch). `shard=(n, i)`
    keeps every n-th pair from the i-th on.
    """
    rng = np.random.RandomState(seed)
    buffer, counter = [], [0]

    def emit(pairs):
        for pair in pairs:
            if counter[0] % shard[0] == shard[1]:
                yield pair
            counter[0] += 1

    def drain(keep):  # random elements of the buffer until `keep` remain
        while len(buffer) > keep:
            k = rng.randint(len(buffer))
            buffer[k], buffer[-1] = buffer[-1], buffer[k]
            yield buffer.pop()

    epoch = 0
    while True:
        stats = GroupStats(verbose=epoch == 0)
        seen = 0
        for group in split_groups(path, split, cfg["data"]["heldout_fraction"], stats):
            seen += 1
            i, j = rng.choice(len(group.sentences), 2, replace=False)
            buffer.append((group.sentences[i], group.sentences[j]))
            if not shuffle:
                yield from emit([buffer.pop()])
            elif len(buffer) >= SHUFFLE_PAIRS:
                yield from emit(drain(SHUFFLE_PAIRS - 1))
        if seen == 0:
            raise EmptySplitError("%s has no usable groups in split %r (heldout_fraction="
                                  "%s)" % (path, split, cfg["data"]["heldout_fraction"]))
        if epoch == 0:
            logging.info("simbert %s split: %s", split, stats.summary(path))
        epoch += 1
        if seen < SHUFFLE_PAIRS or not repeat:
            yield from emit(drain(0))
        if not repeat:
            return


def read_pairs(path, limit=None):
    """LCQMC-format `s1 \\t s2 \\t label` lines -> (s1s, s2s, labels)."""
    s1, s2, labels = [], [], []
    with fs.open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 3 or parts[2].strip() not in ("0", "1"):
                if line.strip():
                    logging.warning("%s:%d: not 's1<TAB>s2<TAB>0|1'; skipped", path, lineno)
                continue
            s1.append(parts[0])
            s2.append(parts[1])
            labels.append(int(parts[2]))
            if limit and len(labels) >= limit:
                break
    return s1, s2, np.array(labels)
