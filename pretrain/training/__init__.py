"""Training: the Task interface, tf.data readers, optimizers and the trainer's compiled step and loop."""
