"""Reward functions: plain callables `reward_fn(completions, rows) -> list[float]`."""
