"""Fine-tuning an export on classification or sentence-pair tasks, with non-neural baselines."""
