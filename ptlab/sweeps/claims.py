"""A study's declared claims, tested on its runs with a multiplicity correction; every other pair of
configurations as exploratory.

A shipped experiment declares, before it is run, what it tests (sweeps/experiment/*.yaml):

    study:
      metric: val/sampled_accuracy   # what every claim compares, unless a claim names its own
      alpha: 0.05                    # family-wise error over the declared claims (Holm)
      seeds: 6                       # the seed count, fixed up front (the sweep's seed list has this many)
      claims:
        - {a: algorithm=gvpo, b: reference, expect: greater}  # a configuration against its own reference
        - {a: algorithm=gvpo, b: algorithm=grpo}               # expect: two-sided (default), greater or less

`a` and `b` select configurations by their overrides (`algorithm=gvpo,regime=stale`) and name every
swept key but the seed; `b: reference` compares a configuration with the policy it started from
(`ref/<metric>` of the same runs). `expect` is the direction declared before the data: greater
(A - B > 0) or less makes the test one-sided.

Units. A claim's sample is one difference per independent unit. Runs are paired by seed (the same
seed gives the same prompt order, evaluation draws and, in the shipped studies, the same warm start
and task draw). Seeds that share a warm start are not independent draws of it: their differences
are averaged per warm start first, and the warm starts are the units (a one-sample t test over them,
the cluster-level analysis of a two-stage design). With one warm start per seed, as the shipped
studies run (`warmstart.seed: ${seed}`), seeds are the units and the interval covers the warm start,
the run seed and, with `task.seed: ${seed}`, the prompts (the report says so only when the runs'
recorded task data, summary.json's `task_data`, differ). With one warm start for every seed (the
`default` experiment, as a user runs it) seeds are the units and the claim is about that warm start
alone. What each interval covers is printed with it.

Tests: the one-sample t test of the unit differences (two-sided or in the declared direction),
Holm-Bonferroni over the declared family, "significant" only with 3 or more units and a non-zero
spread, and the units a re-run would need for 80% power at the observed effect size, at alpha / m
(Bonferroni's bound on Holm's strictest step: conservative). Exploratory pairs get Benjamini-Hochberg
q-values over their own family and no verdict.
"""
import math
from collections import defaultdict
from dataclasses import dataclass

from ptlab.errors import ConfigError
from ptlab.sweeps import curves, frontier, stats
from ptlab.sweeps.runs import Run, by_label, label_key, matches, parse_selector

REFERENCE = "reference"


@dataclass(frozen=True)
class Claim:
    a: str           # selector text, e.g. "algorithm=gvpo,regime=stale"
    b: str           # selector text, or "reference"
    metric: str
    expect: str = "two-sided"
    on: str = "final"  # what of each run is compared: see ON
    kl: float | None = None  # on: kl, the KL(pi || pi_ref) both are read at
    x: str = "step"  # on: asymptote / midpoint, the compute axis of the curve

    @property
    def name(self) -> str:
        kind = "" if self.on == "final" else f" ({self.on}{f' {self.kl:g}' if self.on == 'kl' else ''})"
        return f"{self.a} - {REFERENCE if self.b == REFERENCE else self.b}{kind}"


# What a claim compares, per seed (paired by seed as every claim): the metric at the end of the run; A, the
# asymptote of the run's compute-performance curve (sweeps/curves.py, fitted to its own validations), and
# C_mid, the compute to half its gain; the metric at a matched KL(pi || pi_ref) (sweeps/frontier.py).
ON = ("final", "asymptote", "midpoint", "kl")


@dataclass(frozen=True)
class Tuning:
    """Per-arm tuning declared with the study (sweeps/tune.py runs it): every arm (a configuration the
    sweep runs) tries each point of its grid on the tuning seeds, disjoint from the claim seeds, and
    the rule picks its setting before any claim seed runs. `grid` is every arm's; `arms` replaces it,
    key by key, for the arms it names ({"algorithm=sft": {"lr": [...]}})."""
    seeds: tuple[int, ...]
    grid: dict
    arms: dict
    rule: str = "final"  # the best mean over the tuning seeds of the study's metric at the end; ties: the first
    #                      point of the grid in its declared order (declare the learning rates ascending)


RULES = ("final",)


@dataclass(frozen=True)
class Study:
    metric: str
    alpha: float
    seeds: int
    claims: tuple[Claim, ...]
    tuning: Tuning | None = None


def declared(study: dict | None) -> Study | None:
    """The study node of an experiment's config, checked; None if the experiment declares none."""
    if not study:
        return None
    where = "study"
    for key in ("metric", "alpha", "seeds", "claims"):
        if key not in study:
            raise ConfigError(f"{where}.{key} is required: an experiment declares its metric, alpha, seed count and claims")
    alpha, seeds = study["alpha"], study["seeds"]
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ConfigError(f"{where}.alpha={alpha!r} is not allowed: a number in (0, 1)")
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"{where}.seeds={seeds!r} is not allowed: an integer >= 1")
    claims = []
    for i, item in enumerate(study["claims"] or []):
        expect = item.get("expect", "two-sided")
        if expect not in stats.ALTERNATIVES:
            raise ConfigError(f"{where}.claims[{i}].expect={expect!r} is not allowed: one of {', '.join(stats.ALTERNATIVES)}")
        if "a" not in item or "b" not in item:
            raise ConfigError(f"{where}.claims[{i}] needs a and b (b may be {REFERENCE})")
        for side in ("a", "b"):
            if not (side == "b" and item[side] == REFERENCE):
                parse_selector(item[side], f"{where}.claims[{i}].{side}")
        on = item.get("on", "final")
        if on not in ON:
            raise ConfigError(f"{where}.claims[{i}].on={on!r} is not allowed: one of {', '.join(ON)}")
        if on in ("midpoint", "kl") and item["b"] == REFERENCE:
            raise ConfigError(f"{where}.claims[{i}]: on: {on} compares two arms (the reference has no {on}); b: {REFERENCE} "
                              "is for on: final or asymptote")
        kl = item.get("kl")
        if (on == "kl") != (kl is not None) or (kl is not None and not (isinstance(kl, (int, float)) and kl > 0)):
            raise ConfigError(f"{where}.claims[{i}].kl={kl!r} is not allowed: on: kl needs kl, a KL > 0 both arms are read "
                              "at (and only on: kl takes one)")
        claims.append(Claim(str(item["a"]), str(item["b"]), item.get("metric", study["metric"]), expect, on,
                            float(kl) if kl is not None else None, item.get("x", "step")))
    return Study(study["metric"], float(alpha), seeds, tuple(claims), tuning_of(study.get("tuning")))


def tuning_of(node: dict | None) -> Tuning | None:
    """study.tuning, checked: seeds (a list of integers), grid ({key: [values]}), arms, rule."""
    if not node:
        return None
    seeds = node.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(seed, int) for seed in seeds):
        raise ConfigError(f"study.tuning.seeds={seeds!r} is not allowed: a list of seeds, disjoint from the claim seeds")
    grids = {"grid": node.get("grid") or {}, **{f"arms.{arm}": grid for arm, grid in (node.get("arms") or {}).items()}}
    for where, grid in grids.items():
        if not isinstance(grid, dict) or not all(isinstance(values, list) and values for values in grid.values()):
            raise ConfigError(f"study.tuning.{where}={grid!r} is not allowed: a mapping of keys to lists of values, "
                              "e.g. {lr: [1e-4, 3e-4, 1e-3]}")
    for arm in node.get("arms") or {}:
        parse_selector(arm, "study.tuning.arms")
    rule = node.get("rule", "final")
    if rule not in RULES:
        raise ConfigError(f"study.tuning.rule={rule!r} is not allowed: one of {', '.join(RULES)}")
    return Tuning(tuple(seeds), dict(node.get("grid") or {}), dict(node.get("arms") or {}), rule)


def study_of(runs: list[Run]) -> Study | None:
    """The study declared in the runs' resolved configs (every job of a sweep carries it)."""
    for run in runs:
        if run.config:
            return declared(run.config.get("study"))
    return None


def declared_seeds(runs: list[Run], study: Study) -> tuple[list[Run], list]:
    """The runs of the study's declared seed count (the lowest seeds), and the seeds left out: seeds
    added after the declaration are not evidence for its claims."""
    seeds = sorted({run.seed for run in runs if run.seed is not None})
    kept, extra = seeds[: study.seeds], seeds[study.seeds:]
    return [run for run in runs if run.seed in kept], extra


@dataclass
class Paired:
    """One claim's data: per-seed values of A and B (B: A's reference), and the unit differences."""
    a: dict
    b: dict
    units: list[float]
    covers: str


def runs_of(runs: list[Run], selector: dict, metric: str, claim: str) -> dict:
    """{seed: run} of the completed runs that match `selector` and report `metric`."""
    chosen = {}
    for run in runs:
        if run.failed or run.summary.get(metric) is None or not matches(run, selector):
            continue
        if run.seed in chosen:
            raise ConfigError(f"claim {claim}: two runs of seed {run.seed} match {selector} ({chosen[run.seed].label} and "
                              f"{run.label}): name every swept key but the seed")
        chosen[run.seed] = run
    return chosen


def value_of(run: Run, claim: Claim | None, metric: str) -> float:
    """What the claim compares for one run (ON); NaN where it cannot be had (no fit, KL not reached)."""
    on = claim.on if claim else "final"
    if on == "final":
        return float(run.summary[metric])
    if on == "kl":
        return frontier.at_kl(run, metric, claim.kl)
    fitted = curves.fit_runs([run], metric, claim.x)
    return math.nan if fitted is None else fitted.asymptote if on == "asymptote" else fitted.midpoint


def paired(runs: list[Run], a: str, b: str, metric: str, claim: Claim | None = None) -> Paired:
    """A and B paired by seed, seeds averaged within a warm start; the description of what varies.
    `claim` says what of each run is compared (its `on`; the metric at the end without one); a seed
    where either value cannot be had (a curve that does not fit, a KL one arm never reached) is left out."""
    name = f"{a} - {b}"
    first = runs_of(runs, parse_selector(a), metric, name)
    value_a = lambda run: value_of(run, claim, metric)
    if b == REFERENCE:  # final: the reference's metric; asymptote: against where the curve starts, R0 = the reference
        second = {seed: run for seed, run in first.items() if run.summary.get(f"ref/{metric}") is not None}
        value_b = lambda run: float(run.summary[f"ref/{metric}"])
    else:
        second = runs_of(runs, parse_selector(b), metric, name)
        value_b = lambda run: value_of(run, claim, metric)
    values = {seed: (value_a(first[seed]), value_b(second[seed])) for seed in sorted(set(first) & set(second))}
    values = {seed: pair for seed, pair in values.items() if all(math.isfinite(v) for v in pair)}
    seeds = sorted(values)
    clusters = defaultdict(list)
    for seed in seeds:
        warm = first[seed].summary.get("warmstart") or f"seed {seed}"
        clusters[warm].append(values[seed][0] - values[seed][1])
    if len(clusters) == 1:  # one warm start for every seed: the inference is conditional on it, seeds are the units
        clusters = {seed: [value] for seed, value in zip(seeds, next(iter(clusters.values()), []))}
    units = [sum(values) / len(values) for values in clusters.values()]
    return Paired({s: values[s][0] for s in seeds}, {s: values[s][1] for s in seeds},
                  units, coverage([first[s] for s in seeds], len(clusters)))


def reference_splits(runs: list[Run], metric: str) -> dict[str, dict[float, list[str]]]:
    """Where runs that differ only in their algorithm disagree on the reference's `ref/<metric>`
    (the reference is evaluated before training: no algorithm changes it): "seed N[, other
    settings]" -> value -> the runs' labels. Arms added later (another commit, another cache) must
    rebuild the same warm start as the first; where they did not, their pairs compare different
    starting points."""
    values = defaultdict(lambda: defaultdict(list))
    for run in runs:
        value = run.summary.get(f"ref/{metric}")
        if not run.failed and run.seed is not None and value is not None:
            others = ",".join(f"{k}={v}" for k, v in sorted(parse_selector(run.label).items()) if k != "algorithm")
            values[f"seed {run.seed}" + (f", {others}" if others else "")][float(value)].append(run.label)
    return {where: dict(found) for where, found in sorted(values.items()) if len(found) > 1}


def coverage(runs: list[Run], clusters: int) -> str:
    """What a re-run of these units redraws, so what their interval covers."""
    if not runs:
        return ""
    parts = ["run seed"]
    warm_starts = {run.summary.get("warmstart") for run in runs} - {None}
    if len(warm_starts) > 1:
        parts.append("warm start" + ("" if clusters == len(runs) else f" ({clusters} warm starts, seeds averaged within each)"))
    elif warm_starts:
        parts.append("not the warm start (one for every seed)")
    task_data = {run.summary.get("task_data") for run in runs}
    if len(task_data - {None}) > 1:  # the seeds drew other rows (or reward tables): the prompts are resampled
        parts.append("task draw (task.seed)")
    elif None in task_data and len({(run.config.get("task") or {}).get("seed") for run in runs}) > 1:
        parts.append("task.seed, the data it drew not recorded")  # runs from before summary.json had task_data
    return ", ".join(parts)


@dataclass
class Result:
    claim: Claim
    data: Paired
    test: stats.Difference
    adjusted: float = float("nan")  # Holm-adjusted p
    significant: bool = False
    units_needed: int | None = None  # for 80% power at the observed effect, at alpha / m

    @property
    def verdict(self) -> str:
        if self.test.testable:
            return self.test.testable
        if not self.significant:
            return "not significant"
        return "significant: " + ("A > B" if self.test.mean > 0 else "A < B")


def missing(runs: list[Run], study: Study) -> list[tuple[str, list]]:
    """The claims' cells without a completed run: (selector, seeds) for every configuration a claim
    names that lacks a seed some other run of the study has, so a partial study says what it lacks."""
    seeds = sorted({run.seed for run in runs if run.seed is not None})
    selectors = dict.fromkeys(side for claim in study.claims for side in (claim.a, claim.b) if side != REFERENCE)
    gaps = []
    for selector in selectors:
        metrics = {claim.metric for claim in study.claims if selector in (claim.a, claim.b)}
        done = [set(runs_of(runs, parse_selector(selector), metric, selector)) for metric in metrics]
        lacking = [seed for seed in seeds if not all(seed in cell for cell in done)]
        if lacking:
            gaps.append((selector, lacking))
    return gaps


def evaluate(runs: list[Run], study: Study) -> list[Result]:
    """Every declared claim tested on the runs, Holm-corrected over the family."""
    results = []
    for claim in study.claims:
        data = paired(runs, claim.a, claim.b, claim.metric, claim)
        results.append(Result(claim, data, stats.difference(data.units, claim.expect, study.alpha)))
    reject, adjusted = stats.holm([result.test.p for result in results], study.alpha)
    per_claim_alpha = study.alpha / max(len(results), 1)
    for result, rejected, p in zip(results, reject, adjusted):
        result.adjusted, result.significant = p, rejected and result.test.testable is None
        result.units_needed = stats.units_for_power(result.test.effect_size, per_claim_alpha, result.claim.expect)
    return results


def exploratory(runs: list[Run], study: Study | None, metric: str) -> list[Result]:
    """Every pair of configurations that differ in one key a declared claim compares (every pair, if
    none is declared), and every configuration against its reference where a claim does so, less the
    declared claims: exploratory rows with Benjamini-Hochberg q-values, no verdict."""
    groups = by_label([run for run in runs if not run.failed])
    settings = {label: parse_selector(label) for label in groups}
    chosen = lambda selector: REFERENCE if selector == REFERENCE else frozenset(
        str(run.directory) for run in runs if not run.failed and matches(run, parse_selector(selector)))
    declared_pairs = {(chosen(c.a), chosen(c.b)) for c in study.claims} if study else set()
    compared = {key for c in (study.claims if study else ()) if c.b != REFERENCE
                for key in differing(parse_selector(c.a), parse_selector(c.b))}
    with_reference = not study or any(c.b == REFERENCE for c in study.claims)
    pairs = []
    labels = list(groups)
    for i, first in enumerate(labels):
        if with_reference:
            pairs.append((first, REFERENCE))
        for second in labels[i + 1:]:
            keys = differing(settings[first], settings[second])
            if len(keys) == 1 and (not compared or keys <= compared):
                pairs.append((first, second))
    results = []
    for first, second in pairs:
        a, b = chosen(first), chosen(second)
        if (a, b) in declared_pairs or (b, a) in declared_pairs:
            continue
        claim = Claim(first, second, metric)
        data = paired(runs, first, second, metric)
        if data.units:
            results.append(Result(claim, data, stats.difference(data.units, "two-sided", study.alpha if study else 0.05)))
    for result, q in zip(results, stats.benjamini_hochberg([r.test.p for r in results])):
        result.adjusted = q
    return results


def differing(first: dict, second: dict) -> set:
    return {key for key in set(first) | set(second) if first.get(key) != second.get(key)}


def digits(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.3g}" if x else "0"


def p_text(p: float) -> str:
    return "" if p is None or math.isnan(p) else f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def claims_table(results: list[Result], study: Study) -> str:
    """The declared claims: estimate, interval, raw and Holm-corrected p, verdict, power figure."""
    confidence = f"{1 - study.alpha:.0%}"
    lines = [f"| claim | expected | metric | units | A | B | A - B | A > B in | t {confidence} interval | d_z | p "
             f"| p (Holm, m={len(results)}) | verdict | units for 80% power | interval covers |", "|---" * 15 + "|"]
    for r in results:
        a_mean = sum(r.data.a.values()) / len(r.data.a) if r.data.a else float("nan")
        b_mean = sum(r.data.b.values()) / len(r.data.b) if r.data.b else float("nan")
        lines.append(f"| {r.claim.name} | {r.claim.expect} | {r.claim.metric} | {r.test.units} | {a_mean:.4g} | {b_mean:.4g} "
                     f"| {digits(r.test.mean)} | {sum(u > 0 for u in r.data.units)} of {len(r.data.units)} "
                     f"| [{digits(r.test.low)}, {digits(r.test.high)}] | {digits(r.test.effect_size)} "
                     f"| {p_text(r.test.p)} | {p_text(r.adjusted)} | **{r.verdict}** | {power_text(r)} | {r.data.covers} |")
    return "\n".join(lines)


def power_text(result: Result) -> str:
    """The units for 80% power, or why there is no such number."""
    test, expect = result.test, result.claim.expect
    if result.units_needed is not None:
        return str(result.units_needed)
    if test.units < 2 or math.isnan(test.effect_size):
        return "-"
    if test.mean == 0:
        return "no difference observed"
    if expect != "two-sided" and (test.mean > 0) != (expect == "greater"):
        return "effect against the expected direction"
    return "> 10,000"


def exploratory_table(results: list[Result], alpha: float) -> str:
    """One row per pair. A pair equal on every unit (two arms that take the same steps) has no
    spread, so no test: it says so, and is left out of the q-values' family."""
    confidence = f"{1 - alpha:.0%}"
    tested = sum(not math.isnan(r.test.p) for r in results)
    lines = [f"| pair (exploratory) | units | A - B | t {confidence} interval | d_z | p | q (BH, {tested} pairs) |",
             "|---" * 7 + "|"]
    for r in sorted(results, key=lambda r: (label_key(r.claim.a), str(r.claim.b))):
        interval = (f"equal in all {r.test.units} units" if r.test.units > 1 and r.test.sd == 0
                    else f"[{digits(r.test.low)}, {digits(r.test.high)}]")
        lines.append(f"| {r.claim.name} | {r.test.units} | {digits(r.test.mean)} | {interval} "
                     f"| {digits(r.test.effect_size)} | {p_text(r.test.p)} | {p_text(r.adjusted)} |")
    return "\n".join(lines)
