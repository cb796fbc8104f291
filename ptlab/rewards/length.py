"""Length terms, from the token counts the samplers and the evaluator put in every scored row
(`response_tokens`, `truncated`: training/rollout.py `with_lengths`)."""
from ptlab.errors import ConfigError


def lengths_of(rows: list[dict], name: str) -> list[int]:
    if any("response_tokens" not in row for row in rows):
        raise ConfigError(f"the {name} reward term needs each response's length in tokens, which only generated "
                          "responses carry (on_policy, stale, reference, replay samplers and held-out evaluation)")
    return [row["response_tokens"] for row in rows]


class SoftOverlong:
    """DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13), a reward term added to the correctness score:

        0                                    if |y| <= max_tokens - cache_tokens
        ((max_tokens - cache_tokens) - |y|) / cache_tokens   if max_tokens - cache_tokens < |y| <= max_tokens
        -1                                   if |y| > max_tokens

    max_tokens is DAPO's L_max (set it to the generation budget: a response cut there scores -1),
    cache_tokens its L_cache (the paper: 20480 and 4096). |y| counts the response's tokens, <eos> included."""

    def __init__(self, max_tokens: int, cache_tokens: int):
        if not 0 < cache_tokens <= max_tokens:
            raise ConfigError(f"SoftOverlong cache_tokens={cache_tokens} is not allowed with max_tokens={max_tokens}: "
                              "it must be in (0, max_tokens]")
        self.max_tokens, self.cache_tokens = max_tokens, cache_tokens

    def __call__(self, completions: list[str], rows: list[dict]) -> list[float]:
        start = self.max_tokens - self.cache_tokens
        return [0.0 if n <= start else -1.0 if n > self.max_tokens else (start - n) / self.cache_tokens
                for n in lengths_of(rows, "SoftOverlong")]


class Truncated:
    """`penalty` (default -1) for a response the generation budget cut, else 0: the hard overlong
    reward DAPO's soft punishment replaces (section 3.4). To drop truncated responses from the loss
    instead (overlong filtering), set module.overlong_filter=true."""

    def __init__(self, penalty: float = -1.0):
        self.penalty = penalty

    def __call__(self, completions: list[str], rows: list[dict]) -> list[float]:
        lengths_of(rows, "Truncated")
        return [self.penalty if row["truncated"] else 0.0 for row in rows]
