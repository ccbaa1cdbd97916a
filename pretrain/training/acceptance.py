"""The selftest's work (`python -m pretrain.selftest`): a fixed workload on
this machine's accelerator, checked against the host CPU.

The workload: roberta_tiny on the shipped sample (data/sample/), seed 12345,
one phase at seq 128 with dropout off (so a loss depends only on the weights
and the batch, the same on every device), `steps` updates of LAMB (peak rate
5e-3 after 5 warmup updates) at the micro-batch the memory plan picks. It runs, through the project's own
trainer, reader and export:

1. the host reference: the first `REFERENCE_STEPS` updates in fp32 on the CPU,
   without XLA, one intra-op thread, in a child process that sees no GPU and
   runs before this process initialises the accelerator;
2. the device run in fp32; its first losses must equal the reference's within
   `FP32_RTOL` (set from the CPU-vs-CPU noise, see below);
3. the device run in its precision (bf16 where the device has it natively);
   its final loss must stay within `PRECISION_RTOL` of the fp32 run's;
4. speed (sequences/s, model TFLOP/s, MFU) of run 3's updates after the
   first host call (which compiles), and the reader's sequences/s alone;
5. a checkpoint of run 2 restored into a fresh model (weights identical), and
   the export's bert4keras reload check (export/check.py, via publish_export).

Tolerances. The CPU-vs-CPU noise of these losses was measured here: this
reference (1 thread, no XLA) against the XLA step on 2 threads, 5 updates of
batch 8: max relative difference 2.9e-7 (fp32 rounding in different op orders).
FP32_RTOL = 1e-4 is about 350x that; wrong weights (noise of standard
deviation 0.01 on the word embeddings) gave 2.3e-3 over the same 5 updates.
bf16 keeps 8 bits of mantissa: PRECISION_RTOL = 0.02 on the mean of the last
5 losses after 20 updates (docs/selftest.md has the difference measured).
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from pretrain.config import load_config, max_predictions_for
from pretrain.errors import TrainingError
from pretrain.data import preprocess
from pretrain.export import check as export_check
from pretrain.export import checkpoints
from pretrain.export import writer
from pretrain.models import build as models
from pretrain.models import costs
from pretrain.runtime import devices
from pretrain.runtime.strategy import choose_precision, make_strategy
from pretrain.training import trainer as train
from pretrain.training.tasks import MlmTask

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, "data", "sample", "clue_small.txt")
SEQ_LEN = 128
REFERENCE_STEPS = 5
FP32_RTOL = 1e-4
PRECISION_RTOL = 0.02
# A test's way to make the device side wrong on purpose: Gaussian noise of
# this standard deviation is added to the word embeddings of the device runs
# (never the host reference). Not a constant: the embedding LayerNorm and the
# softmax of the tied MLM head would cancel it.
PERTURB_ENV = "PRETRAIN_SELFTEST_PERTURB"


def workload(micro_batch, steps, replicas=1):
    """The selftest's config: roberta_tiny, one phase at seq 128, no dropout."""
    phase = {"name": "selftest", "seq_len": SEQ_LEN, "steps": steps, "warmup_steps": 5,
             "learning_rate": 5e-3}
    return load_config("roberta_tiny", smoke=True, overrides=[
        "train.phases=%s" % json.dumps([phase]), "model.hidden_dropout_prob=0",
        "model.attention_probs_dropout_prob=0", "train.eval_steps=0",
        "train.grad_accum_steps=1", "train.batch_size=%d" % (micro_batch * replicas),
        "train.log_every=5", "train.save_every=%d" % steps, "train.keep_checkpoints=1",
        "train.seed=12345"])


def make_records(cfg, out_dir):
    """The sample preprocessed at seq 128 (the project's preprocessing)."""
    preprocess.run(cfg, [SAMPLE], out_dir, seq_lens=[SEQ_LEN], workers=1,
                   seed=cfg["train"]["seed"], replace=True, progress=False)
    return out_dir


def train_run(cfg, records, output, strategy=None, precision="fp32", xla=None,
              max_steps=None, perturb=0.0):
    """(trainer, losses per update, export dir or None) of one run of the workload."""
    trainer = train.Trainer(cfg, MlmTask(cfg, records), output, strategy=strategy,
                            steps_per_loop=5,
                            precision=precision, xla=xla)
    if perturb:
        table = trainer.bundle.bert.layers["Embedding-Token"].embeddings
        table.assign_add(float(perturb) * tf.random.stateless_normal(table.shape, [1, 2]))
    export = trainer.run_phase(0, max_steps=max_steps)
    return trainer, [loss for _, _, loss in trainer.history], export


def reference(records, out_json, micro_batch, steps):
    """The host reference, in this process (the child): fp32, CPU, no XLA."""
    tf.config.threading.set_intra_op_parallelism_threads(1)
    cfg = workload(micro_batch, steps)
    with tf.device("/CPU:0"):
        _, losses, _ = train_run(cfg, records, os.path.join(os.path.dirname(out_json), "ref"),
                                 xla=False, max_steps=REFERENCE_STEPS)
    with open(out_json, "w") as f:
        json.dump({"losses": losses}, f)


def run_reference(records, workdir, micro_batch, steps):
    """The host reference's losses, from a child process that sees no GPU."""
    out = os.path.join(workdir, "reference.json")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.pop(PERTURB_ENV, None)
    subprocess.run([sys.executable, "-m", "pretrain.selftest", "--reference", out,
                    "--records", records, "--micro_batch", str(micro_batch),
                    "--steps", str(steps)], check=True, env=env, cwd=ROOT)
    with open(out) as f:
        return json.load(f)["losses"]


def matmul_peak(n=2048, reps=8):
    """Measured fp32 FLOP/s of an n x n matmul chain on the default device."""
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n]) / n ** 0.5

    @tf.function
    def chain(x):
        for _ in range(reps):
            x = tf.matmul(x, b)
        return x

    chain(a).numpy()
    start = time.perf_counter()
    chain(a).numpy()
    return 2.0 * n ** 3 * reps / (time.perf_counter() - start)


def train_speed(output):
    """Sequences/s of the logged windows after the first (which compiles),
    read back from the run's TensorBoard events."""
    values = []
    folder = os.path.join(output, "tensorboard", "train")
    for name in sorted(os.listdir(folder)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            for v in event.summary.value:
                if v.tag == "seqs_per_sec":
                    values.append((event.step, float(tf.make_ndarray(v.tensor))))
    values = [v for _, v in sorted(values)[1:]]
    return float(np.median(values)) if values else None


def input_speed(trainer, batches=30):
    """Sequences/s of the reader alone (parse, dynamic masking, batching)."""
    cfg = trainer.cfg
    batch = cfg["train"]["batch_size"]
    ds = trainer.task.dataset(SEQ_LEN, batch, "train", cfg["train"]["seed"], 0, None)
    it = iter(ds)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def restore_check(trainer, output):
    """Max |difference| of the weights restored from the run's last checkpoint
    into a freshly built model (a different initialisation seed)."""
    latest = tf.train.latest_checkpoint(os.path.join(output, "checkpoints", "selftest"))
    fresh = models.build_model(trainer.cfg, seed=trainer.cfg["train"]["seed"] + 1)
    checkpoints.restore_training_checkpoint(fresh, latest)
    return latest, max(float(np.max(np.abs(a.numpy() - b.numpy())))
                       for a, b in zip(trainer.bundle.encoder.weights, fresh.encoder.weights))


def rel_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def expected_replicas(hw, row):
    """Replicas the strategy will have, known before TensorFlow touches the
    device: the host reference runs first, in a child process, because libtpu
    lets one process per host own the chips."""
    if hw.device == "gpu":
        return max(1, len(hw.gpus))
    return row.replicas if row is not None and hw.device == "tpu" else 1


def choose_micro_batch(row, requested, precision):
    """The per-replica micro-batch: `requested`, else the memory plan's largest
    (capped at 64: the workload is short), and 8 on a CPU."""
    if requested:
        return requested
    if row is None or row.name == "cpu":
        return 8
    precision = "bf16" if precision != "fp32" and row.bf16 else "fp32"
    cfg = workload(8, 20)
    params = models.build_model(cfg).mlm_model.count_params()
    p = costs.plan(cfg, params, row, cfg["train"]["phases"][0], precision, replicas=1)
    return int(max(1, min(64, p.max_micro_batch or 1)))


def selftest(workdir, hw, tpu=None, precision="auto", allow_cpu=False, micro_batch=None,
             steps=20, log=print):
    """Run everything; returns the result dict (selftest.json)."""
    perturb = float(os.environ.get(PERTURB_ENV) or 0.0)
    row = devices.from_hardware(hw)
    name, replicas = (row.name if row else hw.device), expected_replicas(hw, row)
    micro = choose_micro_batch(row, micro_batch, precision)
    cfg = workload(micro, steps, replicas)
    log("workload: roberta_tiny, seq %d, micro-batch %d x %d replica(s), %d updates, LAMB, "
        "dropout 0, seed %d; device %s" % (SEQ_LEN, micro, replicas, steps,
                                           cfg["train"]["seed"], name))
    t0 = time.time()
    records = make_records(cfg, os.path.join(workdir, "records"))
    log("records: %s (%.0f s)" % (records, time.time() - t0))
    ref = run_reference(records, workdir, micro * replicas, steps)
    log("host reference (CPU, fp32, no XLA, 1 thread): %s" % _losses(ref))
    strategy = make_strategy(tpu, allow_cpu=allow_cpu)
    precision = choose_precision(precision, strategy)
    if (micro * replicas) % strategy.num_replicas_in_sync:
        raise TrainingError("the selftest expected %d replicas on %s, the strategy has %d; "
                            "pass --micro_batch" % (replicas, name,
                                                    strategy.num_replicas_in_sync))
    replicas = strategy.num_replicas_in_sync
    log("device: %s, %d replica(s), precision %s" % (name, replicas, precision))
    fp32_out = os.path.join(workdir, "fp32")
    fp32, fp32_losses, export = train_run(cfg, records, fp32_out, strategy, "fp32",
                                          perturb=perturb)
    log("device fp32: %s ... %.4f" % (_losses(fp32_losses[:REFERENCE_STEPS]), fp32_losses[-1]))
    checks = {}
    diff = rel_diff(fp32_losses[:REFERENCE_STEPS], ref)
    checks["fp32_loss"] = {"pass": diff <= FP32_RTOL, "max_rel_diff": diff,
                           "tolerance": FP32_RTOL, "updates": REFERENCE_STEPS,
                           "device": fp32_losses[:REFERENCE_STEPS], "host": ref}
    if precision == "fp32":
        run, run_out, losses = fp32, fp32_out, fp32_losses
    else:
        run_out = os.path.join(workdir, precision)
        run, losses, _ = train_run(cfg, records, run_out, strategy, precision, perturb=perturb)
        log("device %s: %s ... %.4f" % (precision, _losses(losses[:REFERENCE_STEPS]), losses[-1]))
    end, end32 = np.mean(losses[-5:]), np.mean(fp32_losses[-5:])
    diff = abs(end - end32) / end32
    checks["precision"] = {"pass": bool(diff <= PRECISION_RTOL), "precision": precision,
                           "final_loss": float(end), "final_loss_fp32": float(end32),
                           "rel_diff": float(diff), "tolerance": PRECISION_RTOL,
                           "note": "mean of the last 5 losses" + (
                               "; the device's precision is fp32: the same run"
                               if precision == "fp32" else "")}
    latest, restored = restore_check(fp32, fp32_out)
    checks["checkpoint"] = {"pass": restored == 0.0, "checkpoint": latest,
                            "max_abs_diff": restored}
    info = writer.read_info(export) if export else None
    reload_diff = info and info.get("reload_max_abs_diff")
    checks["export"] = {"pass": reload_diff is not None
                        and reload_diff <= export_check.RELOAD_TOLERANCE,
                        "export": export, "reload_max_abs_diff": reload_diff,
                        "tolerance": export_check.RELOAD_TOLERANCE}
    result = {"device": name, "replicas": replicas, "precision": precision,
              "micro_batch": cfg["train"]["batch_size"] // replicas,
              "steps": steps, "seq_len": SEQ_LEN}
    result.update(speed(cfg, run, run_out, row, precision))
    checks["speed_measured"] = {"pass": bool(result["seq_per_s"] and result["mfu"] is not None)}
    result["checks"] = checks
    result["passed"] = all(c["pass"] for c in checks.values())
    result["failed"] = [k for k, c in checks.items() if not c["pass"]]
    return result


def speed(cfg, run, run_out, row, precision):
    """seq/s, model TFLOP/s, MFU, and the reader's seq/s against the device's."""
    seq_s = train_speed(run_out)
    flops_per_seq = 3 * costs.mlm_flops_per_sequence(cfg, SEQ_LEN,
                                                     max_predictions_for(cfg, SEQ_LEN))
    if row is not None and row.name != "cpu":
        peak = (row.bf16_flops if precision == "bf16" else row.fp32_flops) or row.bf16_flops
        peak_total, peak_from = peak * run.strategy.num_replicas_in_sync, row.source
    else:
        peak_total, peak_from = matmul_peak(), "fp32 matmul 2048^2 measured in this run"
    tflops = seq_s * flops_per_seq / 1e12 if seq_s else None
    reader = input_speed(run)
    return {"seq_per_s": seq_s, "model_tflops": tflops,
            "mfu": tflops * 1e12 / peak_total if tflops else None,
            "peak_tflops": peak_total / 1e12, "peak_from": peak_from,
            "input_seq_per_s": reader,
            "input_bound": bool(seq_s and reader < 1.1 * seq_s)}


def _losses(values):
    return " ".join("%.6f" % v for v in values)


def format_report(result, doctor_lines):
    """The screen a user pastes into a bug report."""
    checks = result["checks"]
    lines = ["== pretrain selftest =="] + doctor_lines + [
        "device:       %s, %d replica(s), %s, micro-batch %d, %d updates at seq %d" % (
            result["device"], result["replicas"], result["precision"], result["micro_batch"],
            result["steps"], result["seq_len"])]
    c = checks["fp32_loss"]
    lines.append("fp32 loss:    %s  first %d losses, device vs host CPU: max rel diff %.2g "
                 "(tolerance %g)" % (_word(c), c["updates"], c["max_rel_diff"], c["tolerance"]))
    c = checks["precision"]
    lines.append("precision:    %s  %s final loss %.4f vs fp32 %.4f: rel diff %.2g (tolerance "
                 "%g)" % (_word(c), c["precision"], c["final_loss"], c["final_loss_fp32"],
                          c["rel_diff"], c["tolerance"]))
    c = checks["checkpoint"]
    lines.append("checkpoint:   %s  restored into a fresh model, max |diff| %g" % (
        _word(c), c["max_abs_diff"]))
    c = checks["export"]
    lines.append("export:       %s  bert4keras reload max |diff| %s (tolerance %g)" % (
        _word(c), "%.2g" % c["reload_max_abs_diff"] if c["reload_max_abs_diff"] is not None
        else "-", c["tolerance"]))
    if result["seq_per_s"]:
        lines.append("speed:        %.1f seq/s, %.3f model TFLOP/s, MFU %.1f%% of %.3g TFLOP/s "
                     "(%s)" % (result["seq_per_s"], result["model_tflops"],
                               100 * result["mfu"], result["peak_tflops"], result["peak_from"]))
    lines.append("input:        reader %.1f seq/s vs device %.1f seq/s%s" % (
        result["input_seq_per_s"], result["seq_per_s"] or 0,
        ": THE INPUT PIPELINE IS THE BOTTLENECK" if result["input_bound"] else ": keeps up"))
    lines.append("verdict:      %s" % ("PASS" if result["passed"] else
                                      "FAIL: " + ", ".join(result["failed"])))
    return lines


def _word(check):
    return "pass" if check["pass"] else "FAIL"


def write_json(result, path):
    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=float)
