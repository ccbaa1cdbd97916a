"""Held-out MLM of two scripts/mlm_quality.py runs, each model on each run's eval records.

    python scripts/mlm_quality.py --corpus C --output runs/q_dynamic --masking dynamic ...
    python scripts/mlm_quality.py --corpus C --output runs/q_static --masking static \\
        --dupe_factor 10 ...
    python benchmarks/masking_quality.py runs/q_dynamic runs/q_static

The two runs hold out the same documents, but their eval masks differ (drawn
by the reader, or at preprocessing), and at small scale that difference is
as large as the one between the models. So every exported model is scored on
every run's eval split (all of it, with the masks its trainer saw): compare
models on the same eval records.
"""
import os
import sys

import pretrain  # noqa: E402,F401  (tf_keras env before TensorFlow)


def main(run_dirs):
    import tensorflow as tf
    from pretrain import config
    from pretrain.export import checkpoints
    from pretrain.training import inputs
    from pretrain.models import build as models
    from pretrain.training import tasks

    cfgs = [config.load_config(os.path.join(d, "config.json")) for d in run_dirs]
    phase = cfgs[0]["train"]["phases"][0]
    for run_dir, cfg in zip(run_dirs, cfgs):
        bundle = models.build_model(cfg)
        checkpoints.load_pretrained(cfg, bundle, os.path.join(
            run_dir, "run", "export", phase["name"], "bert_model.ckpt"))
        task = tasks.MlmTask(cfg, None)
        task.attach(bundle)
        sums = tf.function(lambda batch: task.loss_sums(batch, False))
        for data_dir, data_cfg in zip(run_dirs, cfgs):
            loss = acc = n = 0.0
            for batch in inputs.mlm_dataset(os.path.join(data_dir, "records"), data_cfg,
                                              phase["seq_len"], 16, split="eval",
                                              seed=data_cfg["train"]["seed"], repeat=False):
                batch_loss, metrics = sums(batch)
                loss += float(batch_loss)
                acc += float(metrics["mlm_acc"])
                n += float(tf.reduce_sum(batch["masked_lm_weights"]))
            print("model of %s (%s masking) on the eval records of %s: %d masked tokens, "
                  "mlm_loss %.4f, mlm_acc %.4f" % (run_dir, cfg["data"]["masking"], data_dir,
                                                    n, loss / n, acc / n))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit("usage: python benchmarks/masking_quality.py RUN_DIR RUN_DIR [...]")
    main(sys.argv[1:])
