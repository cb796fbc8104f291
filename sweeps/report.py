"""Report on a multirun directory: a markdown table (mean and 95% confidence interval over seeds of
each final metric, one row per configuration), the failed jobs with their error line, and PNG
plots of a metric against optimizer steps or any budget (one line per configuration, shaded from
the lowest to the highest seed).

    python -m sweeps.report multirun/algorithms
    python -m sweeps.report multirun/algorithms --plot val/accuracy --x budget/tokens_generated --at budget/tokens_generated=100000
    python -m sweeps.report multirun/exact_samplers --metrics exact/kl_to_optimum --pivot algorithm,sampler
    python -m sweeps.report multirun/algorithms --compare algorithm=gvpo algorithm=rloo --iqm

A configuration is a job's Hydra overrides without `seed`. Curves come from each job's CSV log.
Intervals and tests come from scipy.stats and rliable (sweeps/stats.py); `--compare A B` pairs
the runs of A and B by seed and prints the paired difference, its t and bootstrap intervals, and
whether it is significant, or how many seeds would make it so.
"""
import argparse
import csv
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from sweeps import stats

DEFAULT_METRICS = ("val/accuracy", "val/reward", "exact/kl_to_optimum", "exact/reward", "budget/tokens_generated",
                   "wall_seconds")
INTERVAL = "mean ± half-width of the Student t 95% interval over n seeds (scipy.stats)"


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student t interval (nan with one value)."""
    return stats.t_interval(values)


def fmt(mean: float, half: float, count: int | None = None) -> str:
    digits = lambda x: f"{x:.2g}" if abs(x) < 0.01 else (f"{x:.3f}" if abs(x) < 100 else f"{x:,.0f}")
    text = digits(mean) if math.isnan(half) else f"{digits(mean)} ± {digits(half)}"
    return text if count is None else f"{text} (n={count})"


@dataclass
class Run:
    directory: Path
    summary: dict
    label: str  # the configuration: overrides without seed
    overrides: list[str] = field(default_factory=list)  # every override but seed

    @property
    def seed(self):
        return self.summary.get("seed")

    @property
    def failed(self) -> bool:
        return self.summary.get("status") in ("failed", "interrupted")


def load_runs(directory: Path, ignore: tuple[str, ...] = ("seed",)) -> list[Run]:
    """Every job with a summary.json under directory; its label is its overrides that vary across
    the jobs, `seed` aside (Hydra's .hydra/overrides.yaml, else the summary's algorithm and sampler)."""
    found = []
    for path in sorted(directory.rglob("summary.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError) as error:  # empty or cut short (a full disk, a kill): a failed job
            summary = {"status": "failed", "error": f"unreadable summary.json: {type(error).__name__}"}
        overrides_file = path.parent / ".hydra" / "overrides.yaml"
        if overrides_file.exists():
            overrides = yaml.safe_load(overrides_file.read_text()) or []
        else:
            overrides = [f"{key}={summary[key]}" for key in ("algorithm", "sampler") if key in summary]
        found.append((path.parent, summary, [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ignore]))
    shared = set.intersection(*(set(o) for _, _, o in found)) if len(found) > 1 else set()
    return [Run(d, s, ",".join(o for o in overrides if o not in shared) or "(default)", overrides)
            for d, s, overrides in found]


def natural(value) -> tuple:
    """Sort key that orders numbers by value (1e-05 < 0.0001) and text alphabetically."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def label_key(label: str) -> list[tuple]:
    """Sort key of "a=1,b=2": key by key, values compared with `natural`."""
    return [(part.split("=", 1)[0], natural(part.split("=", 1)[-1])) for part in label.split(",")]


def by_label(runs: list[Run]) -> dict[str, list[Run]]:
    groups = defaultdict(list)
    for run in runs:
        groups[run.label].append(run)
    return dict(sorted(groups.items(), key=lambda item: label_key(item[0])))


def table(runs: list[Run], metrics: list[str], at: tuple[str, float] | None = None, metric_at: str | None = None,
          iqm: bool = False) -> str:
    done = [run for run in runs if not run.failed]
    metrics = [m for m in metrics if any(run.summary.get(m) is not None for run in done)]
    extra = [f"{metric_at} at {at[0]}={at[1]:g}"] if at and metric_at else []
    extra += [f"IQM {metrics[0]} [bootstrap 95%]"] if iqm and metrics else []
    lines = ["| configuration | n | " + " | ".join(metrics + extra) + " |", "|---" * (len(metrics) + len(extra) + 2) + "|"]
    for label, group in by_label(done).items():
        cells = []
        for metric in metrics:
            values = [run.summary[metric] for run in group if run.summary.get(metric) is not None]
            cells.append(fmt(*mean_ci(values)) if values else "")
        if at and metric_at:
            values = [v for v in (value_at(run, metric_at, *at) for run in group) if not math.isnan(v)]
            cells.append(fmt(*mean_ci(values), len(values)) if values else "beyond the runs")
        if iqm and metrics:
            values = [run.summary[metrics[0]] for run in group if run.summary.get(metrics[0]) is not None]
            cells.append("{:.3g} [{:.3g}, {:.3g}]".format(*stats.iqm_interval(values)) if values else "")
        lines.append(f"| {label} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pivot(runs: list[Run], metric: str, rows: str, columns: str) -> str:
    cells = defaultdict(list)
    for run in runs:
        if not run.failed and run.summary.get(metric) is not None:
            cells[(run.summary[rows], run.summary[columns])].append(run.summary[metric])
    row_keys = sorted({r for r, _ in cells}, key=natural)
    column_keys = sorted({c for _, c in cells}, key=natural)
    lines = [f"| {rows} \\ {columns} | " + " | ".join(map(str, column_keys)) + " |", "|---" * (len(column_keys) + 1) + "|"]
    for r in row_keys:
        values = [fmt(*mean_ci(cells[(r, c)]), len(cells[(r, c)])) if cells[(r, c)] else "" for c in column_keys]
        lines.append(f"| {r} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def failures(runs: list[Run]) -> str:
    failed = [run for run in runs if run.failed]
    if not failed:
        return ""
    return "Failed jobs:\n\n" + "\n".join(f"- `{run.label}` ({run.directory.name}): {run.summary.get('error', '')}"
                                          for run in failed)


def curve(run: Run, metric: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    """The metric at each validation of a run, against x (`step` or a budget/ key)."""
    files = sorted(run.directory.glob("csv/*/metrics.csv"))
    if not files:
        return np.array([]), np.array([])
    rows = list(csv.DictReader(files[-1].open()))
    budget_at_step, points = {}, []
    for row in rows:
        if row.get(x):
            budget_at_step[int(row["step"])] = float(row[x])
    for row in rows:
        if row.get(metric):
            step = int(row["step"])
            if x == "step":
                points.append((step, float(row[metric])))
            else:
                before = [s for s in budget_at_step if s <= step]
                points.append((budget_at_step[max(before)] if before else 0.0, float(row[metric])))
    points.sort()
    return np.array([p[0] for p in points], dtype=float), np.array([p[1] for p in points], dtype=float)


def value_at(run: Run, metric: str, x: str, value: float) -> float:
    xs, ys = curve(run, metric, x)
    if len(xs) == 0 or value > xs.max():
        return float("nan")
    return float(np.interp(value, xs, ys))


def line_styles(labels: list[str], colours) -> dict[str, tuple]:
    """(colour, line style) per configuration label "a=1,b=2": one colour per value of the first
    override, one line style per value of the others, so a grid of two factors stays legible."""
    first = sorted({label.split(",")[0] for label in labels}, key=label_key)
    rest = sorted({",".join(label.split(",")[1:]) for label in labels}, key=label_key)
    dashes = ["-", "--", ":", "-."]
    return {label: (colours[first.index(label.split(",")[0]) % len(colours)],
                    dashes[rest.index(",".join(label.split(",")[1:])) % len(dashes)]) for label in labels}


def new_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(8.5, 4.5))


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


def plot(runs: list[Run], metric: str, x: str, path: Path, logy: bool = False) -> Path | None:
    """The metric's curve against x, one line per configuration: mean over seeds, band min..max."""
    plt, figure, axes = new_figure()
    groups = by_label([run for run in runs if not run.failed])
    styles = line_styles(list(groups), plt.cm.tab10.colors)
    drawn = False
    for label, group in groups.items():
        curves = [c for c in (curve(run, metric, x) for run in group) if len(c[0]) > 1]
        if not curves:
            continue
        low, high = max(c[0].min() for c in curves), min(c[0].max() for c in curves)
        grid = np.linspace(low, high, 60) if high > low else curves[0][0]
        values = np.stack([np.interp(grid, xs, ys) for xs, ys in curves])
        colour, linestyle = styles[label]
        axes.plot(grid, values.mean(0), color=colour, linestyle=linestyle, linewidth=1.8, label=f"{label} (n={len(curves)})")
        axes.fill_between(grid, values.min(0), values.max(0), color=colour, alpha=0.08)
        drawn = True
    if not drawn:
        plt.close(figure)
        return None
    return save_figure(plt, figure, axes, x, metric, path, logy)


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
        stats = [mean_ci(lines[label][x]) for x in xs]
        halves = [0.0 if math.isnan(half) else half for _, half in stats]
        colour, linestyle = styles[label]
        axes.errorbar(xs, [mean for mean, _ in stats], yerr=halves, color=colour, linestyle=linestyle, marker="o",
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


def parse_selector(text: str) -> dict[str, str]:
    """"algorithm=gvpo,lr=1e-3" -> {"algorithm": "gvpo", "lr": "1e-3"}."""
    parts = [part for part in text.split(",") if part]
    if not parts or any("=" not in part for part in parts):
        raise SystemExit(f"error: --compare {text!r}: write KEY=VALUE[,KEY=VALUE], e.g. algorithm=gvpo")
    return dict(part.split("=", 1) for part in parts)


def matches(run: Run, selector: dict[str, str]) -> bool:
    given = dict(o.lstrip("+~").split("=", 1) for o in run.overrides if "=" in o)
    for key, value in selector.items():
        if key in given:
            if given[key] != value:
                return False
        elif str(run.summary.get(key)) != value:
            return False
    return True


def compare(runs: list[Run], metric: str, first: str, second: str) -> str:
    """Paired comparison of two configurations on metric, one row per setting of the other swept
    keys (runs are paired when they agree on those and on the seed)."""
    a_sel, b_sel = parse_selector(first), parse_selector(second)
    keys = set(a_sel) | set(b_sel)
    rest = lambda run: ",".join(part for part in run.label.split(",")  # the label: overrides that vary, seed aside
                                if part.lstrip("+~").split("=", 1)[0] not in keys and part != "(default)") or "(all)"
    values = defaultdict(lambda: ({}, {}))
    for run in runs:
        if run.failed or run.summary.get(metric) is None:
            continue
        for side, selector in enumerate((a_sel, b_sel)):
            if matches(run, selector):
                values[rest(run)][side][run.seed] = float(run.summary[metric])
    header = (f"Paired comparison on `{metric}`: A = `{first}`, B = `{second}`; A - B over the seeds both ran; "
              "significant when the paired t interval and the bootstrap interval both exclude 0\n\n"
              "| setting | n | A | B | A - B | paired t 95% | bootstrap 95% | p (paired t) | p (Welch) | P(A > B) | verdict | seeds needed |\n"
              + "|---" * 12 + "|")
    lines = [header]
    for setting in sorted(values, key=label_key):
        a, b = values[setting]
        if len(set(a) & set(b)) < 2:
            lines.append(f"| {setting} | {len(set(a) & set(b))} | | | | | | | | | fewer than 2 paired seeds | |")
            continue
        result = stats.paired(a, b)
        needed = "" if result.significant else ("no difference" if result.mean == 0 else stats.seeds_needed(result.differences) or "> 1000")
        digits = lambda x: f"{x:.3g}"
        lines.append(f"| {setting} | {len(result.seeds)} | {digits(np.mean([a[s] for s in result.seeds]))} "
                     f"| {digits(np.mean([b[s] for s in result.seeds]))} | {digits(result.mean)} "
                     f"| [{digits(result.t_low)}, {digits(result.t_high)}] | [{digits(result.boot_low)}, {digits(result.boot_high)}] "
                     f"| {result.p_paired:.3g} | {result.p_welch:.3g} | {result.improvement:.2f} | {result.verdict} | {needed} |")
    if len(lines) == 1:
        lines.append(f"| no run matches both `{first}` and `{second}` | | | | | | | | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated summary keys")
    parser.add_argument("--pivot", help="ROWS,COLUMNS: one table of the first metric, e.g. algorithm,sampler")
    parser.add_argument("--plot", default="val/accuracy", help="metric to plot against --x ('' for none)")
    parser.add_argument("--x", default="step,budget/tokens_generated", help="comma-separated x-axes ('' for none)")
    parser.add_argument("--vs", default="", help="comma-separated swept keys (e.g. lr): --plot's final value against each")
    parser.add_argument("--bars", default="", help="comma-separated categorical keys (e.g. regime): --plot's final value, grouped bars")
    parser.add_argument("--at", help="KEY=VALUE: also tabulate --plot's metric at this budget, e.g. budget/tokens_generated=1e5")
    parser.add_argument("--logy", action="store_true", help="log-scale y axis")
    parser.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="paired comparison of two configurations on the first metric, e.g. algorithm=gvpo algorithm=rloo (repeatable)")
    parser.add_argument("--iqm", action="store_true", help="add the interquartile mean of the first metric with a bootstrap interval (rliable)")
    parser.add_argument("--out", type=Path, help="markdown file (default <directory>/report.md)")
    args = parser.parse_args(argv)
    runs = load_runs(args.directory)
    metrics = args.metrics.split(",")
    at = (args.at.split("=")[0], float(args.at.split("=")[1])) if args.at else None
    if args.pivot:
        rows, columns = args.pivot.split(",")
        body = f"{metrics[0]}, {INTERVAL}\n\n" + pivot(runs, metrics[0], rows, columns)
    else:
        body = f"Each cell: {INTERVAL}\n\n" + table(runs, metrics, at, args.plot or None, args.iqm)
    for first, second in args.compare:
        body += "\n\n" + compare(runs, metrics[0], first, second)
    name = lambda x: args.directory / f"{args.plot.replace('/', '_')}_vs_{x.replace('/', '_')}.png"
    images = [plot(runs, args.plot, x, name(x), args.logy) for x in args.x.split(",") if x] if args.plot else []
    images += [plot_final(runs, args.plot, key, name(f"final_{key}"), args.logy) for key in args.vs.split(",") if key and args.plot]
    images += [plot_bars(runs, args.plot, key, name(f"final_by_{key}")) for key in args.bars.split(",") if key and args.plot]
    body += "".join(f"\n\n![{image.stem}]({image.name})" for image in images if image)
    body += ("\n\n" + failures(runs)) if failures(runs) else ""
    out = args.out or args.directory / "report.md"
    out.write_text(body + "\n")
    print(body)
    return body


if __name__ == "__main__":
    main()
