"""Compute-performance curves (ptlab/sweeps/curves.py): the sigmoid by hand, its fit recovering known
parameters, bootstrap intervals over seeds that cover them, and the half-budget check that tells a
curve that keeps its shape from one that turns."""
import json

import numpy as np
import pytest

from ptlab.sweeps import curves
from ptlab.sweeps.runs import Run

TRUE = dict(r0=0.3, asymptote=0.8, steepness=1.5, midpoint=60.0)
STEPS = np.arange(0, 301, 20)  # validations every 20 steps, the first at the start (the reference)


def test_the_sigmoid_by_hand():
    assert curves.sigmoid([0.0], **TRUE)[0] == pytest.approx(0.3)  # R(0) = R0
    assert curves.sigmoid([60.0], **TRUE)[0] == pytest.approx(0.55)  # half the gain at C_mid
    assert curves.sigmoid([120.0], **TRUE)[0] == pytest.approx(0.3 + 0.5 / (1 + 0.5 ** 1.5))
    assert curves.sigmoid([1e12], **TRUE)[0] == pytest.approx(0.8)  # the asymptote


def test_the_fit_recovers_the_parameters_of_noiseless_points():
    fitted = curves.fit_curve(STEPS, curves.sigmoid(STEPS, **TRUE), r0=0.3)
    assert fitted.asymptote == pytest.approx(0.8, rel=1e-4) and fitted.midpoint == pytest.approx(60, rel=1e-4)
    assert fitted.steepness == pytest.approx(1.5, rel=1e-4) and fitted.points == len(STEPS) - 1
    assert curves.fit_curve([0, 10], [0.3, 0.4], r0=0.3) is None  # too few points to fit three parameters


def fake_run(directory, seed: int, noise: float, shape=None) -> Run:
    """A run directory as ptlab writes one: summary.json with the reference's value, csv/ with a
    validation every 20 steps following the true curve (or `shape`) plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    values = (shape or (lambda steps: curves.sigmoid(steps, **TRUE)))(STEPS) + rng.normal(0, noise, len(STEPS))
    values[0] = TRUE["r0"]
    (directory / "csv" / "version_0").mkdir(parents=True)
    lines = ["step,val/accuracy"] + [f"{step},{value}" for step, value in zip(STEPS, values)]
    (directory / "csv" / "version_0" / "metrics.csv").write_text("\n".join(lines) + "\n")
    summary = {"seed": seed, "status": "completed", "val/accuracy": float(values[-1]), "ref/val/accuracy": TRUE["r0"]}
    (directory / "summary.json").write_text(json.dumps(summary))
    return Run(directory, summary, "algorithm=gvpo", ["algorithm=gvpo"])


def test_bootstrap_intervals_over_seeds_cover_the_true_asymptote_and_midpoint(tmp_path):
    runs = [fake_run(tmp_path / str(seed), seed, noise=0.02) for seed in range(6)]
    fitted = curves.fit_runs(runs, "val/accuracy")
    assert fitted.r0 == pytest.approx(0.3) and fitted.points == 6 * (len(STEPS) - 1)
    intervals = curves.bootstrap(runs, "val/accuracy", draws=100)
    low, high = intervals["asymptote"]
    assert low < 0.8 < high and high - low < 0.1
    low, high = intervals["midpoint"]
    assert low < 60 < high
    assert intervals["fitted"] == (100, 100)


def test_the_half_budget_check_tells_a_curve_that_keeps_its_shape_from_one_that_collapses(tmp_path):
    steady = [fake_run(tmp_path / f"s{seed}", seed, noise=0.0) for seed in range(3)]
    assert curves.half_budget_error(steady, "val/accuracy") < 1e-4
    collapse = lambda steps: np.where(steps <= 150, curves.sigmoid(steps, **TRUE), 0.2)  # a run that diverges late
    collapsing = [fake_run(tmp_path / f"c{seed}", seed, noise=0.0, shape=collapse) for seed in range(3)]
    assert curves.half_budget_error(collapsing, "val/accuracy") > 0.4


def test_the_report_tabulates_each_configurations_fit_with_its_intervals(tmp_path):
    from ptlab.sweeps.report import curves_section

    runs = [fake_run(tmp_path / str(seed), seed, noise=0.02) for seed in range(4)]
    row = curves_section(runs, "val/accuracy", "step").splitlines()[-1].split(" | ")
    fitted, interval = curves.fit_runs(runs, "val/accuracy"), curves.bootstrap(runs, "val/accuracy")
    assert row[0] == "| algorithm=gvpo" and row[1] == "4"
    assert row[2] == f"{fitted.asymptote:.3g} [{interval['asymptote'][0]:.3g}, {interval['asymptote'][1]:.3g}]"
    assert float(row[5].rstrip(" |")) == pytest.approx(curves.half_budget_error(runs, "val/accuracy"), rel=0.05)
