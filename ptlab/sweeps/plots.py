"""PNG plots of a multirun: a metric's curve against optimizer steps or a budget (one line per
configuration, shaded from the lowest to the highest seed), its final value against a swept number
(lr, beta) with 95% t intervals, or grouped bars by a categorical key (regime)."""
import math
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from ptlab.sweeps.runs import Run, by_label, curve, label_key, natural
from ptlab.sweeps.stats import t_interval as mean_ci

BANDS = 8  # curves drawn with their seed band up to this many configurations


def line_styles(labels: list[str], colours) -> dict[str, tuple]:
    """(colour, line style) per configuration label "a=1,b=2": one colour per value of one factor
    and one line style per value of the others, so a grid of two factors stays legible. The factor
    with more values gets the colours (there are 4 line styles and up to 20 colours): by default the
    first override, unless the others take more values than it (15 algorithms x 2 samplers: colour
    by algorithm, style by sampler). Past 20 values the colours repeat with the next line style."""
    split = [(label.split(",")[0], ",".join(label.split(",")[1:])) for label in labels]
    first = sorted({a for a, _ in split}, key=label_key)
    rest = sorted({b for _, b in split}, key=label_key)
    by_rest = len(rest) > len(first) and len(first) <= 4
    dashes = ["-", "--", ":", "-."]
    coloured, styled = (rest, first) if by_rest else (first, rest)
    style = lambda a, b: (coloured.index(b if by_rest else a), styled.index(a if by_rest else b))
    # more values than colours: the colours come round again with the next line style
    return {label: (colours[c % len(colours)], dashes[(s + c // len(colours)) % len(dashes)])
            for label, (c, s) in ((label, style(a, b)) for label, (a, b) in zip(labels, split))}


def palette(plt, labels: list[str]):
    """tab10, or tab20 when a factor has more than 10 values."""
    values = max(len({label.split(",")[0] for label in labels}), len({",".join(label.split(",")[1:]) for label in labels}))
    return plt.cm.tab20.colors if values > 10 else plt.cm.tab10.colors


def new_figure(entries: int = 0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(8.5, max(4.5, 0.17 * entries)))  # tall enough for its legend


def save_figure(plt, figure, axes, xlabel: str, ylabel: str, path: Path, logy: bool) -> Path:
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if logy:
        axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot(runs: list[Run], metric: str, x: str, path: Path, logy: bool = False, gain: bool = False) -> Path | None:
    """The metric's curve against x, one line per configuration: mean over seeds, band min..max.
    gain=True: each run's curve minus its own reference value (`ref/<metric>`), band the 95% t
    interval of the mean gain: where each seed has its own warm start and task draw, the seeds'
    references differ, and the gain is what the claims against the reference compare."""
    groups = by_label([run for run in runs if not run.failed])
    plt, figure, axes = new_figure(len(groups))
    styles = line_styles(list(groups), palette(plt, list(groups)))
    drawn = False
    for label, group in groups.items():
        curves = [(xs, ys - (run.summary.get(f"ref/{metric}") or 0.0) if gain else ys)
                  for run, (xs, ys) in ((run, curve(run, metric, x)) for run in group) if len(xs) > 1]
        if not curves:
            continue
        low, high = max(c[0].min() for c in curves), min(c[0].max() for c in curves)
        grid = np.linspace(low, high, 60) if high > low else curves[0][0]
        values = np.stack([np.interp(grid, xs, ys) for xs, ys in curves])
        colour, linestyle = styles[label]
        axes.plot(grid, values.mean(0), color=colour, linestyle=linestyle, linewidth=1.8, label=f"{label} (n={len(curves)})")
        if len(groups) <= BANDS:  # past this many lines the bands hide each other: the gains plot has the intervals
            if gain and len(curves) > 1:
                half = np.array([mean_ci(column)[1] for column in values.T])
                axes.fill_between(grid, values.mean(0) - half, values.mean(0) + half, color=colour, alpha=0.08)
            else:
                axes.fill_between(grid, values.min(0), values.max(0), color=colour, alpha=0.08)
        drawn = True
    if not drawn:
        plt.close(figure)
        return None
    if gain:
        axes.axhline(0.0, color="grey", linestyle=":", linewidth=1)
    band = "" if len(groups) > BANDS else ", 95% t band"
    ylabel = f"{metric} - reference (mean{band})" if gain else metric
    return save_figure(plt, figure, axes, x, ylabel, path, logy)


def plot_gains(runs: list[Run], metric: str, path: Path) -> Path | None:
    """Each configuration's final gain over its reference (`metric - ref/<metric>`, run by run):
    mean and 95% t interval, each seed a dot, sorted, one row per configuration: the view of a study
    with many arms, whose curves overlap."""
    gains = defaultdict(list)
    for run in runs:
        if not run.failed and run.summary.get(metric) is not None and run.summary.get(f"ref/{metric}") is not None:
            gains[run.label].append(float(run.summary[metric]) - float(run.summary[f"ref/{metric}"]))
    if not gains:
        return None
    order = sorted(gains, key=lambda label: statistics.fmean(gains[label]))
    plt, figure, axes = new_figure()
    figure.set_size_inches(8.5, max(3.0, 0.3 * len(order) + 1.0))
    for row, label in enumerate(order):
        mean, half = mean_ci(gains[label])
        axes.errorbar([mean], [row], xerr=[0.0 if math.isnan(half) else half], color="C0", marker="o", capsize=3)
        axes.scatter(gains[label], [row] * len(gains[label]), color="grey", s=8, alpha=0.6, zorder=3)
    axes.axvline(0.0, color="grey", linestyle=":", linewidth=1)
    axes.set_yticks(range(len(order)), [f"{label} (n={len(gains[label])})" for label in order], fontsize=7)
    axes.set_xlabel(f"final {metric} - reference (mean and 95% t interval; dots: seeds)")
    axes.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_final(runs: list[Run], metric: str, key: str, path: Path, logy: bool = False) -> Path | None:
    """The final metric against a swept summary key (lr, beta): one line per configuration with that
    key left out, mean and 95% CI over seeds as error bars; log x when the values span 10x or more."""
    lines = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if not run.failed and run.summary.get(metric) is not None and run.summary.get(key) is not None:
            rest = ",".join(part for part in run.label.split(",") if part.split("=", 1)[0] != key) or metric
            lines[rest][float(run.summary[key])].append(run.summary[metric])
    if not lines:
        return None
    plt, figure, axes = new_figure()
    styles = line_styles(list(lines), plt.cm.tab10.colors)
    for label in sorted(lines, key=label_key):
        xs = sorted(lines[label])
        intervals = [mean_ci(lines[label][x]) for x in xs]
        halves = [0.0 if math.isnan(half) else half for _, half in intervals]
        colour, linestyle = styles[label]
        axes.errorbar(xs, [mean for mean, _ in intervals], yerr=halves, color=colour, linestyle=linestyle, marker="o",
                      capsize=3, label=f"{label} (n={max(len(v) for v in lines[label].values())})")
        seeds = [(x, y) for x in xs for y in lines[label][x]]
        axes.scatter(*zip(*seeds), color=colour, s=10, alpha=0.5, zorder=3)  # each seed
    before = defaultdict(list)  # the metric before training, which may depend on the key (e.g. beta)
    for run in runs:
        if run.summary.get(f"ref/{metric}") is not None and run.summary.get(key) is not None:
            before[float(run.summary[key])].append(run.summary[f"ref/{metric}"])
    if before:
        xs = sorted(before)
        axes.plot(xs, [statistics.fmean(before[x]) for x in xs], color="grey", linestyle=":", label="before training")
    values = [x for line in lines.values() for x in line]
    if min(values) > 0 and max(values) >= 10 * min(values):
        axes.set_xscale("log")
    return save_figure(plt, figure, axes, f"{key} (final value, mean and 95% CI over seeds)", metric, path, logy)


def plot_bars(runs: list[Run], metric: str, key: str, path: Path) -> Path | None:
    """The final metric for each value of a categorical summary key (e.g. regime), one bar per
    configuration with that key left out: mean over seeds, 95% t interval, each seed a dot."""
    cells = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if not run.failed and run.summary.get(metric) is not None and run.summary.get(key) is not None:
            rest = ",".join(part for part in run.label.split(",") if part.lstrip("+~").split("=", 1)[0] != key) or metric
            cells[str(run.summary[key])][rest].append(run.summary[metric])
    if not cells:
        return None
    groups = sorted(cells, key=natural)
    labels = sorted({label for cell in cells.values() for label in cell}, key=label_key)
    plt, figure, axes = new_figure()
    width = 0.8 / len(labels)
    colours = plt.cm.tab10.colors
    for j, label in enumerate(labels):
        xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(groups))]
        stats_ = [mean_ci(cells[g][label]) if cells[g][label] else (float("nan"), float("nan")) for g in groups]
        halves = [0.0 if math.isnan(half) else half for _, half in stats_]
        n = max(len(cells[g][label]) for g in groups)
        axes.bar(xs, [mean for mean, _ in stats_], width, yerr=halves, capsize=2, color=colours[j % len(colours)],
                 alpha=0.75, label=f"{label} (n={n})")
        for x, g in zip(xs, groups):
            axes.scatter([x] * len(cells[g][label]), cells[g][label], color="black", s=6, zorder=3)
    before = [run.summary[f"ref/{metric}"] for run in runs if run.summary.get(f"ref/{metric}") is not None]
    if before:
        axes.axhline(statistics.fmean(before), color="grey", linestyle=":", label="before training")
    axes.set_xticks(range(len(groups)), groups)
    return save_figure(plt, figure, axes, f"{key} (mean and 95% t interval over seeds; dots: seeds)", metric, path, False)


