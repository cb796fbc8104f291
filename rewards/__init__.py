"""Reward functions: plain callables `reward_fn(completions, rows) -> list[float]`."""


def score(reward_fn, completions: list[str], rows: list[dict]) -> tuple[list[float], dict[str, list[float]]]:
    """The total reward of each completion, and its named terms ({} for a reward of one term).
    The first term, when there are several, is the correctness score (rewards/weighted.py)."""
    if hasattr(reward_fn, "components"):
        terms = reward_fn.components(completions, rows)
        return reward_fn.combine(terms), terms
    return [float(value) for value in reward_fn(completions, rows)], {}
