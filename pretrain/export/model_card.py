"""The model card (README.md) of an HF export, from the run that trained it.

`run_facts(run_dir)` gathers what the run directory records: `run.json` (the
resolved config, command line, package versions), the records' manifests
(`seq{L}/manifest.json` of the --data dir: source files, documents,
sequences), the TensorBoard events (last train step, last held-out metrics)
and, given `pretrain.finetune` output dirs, their `metrics.json`.
`write_card(out_dir, cfg, n_params, facts, ...)` writes README.md with the
hub's metadata header. Without a run (`facts=None`: a fresh initialisation or
a checkpoint from elsewhere) the card says so instead of inventing figures.
"""
import json
import os

import tensorflow as tf
from tensorflow.core.util import event_pb2

from pretrain import fs
from pretrain.models import build as models

RUN_RECORD = "run.json"  # pretrain.training.run_dir writes it
# below this many optimizer updates a run is a smoke test, whatever its config says
USABLE_STEPS = 10000


def _load(path):
    with fs.open(path) as f:
        return json.load(f)


def last_scalars(event_dir):
    """{tag: (step, value)} of the last value of each scalar in `event_dir`."""
    last = {}
    if not fs.isdir(event_dir):
        return last
    files = [os.path.join(event_dir, n) for n in sorted(fs.listdir(event_dir)) if "tfevents" in n]
    for raw in tf.data.TFRecordDataset(files) if files else ():
        event = event_pb2.Event.FromString(raw.numpy())
        for v in event.summary.value:
            number = float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
            if v.tag not in last or event.step >= last[v.tag][0]:
                last[v.tag] = (int(event.step), float(number))
    return last


def find_run_dir(checkpoint):
    """The run dir holding a trainer checkpoint (an ancestor with run.json), or None."""
    path = os.path.dirname(os.path.abspath(checkpoint)) if checkpoint else None
    while path and path != os.path.dirname(path):
        if os.path.exists(os.path.join(path, RUN_RECORD)):
            return path
        path = os.path.dirname(path)
    return None


def run_facts(run_dir, data_dir=None, finetune_dirs=()):
    """What the card states about a run; `data_dir` defaults to the run's --data."""
    record = _load(os.path.join(run_dir, RUN_RECORD))
    data_dir = data_dir or (record.get("flags") or {}).get("data")
    manifests = []
    if data_dir and fs.isdir(data_dir):
        for name in sorted(fs.listdir(data_dir)):
            path = os.path.join(data_dir, name, "manifest.json")
            if name.startswith("seq") and fs.exists(path):
                manifests.append(_load(path))
    board = os.path.join(run_dir, "tensorboard")
    finetunes = []
    for d in finetune_dirs:
        metrics = _load(os.path.join(d, "metrics.json"))
        finetunes.append(metrics)
    return {"record": record, "manifests": manifests,
            "train": last_scalars(os.path.join(board, "train")),
            "eval": last_scalars(os.path.join(board, "eval")), "finetunes": finetunes}


def _fmt(x):
    if isinstance(x, float):
        return "%.4f" % x
    return "{:,}".format(x) if isinstance(x, int) else str(x)


def _architecture(cfg, n_params, hf_class):
    m = cfg["model"]
    rows = [("config", cfg["name"]), ("transformers class", hf_class),
            ("layers", m["num_hidden_layers"]), ("hidden size", m["hidden_size"]),
            ("embedding size", m["embedding_size"] or m["hidden_size"]),
            ("attention heads", m["num_attention_heads"]),
            ("feed-forward size", m["intermediate_size"]), ("vocabulary", m["vocab_size"]),
            ("max positions", m["max_position_embeddings"]), ("parameters", n_params)]
    if m["with_pool"]:
        rows.append(("pooler", "%s ([CLS] -> Dense)" % m["with_pool"]))
    if m["application"] != "encoder":
        rows.append(("trained as", m["application"] + " (the HF encoder takes padding masks "
                     "only: encode single sentences, segment 0)"))
    return ["| | |", "| --- | --- |"] + ["| %s | %s |" % (k, _fmt(v)) for k, v in rows]


def _training(facts):
    record, lines = facts["record"], []
    cfg, train = record["config"], record["config"]["train"]
    for man in facts["manifests"]:
        files = ", ".join("`%s` (%s bytes)" % (os.path.basename(s["path"]), _fmt(s["bytes"]))
                          for s in man["sources"])
        lines.append("- data, seq_len %d: %s documents (%s held out) from %s; %s training "
                     "sequences, %s held-out; %s masking" % (
                         man["seq_len"], _fmt(man["docs"]), _fmt(man["eval_docs"]), files,
                         _fmt(man["train"]["examples"]), _fmt(man["eval"]["examples"]),
                         man["masking"]["mode"]))
    if not facts["manifests"]:
        lines.append("- data: %s (no records manifest found)" % cfg["data"]["task"])
    lines.append("- optimizer: %s, weight decay %s; batch %d x %d accumulation steps" % (
        train["optimizer"], train["weight_decay"], train["batch_size"],
        train["grad_accum_steps"]))
    for phase in train["phases"]:
        lines.append("- phase %s: %s steps at seq_len %s, learning rate %g, warmup %s" % (
            phase["name"], _fmt(phase["steps"]), phase["seq_len"], phase["learning_rate"],
            phase.get("warmup_steps", 0)))
    done = max([s for s, _ in facts["train"].values()] or [0])
    lines.append("- optimizer updates run: %s%s" % (_fmt(done), " (a `--smoke` run)"
                                                   if cfg.get("smoke") else ""))
    lines.append("- software: %s; started %s" % (", ".join(
        "%s %s" % kv for kv in record["versions"].items() if kv[1]), record["started"]))
    return lines, done


def _results(facts):
    lines = []
    if facts["eval"]:
        step = max(s for s, _ in facts["eval"].values())
        lines.append("Held-out split of the training data, at step %s:" % _fmt(step))
        lines.append("")
        lines += ["| metric | value |", "| --- | --- |"]
        lines += ["| %s | %.4f |" % (tag, v) for tag, (_, v) in sorted(facts["eval"].items())]
    for ft in facts["finetunes"]:
        s, model = ft["settings"], ft["model"]
        lines.append("")
        lines.append("Fine-tuned with `pretrain.finetune` on task %s (%s):" % (
            s.get("task"), ", ".join("%s %s examples" % (k, _fmt(v))
                                     for k, v in ft["examples"].items())))
        lines.append("")
        lines += ["| split | accuracy | macro-F1 |", "| --- | --- | --- |"]
        lines += ["| %s | %.4f | %.4f |" % (split, model[split]["accuracy"],
                                           model[split]["macro_f1"])
                  for split in ("dev", "test") if split in model]
    return lines or ["No held-out evaluation was recorded."]


def _usage(cfg, hf_class, sentence):
    lines = ["```python", "from transformers import AutoModelForMaskedLM, AutoTokenizer",
             "tokenizer = AutoTokenizer.from_pretrained(PATH)",
             "model = AutoModelForMaskedLM.from_pretrained(PATH)  # %s" % hf_class, "```", ""]
    if hf_class == "ElectraForMaskedLM":
        lines += ["Load it as `ElectraForMaskedLM` (what `AutoModelForMaskedLM` picks from "
                  "config.json). `BertForMaskedLM` finds none of its weights (the embeddings "
                  "are factorised) and returns a randomly initialised model with a warning.", ""]
    if sentence:
        lines += ["```python", "from sentence_transformers import SentenceTransformer",
                  "vectors = SentenceTransformer(PATH).encode([\"今天天气不错\"])  "
                  "# unit length", "```", ""]
    kwargs = ", ".join("%s=%r" % kv for kv in sorted(models.model_kwargs(cfg).items()))
    lines += ["bert4keras loads the project's own export of the same weights (`python -m "
              "pretrain.export --format bert4keras`), not this folder:", "", "```python",
              "from bert4keras.models import build_transformer_model",
              "model = build_transformer_model('bert_config.json', 'bert_model.ckpt', "
              "%s)" % kwargs, "```"]
    return lines


def render(cfg, n_params, hf_class, facts=None, sentence=False, license="other"):
    """The README.md text."""
    smoke = facts is not None and facts["record"]["config"].get("smoke")
    tags = ["bert4keras", "pretrain", cfg["name"], hf_class.replace("ForMaskedLM", "").lower()]
    if sentence:
        tags += ["sentence-transformers", "feature-extraction"]
    if smoke:
        tags.append("smoke-test")
    header = ["---", "language: zh", "license: %s" % license,
              "pipeline_tag: %s" % ("sentence-similarity" if sentence else "fill-mask"),
              "library_name: %s" % ("sentence-transformers" if sentence else "transformers"),
              "tags:"] + ["- %s" % t for t in tags] + ["---", ""]
    body = ["# %s" % cfg["name"], "", cfg.get("description") or "", "",
            "## Architecture", ""] + _architecture(cfg, n_params, hf_class) + [""]
    done = 0
    body += ["## Training", ""]
    if facts is None:
        body += ["No run record came with this export (a fresh initialisation, or a "
                 "checkpoint from elsewhere): its training is unknown to this card."]
    else:
        lines, done = _training(facts)
        body += lines + ["", "## Results", ""] + _results(facts)
    body += ["", "## How to load it", ""] + _usage(cfg, hf_class, sentence)
    body += ["", "## Limits", ""]
    if facts is None or smoke or done < USABLE_STEPS:
        body.append("- %s: not a usable model. Its weights are for checking that the "
                    "pipeline and the export work." % (
                        "A CPU smoke run" if smoke else "An untrained model" if facts is None
                        else "%s optimizer updates" % _fmt(done)))
    body += ["- Chinese text, WordPiece vocabulary of %s entries, sequences of up to %d "
             "tokens." % (_fmt(cfg["model"]["vocab_size"]),
                          cfg["model"]["max_position_embeddings"]),
             "- The transformers model reproduces the bert4keras one within 2e-5 on the "
             "MLM logits (float32, CPU)."]
    if cfg["model"]["application"] == "unilm":
        body.append("- The UniLM (seq2seq) attention mask of the generation head is not "
                    "reproduced in transformers; generate with bert4keras.")
    return "\n".join(header + body) + "\n"


def write_card(out_dir, cfg, n_params, hf_class, facts=None, sentence=False, license="other"):
    path = os.path.join(out_dir, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(cfg, n_params, hf_class, facts, sentence, license))
    return path
