"""`python -m pretrain.finetune`: fine-tune an export on a classification or
sentence-pair task, score it on dev/test, and compare it with baselines.

    python -m pretrain.finetune --model runs/tiny/export/phase1_seq128 --task pair \\
        --train train.tsv --dev dev.tsv --test test.tsv --output runs/ft --baselines

The model is what a bert4keras user builds: `build_transformer_model(config,
checkpoint)` from the export, the last hidden state of the first token
([CLS]; the first token of a T5s too), dropout and a softmax layer. Training
reuses the pretraining trainer's strategy and compiled step
(`strategy.make_strategy`, `step.make_replica_step`, `make_train_loop`; XLA on one
device), with AdamW from `pretrain.training.optim` (bias-corrected, weight decay 0.01
except norms and biases, global-norm clip 1.0) and warmup then linear decay.
Shapes are static: sequences padded to --maxlen, train batches full (the
remainder of a shuffled epoch is dropped), the last dev/test batch padded.

After every epoch dev is scored; the best dev accuracy's weights are kept and
written to OUTPUT/model in the export layout (bert_config.json, vocab.txt,
bert_model.ckpt with `classifier/kernel` and `classifier/bias` beside the
encoder's names, pretrain_export.json with the labels), so bert4keras's
`build_transformer_model` loads the encoder and `load_finetuned` the whole
classifier. OUTPUT also gets metrics.json, predictions_{dev,test}.tsv and
TensorBoard events (tensorboard/{train,dev}). Weights, batch order and
dropout masks derive from --seed: on a CPU a run is repeatable exactly.
"""
import json
import os

import numpy as np
import tensorflow as tf
from tqdm import tqdm
from bert4keras.backend import keras

from pretrain import fs
from pretrain.export import checkpoints
from pretrain.models import dropout
from pretrain.export import writer as export
from pretrain.export import check as export_check
from pretrain.finetune import baselines as finetune_baselines
from pretrain.finetune import data as finetune_data
from pretrain.training import inputs
from pretrain.models import build as models
from pretrain.training import optim
from pretrain.training import tasks
from pretrain.training import step as train_step
from pretrain.runtime.strategy import use_xla
from pretrain.config import ConfigError
from pretrain.errors import TrainingError

BASELINES = ("majority", "tfidf_lr", "random_init")
CLIP_NORM = 1.0
WEIGHT_DECAY = 0.01


# ---------------------------------------------------------------- model

def build_classifier(model_dir, num_labels, dropout_rate=0.1, seed=0, random_init=False):
    """(bert4keras model object, Keras model [ids, segs] -> logits).

    model_dir: an export or a fine-tuned OUTPUT/model; with random_init the
    same architecture freshly initialised (seeded) instead of its weights.
    """
    kwargs = {k: v for k, v in export_check.load_kwargs(model_dir).items()
              if k not in ("with_mlm", "with_pool", "application")}  # a plain encoder
    config = os.path.join(model_dir, checkpoints.CONFIG_NAME)
    bert = models.build_transformer(
        config, None if random_init else os.path.join(model_dir, checkpoints.CKPT_NAME),
        return_keras_model=False, **kwargs)
    if random_init:
        with open(config) as f:
            models.reinitialize(bert, seed, json.load(f)["initializer_range"])
    x = keras.layers.Lambda(lambda h: h[:, 0], name="CLS-token")(bert.model.output)
    x = dropout.StepSeededDropout(dropout_rate, name="Classifier-Dropout")(x)
    logits = keras.layers.Dense(
        num_labels, name="Classifier",
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02, seed=seed))(x)
    return bert, keras.Model(bert.model.inputs, logits)


def load_finetuned(model_dir):
    """(Keras model [ids, segs] -> logits, info) of a saved OUTPUT/model."""
    info = export.read_info(model_dir)
    if not info or "finetune" not in info:
        raise ConfigError("%s is not a fine-tuned model (no finetune entry in %s)"
                          % (model_dir, checkpoints.INFO_NAME))
    _, model = build_classifier(model_dir, len(info["finetune"]["labels"]))
    reader = tf.train.load_checkpoint(os.path.join(model_dir, checkpoints.CKPT_NAME))
    model.get_layer("Classifier").set_weights([reader.get_tensor("classifier/kernel"),
                                               reader.get_tensor("classifier/bias")])
    return model, info


def save_finetuned(bert, model, source, out_dir, info):
    """OUTPUT/model: the export layout plus the classifier (see module doc)."""
    staging = out_dir + ".partial"
    if fs.exists(staging):
        fs.rmtree(staging)
    fs.makedirs(staging)
    kernel, bias = model.get_layer("Classifier").get_weights()
    checkpoints.save_checkpoint(bert, staging,
                                {"classifier/kernel": kernel, "classifier/bias": bias})
    for name in (checkpoints.CONFIG_NAME, "vocab.txt"):
        fs.copy(os.path.join(source, name), os.path.join(staging, name))
    base = export.read_info(source) or {}
    kwargs = {k: v for k, v in base.get("build_transformer_model", {}).items()
              if k not in ("with_mlm", "with_pool", "application")}
    full = {"config": base.get("config"), "build_transformer_model": kwargs,
            "do_lower_case": base.get("do_lower_case", True), "finetune": info}
    export._write_info(staging, full)
    export._move_dir(staging, out_dir)


# ---------------------------------------------------------------- data

class ClassifierTask(tasks.Task):
    """The `tasks.Task` of fine-tuning: weighted cross-entropy sums over labels.

    Its model is built by `build_classifier` and its batches come from
    `train_dataset` (this command runs the compiled step itself, with no
    config and no Trainer), so it fills in the step's part of the interface.
    """

    metrics = ("accuracy",)

    def __init__(self, model):
        super(ClassifierTask, self).__init__(None, None)
        self.model = model

    @staticmethod
    def denominator(batch):
        return tf.reduce_sum(batch["weights"])

    def loss_sums(self, batch, training):
        logits = self.model([batch["input_ids"], batch["segment_ids"]], training=training)
        loss, sums = tasks.masked_lm_sums(logits, batch["labels"], batch["weights"])
        return loss, {"accuracy": sums["mlm_acc"]}


def _distribute(strategy, arrays, global_batch, accum_axis):
    """Per-replica slices of consecutive global batches of `arrays`."""
    def dataset_fn(ctx):
        ds = tf.data.Dataset.from_tensor_slices(arrays)
        ds = ds.batch(ctx.get_per_replica_batch_size(global_batch), drop_remainder=True)
        if ctx.num_input_pipelines > 1:
            ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        return ds

    return inputs.distribute(strategy, dataset_fn, 1 if accum_axis else None)


def train_dataset(strategy, data, batch_size, epochs, seed):
    """Every epoch a fresh seeded shuffle, the last partial batch dropped."""
    n = len(data["labels"])
    steps = n // batch_size
    rng = np.random.RandomState(seed)
    order = np.concatenate([rng.permutation(n)[:steps * batch_size] for _ in range(epochs)])
    arrays = {k: v[order] for k, v in data.items()}
    arrays["weights"] = np.ones(len(order), np.float32)
    return _distribute(strategy, arrays, batch_size, True), steps


def make_predict(strategy, model, batch_size, xla):
    """predict(data) -> [n, labels] probabilities, in the order of `data`."""
    def replica(batch):
        logits = model([batch["input_ids"], batch["segment_ids"]], training=False)
        return tf.nn.softmax(tf.cast(logits, tf.float32)), batch["index"]

    step = tf.function(replica, jit_compile=True) if xla else replica

    @tf.function
    def host(batch):
        probs, index = strategy.run(step, args=(batch,))
        return strategy.gather(probs, 0), strategy.gather(index, 0)

    def predict(data):
        n = len(data["labels"])
        pad = -n % batch_size  # the last batch is padded with copies of row 0
        rows = np.concatenate([np.arange(n), np.zeros(pad, np.int64)])
        arrays = {"input_ids": data["input_ids"][rows], "segment_ids": data["segment_ids"][rows],
                  "index": np.where(np.arange(len(rows)) < n, rows, -1).astype(np.int32)}
        out = np.zeros((n, model.output_shape[-1]), np.float32)
        for batch in _distribute(strategy, arrays, batch_size, False):
            probs, index = (t.numpy() for t in host(batch))
            out[index[index >= 0]] = probs[index >= 0]
        return out

    return predict


# ---------------------------------------------------------------- training

def _optimizer(args, strategy, variables, total):
    """AdamW over `total` updates: warmup, then linear decay to 0."""
    schedule = optim.WarmupLinearDecay(args["learning_rate"], total,
                                       warmup_steps=int(args["warmup_proportion"] * total))
    with strategy.scope():
        optimizer = optim.AdamW(schedule, weight_decay=WEIGHT_DECAY, bias_correction=True,
                                clip_norm=CLIP_NORM)
        optimizer._create_all_weights(variables)  # eagerly, as the trainer does
    return optimizer


def _summaries(writers, epoch, steps, losses, lr, dev):
    """One epoch in TensorBoard: the loss per update, the lr, the dev scores."""
    with writers["train"].as_default():
        for i, value in enumerate(losses):
            tf.summary.scalar("loss", value, step=(epoch - 1) * steps + i + 1)
        tf.summary.scalar("learning_rate", float(lr), step=epoch * steps)
    with writers["dev"].as_default():
        for k, v in dev.items():
            tf.summary.scalar(k, v, step=epoch * steps)


def _epoch(loop, iterator, steps, title):
    """One epoch of `steps` updates in host calls of about a twentieth of it, with
    a progress bar; returns the per-update losses, the metric sums, the last
    learning rate."""
    chunk, done, losses, sums = max(1, -(-steps // 20)), 0, [], {}
    with tqdm(total=steps, desc=title, unit="step", leave=False) as bar:
        while done < steps:
            n = min(chunk, steps - done)
            part, _, part_sums, lr = loop(iterator, tf.constant(n))
            losses.append(part.numpy())
            for k, v in part_sums.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            done += n
            bar.update(n)
    return np.concatenate(losses), sums, lr


def fit(args, strategy, data, source, out_dir, random_init=False, log=print):
    """Train, keep the best dev epoch, score dev/test with it; returns the result dict.

    args: the settings (the flags of `python -m pretrain.finetune`); data: {"labels": [...],
    split: encoded arrays, split + "_examples": [Example]}.
    """
    labels = data["labels"]
    xla = use_xla(strategy, args.get("xla"))
    with strategy.scope():
        bert, model = build_classifier(source, len(labels), args["dropout"], args["seed"],
                                       random_init)
    task = ClassifierTask(model)
    variables = model.trainable_variables
    batches, steps = train_dataset(strategy, data["train"], args["batch_size"],
                                   args["epochs"], args["seed"])
    if steps == 0:
        raise ConfigError("--batch_size %d is larger than the %d train examples" % (
            args["batch_size"], len(data["train"]["labels"])))
    optimizer = _optimizer(args, strategy, variables, steps * args["epochs"])
    compiled = xla or isinstance(strategy, tf.distribute.TPUStrategy)
    loop = train_step.make_train_loop(strategy, train_step.make_replica_step(
        task, optimizer, variables, args["seed"], dropout.rng_alg(compiled)), task.metrics, xla)
    predict = make_predict(strategy, model, args["batch_size"], xla)
    writers = {s: tf.summary.create_file_writer(os.path.join(out_dir, "tensorboard", s))
               for s in ("train", "dev")}
    iterator = iter(batches)
    best, history = None, []
    for epoch in range(1, args["epochs"] + 1):
        losses, sums, lr = _epoch(loop, iterator, steps, "%sepoch %d/%d" % (
            "random init " if random_init else "", epoch, args["epochs"]))
        if not np.all(np.isfinite(losses)):
            raise TrainingError("the loss became %s in epoch %d; lower --learning_rate"
                                      % (losses[~np.isfinite(losses)][0], epoch))
        probs = predict(data["dev"])
        dev = finetune_baselines.scores(data["dev"]["labels"], probs.argmax(-1))
        row = {"epoch": epoch, "train_loss": float(losses.mean()),
               "train_accuracy": float(sums["accuracy"]) / steps, "dev": dev}
        history.append(row)
        _summaries(writers, epoch, steps, losses, lr, dev)
        log("%sepoch %d/%d: train loss %.4f accuracy %.4f | dev accuracy %.4f macro_f1 %.4f" % (
            "random init " if random_init else "", epoch, args["epochs"], row["train_loss"],
            row["train_accuracy"], dev["accuracy"], dev["macro_f1"]))
        if best is None or dev["accuracy"] > best[0]:
            best = (dev["accuracy"], epoch, [w.numpy() for w in model.weights])
            save_finetuned(bert, model, source, os.path.join(out_dir, "model"), {
                "task": args["task"], "labels": labels, "maxlen": args["maxlen"],
                "epoch": epoch, "dev": dev, "random_init": random_init})
    for w in writers.values():
        w.flush()
    _, best_epoch, weights = best
    for w, value in zip(model.weights, weights):
        w.assign(value)
    result = {"best_epoch": best_epoch, "epochs": history, "steps_per_epoch": steps,
              "xla": xla, "replicas": strategy.num_replicas_in_sync}
    for split in ("dev", "test"):
        if split in data:
            probs = predict(data[split])
            result[split] = finetune_baselines.scores(data[split]["labels"], probs.argmax(-1))
            write_predictions(os.path.join(out_dir, "predictions_%s.tsv" % split),
                              data[split + "_examples"], labels, probs)
    return result


def write_predictions(path, examples, labels, probs):
    """One row per example: where, gold, predicted, then p(label) per label."""
    with fs.open(path, "w") as f:
        f.write("\t".join(["where", "label", "prediction"] + ["p_" + l for l in labels]) + "\n")
        for e, p in zip(examples, probs):
            f.write("\t".join([e.where, e.label, labels[int(np.argmax(p))]]
                              + ["%.6f" % x for x in p]) + "\n")


def load_data(args, log=print):
    """Read and encode the splits (see `fit` for the layout)."""
    for split in ("train", "dev", "test"):
        if args.get(split) and not fs.exists(args[split]):
            raise finetune_data.DataError("--%s %s: no such file" % (split, args[split]))
    info = export.read_info(args["model"])
    if info is None:
        raise ConfigError("--model %s: not an export (no %s there; make one with "
                          "`python -m pretrain.export`)" % (args["model"], checkpoints.INFO_NAME))
    with fs.open(os.path.join(args["model"], checkpoints.CONFIG_NAME)) as f:
        positions = json.load(f).get("max_position_embeddings")
    if positions and args["maxlen"] > positions:
        raise ConfigError("--maxlen %d is longer than the model's max_position_embeddings %d"
                          % (args["maxlen"], positions))
    declared = args.get("labels")
    train_examples, skipped = finetune_data.read_examples(
        args["train"], args["task"], args["max_bad_fraction"],
        set(declared) if declared else None, log, declared=bool(declared))
    labels = list(declared) if declared else finetune_data.label_list(train_examples)
    if len(labels) < 2:
        raise finetune_data.DataError("%s: one label only (%s); a classifier needs two or more"
                                      % (args["train"], labels[0]))
    label_ids = {l: i for i, l in enumerate(labels)}
    tokenizer = finetune_data.make_tokenizer(args["model"], info.get("do_lower_case", True))
    data = {"labels": labels, "skipped": {"train": skipped}}
    for split in ("train", "dev", "test"):
        if not args.get(split):
            continue
        if split != "train":
            examples, data["skipped"][split] = finetune_data.read_examples(
                args[split], args["task"], args["max_bad_fraction"], set(labels), log,
                declared=bool(declared))
        else:
            examples = train_examples
        data[split] = finetune_data.encode(examples, tokenizer, args["maxlen"], label_ids)
        data[split + "_examples"] = examples
        _log_split(split, args[split], data[split]["labels"], labels, data["skipped"][split], log)
    if not declared:
        for warning in finetune_data.label_warnings(train_examples, {
                s: (args[s], data[s + "_examples"]) for s in ("dev", "test") if s in data}):
            log("warning: " + warning)
    return data


def _log_split(split, path, label_ids, labels, skipped, log):
    """One line per split: examples, each label's count, the bad lines skipped."""
    counts = np.bincount(label_ids, minlength=len(labels))
    log("%s: %d examples from %s; labels %s; %d bad lines skipped%s" % (
        split, len(label_ids), path, ", ".join("%s %d" % (l, c) for l, c in zip(labels, counts)),
        sum(skipped.values()), " (%s)" % ", ".join("%s %d" % kv for kv in sorted(
            skipped.items())) if skipped else ""))


def run(args, strategy=None, log=print):
    """The whole command for a settings dict; returns what metrics.json holds."""
    data = load_data(args, log)
    strategy = strategy or tf.distribute.get_strategy()
    out = args["output"]
    fs.makedirs(out)
    result = {"settings": args, "labels": data["labels"],
              "examples": {s: len(data[s]["labels"]) for s in ("train", "dev", "test") if s in data},
              "model": fit(args, strategy, data, args["model"], out, log=log)}
    if args.get("baselines"):
        result["baselines"] = run_baselines(args, strategy, data, log)
    with fs.open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
    report(result, log)
    return result


def run_baselines(args, strategy, data, log=print):
    splits = [s for s in ("dev", "test") if s in data]
    train_y = data["train"]["labels"]
    out = {}
    predicted = {"majority": finetune_baselines.majority(
        train_y, {s: data[s]["labels"] for s in splits})}
    predicted["tfidf_lr"], c = finetune_baselines.tfidf_lr(
        data["train_examples"], train_y,
        {s: (data[s + "_examples"], data[s]["labels"]) for s in splits}, args["seed"])
    for name, by_split in predicted.items():
        out[name] = {s: finetune_baselines.scores(data[s]["labels"], by_split[s][0])
                     for s in splits}
    out["tfidf_lr"]["C"] = c
    out["random_init"] = fit(args, strategy, data, args["model"],
                             os.path.join(args["output"], "random_init"), random_init=True,
                             log=log)
    return out


def report(result, log=print):
    """The `SPLIT accuracy:` / `SPLIT macro_f1:` lines, then the baselines table."""
    model = result["model"]
    for split in ("dev", "test"):
        if split in model:
            for k in ("accuracy", "macro_f1"):
                log("%s %s: %.4f" % (split, k, model[split][k]))
    if "baselines" not in result:
        return
    splits = [s for s in ("dev", "test") if s in model]
    log("%-24s %s" % ("", "  ".join("%8s %8s" % (s + " acc", s + " F1") for s in splits)))
    rows = [("fine-tuned", model)] + [(n, result["baselines"][n]) for n in BASELINES]
    for name, r in rows:
        log("%-24s %s" % (name, "  ".join("%8.4f %8.4f" % (r[s]["accuracy"], r[s]["macro_f1"])
                                           for s in splits)))
