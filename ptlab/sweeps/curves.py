"""Compute-performance curves: where a configuration is heading, not only where it stopped.

ScaleRL (Khatri et al. 2025, arXiv 2510.13786) fits each recipe's validation metric against training
compute C with a sigmoid,

    R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B)

R0 the metric before training (here: the reference's, `ref/<metric>`), A the asymptote, C_mid the
compute at which half the gain A - R0 is reached, B the steepness. A choice that moves A changes what
a recipe can reach; one that moves C_mid (or B) only how fast it gets there: a comparison at one
early budget cannot tell the two apart.

Here C is optimiser steps (`step`) or a budget counter of the run's metrics (`budget/tokens_generated`),
the points are a configuration's validations on all of its seeds, pooled, and R0 is the mean of its
seeds' reference values. `fit_curve` is least squares (scipy's curve_fit, A free, B and C_mid > 0);
`bootstrap` refits on seeds drawn with replacement, whole runs at a time, for percentile intervals
of A and C_mid; `half_budget_error` fits the points up to half the largest C and reports the mean
absolute error of its predictions beyond (ScaleRL's check that a curve extrapolates).
Departures from ScaleRL: it fits after an early noisy phase and on its largest runs' compute in
GPU-hours; here every validation after the start is fitted (a run's first evaluations are its
reference's, C = 0, which is R0) and compute is steps or tokens.
"""
import math
import warnings
from dataclasses import dataclass

import numpy as np

from ptlab.sweeps.runs import Run, curve


def sigmoid(compute: np.ndarray, r0: float, asymptote: float, steepness: float, midpoint: float) -> np.ndarray:
    """R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B); R(0) = R0."""
    compute = np.asarray(compute, dtype=float)
    with np.errstate(divide="ignore", over="ignore"):
        scaled = np.where(compute > 0, (midpoint / np.maximum(compute, 1e-300)) ** steepness, np.inf)
    return r0 + (asymptote - r0) / (1 + scaled)


@dataclass(frozen=True)
class Fit:
    r0: float
    asymptote: float  # A
    steepness: float  # B
    midpoint: float  # C_mid
    points: int

    def predict(self, compute) -> np.ndarray:
        return sigmoid(compute, self.r0, self.asymptote, self.steepness, self.midpoint)


def fit_curve(compute, values, r0: float) -> Fit | None:
    """The least-squares sigmoid through (compute, value) points with R(0) = r0; None when there are
    fewer than 3 points beyond C = 0 or the fit does not converge."""
    from scipy.optimize import curve_fit

    compute, values = np.asarray(compute, dtype=float), np.asarray(values, dtype=float)
    keep = compute > 0
    compute, values = compute[keep], values[keep]
    if len(compute) < 3 or len(set(compute.tolist())) < 2:
        return None
    start = (float(values[np.argmax(np.abs(values - r0))]), 1.0, float(np.median(compute)))
    model = lambda c, a, b, m: sigmoid(c, r0, a, b, m)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # OptimizeWarning: covariance not estimated (a flat curve)
            (a, b, m), _ = curve_fit(model, compute, values, p0=start, bounds=([-np.inf, 1e-3, 1e-9], [np.inf, 20, np.inf]),
                                     maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return Fit(r0, float(a), float(b), float(m), len(compute))


def points(runs: list[Run], metric: str, x: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Every validation of `runs` (compute, value), pooled, and R0 the mean of their `ref/<metric>`."""
    xs, ys = zip(*(curve(run, metric, x) for run in runs)) if runs else ((), ())
    references = [run.summary[f"ref/{metric}"] for run in runs if run.summary.get(f"ref/{metric}") is not None]
    r0 = float(np.mean(references)) if references else math.nan
    return np.concatenate(xs) if xs else np.array([]), np.concatenate(ys) if ys else np.array([]), r0


def fit_runs(runs: list[Run], metric: str, x: str = "step") -> Fit | None:
    compute, values, r0 = points(runs, metric, x)
    return fit_curve(compute, values, r0) if not math.isnan(r0) else None


def bootstrap(runs: list[Run], metric: str, x: str = "step", draws: int = 200, seed: int = 0,
              level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of A and C_mid over seeds: `draws` resamples of the runs with replacement,
    each refitted (the draws whose fit fails are left out, and counted)."""
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(draws):
        drawn = [runs[i] for i in rng.integers(0, len(runs), len(runs))]
        fitted = fit_runs(drawn, metric, x)
        if fitted is not None:
            fits.append(fitted)
    if not fits:
        return {"asymptote": (math.nan, math.nan), "midpoint": (math.nan, math.nan), "fitted": (0, draws)}
    tail = (1 - level) / 2 * 100
    interval = lambda values: tuple(float(v) for v in np.percentile(values, [tail, 100 - tail]))
    return {"asymptote": interval([f.asymptote for f in fits]), "midpoint": interval([f.midpoint for f in fits]),
            "fitted": (len(fits), draws)}


def half_budget_error(runs: list[Run], metric: str, x: str = "step") -> float:
    """Fit on the points up to half the largest compute, predict the rest: the mean absolute error
    (NaN when either half has too few points to fit or to check)."""
    compute, values, r0 = points(runs, metric, x)
    if len(compute) == 0 or math.isnan(r0):
        return math.nan
    half = compute.max() / 2
    early = fit_curve(compute[compute <= half], values[compute <= half], r0)
    late = compute > half
    if early is None or not late.any():
        return math.nan
    return float(np.mean(np.abs(early.predict(compute[late]) - values[late])))
