"""The readers: tf.data pipelines of a task's batches, and their distribution.

`mlm_dataset` reads the records of `pretrain.preprocess` (the files and their
manifest are `records.py`'s). A task's reader takes the *global* batch size
and counts `skip_batches` in global batches; `pipeline_share` says what one
input pipeline of a `tf.distribute.InputContext` reads of that. `distribute`
hands a per-pipeline dataset function to a strategy, stacking micro-batches
when the step accumulates gradients.
"""
import contextlib

import tensorflow as tf
from absl import logging

from pretrain import fs
from pretrain.training import dynamic_masking
from pretrain.data import records
from pretrain.data import tokenization


def pipeline_share(batch_size, skip_batches, input_context):
    """(local batch, pipelines, this pipeline's index, local batches to skip).

    Each of the n input pipelines feeds num_replicas / n replicas a batch of
    the per-replica size per update, so `skip_batches` global batches are
    that many local batches per replica it feeds.
    """
    if input_context is None:
        return batch_size, 1, 0, skip_batches
    pipes = input_context.num_input_pipelines
    per_update = input_context.num_replicas_in_sync // pipes
    return (input_context.get_per_replica_batch_size(batch_size), pipes,
            input_context.input_pipeline_id, skip_batches * per_update)


def distribute(strategy, dataset_fn, accum=None):
    """strategy's per-replica batches of `dataset_fn(input_context)`; with `accum`,
    stacks of `accum` consecutive batches [accum, b, ...] (one update's micro-batches)."""
    def per_pipeline(input_context):
        ds = dataset_fn(input_context)
        if accum:
            ds = ds.batch(accum, drop_remainder=True)
        return ds.prefetch(2)

    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    return strategy.distribute_datasets_from_function(per_pipeline, options)


# ---------------------------------------------------------------- MLM records

def feature_spec(seq_len, max_predictions, masking="static"):
    """tf.io.parse_example's spec of static or dynamic records."""
    sizes = {"L": seq_len, "P": max_predictions, 1: 1}
    features = records.FEATURES if masking == "static" else records.DYNAMIC_FEATURES
    return {name: tf.io.FixedLenFeature([sizes[size]], tf.int64 if kind == "int" else tf.float32)
            for name, size, kind in features}


def dynamic_parse(cfg, manifest, seed, training, first_batch, batches_per_epoch):
    """parse(index, serialized batch) for dynamic records: the batch's epoch
    (from its index in the stream; 0 for eval, whose masks stay fixed) seeds
    its masks. See dynamic_masking.py."""
    data, seq_len = cfg["data"], manifest["seq_len"]
    masker = dynamic_masking.DynamicMasker(
        tokenization.make_tokenizer(tokenization.tokenizer_spec(cfg)), seq_len,
        manifest["max_predictions"], seed, data["masked_lm_prob"], data["mask_token_prob"],
        data["random_token_prob"])
    spec = feature_spec(seq_len, manifest["max_predictions"], "dynamic")

    def parse(index, serialized):
        epoch = ((first_batch + index) // batches_per_epoch if training
                 else tf.constant(0, tf.int64))
        return masker.mask_batch(tf.io.parse_example(serialized, spec), epoch)

    return parse


def _epoch_seed(seed, epoch):
    # A different, reproducible shuffle per epoch (tf int64 arithmetic).
    return seed * 1000003 + epoch * 7919 + 1


# File-level sharding must keep this share of the batches example-level sharding
# gives; below it (few or uneven files) every pipeline reads all files instead.
FILE_SHARDING_KEEP = 0.9


def plan_shards(counts, pipelines, local_batch):
    """(by_file, batches_per_epoch) for `pipelines` input pipelines over shard files
    of `counts` examples, in batches of `local_batch`.

    by_file: pipeline i reads files i, i + n, ... (less I/O); otherwise every
    pipeline reads every file and keeps every n-th example. Either way each
    pipeline yields exactly `batches_per_epoch` batches per epoch, the count of
    the smallest pipeline, so none runs ahead of the others into a new epoch.
    """
    by_example = sum(counts) // pipelines // local_batch
    if len(counts) >= pipelines:
        by_file = min(sum(counts[p::pipelines]) // local_batch for p in range(pipelines))
        if by_file > 0 and by_file >= FILE_SHARDING_KEEP * by_example:
            return True, by_file
    return False, by_example


def mlm_dataset(data_dir, cfg, seq_len, batch_size, split="train", seed=0, skip_batches=0,
                input_context=None, repeat=True, shuffle_buffer=10000, cycle_length=16):
    """Batches of MLM examples with static shapes (drop_remainder=True).

    `batch_size` is the global batch. With a `tf.distribute.InputContext`
    each input pipeline reads its own files, or every n-th example when the
    files do not split evenly enough (`plan_shards`), in batches of the
    per-replica size; every pipeline yields the same batches per epoch.

    Note: TF's seeded shuffles also depend on TF's process-wide seed
    (`tf.random.set_seed`): a resumed run must set the same one, or none, as
    the trainer does. A process-wide seed of exactly 0 makes them fail.

    The order is a function of `seed` alone: files are shuffled and examples
    shuffled within each epoch with a per-epoch seed, and every epoch drops
    its last partial batch. So `skip_batches=k` (global batches already
    consumed) resumes exactly after batch k: whole epochs are skipped by
    arithmetic and only the rest of the current epoch is read and dropped
    (unparsed).
    """
    if split not in ("train", "eval"):
        raise ValueError("split must be 'train' or 'eval', got %r" % (split,))
    manifest = records.check_manifest(records.read_manifest(data_dir, seq_len), cfg, seq_len)
    base = records.seq_dir(data_dir, seq_len)
    shards = [(fs.join(base, s["name"]), s["count"]) for s in manifest[split]["shards"]
              if s["count"] > 0]
    local_batch, n_pipes, pipe, skip = pipeline_share(batch_size, skip_batches, input_context)
    shard_files, batches_per_epoch = plan_shards([c for _, c in shards], n_pipes, local_batch)
    if batches_per_epoch == 0:
        raise records.ManifestError(
            "%s: the %s split has %d examples for %d input pipeline(s), fewer than one batch "
            "of %d each" % (manifest["path"], split, manifest[split]["examples"], n_pipes,
                            local_batch))
    if n_pipes > 1:
        logging.info("%s split, input pipeline %d of %d: %s, %d batches of %d per epoch",
                     split, pipe + 1, n_pipes, "%d of %d shard files" % (
                         len(shards[pipe::n_pipes]), len(shards)) if shard_files else
                     "1 example in %d from all %d shard files (too few or uneven files to "
                     "split)" % (n_pipes, len(shards)), batches_per_epoch, local_batch)
    if shard_files:
        shards = shards[pipe::n_pipes]
    files = [f for f, _ in shards]
    compression = "GZIP" if manifest["compression"] == "gzip" else ""
    spec = feature_spec(seq_len, manifest["max_predictions"])
    training = split == "train"

    def one_epoch(epoch):
        epoch_seed = _epoch_seed(seed, epoch)
        ds = tf.data.Dataset.from_tensor_slices(files)
        if training:
            ds = ds.shuffle(len(files), seed=epoch_seed)
        ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
                           cycle_length=min(cycle_length, len(files)), block_length=1,
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if not shard_files:
            ds = ds.shard(n_pipes, pipe)
        if training:
            ds = ds.shuffle(shuffle_buffer, seed=epoch_seed)
        # the same count on every pipeline: replicas stay in step, resumes exact
        return ds.batch(local_batch, drop_remainder=True).take(batches_per_epoch)

    first_epoch, within = divmod(skip, batches_per_epoch)
    ds = one_epoch(tf.constant(first_epoch, tf.int64)).skip(within)
    if repeat:
        ds = ds.concatenate(tf.data.Dataset.range(first_epoch + 1, 2 ** 62).flat_map(one_epoch))
    elif first_epoch > 0:
        ds = ds.take(0)

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        return {name: tf.cast(parsed[name], tf.int32 if kind == "int" else tf.float32)
                for name, _, kind in records.FEATURES}

    if records.masking_mode(manifest) == "dynamic":  # batch index -> epoch -> masks
        parse = dynamic_parse(cfg, manifest, seed, training, skip, batches_per_epoch)
        ds = ds.enumerate()
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


@contextlib.contextmanager
def naming_damaged_shards(data_dir, seq_len):
    """Reading `data_dir`'s records: tf.data's DataLossError names no file, so
    on one the shards of `seq_len` are checked against their manifest and the
    damaged ones named in a one-line DamagedShardError."""
    try:
        yield
    except tf.errors.DataLossError:
        if not fs.exists(fs.join(records.seq_dir(data_dir, seq_len), records.MANIFEST)):
            raise  # not a records dir: another task's data
        checked, bad = records.verify_dir(data_dir, [seq_len])
        if not bad:
            raise
        raise records.damaged_error(data_dir, bad, checked) from None


def distributed_dataset(strategy, task, phase, cfg, split, start_step, accum):
    """Per-replica stacks of `accum` micro-batches, resuming after start_step updates.

    With accum=None the elements are plain batches (eval).
    """
    batch_size = cfg["train"]["batch_size"]
    seed = cfg["train"]["seed"]

    def dataset_fn(input_context):
        # the task's datasets take the global batch and count global batches
        return task.dataset(phase["seq_len"], batch_size, split, seed,
                            start_step * (accum or 1), input_context)

    return distribute(strategy, dataset_fn, accum)
