"""Which devices a run uses: the distribution strategy, hosts, precision, XLA.

`make_strategy` picks TPUStrategy, MultiWorkerMirroredStrategy, MirroredStrategy
or the default one, and stops with the doctor's diagnosis when an accelerator
is present that TensorFlow cannot use. The trainer and fine-tuning share it.
"""
import os
import threading

import tensorflow as tf
from absl import logging

from pretrain.runtime import compat
from pretrain.runtime import doctor
from pretrain.runtime import hardware
from pretrain.runtime import tpu_runtime
from pretrain.errors import TrainingError


def make_strategy(tpu=None, timeout_s=300, allow_cpu=False):
    """TPUStrategy if `tpu` is given, MultiWorkerMirroredStrategy when TF_CONFIG
    is set (one process per node), MirroredStrategy on >1 GPU, else default.

    Accelerator hardware that TF cannot use stops here with the doctor's
    diagnosis, instead of a run that trains on the CPU without a word
    (`allow_cpu` turns that into a warning).
    """
    if tpu is None and os.environ.get("TF_CONFIG"):
        return _multi_worker(allow_cpu)
    if tpu is None:
        gpus = tf.config.list_logical_devices("GPU")
        if not gpus:
            _check_cpu_only(allow_cpu)
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    name = "local" if tpu in ("", "local") else tpu
    hint = ("On a Colab or Cloud TPU VM use --tpu local; on a TPU Node pass its "
            "name or grpc://IP:8470.")
    tpu_runtime.check_local(name)  # no chips, or TPU7x: one line, before TF touches the TPU
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name)
    except Exception as e:  # name lookups go through the Cloud TPU API
        raise TrainingError("cannot resolve TPU %r: %s. %s%s" % (
            name, e, hint, _doctor_says())) from None
    outcome = {}

    def connect():
        try:
            if name != "local":
                tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except Exception as e:  # pragma: no cover - message is what matters
            outcome["error"] = e

    # initialize_tpu_system blocks forever on an unreachable grpc address.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TrainingError("TPU %r did not answer within %d s. %s%s" % (
            name, timeout_s, hint, _doctor_says()))
    if "error" in outcome:
        first = str(outcome["error"]).strip().splitlines()[0]
        raise TrainingError("no TPU reachable at %r: %s. %s%s" % (
            name, first, hint, _doctor_says()))
    return tf.distribute.TPUStrategy(resolver)


def _multi_worker(allow_cpu):
    # Before anything lists devices: the collectives are configured at TF's startup.
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (ValueError, KeyError) as e:
        raise TrainingError("TF_CONFIG=%s: %s. It should be like {\"cluster\": {\"worker\": "
                            "[\"host1:port\", \"host2:port\"]}, \"task\": {\"type\": "
                            "\"worker\", \"index\": 0}}" % (os.environ["TF_CONFIG"], e)) from None
    if not tf.config.list_logical_devices("GPU"):
        _check_cpu_only(allow_cpu)
    return strategy


def num_hosts(strategy):
    """How many machines the strategy's input pipelines run on."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return strategy.extended.num_hosts
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        spec = strategy.cluster_resolver.cluster_spec().as_dict()
        return len({address.rsplit(":", 1)[0] for job in ("chief", "worker")
                    for address in spec.get(job, [])})
    return 1


def check_paths_for_hosts(strategy, paths):
    """On more than one host every input pipeline and worker must reach `paths`
    ({flag: path}; None skipped): only gs:// is the same path everywhere."""
    hosts = num_hosts(strategy)
    if hosts < 2:
        return
    for flag, path in sorted(paths.items()):
        if path and not path.startswith("gs://"):
            raise TrainingError("%s %s is a local path, but this run spans %d hosts, which "
                                "all read it: put it in a bucket (gs://...)" % (flag, path, hosts))


def _doctor_says(hw=None):
    advice = doctor.advice(hw)
    return " Diagnosis (python -m pretrain.doctor): %s" % advice if advice else ""


def _check_cpu_only(allow_cpu):
    """Stop (or warn, with allow_cpu) when TF would train on the CPU beside an accelerator."""
    hw = hardware.detect_hardware()
    if hw.device == "cpu":
        return
    what = ("%d TPU chip(s); pass --tpu local to train on them" % hw.tpu_chips
            if hw.device == "tpu" else "%d NVIDIA GPU(s) that TensorFlow does not see"
            % len(hw.gpus))
    message = "this machine has %s, but the run would train on the CPU.%s" % (
        what, _doctor_says(hw))
    if not allow_cpu:
        raise TrainingError(message + " Pass --allow_cpu to train on the CPU anyway.")
    logging.warning("*" * 72)
    logging.warning("TRAINING ON THE CPU (--allow_cpu): %s", message)
    logging.warning("*" * 72)


def choose_precision(requested, strategy):
    """'bf16' or 'fp32' for --precision auto|fp32|bf16 on this strategy's devices.

    auto: bf16 on TPUs and on GPUs that compute in bf16 natively (compute
    capability 8.0, Ampere, and newer); fp32 elsewhere. Older GPUs emulate
    bf16 slowly, so asking for it there only warns.
    """
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "fp32" if requested == "fp32" else "bf16"
    gpus = tf.config.list_physical_devices("GPU")
    capabilities = [tf.config.experimental.get_device_details(g).get("compute_capability")
                    or (0, 0) for g in gpus]
    native = bool(gpus) and min(capabilities) >= (8, 0)
    if requested == "auto":
        return "bf16" if native else "fp32"
    if requested == "bf16" and not native:
        logging.warning("--precision bf16 on %s: no native bf16 there, so it runs slowly; "
                        "fp32 is faster", "a GPU older than Ampere" if gpus else "the CPU")
    return requested


def use_xla(strategy, force=None):
    """Whether the replica step compiles with XLA on this strategy's devices
    (`force`: the --xla flag, None for the default)."""
    # TPUs compile the whole step with XLA anyway.
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return False
    if force is not None:
        return force
    gpus = tf.config.list_physical_devices("GPU")
    # XLA cannot compile MirroredStrategy over logical CPU devices (TF 2.21).
    if isinstance(strategy, (tf.distribute.MirroredStrategy,
                             tf.distribute.MultiWorkerMirroredStrategy)) or gpus:
        if not gpus:
            return False
        why = doctor.xla_unsupported([
            tuple(tf.config.experimental.get_device_details(g).get("compute_capability")
                  or (0, 0)) for g in gpus])
        if why:
            logging.warning("XLA off: GPU %s", why)
        return not why
    # One CPU: only where the build has XLA for it.
    return compat.cpu_xla()
