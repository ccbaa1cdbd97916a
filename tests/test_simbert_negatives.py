"""SimBERT's similarity loss under MirroredStrategy over 2 logical CPUs: every
row's candidates are the whole global batch, so loss and gradients equal one
device's on that batch (pretrain/simbert/task.py similarity_loss)."""
import json
import subprocess
import sys

import numpy as np

PROGRAM = r"""
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import pretrain
from pretrain.simbert import task as tasks

rng = np.random.RandomState(0)
x = tf.constant(rng.randn(8, 6), tf.float32)  # 4 partner pairs; 4 rows per replica
w0 = rng.randn(6, 16).astype(np.float32) * 0.3

def loss_and_grad(w, rows):
    with tf.GradientTape() as tape:
        loss, acc = tasks.similarity_loss(tf.matmul(rows, w))
    return loss, acc, tape.gradient(loss, w)

w = tf.Variable(w0)
one = loss_and_grad(w, x)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    wm = tf.Variable(w0)

@tf.function
def step():
    def replica():
        ctx = tf.distribute.get_replica_context()
        rows = x[ctx.replica_id_in_sync_group * 4:][:4]
        loss, acc, grad = loss_and_grad(wm, rows)
        n = ctx.num_replicas_in_sync  # mean over replicas = mean over all rows
        return ctx.all_reduce("sum", [loss / n, acc / n, grad / n])
    return strategy.experimental_local_results(strategy.run(replica))[0]

two = step()
local = tasks.similarity_loss(tf.matmul(x[:4], w0))  # replica 0's batch alone
print("RESULT", json.dumps({k: [float(v) for v in vals] for k, vals in
      (("one", one[:2]), ("two", two[:2]), ("local", local))}))
print("GRADS", json.dumps({"one": one[2].numpy().tolist(), "two": two[2].numpy().tolist()}))
"""


def test_two_replicas_score_against_the_global_batch():
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    result, grads = json.loads(lines["RESULT"]), json.loads(lines["GRADS"])
    np.testing.assert_allclose(result["two"], result["one"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(grads["two"], grads["one"], rtol=0, atol=1e-5)
    assert np.abs(np.array(grads["one"])).max() > 1e-3
    # negatives from one replica's rows alone would give another loss
    assert abs(result["local"][0] - result["one"][0]) > 1e-3
