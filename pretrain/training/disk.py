"""The run directory's disk: what a run will write, checked at start, and a
full or read-only disk met later ended in one line.

At start (`check_output`, before TensorFlow builds anything): a file must be
creatable in `--output`, the partial checkpoints a killed run left are
removed (`remove_partial_checkpoints`), and the free space of the output's
filesystem must hold what the run writes (`planned_bytes`): per phase its
`train.keep_checkpoints` checkpoints (weights and optimizer slots,
pretrain/models/costs.py) and its export, one more checkpoint while a save
replaces the oldest, and a margin for TensorBoard, records and run.json.

During the run (`ends_cleanly`, around the trainer's entry points, and
`saving`, around each checkpoint save): an OSError or TensorFlow error that
says the disk is full or read-only becomes an `fs.OutputWriteError` naming
the run dir, the file and the sizes, and the partial save is removed.
"""
import contextlib
import functools
import re

from pretrain import fs
from pretrain.models import costs

# A save in progress: TensorFlow writes CHECKPOINT_temp/part-* and merges it
# into CHECKPOINT.index and .data-* (the CheckpointManager's prefix is "ckpt").
_PARTIAL = re.compile(r"ckpt-\d+_temp$")
MARGIN = 32 << 20  # TensorBoard events, run.json, a smoke run's records
MARGIN_FRACTION = 0.05


def estimated_params(cfg):
    """The parameters the trainer checkpoints (encoder with its MLM head), from
    the config alone: the layers of `models.build` counted by their shapes."""
    m = cfg["model"]
    h, f, V = m["hidden_size"], m["intermediate_size"], m["vocab_size"]
    e = m["embedding_size"] or h
    heads = m["num_attention_heads"]
    inner = heads * (m["attention_head_size"] or h // heads)
    gates = len(m["hidden_act"]) if isinstance(m["hidden_act"], list) else 1
    mapping = e * h + h if e != h else 0
    if m["type"] == "t5s":  # no biases, RMS norms (a scale), relative position buckets
        layer = 4 * h * inner + 2 * h + gates * h * f + f * h
        rest = (V + m["type_vocab_size"]) * e + mapping + h + (
            m["relative_attention_num_buckets"] * heads)
        head = h * e + e + e + V  # MLM dense (biased), its norm's scale, output bias
        return m["num_hidden_layers"] * layer + rest + head
    attention = 3 * (h * inner + inner) + inner * h + h  # query, key, value; output
    layer = attention + gates * (h * f + f) + f * h + h + 2 * 2 * h  # FFN, two norms
    embeddings = (V + m["type_vocab_size"] + m["max_position_embeddings"]) * e
    head = h * e + e + 2 * e + V  # MLM dense, norm, output bias (the embedding is tied)
    pool = h * h + h if m["with_pool"] else 0
    return m["num_hidden_layers"] * layer + embeddings + 2 * e + mapping + head + pool


def checkpoint_bytes(cfg, params=None):
    """One training checkpoint: the fp32 weights and the optimizer's slots."""
    weights, _, slots = costs.state_bytes(cfg, params or estimated_params(cfg), "fp32")
    return weights + slots


def planned_bytes(cfg):
    """What a run of `cfg` writes in its run dir, a little over (see the module doc)."""
    params = estimated_params(cfg)
    phases = len(cfg["train"]["phases"])
    exports = phases * params * 4 * (2 if cfg["model"]["type"] == "t5s" else 1)  # t5s: + h5
    saves = (phases * cfg["train"]["keep_checkpoints"] + 1) * checkpoint_bytes(cfg, params)
    return int((saves + exports) * (1 + MARGIN_FRACTION)) + MARGIN


def _written(output):
    """Bytes of checkpoints and exports already in the run dir (a resume replaces them)."""
    return sum(fs.size(p) for sub in ("checkpoints", "export")
               if fs.isdir(fs.join(output, sub)) for p in fs.walk_files(fs.join(output, sub)))


def check_output(cfg, output, skip_space_check=False):
    """Before TensorFlow builds the model: `output` is writable, a killed run's
    partial checkpoints are gone, and (local paths, unless `skip_space_check`)
    its filesystem has room for `planned_bytes`; else an fs.OutputWriteError."""
    fs.check_writable(output)
    remove_partial_checkpoints(output)
    free = fs.free_bytes(output)
    if skip_space_check or free is None:
        return
    needed = planned_bytes(cfg) - _written(output)
    if needed > free:
        raise fs.OutputWriteError(
            "--output %s: too little disk space: the run needs about %.1f MB (per phase "
            "%d checkpoint(s) of %.1f MB and an export, plus a margin) but its filesystem has "
            "%.1f MB free; free some space, choose another --output, or pass "
            "--skip_space_check to try anyway" % (
                output, needed / 1e6, cfg["train"]["keep_checkpoints"],
                checkpoint_bytes(cfg) / 1e6, free / 1e6))


def remove_partial_checkpoints(output):
    """Delete the `ckpt-N_temp` dirs under OUTPUT/checkpoints/PHASE/ (a save cut
    short, by a kill or a full disk) and nothing else; returns their paths."""
    root = fs.join(output, "checkpoints")
    found = [fs.join(root, phase, name) for phase in (fs.listdir(root) if fs.isdir(root) else [])
             if fs.isdir(fs.join(root, phase)) for name in fs.listdir(fs.join(root, phase))
             if _PARTIAL.match(name) and fs.isdir(fs.join(root, phase, name))]
    for path in found:
        fs.rmtree(path)
    return found


@contextlib.contextmanager
def saving(directory, step, cfg, output):
    """Around the save of checkpoint `step` in `directory`: a refused write
    removes its partial files and raises the OutputWriteError, naming the sizes."""
    try:
        yield
    except Exception as e:
        refused = fs.refused_write(e, output, what="saving checkpoint %s" % fs.join(
            directory, "ckpt-%d" % step), needed=checkpoint_bytes(cfg))
        if refused is None:
            raise
        partial = fs.join(directory, "ckpt-%d_temp" % step)
        if fs.isdir(partial):
            fs.rmtree(partial)
        raise _resumable(refused) from e


def _resumable(refused):
    return fs.OutputWriteError("%s; the partial save is removed: rerun the same command to "
                               "resume from the last checkpoint" % refused)


def ends_cleanly(method):
    """A Trainer method (`self.output_dir`) whose refused writes anywhere (a
    checkpoint, an export, TensorBoard, run.json) raise an OutputWriteError and
    leave no partial checkpoint."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            refused = fs.refused_write(e, self.output_dir)
            if refused is None:
                raise
            if getattr(self, "is_chief", True):
                remove_partial_checkpoints(self.output_dir)
            raise _resumable(refused) from e
    return run
