"""Reward functions: plain callables `reward_fn(completions, rows) -> list[float]`.

`score` is the one place they are called, and it trusts none of them: a function that raises,
returns the wrong number of scores, None, a non-number or a non-finite number stops the run with
one line (RewardError) naming the function, the prompt and the completion, unless the run asks
(`reward_on_failure: <value>`) for such responses to be scored as that value and counted.
"""
import math

from ptlab.errors import RunStopped


class RewardError(RunStopped):
    """A reward function failed on a response: the message names it, the prompt and the completion."""


def name_of(reward_fn) -> str:
    return getattr(reward_fn, "__qualname__", None) or type(reward_fn).__qualname__


def score(reward_fn, completions: list[str], rows: list[dict], on_failure: float | None = None):
    """(total reward of each completion, its named terms ({} for a reward of one term), number of
    responses scored `on_failure` because the function failed on them). The first term, when there
    are several, is the correctness score (rewards/weighted.py)."""
    try:
        return (*checked(reward_fn, completions, rows), 0)
    except RewardError:
        if on_failure is None or len(completions) == 1:
            raise
    on_failure, totals, terms, failures = float(on_failure), [], {}, 0  # one response at a time: failures score on_failure
    for i, (completion, row) in enumerate(zip(completions, rows)):
        try:
            total, parts = checked(reward_fn, [completion], [row])
        except RewardError:
            total, parts, failures = [on_failure], {name: [on_failure] for name in terms}, failures + 1
        totals += total
        for name, values in parts.items():
            terms.setdefault(name, [on_failure] * i).extend(values)
    return totals, terms, failures


def checked(reward_fn, completions: list[str], rows: list[dict]):
    """The reward function's (totals, terms), or RewardError naming what went wrong and where."""
    def where(i: int) -> str:
        return f"on prompt {rows[i].get('prompt')!r}, completion {completions[i]!r}"

    try:
        if hasattr(reward_fn, "components"):
            terms = reward_fn.components(completions, rows)
            totals = reward_fn.combine(terms)
        else:
            terms, totals = {}, list(reward_fn(completions, rows))
    except (Exception, SystemExit) as error:  # noqa: BLE001 - any failure of user code is reported, in one line
        #                                       (a sys.exit in a reward too: it would end the run without a word)
        culprit = next((i for i in range(len(completions)) if len(completions) > 1 and fails(reward_fn, completions[i], rows[i])), 0)
        raise RewardError(f"reward {name_of(reward_fn)} raised {type(error).__name__}: "
                          f"{(str(error).strip().splitlines() or [''])[0]} {where(culprit)}") from None
    if len(totals) != len(completions):
        raise RewardError(f"reward {name_of(reward_fn)} returned {len(totals)} scores for {len(completions)} "
                          f"completions (first: {where(0)})")
    scores = [as_score(value) for value in totals]
    for i, value in enumerate(scores):
        if value is None:
            raise RewardError(f"reward {name_of(reward_fn)} returned {totals[i]!r}, not a finite number, {where(i)}")
    return scores, {name: [as_score(v) for v in values] for name, values in terms.items()}


def as_score(value) -> float | None:
    """A score as a float: any real number (Python's, numpy's float32 or int64, a 0-d tensor) or a
    boolean (True is 1.0, as a pass/fail check returns it); None for anything else or a non-finite one."""
    if isinstance(value, (str, bytes)) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def fails(reward_fn, completion: str, row: dict) -> bool:
    try:
        checked(reward_fn, [completion], [row])
        return False
    except RewardError:
        return True
