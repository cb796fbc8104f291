"""The jobs of a multirun directory, as the report and the claims read them: each job's summary.json,
its Hydra overrides and its resolved config.yaml, grouped into configurations (the overrides that
vary across the jobs, `seed` aside)."""
import csv
import json
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import yaml


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

    @cached_property
    def config(self) -> dict:
        """The job's resolved config.yaml ({} if it has none)."""
        path = self.directory / "config.yaml"
        return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}

    @property
    def settings(self) -> dict[str, str]:
        """Its overrides as {key: value}, `+`/`~` prefixes dropped."""
        return dict(o.lstrip("+~").split("=", 1) for o in self.overrides if "=" in o)


def load_runs(directory: Path, ignore: tuple[str, ...] = ("seed",)) -> list[Run]:
    """Every job with a summary.json under directory; its label is its overrides that vary across
    the jobs, `seed` aside (Hydra's .hydra/overrides.yaml, else the summary's algorithm and sampler)."""
    found = []
    for path in sorted(Path(directory).rglob("summary.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError) as error:  # empty or cut short (a full disk, a kill): a failed job
            summary = {"status": "failed", "error": f"unreadable summary.json: {type(error).__name__}"}
        if not isinstance(summary, dict):  # [] / null / a number: not a summary ptlab wrote
            summary = {"status": "failed", "error": f"summary.json holds {type(summary).__name__}, not a summary"}
        overrides = read_overrides(path.parent / ".hydra" / "overrides.yaml")
        if overrides is None:
            overrides = [f"{key}={summary[key]}" for key in ("algorithm", "sampler") if key in summary]
        found.append((path.parent, summary, [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ignore]))
    shared = set.intersection(*(set(o) for _, _, o in found)) if len(found) > 1 else set()
    return [Run(d, s, ",".join(o for o in overrides if o not in shared) or "(default)", overrides)
            for d, s, overrides in found]


def read_overrides(path: Path) -> list[str] | None:
    """Hydra's overrides.yaml of a job (a list of strings), or None when absent; one that is not
    such a list is refused in one line naming the file."""
    if not path.exists():
        return None
    try:
        overrides = yaml.safe_load(path.read_text()) or []
    except yaml.YAMLError as error:
        raise SystemExit(f"error: {path} is not valid YAML ({' '.join(str(error).split())[:200]}); "
                         "restore it or delete the job's directory") from None
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise SystemExit(f"error: {path} is not a list of overrides (Hydra writes one, e.g. [algorithm=grpo, seed=0])")
    return overrides


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


def parse_selector(text: str, option: str = "--compare") -> dict[str, str]:
    """"algorithm=gvpo,lr=1e-3" -> {"algorithm": "gvpo", "lr": "1e-3"} (`+`/`~` prefixes dropped); the
    label "(default)" of a sweep's only configuration -> {} (every run)."""
    if text == "(default)":
        return {}
    parts = [part for part in str(text).split(",") if part]
    if not parts or any("=" not in part for part in parts):
        raise SystemExit(f"error: {option} {text!r}: write KEY=VALUE[,KEY=VALUE], e.g. algorithm=gvpo")
    return {key.lstrip("+~"): value for key, value in (part.split("=", 1) for part in parts)}


def same_value(first, second) -> bool:
    """Override values compared as Hydra means them: numbers by value (a sweep over `lr: 1e-3`
    records `lr=0.001`), anything else as text."""
    try:
        return float(first) == float(second)
    except (TypeError, ValueError):
        return str(first) == str(second)


def matches(run: Run, selector: dict[str, str]) -> bool:
    given = run.settings
    return all(same_value(given[key] if key in given else run.summary.get(key), value) for key, value in selector.items())


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
