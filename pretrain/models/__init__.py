"""The models: BERT/RoBERTa and T5s built with bert4keras, their training heads, dropout, precision and sizes."""
