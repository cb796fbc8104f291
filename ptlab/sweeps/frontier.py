"""The reward-KL frontier: a score against how far the policy moved from its reference.

For a KL-regularised objective one setting of one algorithm is one point on a trade-off; the DPO
paper (Rafailov et al. 2023, arXiv 2305.18290, Fig. 2) compares algorithms by the reward each reaches
at a given KL(pi || pi_ref), over many settings and checkpoints. Here every validation of a run is a
point (val/kl_ref, metric) (training/evaluation.py measures the KL on the held-out prompts), the
reference itself the point (0, ref/<metric>).

`at_kl` reads one run's metric at a KL value by linear interpolation between its validations, sorted
by KL (NaN beyond the largest KL the run reached: a run is not extrapolated); a claim `on: kl` pairs
two arms seed by seed at the same KL (claims.py). `plot_frontier` draws every configuration's
validations, each point the mean over seeds with 95% Student t intervals on both axes.
"""
import math
from pathlib import Path

import numpy as np

from ptlab.sweeps.runs import Run, by_label, curve
from ptlab.sweeps.stats import t_interval

KL = "val/kl_ref"


def trajectory(run: Run, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(KL, metric) at each validation of the run that measured both, sorted by KL, with the
    reference's (0, ref/<metric>) first."""
    steps_kl, kl = curve(run, KL, "step")
    steps_metric, values = curve(run, metric, "step")
    by_step = dict(zip(steps_metric.tolist(), values.tolist()))
    pairs = [(k, by_step[s]) for s, k in zip(steps_kl.tolist(), kl.tolist()) if s in by_step and s > 0]
    reference = run.summary.get(f"ref/{metric}")
    if reference is not None:
        pairs.append((0.0, float(reference)))
    pairs.sort()
    return np.array([p[0] for p in pairs], dtype=float), np.array([p[1] for p in pairs], dtype=float)


def at_kl(run: Run, metric: str, kl: float) -> float:
    """The run's metric at KL(pi || pi_ref) = kl, interpolated between its validations; NaN when the
    run never moved that far."""
    kls, values = trajectory(run, metric)
    if len(kls) == 0 or kl > kls.max() or kl < kls.min():
        return math.nan
    return float(np.interp(kl, kls, values))


def plot_frontier(runs: list[Run], metric: str, path: Path) -> Path | None:
    """One point per configuration and validation step: the mean KL and mean metric over its seeds,
    with 95% intervals both ways; a configuration's points joined in step order. None without KL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_label([run for run in runs if not run.failed])
    fig, ax = plt.subplots(figsize=(7, 5))
    drawn = 0
    for index, (label, group) in enumerate(groups.items()):
        per_step: dict[float, list[tuple[float, float]]] = {}
        for run in group:
            steps_kl, kl = curve(run, KL, "step")
            steps_metric, values = curve(run, metric, "step")
            by_step = dict(zip(steps_metric.tolist(), values.tolist()))
            for step, k in zip(steps_kl.tolist(), kl.tolist()):
                if step in by_step:
                    per_step.setdefault(step, []).append((k, by_step[step]))
        if not per_step:
            continue
        points = []
        for step in sorted(per_step):
            kls, values = zip(*per_step[step])
            (kl_mean, kl_half), (value_mean, value_half) = t_interval(list(kls)), t_interval(list(values))
            points.append((kl_mean, value_mean, 0 if math.isnan(kl_half) else kl_half, 0 if math.isnan(value_half) else value_half))
        x, y, xerr, yerr = (np.array(column) for column in zip(*points))
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o", markersize=3, capsize=2, linewidth=1,
                    color=plt.get_cmap("tab20")(index % 20), label=label)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("KL(pi || pi_ref) on the held-out prompts (nats per response)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against how far each policy moved")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
