"""Corpus to records, without TensorFlow: reading, tokenizing, whole-word masking, writing TFRecords."""
