"""What a run prints: log lines with global steps and an ETA, no line per
checkpoint save, and no TensorFlow error line from the dynamic-masking reader."""
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np

from pretrain.training import monitor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = [{"name": "phase1_seq128", "steps": 30}, {"name": "phase2_seq512", "steps": 6}]


def test_lines_count_global_steps_with_the_phase_beside():
    window = monitor.Window()
    window.add(5, 10.0, np.ones(5), np.ones(5), {})
    line = monitor.train_line(PHASES[1], 30, 5, 36, {"loss": 9.73, "seqs_per_sec": 0.5},
                              window.eta(1))
    assert line == "step 35/36  phase2_seq512 5/6  loss=9.73  seqs_per_sec=0.5  eta 2s"
    assert monitor.train_line(PHASES[0], 0, 5, 36, {"loss": 9.9}) == (
        "step 5/36  phase1_seq128 5/30  loss=9.9")  # the first window: compiling, no ETA
    assert monitor.heldout_line(PHASES[1], 30, 6, 36, {"loss": 9.7247}) == (
        "heldout step 36/36  phase2_seq512 6/6: loss=9.7247")
    assert window.eta(1500) == 3000
    assert [monitor.duration(s) for s in (0.4, 42, 185, 7620)] == ["0s", "42s", "3m05s",
                                                                   "2h07m"]


def test_checkpoint_saves_log_no_timing_line(tmp_path):
    """A real save, its absl log lines caught where absl's handler would print them."""
    import tensorflow as tf
    from absl import logging as absl_logging
    seen = []

    class Catch(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler, logger = Catch(level=logging.INFO), absl_logging.get_absl_logger()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        tf.train.Checkpoint(v=tf.Variable(1.0)).write(str(tmp_path / "ckpt"))
        absl_logging.info("another line")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert "another line" in seen  # the logger works: only the timing is dropped
    assert not any("Sharding callback" in m for m in seen), seen


def test_the_dynamic_masking_reader_logs_no_error_line(tmp_path):
    """TF's oneDNN transpose of int32 logs `E0000 ... oneDNN supports DT_INT32 only
    on platforms with AVX-512` on such CPUs; the reader masks without one."""
    code = textwrap.dedent('''
        import pretrain, sys
        import tensorflow as tf
        from pretrain import config
        from pretrain.data import preprocess
        from pretrain.training import inputs
        cfg = config.load_config("roberta_tiny", smoke=True)  # dynamic masking
        preprocess.run(cfg, sys.argv[1], sys.argv[2], seq_lens=[128], workers=1,
                       shard_mb=0.03, progress=False)
        batch = next(iter(inputs.mlm_dataset(sys.argv[2], cfg, 128, 8)))
        print("masked", int(tf.reduce_sum(batch["masked_lm_weights"])))
    ''')
    corpus = tmp_path / "docs.txt"
    with open(os.path.join(ROOT, "data", "sample", "clue_small.txt"), encoding="utf-8") as f:
        corpus.write_text("".join(f.readlines()[:80]), encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", code, str(corpus), str(tmp_path / "records")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split("masked")[1]) > 0
    errors = [l for l in done.stderr.splitlines() if l[:1] == "E" and l[1:5].isdigit()]
    assert not errors, "\n".join(errors)
