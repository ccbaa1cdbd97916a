"""SimBERT in use: encode, search and paraphrase with an export, and its CLI.

`SimBERT.load(export_dir)` rebuilds an export with bert4keras (with the
build_transformer_model kwargs the export records), then `encode`, `search`,
`generate` (SimBERT's gen_synonyms: sample from the UniLM head, rank by
vector similarity) and `python -m pretrain.simbert eval` (LCQMC-format pairs:
Spearman and accuracy at the best threshold; groups: retrieval top-1 and the
held-out loss terms).

Training goes through the one trainer: the data is `simbert_data.py` and
`inputs.simbert_dataset`, the losses `tasks.SimbertTask`, the metrics
`simbert_eval.py`.
"""
import json
import os
import sys

import numpy as np
import tensorflow as tf
from absl import app, flags
from bert4keras.snippets import AutoRegressiveDecoder

from pretrain import config, fs
from pretrain.export import checkpoints
from pretrain.export import writer as export
from pretrain.export import check as export_check
from pretrain.models import build as models
from pretrain.simbert import evaluate as simbert_eval
from pretrain.training import tasks
from pretrain.errors import PretrainError
from pretrain.simbert.data import make_tokenizer, read_pairs, split_groups
from pretrain.data.tokenization import read_vocab_file


def build_unilm(bert_config, checkpoint_path=None):
    """The SimBERT keras model ([pooled, MLM probs]) as bert4keras builds it: the
    layout of a SimBERT checkpoint that records no build kwargs of its own."""
    return models.build_transformer(None, checkpoint_path, model="bert", with_pool="linear",
                                    application="unilm", **bert_config)


class SimBERT(object):
    """Encode, search and paraphrase with a SimBERT keras model and its tokenizer."""

    def __init__(self, model, tokenizer, maxlen=32):
        self.model = model
        self.tokenizer = tokenizer
        self.maxlen = maxlen
        self._heads = tasks.heads(model)
        spec = tf.TensorSpec((None, None), tf.int32)

        @tf.function(input_signature=(spec, spec))
        def step(token_ids, segment_ids):
            pooled, logits = self._heads([token_ids, segment_ids], training=False)
            return pooled, logits[:, -1]

        self._step = step

    @classmethod
    def load(cls, export_dir, maxlen=32):
        """An export dir: bert_config.json, vocab.txt, bert_model.ckpt (bert4keras),
        built with the kwargs its pretrain_export.json records (`export_check.load_kwargs`);
        without that file (a SimBERT from elsewhere), SimBERT's own layout."""
        config_path = os.path.join(export_dir, checkpoints.CONFIG_NAME)
        ckpt = os.path.join(export_dir, checkpoints.CKPT_NAME)
        info = export.read_info(export_dir)
        if info is None:
            with fs.open(config_path) as f:
                model = build_unilm(json.load(f), ckpt)
        else:
            model = models.build_transformer(config_path, ckpt,
                                             **export_check.load_kwargs(export_dir))
        tokens = read_vocab_file(os.path.join(export_dir, "vocab.txt"))
        lower = (info or {}).get("do_lower_case", True)
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
    with fs.open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _model_problem(path):
    """Why `path` is no SimBERT export (None when it is one)."""
    want = ("give a SimBERT export dir (RUN/export/PHASE of a simbert_* run, or "
            "`python -m pretrain.export --config simbert_tiny ...`)")
    if not fs.exists(os.path.join(path, "bert_config.json")):
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


class NotAnExportError(PretrainError, ValueError):
    """--model is no SimBERT export; the message says what to give instead."""


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError("usage: python -m pretrain.simbert {%s} --model DIR ..."
                             % "|".join(COMMANDS))
    command = argv[1]
    if not FLAGS.model:
        raise app.UsageError("--model EXPORT_DIR is required")
    if command == "encode" and FLAGS.output:
        fs.check_output_file(FLAGS.output, fs.is_npy, "NumPy .npy file")
    problem = _model_problem(FLAGS.model)
    if problem:
        raise NotAnExportError("--model %s: %s" % (FLAGS.model, problem))
    cfg = config.load_config(FLAGS.config)
    if FLAGS.maxlen:
        cfg = config.override(cfg, ["data.maxlen=%d" % FLAGS.maxlen])
    sim = SimBERT.load(FLAGS.model, cfg["data"]["maxlen"])
    texts = list(FLAGS.text) + (_lines(FLAGS.input) if FLAGS.input else [])
    if command == "encode":
        vecs = sim.encode(texts)
        if FLAGS.output:
            with fs.open(FLAGS.output, "wb") as f:
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
        evaluate(sim, cfg)


def evaluate(sim, cfg):
    """`eval`: the pair metrics of --pairs and the group metrics of --groups."""
    if not FLAGS.pairs and not FLAGS.groups:
        raise app.UsageError("eval needs --pairs FILE and/or --groups FILE")
    if FLAGS.pairs:
        s1, s2, labels = read_pairs(FLAGS.pairs, FLAGS.limit)
        m = simbert_eval.pair_metrics(simbert_eval.cosine_scores(sim.encode, s1, s2), labels)
        print("pairs: %d spearman: %.4f accuracy: %.4f threshold: %.4f" % (
            m["pairs"], m["spearman"], m["accuracy"], m["threshold"]))
    if FLAGS.groups:
        groups = list(split_groups(FLAGS.groups, FLAGS.groups_split,
                                   cfg["data"]["validation_fraction"]))
        r = simbert_eval.retrieval_top1(simbert_eval.cosine_matrix(sim.encode), groups)
        losses = simbert_eval.heldout_losses(cfg, sim.model, FLAGS.groups, FLAGS.groups_split,
                                             FLAGS.batch_size)
        print("groups: %d sentences: %d retrieval_top1: %.4f seq2seq_loss: %.4f "
              "similarity_loss: %.4f similarity_acc: %.4f (batch %d, %d batches)" % (
                  len(groups), r["sentences"], r["retrieval_top1"],
                  losses["seq2seq_loss"], losses["similarity_loss"],
                  losses["similarity_acc"], FLAGS.batch_size, losses["batches"]))
