"""Statistics for comparing configurations over seeds, from scipy.stats and rliable.

Per configuration: the mean with its Student t 95% interval (scipy), and the interquartile mean
with a bootstrap 95% interval over seeds (rliable's stratified bootstrap; with one task it resamples
seeds). Between two configurations run on the same seeds (same seed = same prompt order and the
same evaluation draws), the comparison is paired: the per-seed differences A_s - B_s, their mean,
the paired t interval (scipy.stats.ttest_rel) and a percentile bootstrap interval of their mean
(rliable, seeds resampled with replacement). A difference is called significant when both
intervals exclude 0: with 3-5 seeds a bootstrap interval alone is too narrow (it cannot see
variance the seeds did not show), and the t interval is the conservative one. Unpaired checks ride
along: Welch's t test p-value and rliable's probability of improvement P(A > B) (Agarwal et al.,
2021, "Deep RL at the edge of the statistical precipice").

Claims are tested on unit differences (`difference`: a one-sample t test of A - B, or of a
configuration minus its reference, one number per independent unit), corrected for multiplicity
over a study's declared family (`holm`), and sized by power (`units_for_power`: the units a t test
needs for 80% power at an effect size, from statsmodels' TTestPower, the noncentral t).
"""
import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

REPS = 20_000  # bootstrap resamples
CONFIDENCE = 0.95


def t_interval(values) -> tuple[float, float]:
    """Mean and half-width of its Student t 95% interval (nan with one value)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan")
    return mean, float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1) * stats.sem(values))


def bootstrap_interval(values, statistic, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of statistic(values) over resampled seeds (rliable)."""
    from rliable import library as rly

    values = np.asarray(values, dtype=float).reshape(-1, 1)  # (seeds, one task)
    if np.all(values == values[0]):
        return float(values[0, 0]), float(values[0, 0])  # no spread: every resample is the same
    state = np.random.get_state()  # rliable draws its resamples from numpy's global generator, not random_state
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch deprecates the RandomState that rliable hands it
            warnings.simplefilter("ignore", FutureWarning)
            _, interval = rly.get_interval_estimates({"x": values}, lambda x: np.array([statistic(x)]),
                                                     method="percentile", reps=REPS, confidence_interval_size=CONFIDENCE,
                                                     random_state=np.random.RandomState(seed))
    finally:
        np.random.set_state(state)
    low, high = interval["x"][:, 0]
    return float(low), float(high)


def iqm_interval(values) -> tuple[float, float, float]:
    """Interquartile mean over seeds (rliable) and its bootstrap 95% interval."""
    from rliable import metrics

    values = np.asarray(values, dtype=float)
    return (float(metrics.aggregate_iqm(values.reshape(-1, 1))),
            *bootstrap_interval(values, metrics.aggregate_iqm))


ALTERNATIVES = ("two-sided", "greater", "less")  # A - B != 0, > 0, < 0
POWER = 0.8


@dataclass
class Difference:
    """A - B over independent units (warm starts, or seeds where each seed has its own warm start).

    `mean`, `sd` (ddof 1) and the two-sided (1 - alpha) Student t interval [low, high] of the unit
    differences; `p` the t test's p-value for `alternative` (two-sided: A != B; greater: A > B; less:
    A < B), nan when it cannot be computed (fewer than 2 units, or every difference the same)."""
    units: int
    mean: float
    sd: float
    low: float
    high: float
    p: float
    alternative: str

    @property
    def testable(self) -> str | None:
        """Why no significance can be claimed from these units, or None if it can."""
        if self.units < 3:
            return f"untestable: {self.units} unit{'s' * (self.units != 1)} (3 or more needed)"
        if not self.sd > 0:
            return "untestable: every unit gives the same difference (zero variance)"
        return None

    @property
    def effect_size(self) -> float:
        """Cohen's d_z: mean / sd of the unit differences (nan without spread)."""
        return self.mean / self.sd if self.sd > 0 else float("nan")


def difference(values, alternative: str = "two-sided", alpha: float = 0.05) -> Difference:
    """The t test of unit differences `values` (one number per independent unit) against 0."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r}: one of {', '.join(ALTERNATIVES)}")
    d = np.asarray(values, dtype=float)
    mean = float(d.mean()) if len(d) else float("nan")
    sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
    if len(d) < 2 or not sd > 0:
        return Difference(len(d), mean, sd, float("nan"), float("nan"), float("nan"), alternative)
    half = float(stats.t.ppf(1 - alpha / 2, len(d) - 1) * sd / math.sqrt(len(d)))
    p = float(stats.ttest_1samp(d, 0.0, alternative=alternative).pvalue)
    return Difference(len(d), mean, sd, mean - half, mean + half, p, alternative)


def holm(pvalues, alpha: float = 0.05) -> tuple[list[bool], list[float]]:
    """Holm-Bonferroni over a family of p-values (statsmodels' multipletests): which are rejected at
    family-wise error alpha, and the adjusted p-values. nan (an untestable claim) counts in the
    family as p = 1: it is never rejected and still makes the family larger."""
    from statsmodels.stats.multitest import multipletests

    if len(pvalues) == 0:
        return [], []
    filled = [1.0 if p is None or math.isnan(p) else float(p) for p in pvalues]
    reject, adjusted, _, _ = multipletests(filled, alpha=alpha, method="holm")
    return [bool(r) for r in reject], [float(a) for a in adjusted]


def benjamini_hochberg(pvalues) -> list[float]:
    """Benjamini-Hochberg q-values (statsmodels): false-discovery-rate adjusted p-values for a large
    exploratory family; nan stays nan."""
    from statsmodels.stats.multitest import multipletests

    known = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    q = [float("nan")] * len(pvalues)
    if known:
        for i, value in zip(known, multipletests([pvalues[i] for i in known], method="fdr_bh")[1]):
            q[i] = float(value)
    return q


def power(units: int, effect_size: float, alpha: float, alternative: str = "two-sided") -> float:
    """Power of the one-sample (paired) t test with `units` units to detect a true standardised
    effect `effect_size` (mean / sd of the unit differences) at level alpha (statsmodels' TTestPower,
    the noncentral t). Where the noncentral t's tail underflows (power numerically 1 at large
    effect x sqrt(units): scipy returns nan there) the normal approximation takes over."""
    from statsmodels.stats.power import TTestPower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(TTestPower().power(effect_size=effect_size, nobs=units, alpha=alpha,
                                         alternative={"greater": "larger", "less": "smaller"}.get(alternative, alternative)))
    if math.isnan(value):
        shift = effect_size * math.sqrt(units)
        if alternative == "two-sided":
            z = stats.norm.ppf(1 - alpha / 2)
            value = float(stats.norm.sf(z - shift) + stats.norm.cdf(-z - shift))
        else:
            value = float(stats.norm.sf(stats.norm.ppf(1 - alpha) - (shift if alternative == "greater" else -shift)))
    return value


def units_for_power(effect_size: float, alpha: float, alternative: str = "two-sided", target: float = POWER,
                    limit: int = 10_000) -> int | None:
    """The fewest units (2 or more) whose t test at level alpha has power >= target against a true
    standardised effect `effect_size`; None if the effect is 0, undefined, points against a one-sided
    alternative, or needs more than `limit` units."""
    if not math.isfinite(effect_size) or effect_size == 0:
        return None
    if (alternative == "greater" and effect_size < 0) or (alternative == "less" and effect_size > 0):
        return None
    if power(limit, effect_size, alpha, alternative) < target:
        return None
    low, high = 2, limit  # power rises with the units: bisect for the first that reaches the target
    while low < high:
        middle = (low + high) // 2
        if power(middle, effect_size, alpha, alternative) >= target:
            high = middle
        else:
            low = middle + 1
    return low
