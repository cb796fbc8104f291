"""Prompt sources, served as datasets.Dataset with columns prompt, answer, entry (and rejected)."""
