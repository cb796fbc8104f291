"""A reward made of named terms, each a reward callable with a weight:

    R(x, y) = sum_name weight_name * r_name(x, y)

The first term is the correctness score: accuracy (train/accuracy, val/accuracy) is the fraction of
responses it scores 1. Every term is logged on its own (train/reward/<name>, val/reward/<name>).
"""
from ptlab.errors import ConfigError


class WeightedSum:
    def __init__(self, terms: dict):
        if not terms:
            raise ConfigError("task.reward.terms is empty: give at least one {weight, fn} term")
        self.terms = {}
        for name, term in terms.items():
            if not callable(term.get("fn")):
                raise ConfigError(f"task.reward.terms.{name}.fn is not a reward callable (a `_target_` returning "
                                  f"scores for (completions, rows)); got {term.get('fn')!r}")
            self.terms[name] = (float(term.get("weight", 1.0)), term["fn"])
        self.primary = next(iter(self.terms))

    def components(self, completions: list[str], rows: list[dict]) -> dict[str, list[float]]:
        return {name: list(fn(completions, rows)) for name, (_, fn) in self.terms.items()}

    def combine(self, components: dict[str, list[float]]) -> list[float]:
        return [sum(self.terms[name][0] * components[name][i] for name in self.terms)
                for i in range(len(components[self.primary]))]

    def __call__(self, completions: list[str], rows: list[dict]) -> list[float]:
        return self.combine(self.components(completions, rows))
