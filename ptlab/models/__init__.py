"""Policies: a tiny Llama built from a config with a local character tokenizer, or any local
Hugging Face model directory; token log-probabilities; batched sampling; the frozen reference."""
