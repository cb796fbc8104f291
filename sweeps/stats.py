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

`seeds_needed` is a power estimate from the observed spread: the smallest n at which the paired t
interval's half-width, t(0.975, n-1) * sd / sqrt(n), would fall below the observed mean difference.
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


@dataclass
class Paired:
    """A against B on the seeds both ran."""
    seeds: list
    differences: np.ndarray  # A_s - B_s, one per seed
    mean: float
    t_low: float
    t_high: float
    boot_low: float
    boot_high: float
    p_paired: float          # paired t test, two-sided
    p_welch: float           # Welch's unpaired t test, two-sided
    improvement: float       # P(A > B), rliable (Mann-Whitney over seeds)

    @property
    def significant(self) -> bool:
        return (self.t_low > 0 and self.boot_low > 0) or (self.t_high < 0 and self.boot_high < 0)

    @property
    def verdict(self) -> str:
        return "significant" if self.significant else "not significant"


def paired(a: dict, b: dict) -> Paired:
    """Compare {seed: value} of A and B on their common seeds (at least 2)."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        raise ValueError(f"a paired comparison needs at least 2 common seeds; A has {sorted(a)}, B has {sorted(b)}")
    x = np.array([a[s] for s in seeds], dtype=float)
    y = np.array([b[s] for s in seeds], dtype=float)
    d = x - y
    mean, half = t_interval(d)
    with warnings.catch_warnings():  # scipy warns of precision loss on a constant sample; the result stands
        warnings.simplefilter("ignore", RuntimeWarning)
        if np.all(d == d[0]):  # no spread: the t test is undefined; a constant non-zero shift is exact
            t_low = t_high = mean
            p_paired = 1.0 if mean == 0 else 0.0
        else:
            t_low, t_high = mean - half, mean + half
            p_paired = float(stats.ttest_rel(x, y).pvalue)
        same = np.array_equal(np.sort(x), np.sort(y))
        p_welch = 1.0 if same else float(stats.ttest_ind(x, y, equal_var=False).pvalue)
    boot_low, boot_high = bootstrap_interval(d, np.mean)
    from rliable import metrics

    improvement = float(metrics.probability_of_improvement(x.reshape(-1, 1), y.reshape(-1, 1)))
    return Paired(seeds, d, mean, t_low, t_high, boot_low, boot_high, p_paired,
                  1.0 if math.isnan(p_welch) else p_welch, improvement)


def seeds_needed(differences, limit: int = 1000) -> int | None:
    """Smallest n whose paired t interval half-width would be below |mean difference|, given the
    observed standard deviation of the differences; None if the mean is 0 or n would exceed limit."""
    d = np.asarray(differences, dtype=float)
    mean, sd = abs(float(d.mean())), float(d.std(ddof=1)) if len(d) > 1 else float("nan")
    if mean == 0 or math.isnan(sd):
        return None
    if sd == 0:
        return 2
    return next((n for n in range(2, limit + 1) if stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n) < mean), None)
