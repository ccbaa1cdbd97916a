"""What a model costs to train: forward FLOPs, and memory per replica.

TensorFlow-free at import. The FLOP counts are analytic (matmuls only) and follow what `build.mlm_model`
computes. The memory plan is analytic too: per replica it adds

- weights: the fp32 variables (under mixed bf16 also a bf16 copy for compute);
- gradients: two fp32 copies (the sum over micro-batches and the one being
  computed, `step.make_replica_step`);
- optimizer slots: LAMB and AdamW keep m and v per weight (`training/optim.py`);
- activations: what the backward pass keeps per sequence of a micro-batch
  (`activation_elements`), times the micro-batch.

The activation count lists the tensors a transformer layer saves for its
gradient; XLA fuses some of them away, so it is an upper estimate.
tests/test_memory_plan.py checks its slope (bytes per extra sequence) against
the measured peak RSS of a real train step on the CPU.
"""
import collections
import math

from pretrain.config import max_predictions_for
from pretrain.runtime import devices, hardware

GRADIENT_COPIES = 2
OPTIMIZER_SLOTS = {"lamb": 2, "adamw": 2}


# ---------------------------------------------------------------- FLOPs

def _layer_flops(cfg, seq_len):
    """Forward FLOPs of one transformer layer: (per position for keys and
    values, per query row for everything else)."""
    m = cfg["model"]
    h, ff = m["hidden_size"], m["intermediate_size"]
    inner = m["num_attention_heads"] * (m["attention_head_size"] or h // m["num_attention_heads"])
    n_in = len(m["hidden_act"]) if isinstance(m["hidden_act"], list) else 1
    kv = 2 * 2 * h * inner
    row = 2 * 2 * h * inner + 2 * (n_in + 1) * h * ff + 2 * 2 * seq_len * inner
    return kv, row


def flops_per_token(cfg, seq_len):
    """Forward multiply-adds x2 per token: encoder, and the MLM head per prediction.

    Counts matmuls only (embedding lookups, norms, softmax are negligible).
    Attention adds 2 * 2 * seq_len * heads * head_size per layer (QK^T and AV).
    A training step costs about 3x the forward.
    """
    m = cfg["model"]
    h, e = m["hidden_size"], m["embedding_size"] or m["hidden_size"]
    mapping = 2 * e * h if e != h else 0
    encoder = m["num_hidden_layers"] * sum(_layer_flops(cfg, seq_len)) + mapping
    head = 2 * (h * e + e * m["vocab_size"])
    return encoder, head


def mlm_flops_per_sequence(cfg, seq_len, predictions, sparse=True):
    """Forward FLOPs of one sequence for the MLM loss.

    sparse: what `mlm_model` computes (see `build.masked_hidden`): the vocabulary
    head, and for encoder models the last layer's queries, output projection,
    attention rows and FFN, on the P masked rows only. Otherwise: every
    position everywhere, as a full-sequence MLM head does.
    """
    # lazy: TensorFlow; the plan and the FLOP counts import without it (fast --help)
    from pretrain.models import build
    encoder, head = flops_per_token(cfg, seq_len)
    if not sparse:
        return seq_len * (encoder + head)
    if not build.sparse_last_layer(cfg):
        return seq_len * encoder + predictions * head
    row = _layer_flops(cfg, seq_len)[1]
    return seq_len * (encoder - row) + predictions * (row + head)


# ---------------------------------------------------------------- memory

def head_rows(cfg, seq_len):
    """Rows the vocabulary head scores per sequence: the masked positions for
    MLM, every position for any other task (a seq2seq loss such as UniLM's
    scores them all: the safe bound)."""
    if cfg["data"]["task"] == "mlm":
        return max_predictions_for(cfg, seq_len)
    return seq_len


def activation_elements(cfg, seq_len):
    """(elements in the compute dtype, elements always fp32) kept per sequence.

    Per layer: the input and output of each matmul, the residual sums and
    layer norms, the GELU's input and output, the dropout masks; the attention
    scores and probabilities (fp32: softmax runs in fp32 under mixed precision)
    and their dropout mask and dropped copy. Then the embeddings, and the
    vocabulary head's logits (compute dtype, then fp32 twice: the cast and the
    softmax's gradient).
    """
    m = cfg["model"]
    h, L, f, a = m["hidden_size"], seq_len, m["intermediate_size"], m["num_attention_heads"]
    e = m["embedding_size"] or h
    d = a * (m["attention_head_size"] or h // a)
    n_in = len(m["hidden_act"]) if isinstance(m["hidden_act"], list) else 1
    per_layer = L * (7 * h + 4 * d + (n_in + 1) * f) + 2 * a * L * L
    per_layer_fp32 = 2 * a * L * L
    rows, V = head_rows(cfg, seq_len), m["vocab_size"]
    compute = (m["num_hidden_layers"] * per_layer + L * (2 * e + 3 * h)
               + rows * (2 * h + 2 * e + V))
    fp32 = m["num_hidden_layers"] * per_layer_fp32 + 2 * rows * V
    return compute, fp32


Plan = collections.namedtuple(
    "Plan", "device precision phase seq_len weights gradients slots activation_per_seq "
    "micro_batch activations total fits max_micro_batch accum_micro_batch accum_steps "
    "global_batch usable")


def activation_bytes(cfg, seq_len, precision):
    compute, fp32 = activation_elements(cfg, seq_len)
    return compute * (2 if precision == "bf16" else 4) + fp32 * 4


def state_bytes(cfg, params, precision):
    """(weights, gradients, optimizer slots) in bytes per replica."""
    weights = params * 4 + (params * 2 if precision == "bf16" else 0)
    slots = OPTIMIZER_SLOTS[cfg["train"]["optimizer"]] * params * 4
    return weights, GRADIENT_COPIES * params * 4, slots


def accumulation(per_replica, largest):
    """(micro-batch, accumulation steps): the fewest steps whose equal
    micro-batches, each at most `largest`, add up to `per_replica` sequences."""
    if largest < 1:
        return 0, 0
    steps = max(1, int(math.ceil(per_replica / float(largest))))
    while per_replica % steps:
        steps += 1
    return per_replica // steps, steps


def plan(cfg, params, device, phase, precision="fp32", replicas=None, memory=None):
    """The memory Plan of `phase` (a `train.phases` entry) per replica of
    `device` (a `devices.Device`); replicas/memory override the table's."""
    replicas = replicas or device.replicas
    memory = memory if memory is not None else device.memory_per_replica
    train = cfg["train"]
    seq_len = phase["seq_len"]
    weights, grads, slots = state_bytes(cfg, params, precision)
    per_seq = activation_bytes(cfg, seq_len, precision)
    micro = max(1, train["batch_size"] // replicas)
    fixed = weights + grads + slots
    total = fixed + micro * per_seq
    usable = int(memory * devices.USABLE_FRACTION) if memory else None
    largest = int((usable - fixed) // per_seq) if usable else None
    global_batch = train["batch_size"] * train["grad_accum_steps"]
    per_replica = max(1, global_batch // replicas)
    micro_fit, steps = accumulation(per_replica, largest) if usable else (None, None)
    return Plan(device.name, precision, phase["name"], seq_len, weights, grads, slots, per_seq,
                micro, micro * per_seq, total, usable is None or total <= usable, largest,
                micro_fit, steps, global_batch, usable)


def plans(cfg, params, device, precisions=("fp32", "bf16"), replicas=None, memory=None):
    """A Plan per phase and precision."""
    return [plan(cfg, params, device, phase, p, replicas, memory)
            for phase in cfg["train"]["phases"] for p in precisions]


def _mb(n):
    return "%.1f MB" % (n / 1e6)


def format_plans(cfg, params, device, items):
    """The plans as text lines (model_summary --device)."""
    train = cfg["train"]
    lines = ["%s on %s: %d replica(s), %s per replica (%s usable), global batch %d "
             "(batch_size %d x grad_accum_steps %d)" % (
                 cfg["name"], device.name, device.replicas,
                 _mb(device.memory_per_replica) if device.memory_per_replica else "?",
                 _mb(items[0].usable) if items[0].usable else "?",
                 items[0].global_batch, train["batch_size"], train["grad_accum_steps"])]
    lines.append("  %s parameters: weights %s fp32, gradients %s, optimizer slots %s (%s)" % (
        format(params, ","), _mb(items[0].weights), _mb(items[0].gradients), _mb(items[0].slots),
        train["optimizer"]))
    for p in items:
        lines.append(
            "  %-16s seq %-4d %-4s activations %s/seq x micro-batch %d = %s; total %s%s" % (
                p.phase, p.seq_len, p.precision, _mb(p.activation_per_seq), p.micro_batch,
                _mb(p.activations), _mb(p.total), "" if p.fits else "  DOES NOT FIT"))
        if p.max_micro_batch is not None:
            lines.append("  %-16s largest micro-batch %d per replica; for global batch %d: "
                         "micro-batch %d x accum %d x %d replica(s)" % (
                             "", p.max_micro_batch, p.global_batch, p.accum_micro_batch,
                             p.accum_steps, device.replicas))
    return lines


def markdown_rows(cfg, params, device, items):
    """One Markdown table row per plan (docs/selftest.md)."""
    return ["| %s | %s | %s | %d | %s | %s | %s | %s | %d x %d |" % (
        cfg["name"], device.name, p.phase, p.seq_len, p.precision,
        _mb(p.weights + p.gradients + p.slots), _mb(p.activation_per_seq),
        p.max_micro_batch, p.accum_micro_batch, p.accum_steps) for p in items]


def over_memory_warning(cfg, phase, params, replicas, precision, device=None):
    """The warning a run prints before compiling `phase` when its plan per
    replica exceeds this machine's accelerator (`devices.from_hardware`), naming
    the micro-batch that would fit; None when it fits or the device is unknown."""
    device = device or devices.from_hardware(hardware.detect_hardware())
    if device is None or not device.memory_per_replica:
        return None
    p = plan(cfg, params, device, phase, precision, replicas=replicas)
    if p.fits:
        return None
    fix = ("even a micro-batch of 1 does not fit" if p.max_micro_batch < 1 else
           "a micro-batch of at most %d per replica fits: for the same global batch %d, "
           "--set train.batch_size=%d --set train.grad_accum_steps=%d" % (
               p.max_micro_batch, p.global_batch, p.accum_micro_batch * replicas,
               p.accum_steps))
    return ("memory plan: phase %s (seq %d, %s) needs about %s per replica at micro-batch %d "
            "(weights, gradients and optimizer slots %s, activations %s) but %s has %s usable "
            "per replica; %s (python -m pretrain.model_summary --config %s --device %s)" % (
                p.phase, p.seq_len, precision, _mb(p.total), p.micro_batch,
                _mb(p.weights + p.gradients + p.slots), _mb(p.activations), device.name,
                _mb(p.usable), fix, cfg["name"], device.name))
