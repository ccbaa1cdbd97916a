"""Exports: the bert4keras checkpoint directory, the T5s h5, the Hugging Face folder, and the reload check."""
