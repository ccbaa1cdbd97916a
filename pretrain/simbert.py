"""SimBERT: similar-sentence groups -> UniLM seq2seq + in-batch similarity; then use it.

Data: JSON lines `{"text": str, "synonyms": [str, ...]}`, one group of
paraphrases per record. `read_groups` streams them, joins records that were
hard-wrapped across lines (reported with file:line), and counts and skips
groups with fewer than two distinct sentences. A group's split
(train/validation) is a hash of its `text`, so it never changes between runs.

Training (through the one trainer, `pretrain/train.py`): `make_dataset` picks
two sentences a, b of a group and emits the adjacent rows
`[CLS] a [SEP] b [SEP]` and `[CLS] b [SEP] a [SEP]`, padded to the phase's
seq_len (static shapes for TPU). `forward_loss` adds the UniLM seq2seq
cross-entropy on the second segment and the in-batch similarity
cross-entropy on the L2-normalised pooled [CLS] (cosine x 30, diagonal
excluded, the partner row as label; the candidates are every row of the
update's global micro-batch, gathered from all replicas), and returns both
terms for logging.

Use: `SimBERT.load(export_dir)` rebuilds an export with bert4keras
(`with_pool='linear', application='unilm'`), then `encode`, `search`,
`generate` (SimBERT's gen_synonyms: sample from the UniLM head, rank by
vector similarity) and `python -m pretrain.simbert eval` (LCQMC-format pairs:
Spearman and accuracy at the best threshold; groups: retrieval top-1 and the
held-out loss terms).
"""
import collections
import hashlib
import json
import os
import sys
import weakref

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from pretrain.config import load_config, resolve_path
from pretrain.tokenization import load_vocab, read_vocab_file

SIMILARITY_SCALE = 30.0  # SimBERT's cosine temperature
MAX_JOINED_LINES = 8  # a record wrapped over more lines than this is treated as garbage
SHUFFLE_PAIRS = 10000  # pairs held in the streaming shuffle buffer
METRICS = ("seq2seq_loss", "similarity_loss", "similarity_acc")  # logged by the trainer

# ---------------------------------------------------------------- reading groups


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
    with tf.io.gfile.GFile(path, "rb") as f:
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
    files = sorted(tf.io.gfile.glob(path))
    if not files:
        raise FileNotFoundError("no SimBERT group file matches %r" % path)
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


def group_split(group, validation_fraction):
    """'validation' or 'train', fixed by a hash of the group's first sentence."""
    digest = hashlib.sha1(group.sentences[0].encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    return "validation" if u < validation_fraction else "train"


def split_groups(path, split, validation_fraction, stats=None):
    """The groups of one split ("train", "validation" or "all")."""
    if split not in ("train", "validation", "all"):
        raise ValueError("split must be 'train', 'validation' or 'all', got %r" % split)
    for group in read_groups(path, stats):
        if split == "all" or group_split(group, validation_fraction) == split:
            yield group


def check_splits(cfg, path, splits=("train", "validation")):
    """Raise ValueError unless each of `splits` holds a group (reads until they do).

    The trainer calls this before its first step: an empty split would otherwise
    fail only when its first batch is drawn.
    """
    fraction = cfg["data"]["validation_fraction"]
    wanted = set(splits)
    for group in read_groups(resolve_path(path), GroupStats(verbose=False)):
        wanted.discard(group_split(group, fraction))
        if not wanted:
            return
    raise ValueError("%s has no groups in split %s (validation_fraction=%s)"
                     % (path, ", ".join(repr(w) for w in sorted(wanted)), fraction))


# ---------------------------------------------------------------- tokens and batches


def make_tokenizer(tokens, do_lower_case=True):
    """bert4keras's Tokenizer over a token list in id order."""
    from bert4keras.tokenizers import Tokenizer
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


def _seq_len(cfg, seq_len):
    seq_len = seq_len or cfg["train"]["phases"][0]["seq_len"]
    maxlen = cfg["data"]["maxlen"]
    if 2 * maxlen - 1 > seq_len:
        raise ValueError("config %s: data.maxlen=%d needs seq_len >= %d for a pair "
                         "(got %d)" % (cfg["name"], maxlen, 2 * maxlen - 1, seq_len))
    return seq_len


def _pair_texts(cfg, path, split, seed, repeat, shuffle, shard):
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
        for group in split_groups(path, split, cfg["data"]["validation_fraction"], stats):
            seen += 1
            i, j = rng.choice(len(group.sentences), 2, replace=False)
            buffer.append((group.sentences[i], group.sentences[j]))
            if not shuffle:
                yield from emit([buffer.pop()])
            elif len(buffer) >= SHUFFLE_PAIRS:
                yield from emit(drain(SHUFFLE_PAIRS - 1))
        if seen == 0:
            raise ValueError("%s has no usable groups in split %r (validation_fraction="
                             "%s)" % (path, split, cfg["data"]["validation_fraction"]))
        if epoch == 0:
            logging.info("simbert %s split: %s", split, stats.summary(path))
        epoch += 1
        if seen < SHUFFLE_PAIRS or not repeat:
            yield from emit(drain(0))
        if not repeat:
            return


def make_dataset(cfg, path, batch_size, split="train", seed=0, skip_batches=0,
                 input_context=None, repeat=True, seq_len=None):
    """tf.data of {token_ids, segment_ids: int32 [B, L]}; rows 2i, 2i+1 are partners.

    As in `records.make_dataset`: `batch_size` is the global batch, and with
    `input_context` each input pipeline reads every n-th pair in batches of
    the per-replica size; `skip_batches` counts global batches already
    consumed, and resuming skips their pairs without tokenizing them. Same
    seed => same order. `seq_len` defaults to the first phase's.
    """
    seq_len = _seq_len(cfg, seq_len)
    path = resolve_path(path)
    if not tf.io.gfile.glob(path):
        raise FileNotFoundError("SimBERT data %r not found" % path)
    shard, per_step = (1, 0), 1
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        shard = (input_context.num_input_pipelines, input_context.input_pipeline_id)
        per_step = input_context.num_replicas_in_sync // input_context.num_input_pipelines
    if batch_size % 2:
        raise ValueError("SimBERT batch size must be even (rows come in partner pairs), "
                         "got %d" % batch_size)
    pairs_per_batch = batch_size // 2
    skip_pairs = skip_batches * per_step * pairs_per_batch
    tokenizer = config_tokenizer(cfg)
    maxlen = cfg["data"]["maxlen"]

    def rows():
        stream = _pair_texts(cfg, path, split, seed, repeat, split == "train", shard)
        for n, (a, b) in enumerate(stream):
            if n >= skip_pairs:
                yield pair_rows(tokenizer, a, b, maxlen, seq_len)

    spec = tf.TensorSpec((2, seq_len), tf.int32)
    ds = tf.data.Dataset.from_generator(rows, output_signature=(spec, spec))
    ds = ds.batch(pairs_per_batch, drop_remainder=True)
    ds = ds.map(lambda t, s: {"token_ids": tf.reshape(t, (batch_size, seq_len)),
                              "segment_ids": tf.reshape(s, (batch_size, seq_len))})
    return ds.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------- losses

_HEADS = weakref.WeakKeyDictionary()


def heads(encoder):
    """keras Model [token_ids, segment_ids] -> [pooled, MLM logits].

    bert4keras's UniLM model ends in a softmax; the logits before it (the
    `MLM-Bias` layer) give a stable cross-entropy and sampling with temperature.
    The new Model shares every weight with `encoder`.
    """
    if encoder not in _HEADS:
        try:
            logits = encoder.get_layer("MLM-Bias").output
            pooled = encoder.get_layer("Pooler-Dense").output
            activation = encoder.get_layer("MLM-Activation").activation
        except ValueError as e:
            raise ValueError("SimBERT needs a bert4keras model built with with_pool="
                             "'linear', application='unilm' (with_mlm): %s" % e) from None
        if getattr(activation, "__name__", "") == "linear" and len(encoder.outputs) == 2:
            # models.build_model's encoder already gives [pooled, logits]: use it as
            # is, so the trainer's compiled step never builds a Model while tracing.
            _HEADS[encoder] = encoder
        else:
            _HEADS[encoder] = tf.keras.Model(encoder.inputs[:2], [pooled, logits])
    return _HEADS[encoder]


def partner_labels(batch_size):
    """Row 2i's positive is 2i+1 and vice versa."""
    idx = tf.range(batch_size)
    return idx + 1 - 2 * (idx % 2)


def similarity_loss(pooled):
    """In-batch similarity cross-entropy and top-1 accuracy on pooled [CLS].

    Under a distribution strategy the candidates are the rows of every replica
    (all_gather): each local row is scored against the whole global
    micro-batch, as one device with that batch would. all_gather's gradient
    returns the other replicas' terms to the rows they came from, so the
    summed gradient is the one-device gradient. Returns the mean over local rows.
    """
    v = tf.math.l2_normalize(tf.cast(pooled, tf.float32), axis=1)
    n = tf.shape(v)[0]
    ctx = tf.distribute.get_replica_context()  # None in cross-replica context
    candidates, first = v, 0
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        candidates = ctx.all_gather(v, axis=0)  # replica order; equal local batches
        first = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * n
    rows = first + tf.range(n)  # the local rows' indices among the candidates
    sims = tf.matmul(v, candidates, transpose_b=True) * SIMILARITY_SCALE
    sims -= tf.one_hot(rows, tf.shape(candidates)[0]) * 1e12  # a row is not its own positive
    labels = first + partner_labels(n)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, sims))
    acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(sims, axis=1, output_type=tf.int32),
                                          labels), tf.float32))
    return loss, acc


def seq2seq_loss(logits, token_ids, segment_ids):
    """Mean next-token cross-entropy over the second segment (its [SEP] included)."""
    logits = tf.cast(logits[:, :-1], tf.float32)
    targets = token_ids[:, 1:]
    weights = tf.cast(segment_ids[:, 1:], tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
    return tf.reduce_sum(ce * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


def forward_loss(bundle, batch, training):
    """(seq2seq + similarity loss, metrics) for one batch from `make_dataset`."""
    pooled, logits = heads(bundle.encoder)([batch["token_ids"], batch["segment_ids"]],
                                           training=training)
    s2s = seq2seq_loss(logits, batch["token_ids"], batch["segment_ids"])
    sim, acc = similarity_loss(pooled)
    loss = s2s + sim
    return loss, {"loss": loss, "seq2seq_loss": s2s, "similarity_loss": sim,
                  "similarity_acc": acc}


# ---------------------------------------------------------------- use


def build_unilm(bert_config, checkpoint_path=None):
    """The SimBERT keras model ([pooled, MLM probs]) as bert4keras builds it."""
    from pretrain.models import build_transformer
    return build_transformer(None, checkpoint_path, model="bert", with_pool="linear",
                             application="unilm", **bert_config)


class SimBERT(object):
    """Encode, search and paraphrase with a SimBERT keras model and its tokenizer."""

    def __init__(self, model, tokenizer, maxlen=32):
        self.model = model
        self.tokenizer = tokenizer
        self.maxlen = maxlen
        self._heads = heads(model)
        spec = tf.TensorSpec((None, None), tf.int32)

        @tf.function(input_signature=(spec, spec))
        def step(token_ids, segment_ids):
            pooled, logits = self._heads([token_ids, segment_ids], training=False)
            return pooled, logits[:, -1]

        self._step = step

    @classmethod
    def load(cls, export_dir, maxlen=32):
        """An export dir: bert_config.json, vocab.txt, bert_model.ckpt (bert4keras)."""
        with tf.io.gfile.GFile(os.path.join(export_dir, "bert_config.json")) as f:
            bert_config = json.load(f)
        model = build_unilm(bert_config, os.path.join(export_dir, "bert_model.ckpt"))
        tokens = read_vocab_file(os.path.join(export_dir, "vocab.txt"))
        info_path = os.path.join(export_dir, "pretrain_export.json")  # written by export.py
        lower = True
        if tf.io.gfile.exists(info_path):
            with tf.io.gfile.GFile(info_path) as f:
                lower = json.load(f).get("do_lower_case", True)
        return cls(model, make_tokenizer(tokens, lower), maxlen)

    def encode(self, texts, batch_size=64):
        """L2-normalised pooled [CLS] vectors, float32 [len(texts), hidden]."""
        out = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            ids = np.zeros((len(chunk), self.maxlen), np.int32)
            for i, text in enumerate(chunk):
                row = self.tokenizer.encode(text, maxlen=self.maxlen)[0]
                ids[i, :len(row)] = row
            pooled, _ = self._step(ids, np.zeros_like(ids))
            out.append(pooled.numpy())
        vecs = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)

    def search(self, queries, candidates, k=10, candidate_vecs=None):
        """For each query, the k most similar candidates as [(text, cosine)]."""
        cands = self.encode(candidates) if candidate_vecs is None else candidate_vecs
        sims = self.encode(queries) @ cands.T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return [[(candidates[j], float(sims[q, j])) for j in top[q]]
                for q in range(len(queries))]

    def sample(self, text, n, topk=None, topp=None, temperature=1.0, seed=None):
        """n decodings of the UniLM head given `text` as the first segment."""
        from bert4keras.snippets import AutoRegressiveDecoder
        step, tok = self._step, self.tokenizer
        banned = [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[MASK]")]

        class Decoder(AutoRegressiveDecoder):
            @AutoRegressiveDecoder.wraps(default_rtype="logits")
            def predict(self, inputs, output_ids, states):
                token_ids = np.concatenate([inputs[0], output_ids], 1).astype(np.int32)
                segment_ids = np.concatenate([inputs[1], np.ones_like(output_ids)], 1)
                logits = step(token_ids, segment_ids.astype(np.int32))[1].numpy()
                logits[:, banned] = -1e9  # never emit padding or special tokens
                return logits

        if seed is not None:
            np.random.seed(seed)  # bert4keras samples with numpy's global RNG
        decoder = Decoder(start_id=None, end_id=tok._token_end_id, maxlen=self.maxlen)
        token_ids, segment_ids = tok.encode(text, maxlen=self.maxlen)
        outputs = decoder.random_sample([token_ids, segment_ids], n, topk=topk, topp=topp,
                                        temperature=temperature)
        return [tok.decode(ids) for ids in outputs]

    def generate(self, text, n=20, k=10, topk=5, topp=None, seed=None):
        """SimBERT's gen_synonyms: sample n, drop copies of `text`, rank by cosine."""
        cands = []
        for c in self.sample(text, n, topk=topk, topp=topp, seed=seed):
            if c and c != text and c not in cands:
                cands.append(c)
        if not cands:
            return []
        vecs = self.encode([text] + cands)
        sims = vecs[1:] @ vecs[0]
        order = np.argsort(-sims, kind="stable")[:k]
        return [(cands[i], float(sims[i])) for i in order]


# ---------------------------------------------------------------- evaluation


def rankdata(x):
    """Ranks 0..n-1 with ties given their average rank."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def spearman(x, y):
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / np.sqrt((rx ** 2).sum() * (ry ** 2).sum()))


def best_threshold_accuracy(scores, labels):
    """(accuracy, threshold) of the best rule `label = score >= threshold`."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, np.int64)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    n, positives = len(s), int(y.sum())
    tp = np.concatenate([[0], np.cumsum(y)])  # predicting the top k positive, k = 0..n
    k = np.arange(n + 1)
    correct = tp + (n - positives) - (k - tp)
    valid = np.concatenate([[True], s[:-1] > s[1:], [True]])  # cut only between values
    best = int(np.argmax(np.where(valid, correct, -1)))
    if best == 0:
        threshold = s[0] + 1e-6
    elif best == n:
        threshold = s[-1]
    else:
        threshold = (s[best - 1] + s[best]) / 2
    return float(correct[best] / n), float(threshold)


def read_pairs(path, limit=None):
    """LCQMC-format `s1 \\t s2 \\t label` lines -> (s1s, s2s, labels)."""
    s1, s2, labels = [], [], []
    with tf.io.gfile.GFile(path) as f:
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


def pair_metrics(scores, labels):
    """Spearman and best-threshold accuracy of similarity scores against 0/1 labels."""
    acc, threshold = best_threshold_accuracy(scores, labels)
    return {"spearman": spearman(scores, labels), "accuracy": acc, "threshold": threshold,
            "pairs": len(labels)}


def cosine_scores(encode, s1, s2):
    """cosine(encode(a), encode(b)) for each pair, encoding each distinct text once."""
    texts = sorted(set(s1) | set(s2))
    index = {t: i for i, t in enumerate(texts)}
    vecs = encode(texts)
    return np.sum(vecs[[index[t] for t in s1]] * vecs[[index[t] for t in s2]], axis=1)


def cosine_matrix(encode):
    """texts -> all-pairs cosine, for `retrieval_top1`."""
    def similarities(texts):
        vecs = encode(texts)
        return vecs @ vecs.T
    return similarities


def retrieval_top1(similarities, groups):
    """Share of sentences whose nearest other sentence is from one of its groups.

    `similarities(texts)` gives the [N, N] matrix (e.g. `cosine_matrix(encode)`).
    A sentence found in several groups is one candidate, a member of each.
    """
    members = collections.defaultdict(set)
    for g, group in enumerate(groups):
        for s in group.sentences:
            members[s].add(g)
    texts = sorted(members)
    sims = np.array(similarities(texts), np.float64)
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argmax(sims, axis=1)
    hits = [bool(members[t] & members[texts[j]]) for t, j in zip(texts, nearest)]
    return {"retrieval_top1": float(np.mean(hits)), "sentences": len(texts)}


def heldout_losses(cfg, model, path, split, batch_size, max_batches=None):
    """Both loss terms (inference mode) averaged over one pass of a split."""
    bundle = collections.namedtuple("Bundle", "encoder")(model)
    ds = make_dataset(cfg, path, batch_size, split=split, repeat=False)
    step = tf.function(lambda batch: forward_loss(bundle, batch, training=False)[1])
    totals = collections.defaultdict(float)
    n = 0
    for batch in ds:
        for key, value in step(batch).items():
            totals[key] += float(value)
        n += 1
        if max_batches and n >= max_batches:
            break
    if n == 0:
        raise ValueError("%s: split %r has fewer than %d rows: no batch to evaluate" % (
            path, split, batch_size))
    out = {k: v / n for k, v in totals.items()}
    out["batches"] = n
    return out


def jaccard_matrix(texts):
    """All-pairs character-set Jaccard similarity: the no-model baseline."""
    chars = sorted(set("".join(texts)))
    col = {c: i for i, c in enumerate(chars)}
    x = np.zeros((len(texts), len(chars)), np.float64)
    for i, t in enumerate(texts):
        x[i, [col[c] for c in set(t)]] = 1.0
    inter = x @ x.T
    sizes = x.sum(axis=1)
    return inter / np.maximum(sizes[:, None] + sizes[None, :] - inter, 1.0)


def jaccard_scores(s1, s2):
    return np.array([len(set(a) & set(b)) / max(len(set(a) | set(b)), 1)
                     for a, b in zip(s1, s2)])


# ---------------------------------------------------------------- CLI

FLAGS = flags.FLAGS
COMMANDS = ("encode", "search", "generate", "eval")


def define_flags():
    flags.DEFINE_string("model", None, "bert4keras export dir (bert_config.json, "
                        "vocab.txt, bert_model.ckpt)")
    flags.DEFINE_string("config", "simbert_tiny", "config for data settings (maxlen, "
                        "validation_fraction, seq_len)")
    flags.DEFINE_integer("maxlen", None, "tokens per sentence (default: config data.maxlen)")
    flags.DEFINE_multi_string("text", [], "encode/search/generate: input text (repeatable)")
    flags.DEFINE_string("input", None, "encode/search: file with one text per line")
    flags.DEFINE_string("output", None, "encode: write the vectors here (.npy)")
    flags.DEFINE_string("corpus", None, "search: file with one candidate per line")
    flags.DEFINE_integer("k", 10, "search/generate: how many results")
    flags.DEFINE_integer("n", 20, "generate: how many samples to draw")
    flags.DEFINE_integer("topk", 5, "generate: sample among the top-k tokens (0: off)")
    flags.DEFINE_float("topp", None, "generate: nucleus sampling mass")
    flags.DEFINE_integer("seed", 0, "generate: numpy seed")
    flags.DEFINE_string("pairs", None, "eval: LCQMC-format file s1<TAB>s2<TAB>label")
    flags.DEFINE_integer("limit", None, "eval: only the first N pairs")
    flags.DEFINE_string("groups", None, "eval: SimBERT group file for retrieval + losses")
    flags.DEFINE_enum("groups_split", "validation", ["train", "validation", "all"],
                      "eval: which groups of --groups to use")
    flags.DEFINE_integer("batch_size", 32, "eval: rows per batch for the held-out losses")


def _lines(path):
    with tf.io.gfile.GFile(path) as f:
        return [line.strip() for line in f if line.strip()]


def _model_problem(path):
    """Why `path` is no SimBERT export (None when it is one)."""
    want = ("give a SimBERT export dir (RUN/export/PHASE of a simbert_* run, or "
            "`python -m pretrain.export --config simbert_tiny ...`)")
    if not tf.io.gfile.exists(os.path.join(path, "bert_config.json")):
        return "no bert_config.json there; %s" % want
    try:
        names = {n for n, _ in tf.train.list_variables(os.path.join(path, "bert_model.ckpt"))}
    except (tf.errors.OpError, ValueError):
        return "no readable bert_model.ckpt there; %s" % want
    if "bert/pooler/dense/kernel" not in names:
        return ("an MLM-only export (its checkpoint has no bert/pooler/dense); %s. To make "
                "one from it: python pretrain/run.py --config simbert_tiny.json "
                "--init_checkpoint %s --output RUN" % (want, path))
    return None


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError("usage: python -m pretrain.simbert {%s} --model DIR ..."
                             % "|".join(COMMANDS))
    command = argv[1]
    if not FLAGS.model:
        raise app.UsageError("--model EXPORT_DIR is required")
    problem = _model_problem(FLAGS.model)
    if problem:
        sys.exit("error: --model %s: %s" % (FLAGS.model, problem))
    cfg = load_config(FLAGS.config)
    maxlen = FLAGS.maxlen or cfg["data"]["maxlen"]
    cfg["data"]["maxlen"] = maxlen
    sim = SimBERT.load(FLAGS.model, maxlen)
    texts = list(FLAGS.text) + (_lines(FLAGS.input) if FLAGS.input else [])
    if command == "encode":
        vecs = sim.encode(texts)
        if FLAGS.output:
            with tf.io.gfile.GFile(FLAGS.output, "wb") as f:
                np.save(f, vecs)
            print("wrote %s: %d x %d" % (FLAGS.output, vecs.shape[0], vecs.shape[1]))
        else:
            np.savetxt(sys.stdout, vecs, fmt="%.6f")
    elif command == "search":
        if not FLAGS.corpus:
            raise app.UsageError("search needs --corpus FILE")
        for query, hits in zip(texts, sim.search(texts, _lines(FLAGS.corpus), FLAGS.k)):
            print("query: %s" % query)
            for text, score in hits:
                print("  %.4f\t%s" % (score, text))
    elif command == "generate":
        for text in texts:
            print("input: %s" % text)
            for cand, score in sim.generate(text, FLAGS.n, FLAGS.k, FLAGS.topk or None,
                                            FLAGS.topp, FLAGS.seed):
                print("  %.4f\t%s" % (score, cand))
    else:
        if not FLAGS.pairs and not FLAGS.groups:
            raise app.UsageError("eval needs --pairs FILE and/or --groups FILE")
        if FLAGS.pairs:
            s1, s2, labels = read_pairs(FLAGS.pairs, FLAGS.limit)
            m = pair_metrics(cosine_scores(sim.encode, s1, s2), labels)
            print("pairs: %d spearman: %.4f accuracy: %.4f threshold: %.4f" % (
                m["pairs"], m["spearman"], m["accuracy"], m["threshold"]))
        if FLAGS.groups:
            groups = list(split_groups(FLAGS.groups, FLAGS.groups_split,
                                       cfg["data"]["validation_fraction"]))
            r = retrieval_top1(cosine_matrix(sim.encode), groups)
            losses = heldout_losses(cfg, sim.model, FLAGS.groups, FLAGS.groups_split,
                                    FLAGS.batch_size)
            print("groups: %d sentences: %d retrieval_top1: %.4f seq2seq_loss: %.4f "
                  "similarity_loss: %.4f similarity_acc: %.4f (batch %d, %d batches)" % (
                      len(groups), r["sentences"], r["retrieval_top1"],
                      losses["seq2seq_loss"], losses["similarity_loss"],
                      losses["similarity_acc"], FLAGS.batch_size, losses["batches"]))


if __name__ == "__main__":
    define_flags()
    app.run(main)
