"""SimBERT: similar-sentence data, its evaluation, and encoding, search and paraphrase with an export."""
