"""Fine-tuning data: labelled examples from TSV or CLUE-style JSON lines, and
their token ids for `pretrain.finetune`.

Formats, sniffed per file as preprocessing does (`corpus.sniff_format`):

- TSV: `text<TAB>label` (task classification) or `text_a<TAB>text_b<TAB>label`
  (task pair). A first line whose label column reads `label` is a header.
- JSON lines: `{"sentence": ..., "label": ...}` or `{"sentence1": ...,
  "sentence2": ..., "label": ...}` (CLUE's TNEWS/AFQMC layout; `text`,
  `text_a`/`text_b` are accepted as well).

A line that cannot be an example is reported as `file:line: reason`, counted
by reason and skipped; more than `max_bad_fraction` of a file's lines bad is
a `DataError` (the `--max_bad_fraction` rule of preprocessing). Labels are
strings; dev and test labels must occur in train. With a declared label set
(`--labels`) a row with another label is a bad line too; without one, a
label too rare in train or missing from dev/test is warned of
(`label_warnings`): a typo in a few rows would otherwise become a class.
"""
import collections
import json
import os

import numpy as np

from pretrain import fs
from pretrain.data import corpus
from pretrain.errors import PretrainError

Example = collections.namedtuple("Example", "where text_a text_b label")
MAX_REPORTED = 10  # bad lines printed per file (all are counted)
TEXT_KEYS = {"classification": (("sentence",), ("text",), ("text_a",)),
             "pair": (("sentence1", "sentence2"), ("text_a", "text_b"))}


class DataError(PretrainError, ValueError):
    """A data file cannot be used; the message names the file and why."""


def _tsv_example(fields, task):
    want = 2 if task == "classification" else 3
    if len(fields) != want:
        return "%d tab-separated columns, expected %d (%s)" % (
            len(fields), want, "text, label" if want == 2 else "text_a, text_b, label")
    texts, label = [f.strip() for f in fields[:-1]], fields[-1].strip()
    return texts, label


def _json_example(line, task):
    try:
        record = json.loads(line)
    except ValueError:
        return "bad_json"
    if not isinstance(record, dict):
        return "not_an_object"
    keys = next((k for k in TEXT_KEYS[task] if all(x in record for x in k)), None)
    if keys is None:
        return "no text field (expected %s)" % " or ".join(
            "/".join(k) for k in TEXT_KEYS[task])
    if "label" not in record:
        return "no label field"
    texts = [record[k] for k in keys]
    if not all(isinstance(t, str) for t in texts):
        return "text field is not a string"
    return [t.strip() for t in texts], str(record["label"]).strip()


RARE_LABEL = 0.01  # a train label under this fraction of rows is warned of
FIRST_LINES = 5  # lines named per warning


def read_examples(path, task, max_bad_fraction=0.05, labels=None, log=print,
                  declared=False):
    """[Example] of one file, and {reason: count} of the lines skipped.

    labels: the allowed labels, the train set's or (`declared`) those given
    by --labels; an example with another label is bad.
    """
    fmt = corpus.sniff_format(path)
    examples, skipped, reported = [], collections.Counter(), 0
    with corpus.open_stream(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = corpus._decode(raw)
            if line is not None and not line.strip():
                continue
            if line is None:
                parsed = "bad_utf8"
            elif fmt == "jsonl":
                parsed = _json_example(line, task)
            else:
                parsed = _tsv_example(line.rstrip("\r\n").lstrip("\ufeff").split("\t"), task)
                if lineno == 1 and not isinstance(parsed, str) and parsed[1] == "label":
                    continue  # header
            if not isinstance(parsed, str):
                texts, label = parsed
                if not all(texts):
                    parsed = "empty text"
                elif not label:
                    parsed = "empty label"
                elif labels is not None and label not in labels:
                    parsed = "label %r is not among the %s (%s)" % (
                        label, "--labels" if declared else "train labels",
                        ", ".join(sorted(labels)))
            if isinstance(parsed, str):
                skipped[parsed.split(" (")[0]] += 1
                if reported < MAX_REPORTED:
                    log("%s:%d: %s" % (path, lineno, parsed))
                    reported += 1
                continue
            examples.append(Example("%s:%d" % (path, lineno), texts[0],
                                    texts[1] if len(texts) > 1 else None, label))
    bad = sum(skipped.values())
    seen = bad + len(examples)
    if not examples:
        raise DataError("%s: no usable %s examples in %d lines%s" % (
            path, task, seen, (" (%s)" % _reasons(skipped)) if bad else ""))
    if bad > max_bad_fraction * seen:
        raise DataError("%s: %d of %d lines (%.1f%%) are bad, more than --max_bad_fraction=%g "
                        "(%s); the first ones are listed above" % (
                            path, bad, seen, 100.0 * bad / seen, max_bad_fraction,
                            _reasons(skipped)))
    if bad:
        log("%s: skipped %d of %d lines (%s)" % (path, bad, seen, _reasons(skipped)))
    return examples, dict(skipped)


def _reasons(skipped):
    return ", ".join("%s: %d" % kv for kv in sorted(skipped.items()))


def label_list(examples):
    """Sorted labels of the train set (numerically when all are integers)."""
    labels = set(e.label for e in examples)
    if all(l.lstrip("-").isdigit() for l in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def label_warnings(train, others):
    """Warnings naming each label that is under RARE_LABEL of the `train`
    examples, or absent from a split of `others` ({split: (path, [Example])}),
    with its first train lines."""
    by_label = collections.defaultdict(list)
    for e in train:
        by_label[e.label].append(e.where)
    out = []
    for label in label_list(train):
        wheres = by_label[label]
        why = []
        if len(wheres) < RARE_LABEL * len(train):
            why.append("only %d of %d train rows (%.2f%%)" % (
                len(wheres), len(train), 100.0 * len(wheres) / len(train)))
        for split, (path, examples) in sorted(others.items()):
            if not any(e.label == label for e in examples):
                why.append("absent from %s (%s)" % (split, path))
        if why:
            out.append("label %r: %s; first at %s. A typo? Give the label set with --labels "
                       "to count rows outside it as bad lines" % (
                           label, ", ".join(why), ", ".join(wheres[:FIRST_LINES])))
    return out


def make_tokenizer(export_dir, do_lower_case):
    """bert4keras's own Tokenizer on the export's vocab.txt, as users load it."""
    from bert4keras.tokenizers import Tokenizer  # lazy: it loads TensorFlow
    vocab = os.path.join(export_dir, "vocab.txt")
    if not fs.exists(vocab):
        raise DataError("%s has no vocab.txt (a SentencePiece export is not supported by "
                        "the fine-tuner)" % export_dir)
    return Tokenizer(vocab, do_lower_case=do_lower_case)


def encode(examples, tokenizer, maxlen, label_ids):
    """Arrays padded to maxlen: input_ids, segment_ids, labels (int32)."""
    ids = np.zeros((len(examples), maxlen), np.int32)
    segs = np.zeros_like(ids)
    for i, e in enumerate(examples):
        t, s = tokenizer.encode(e.text_a, e.text_b, maxlen=maxlen)
        ids[i, :len(t)], segs[i, :len(s)] = t, s
    labels = np.array([label_ids.get(e.label, -1) for e in examples], np.int32)
    return {"input_ids": ids, "segment_ids": segs, "labels": labels}
