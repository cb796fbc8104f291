"""Report on a multirun directory: the study's declared claims tested with a multiplicity
correction, a markdown table (mean and 95% t interval over seeds of each final metric, one row per
configuration), PNG plots, the exploratory pairs, the failed jobs with their error line.

    python -m ptlab.sweeps.report multirun/algorithms                 # the options the experiment declares
    python -m ptlab.sweeps.report multirun/algorithms --page          # and write docs/results/algorithms.md
    python -m ptlab.sweeps.report multirun/exact_samplers --metrics exact/kl_to_optimum --pivot algorithm,sampler
    python -m ptlab.sweeps.report multirun/algorithms --compare algorithm=gvpo algorithm=rloo --iqm

A configuration is a job's Hydra overrides without `seed`. Curves come from each job's CSV log.
The claims and their tests are sweeps/claims.py (the method is in its docstring); `--compare A B`
adds an exploratory paired comparison. An experiment's `study.report` node sets this command's
defaults (metrics, pivot, plots), so its results are one command away.
"""
import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

from ptlab.sweeps import claims, curves, frontier, pages, plots, stats
from ptlab.sweeps.runs import Run, by_label, label_key, matches, natural, parse_selector, value_at

FOLD = 40  # exploratory pairs shown open up to this many
DEFAULTS = {"metrics": "val/accuracy,val/reward,exact/kl_to_optimum,exact/reward,budget/tokens_generated,wall_seconds",
            "pivot": None, "plot": "val/accuracy", "x": "step,budget/tokens_generated", "vs": "", "bars": "", "logy": False,
            "curves": "", "frontier": False, "ranking": False}
INTERVAL = "mean ± half-width of the Student t 95% interval over n seeds (scipy.stats)"


MOVED = "val/kl_ref"  # how far a policy moved: KL(pi_theta || pi_ref) on the held-out prompts (training/evaluation.py)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student t interval (nan with one value)."""
    return stats.t_interval(values)


def fmt(mean: float, half: float, count: int | None = None) -> str:
    digits = lambda x: f"{x:.2g}" if abs(x) < 0.01 else (f"{x:.3f}" if abs(x) < 100 else f"{x:,.0f}")
    text = digits(mean) if math.isnan(half) else f"{digits(mean)} ± {digits(half)}"
    return text if count is None else f"{text} (n={count})"


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


def compare(runs: list[Run], metric: str, first: str, second: str) -> str:
    """Exploratory paired comparison of two configurations on metric, one row per setting of the
    other swept keys (runs are paired when they agree on those and on the seed)."""
    a_sel, b_sel = parse_selector(first), parse_selector(second)
    settings = defaultdict(dict)
    for run in runs:
        if matches(run, a_sel) or matches(run, b_sel):
            rest = {key: value for key, value in run.settings.items() if key not in a_sel and key not in b_sel and key != "seed"}
            settings[",".join(f"{k}={v}" for k, v in sorted(rest.items())) or "(all)"] = rest
    results = []
    for label, rest in sorted(settings.items(), key=lambda item: label_key(item[0])):
        extra = "".join(f",{key}={value}" for key, value in rest.items())
        a, b = first + extra, second + extra
        data = claims.paired(runs, a, b, metric)
        results.append(claims.Result(claims.Claim(a, b, metric), data, stats.difference(data.units)))
    for result, q in zip(results, stats.benjamini_hochberg([r.test.p for r in results])):
        result.adjusted = q
    return (f"Exploratory paired comparison on `{metric}` (asked for with --compare, not a declared claim):\n\n"
            + claims.exploratory_table(results, 0.05))


def claims_section(runs: list[Run], study: claims.Study, extra: list) -> str:
    """The declared claims, tested on the runs of the declared seeds; then the exploratory pairs."""
    results = claims.evaluate(runs, study)
    text = (f"### Declared claims\n\nDeclared in the experiment before it was run: {len(study.claims)} claims, {study.seeds} "
            f"seeds, family-wise alpha {study.alpha} (Holm). A - B is paired by seed; a unit is a seed, or a warm start "
            "where seeds share several (their differences averaged): 'interval covers' says what a unit redraws. p is the "
            "t test's, one-sided where a direction is expected. **Significant** needs the Holm-adjusted p below alpha, "
            "3 or more units and non-zero spread; 'units for 80% power' is what a new study would need at the observed "
            "effect size (alpha / m). Method: docs/method.md.\n\n"
            + claims.claims_table(results, study))
    if extra:
        text += f"\n\nSeeds {extra} are beyond the {study.seeds} declared and left out of the claims."
    ran = len({run.seed for run in runs if not run.failed and run.seed is not None})
    if ran < study.seeds:
        text += (f"\n\n**Partial study**: {ran} of the {study.seeds} declared seeds have completed runs; the claims are "
                 "tested on those.")
    gaps = claims.missing(runs, study)
    if gaps:  # re-running the sweep's command runs (or resumes) just these
        text += ("\n\n**Missing cells** (no completed run; each claim is tested on the seeds both its sides have): "
                 + "; ".join(f"`{selector}` seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
                             for selector, seeds in gaps) + ".")
    splits = claims.reference_splits(runs, study.metric)
    if splits:  # a pair of arms on such a seed compares different starting points
        text += ("\n\n**The reference differs within a seed** (`ref/" + study.metric + "`; the arms' warm starts were "
                 "not the same): " + "; ".join(f"{where}: " + ", ".join(
                     f"{value:.4g} ({', '.join(labels[:3])}{', ...' if len(labels) > 3 else ''})"
                     for value, labels in found.items()) for where, found in splits.items()) + ".")
    pairs = claims.exploratory(runs, study, study.metric)
    if pairs:
        table = claims.exploratory_table(pairs, study.alpha)
        if len(pairs) > FOLD:  # many arms: the pairs fold away under their count, the results table stays in view
            low = sum(r.adjusted < study.alpha for r in pairs if not math.isnan(r.adjusted))
            table = (f"<details><summary>{len(pairs)} pairs, {low} with q below {study.alpha}</summary>\n\n"
                     + table + "\n\n</details>")
        text += ("\n\n### Exploratory pairs\n\nEvery other pair, chosen after the data: not claims, no verdict. "
                 "q is the Benjamini-Hochberg false-discovery-rate adjusted p over these pairs.\n\n" + table)
    return text


def ranking_section(runs: list[Run], metric: str, tuning: dict | None = None) -> str:
    """The configurations ranked by their mean final `metric`, each with its 95% interval over seeds and
    how far it moved (val/kl_ref), grouped: a configuration joins the group above while its interval
    overlaps the interval of that group's first (a reader cannot tell them apart at these seeds)."""
    rows = []
    for label, group in by_label([run for run in runs if not run.failed]).items():
        values = [run.summary[metric] for run in group if run.summary.get(metric) is not None]
        kls = [run.summary[MOVED] for run in group if run.summary.get(MOVED) is not None]
        if values:
            mean, half = mean_ci(values)
            rows.append((mean, 0.0 if math.isnan(half) else half, label, len(values), mean_ci(kls)[0] if kls else math.nan))
    rows.sort(key=lambda row: -row[0])
    chosen = {arm["arm"]: ",".join(f"{k}={v}" for k, v in arm["chosen"].items()) for arm in (tuning or {}).get("arms", [])}
    lines = [f"### Ranking\n", f"{metric} at the end, mean and 95% interval over seeds; a group holds the configurations "
             "whose intervals overlap its first's" + (", each at the setting its tuning chose" if chosen else "") + ".\n",
             "| group | configuration | n | " + metric + " | " + MOVED + " |", "|---|---|---|---|---|"]
    group, leader = 0, None
    for mean, half, label, count, kl in rows:
        if leader is None or mean + half < leader[0] - leader[1]:
            group, leader = group + 1, (mean, half)
        shown = label + (f" ({chosen[label]})" if label in chosen else "")
        lines.append(f"| {group} | {shown} | {count} | {fmt(mean, half)} | {'' if math.isnan(kl) else f'{kl:.3g}'} |")
    return "\n".join(lines)


def tuning_section(record: dict) -> str:
    """The whole tuning table of a tuned study (sweeps/tune.py's tuning.json): every arm's grid on the
    tuning seeds, the rule and the setting it chose."""
    declaration = record["declaration"]
    lines = ["### Tuning\n", f"Each arm's setting was chosen on tuning seeds {', '.join(map(str, declaration['seeds']))} "
             f"(no claim seed), before any claim seed ran, by the rule `{declaration['rule']}`: the best mean of "
             f"{declaration['metric']} at the end over those seeds; a setting that failed or diverged on any of them is "
             "not chosen; ties to the setting declared first.\n",
             "| arm | setting | per tuning seed | mean | |", "|---|---|---|---|---|"]
    for arm in record["arms"]:
        for point in arm["points"]:
            setting = ",".join(f"{key}={value}" for key, value in point["setting"].items())
            values = ", ".join("failed" if value is None else f"{value:.3g}" for value in point["values"].values())
            mean = f"{point['mean']:.4g}" if point["mean"] is not None else ""
            lines.append(f"| {arm['arm']} | {setting} | {values} | {mean} | {'**chosen**' if point['setting'] == arm['chosen'] else ''} |")
    return "\n".join(lines)


def curves_section(runs: list[Run], metric: str, x: str) -> str:
    """Each configuration's fitted compute-performance curve (sweeps/curves.py): asymptote A and
    midpoint C_mid with bootstrap intervals over seeds, steepness B, and the half-budget check."""
    lines = [f"### Curves: {metric} against {x}\n", "R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B), R0 the reference; "
             "intervals: 95% percentile bootstrap over seeds (200 resamples); half-budget error: fitted on C up to half "
             "the largest, the mean absolute error of its predictions beyond.\n",
             "| configuration | n | A [95%] | C_mid [95%] | B | half-budget error |", "|---|---|---|---|---|---|"]
    for label, group in by_label([run for run in runs if not run.failed]).items():
        fitted = curves.fit_runs(group, metric, x)
        if fitted is None:
            lines.append(f"| {label} | {len(group)} | no fit | | | |")
            continue
        interval = curves.bootstrap(group, metric, x)
        a, m = interval["asymptote"], interval["midpoint"]
        lines.append(f"| {label} | {len(group)} | {fitted.asymptote:.3g} [{a[0]:.3g}, {a[1]:.3g}] | {fitted.midpoint:.3g} "
                     f"[{m[0]:.3g}, {m[1]:.3g}] | {fitted.steepness:.2g} | {curves.half_budget_error(group, metric, x):.2g} |")
    return "\n".join(lines)


def options_of(runs: list[Run], args) -> dict:
    """The report's options: the command line's, else the experiment's `study.report`, else DEFAULTS."""
    declared = next((run.config.get("study") or {} for run in runs if run.config), {}).get("report") or {}
    return {key: getattr(args, key) if getattr(args, key) is not None else declared.get(key, default)
            for key, default in DEFAULTS.items()}


def render(runs: list[Run], options: dict, directory: Path, compares=(), at=None, iqm=False, tuning=None) -> str:
    """The report's markdown; its PNGs are written to `directory`; `tuning`: a tuned study's choices."""
    metrics = options["metrics"].split(",")
    metrics += [MOVED] if MOVED not in metrics else []  # beside every score (a column only where the runs measured it)
    study = claims.study_of(runs)
    extra = []
    if study:  # runs of seeds beyond the declared count are not shown as the study's
        kept, extra = claims.declared_seeds(runs, study)
        runs = kept + [run for run in runs if run.seed is None]
    sections = [ranking_section(runs, metrics[0], tuning)] if options["ranking"] else []
    sections += [claims_section(runs, study, extra)] if study and study.claims else []
    sections += [tuning_section(tuning)] if tuning else []
    if all(run.failed for run in runs):  # nothing to tabulate or plot
        return "\n\n".join(sections + ["### Results\n\nNo job completed: every one is listed below with its error.",
                                        failures(runs)])
    if options["pivot"]:
        rows, columns = options["pivot"].split(",")
        sections.append(f"### Results\n\n{metrics[0]}, {INTERVAL}\n\n" + pivot(runs, metrics[0], rows, columns))
    else:
        sections.append(f"### Results\n\nEach cell: {INTERVAL}\n\n" + table(runs, metrics, at, options["plot"] or None, iqm))
    sections += [compare(runs, metrics[0], first, second) for first, second in compares]
    sections += [curves_section(runs, options["plot"], x) for x in (options["curves"] or "").split(",") if x and options["plot"]]
    name = lambda x: directory / f"{options['plot'].replace('/', '_')}_vs_{x.replace('/', '_')}.png"
    images = []
    if options["plot"]:
        images += [plots.plot(runs, options["plot"], x, name(x), options["logy"]) for x in options["x"].split(",") if x]
        references = {run.summary.get(f"ref/{options['plot']}") for run in runs} - {None}
        if len(references) > 1 and "step" in options["x"].split(","):  # seeds start from different references
            images.append(plots.plot(runs, options["plot"], "step", name("step").with_name(  # each seed against its own start
                name("step").stem.replace("_vs_step", "_gain_vs_step.png")), gain=True))
        if len(by_label([run for run in runs if not run.failed])) > plots.BANDS:  # many arms: their final gains, sorted
            images.append(plots.plot_gains(runs, options["plot"], directory / f"{options['plot'].replace('/', '_')}_gains.png"))
        images += [plots.plot_final(runs, options["plot"], key, name(f"final_{key}"), options["logy"])
                   for key in options["vs"].split(",") if key]
        images += [plots.plot_bars(runs, options["plot"], key, name(f"final_by_{key}")) for key in options["bars"].split(",") if key]
        if options["frontier"]:  # every setting: the tuning grid's runs where the study was tuned
            grid = load(Path(tuning["tuning_dir"])) if tuning and Path(tuning["tuning_dir"]).is_dir() else runs
            images.append(frontier.plot_frontier(grid, options["plot"], name("kl_ref")))
    if any(images):
        sections.append("\n\n".join(f"![{image.stem}]({image.name})" for image in images if image))
    if failures(runs):
        sections.append(failures(runs))
    return "\n\n".join(sections)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--metrics", help="comma-separated summary keys")
    parser.add_argument("--pivot", help="ROWS,COLUMNS: one table of the first metric, e.g. algorithm,sampler")
    parser.add_argument("--plot", help="metric to plot against --x ('' for none)")
    parser.add_argument("--x", help="comma-separated x-axes ('' for none)")
    parser.add_argument("--vs", help="comma-separated swept keys (e.g. lr): --plot's final value against each")
    parser.add_argument("--bars", help="comma-separated categorical keys (e.g. regime): --plot's final value, grouped bars")
    parser.add_argument("--logy", action="store_true", default=None, help="log-scale y axis")
    parser.add_argument("--ranking", action="store_true", default=None,
                        help="open with the configurations ranked by the first metric, grouped where their intervals overlap")
    parser.add_argument("--frontier", action="store_true", default=None,
                        help="plot --plot's metric against the held-out KL to the reference (sweeps/frontier.py)")
    parser.add_argument("--curves", help="comma-separated compute axes (step, budget/tokens_generated): fit --plot's metric "
                                         "per configuration with ScaleRL's sigmoid (sweeps/curves.py)")
    parser.add_argument("--at", help="KEY=VALUE: also tabulate --plot's metric at this budget, e.g. budget/tokens_generated=1e5")
    parser.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="exploratory paired comparison of two configurations on the first metric (repeatable)")
    parser.add_argument("--iqm", action="store_true", help="add the interquartile mean of the first metric with a bootstrap interval (rliable)")
    parser.add_argument("--out", type=Path, help="markdown file (default <directory>/report.md)")
    parser.add_argument("--page", action="store_true", help="also write the results page docs/results/<experiment>.md (sweeps/pages.py)")
    args = parser.parse_args(argv)
    runs = load(args.directory)
    options = options_of(runs, args)
    at = (args.at.split("=")[0], float(args.at.split("=")[1])) if args.at else None
    tuning = read_tuning(args.directory)
    body = render(runs, options, args.directory, args.compare, at, args.iqm, tuning)
    out = args.out or args.directory / "report.md"
    out.write_text(body + "\n")
    print(body)
    if args.page:
        print(f"\nwrote {write_page(args.directory, runs, options, sys.argv[1:] if argv is None else argv, tuning)}")
    return body


def read_tuning(directory: Path) -> dict | None:
    """A tuned study's choices (sweeps/tune.py writes <directory>/tuning.json), or None."""
    path = Path(directory) / "tuning.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_page(directory: Path, runs: list[Run], options: dict, argv, tuning: dict | None = None) -> Path:
    """Write docs/results/<experiment>.md (+ .json and PNGs) from the runs in `directory`; `argv` is
    the report's command line (shown on the page, the directory as the experiment names it)."""
    experiment = next((run.config.get("sweep") for run in runs if run.config.get("sweep")), None)
    if not experiment or not (pages.EXPERIMENTS / f"{experiment}.yaml").exists():
        raise SystemExit(f"error: the runs in {directory} are not of a shipped experiment (their `sweep` is {experiment!r})")
    mismatch = pages.config_mismatch(runs)
    if mismatch:
        raise SystemExit(f"error: not writing the page of {experiment}: its runs were made with another config ({mismatch})")
    images = pages.RESULTS / experiment
    images.mkdir(parents=True, exist_ok=True)
    body = render(runs, options, images, tuning=tuning).replace("](", f"]({experiment}/")
    study = claims.study_of(runs)
    results = claims.evaluate(claims.declared_seeds(runs, study)[0], study) if study and study.claims else []
    data = {"experiment": experiment, "config_hash": pages.config_hash(experiment),
            "generated_by": " ".join(["python -m ptlab.sweeps.report", f"multirun/{experiment}",  # where the experiment writes
                                      *(a for a in map(str, argv or ["--page"]) if Path(a) != Path(directory))]),
            "status": None, "provenance": pages.provenance(runs, directory), "alpha": study.alpha if study else None,
            "claims": [pages.claim_record(result) for result in results], "body": body, "replications": [],
            **({"tuning": tuning} if tuning else {})}
    old = pages.RESULTS / f"{experiment}.json"
    if old.exists():  # replications of the same claims on the same config stay; others were of other numbers
        previous = json.loads(old.read_text())
        if previous.get("config_hash") == data["config_hash"] and previous.get("claims") == data["claims"]:
            data["replications"] = previous.get("replications", [])
    return pages.save(data)


def load(directory: Path) -> list[Run]:
    from ptlab.sweeps.runs import load_runs

    if not directory.is_dir():
        raise SystemExit(f"error: {directory} is not a directory (a multirun, e.g. multirun/algorithms)")
    runs = load_runs(directory)
    if not runs:
        raise SystemExit(f"error: no summary.json under {directory}: has the sweep run?")
    return runs


if __name__ == "__main__":
    from ptlab.errors import ConfigError

    try:
        main()
    except ConfigError as error:  # a study declaration the report cannot evaluate: one line
        raise SystemExit(f"error: {error}") from None
