"""Results pages: docs/results/<experiment>.md and its PNGs, written by commands, never by hand.

    python -m ptlab.sweeps.report multirun/algorithms --page        # the study's page, from its runs
    python -m ptlab.sweeps.replicate algorithms --seeds 100-105     # adds a replication to it

A page is rendered from docs/results/<experiment>.json, which holds everything on it: the report
of the runs (claims, tables, exploratory pairs), the claims' numbers (what a replication is
checked against), the provenance of the numbers (commit and whether the tree was clean, dates, CPU
model and kernel level, threads, library versions, seeds, the command, wall time) and the
replications. The hash of the experiment's composed config is on the page; `config_hash` recomputes
it and a test flags a page whose experiment has changed since (tests/test_pages.py). Before writing,
each configuration's resolved config.yaml is checked against the experiment composed now with that
job's overrides: a page is never written from runs of another config.
"""
import datetime
import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path

import yaml
from omegaconf import OmegaConf, open_dict

from ptlab.paths import unplaced
from ptlab.sweeps.runs import Run

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
EXPERIMENTS = Path(__file__).resolve().parent / "experiment"  # the shipped studies (the experiment config group)
# Keys of a job's config.yaml that depend on where and on which machine it ran, not on the experiment.
LOCAL_KEYS = ("cache_dir", "warmstart.cache_dir", "sampler.cache_dir", "model.model.cache_dir", "callbacks.checkpoint.dirpath",
              "callbacks.samples.output_dir", "logger.csv.save_dir", "logger.wandb.save_dir", "trainer.default_root_dir")

# Keys added after pages were generated, at the value that computes what runs made before them
# computed (an evaluation read back from the cache is the one computed; decoding outside autocast
# changes nothing without mixed precision): left out of the hash, and of the comparison with a run
# that predates them, while they hold that value.
NEUTRAL = {"cache_evaluation": True, "generation.autocast": None, "reward": None,
           "sampler.dynamic_sampling": False, "sampler.max_extra_batches": 3, "module.overlong_filter": False}
# Keys that only say how often a run reports (rows, progress lines), never what it computes, and whose
# shipped defaults changed after pages were generated: hashed at the default they had then unless the
# experiment sets them itself, and not compared with a job's config.yaml.
REPORTING = {"trainer.log_every_n_steps": 10, "callbacks.progress.every_n_steps": "${trainer.log_every_n_steps}"}


def compose(overrides: list[str], hydra: bool = False):
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides, return_hydra_config=hydra)


def config_hash(experiment: str | None) -> str:
    """SHA-256 (12 hex digits) of the experiment's composed config (None: the default config),
    interpolations unresolved (so it does not depend on the machine), Hydra's own node left out."""
    cfg = compose([f"experiment={experiment}"] if experiment else [])
    for key, value in NEUTRAL.items():
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is not None and name in node and node[name] == value:
            with open_dict(node):
                del node[name]
    own = OmegaConf.load(EXPERIMENTS / f"{experiment}.yaml") if experiment else OmegaConf.create()
    for key, value in REPORTING.items():
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is not None and name in node and OmegaConf.select(own, key) is None:
            node[name] = value
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(unplaced(OmegaConf.to_container(cfg)))).encode()).hexdigest()[:12]


def flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def config_mismatch(runs: list[Run]) -> str | None:
    """The first key where a job's resolved config.yaml differs from what the experiment, composed now
    with that job's overrides, gives; None if every job agrees."""
    from hydra.core.hydra_config import HydraConfig

    for run in runs:
        if not run.config:
            continue
        overrides = yaml.safe_load((run.directory / ".hydra" / "overrides.yaml").read_text()) or []
        cfg = compose(overrides, hydra=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir, cfg.hydra.job.num = str(run.directory), 0
        HydraConfig.instance().set_config(cfg)
        now = flatten(unplaced(OmegaConf.to_container(cfg, resolve=True)) | {"hydra": None})
        then = flatten(unplaced(run.config) | {"hydra": None})
        for key in sorted(set(now) | set(then)):
            if key.startswith(LOCAL_KEYS) or key.rsplit(".", 1)[-1] == "cache_dir" or key == "hydra":  # where, not what
                continue
            if key not in then and key in NEUTRAL and now.get(key) == NEUTRAL[key]:  # a run from before the key
                continue
            if key in REPORTING:  # how often it logged, not what it computed
                continue
            if now.get(key) != then.get(key):
                return f"{run.label}: {key} is {then.get(key)!r} in {run.directory / 'config.yaml'}, {now.get(key)!r} now"
    return None


def command(runs: list[Run], directory: Path) -> list[str]:
    """The multirun commands that made these jobs: each job's Hydra overrides (its .hydra/hydra.yaml,
    else the sweep's multirun.yaml), then every job override with the values it took across the jobs.
    Jobs that override other keys or were launched otherwise (an arm added later) were another command."""
    def hydra_parts(path: Path) -> list[str]:
        if not path.exists():
            return []
        overrides = (yaml.safe_load(path.read_text()).get("hydra", {}).get("overrides", {}).get("hydra") or [])
        return [o for o in overrides if not o.startswith(("hydra.sweep.dir", "hydra.mode"))]

    sweep_parts = hydra_parts(directory / "multirun.yaml")
    groups: dict[tuple, dict] = {}
    for run in runs:
        overrides_file = run.directory / ".hydra" / "overrides.yaml"
        overrides = (yaml.safe_load(overrides_file.read_text()) or []) if overrides_file.exists() else []
        pairs = [override.split("=", 1) for override in overrides]
        launched = tuple(hydra_parts(run.directory / ".hydra" / "hydra.yaml") or sweep_parts)
        values = groups.setdefault((tuple(sorted(key for key, _ in pairs)), launched), defaultdict(list))
        for key, value in pairs:
            if value not in values[key]:
                values[key].append(value)
    commands = []
    for (_, launched), values in groups.items():
        first = sorted(values, key=lambda key: key != "experiment")  # experiment=... first, as one types it
        commands.append("python run.py -m " + " ".join([f"{key}={','.join(values[key])}" for key in first] + list(launched)))
    return commands


def finished(run: Run) -> float:
    """When a job ended: its summary's `finished_at`, else (a job from before the key) the file's time."""
    stamp = run.summary.get("finished_at")
    if stamp:
        return datetime.datetime.fromisoformat(stamp).timestamp()
    return (run.directory / "summary.json").stat().st_mtime


def provenance(runs: list[Run], directory: Path) -> dict:
    """Where the numbers come from, read off the jobs' summaries (each records its environment).
    Jobs run at several commits (arms added later) get their dates and wall time per commit."""
    done = [run for run in runs if run.summary.get("environment")]
    env = lambda key: sorted({str(run.summary["environment"].get(key)) for run in done})
    commit_of = lambda run: (run.summary.get("environment") or {}).get("commit")
    commits = sorted({(run.summary["environment"].get("commit"), run.summary["environment"].get("dirty")) for run in done},
                     key=str)
    stamp = lambda t: datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    dates, walls = [], []
    by_commit = defaultdict(list)
    for run in done or runs:  # a job that failed before recording its environment is left out of the dates
        by_commit[commit_of(run)].append(run)
    for commit, group in sorted(by_commit.items(), key=lambda item: min(map(finished, item[1]))):
        ends = [finished(run) for run in group]
        starts = [end - (run.summary.get("wall_seconds") or 0) for end, run in zip(ends, group)]
        of = f" ({commit[:10] if commit else 'unknown'}: {len(group)} job{'s' if len(group) > 1 else ''})" if len(by_commit) > 1 else ""
        dates.append(f"{stamp(min(starts))} to {stamp(max(ends))}{of}")
        walls.append(f"{(max(ends) - min(starts)) / 60:.1f} min from first start to last end; "
                     f"{sum(run.summary.get('wall_seconds') or 0 for run in group) / 60:.1f} min summed over jobs{of}")
    return {
        "commit": [f"{commit[:10] if commit else 'unknown'} ({'uncommitted changes' if dirty else 'clean tree'})"
                   for commit, dirty in commits],
        "dates": dates,
        "cpu": env("cpu"), "cpu kernels": env("cpu_kernels"), "threads per job": env("threads"),
        "python": env("python"), "torch": env("torch"), "transformers": env("transformers"), "lightning": env("lightning"),
        "seeds": sorted({run.seed for run in runs if run.seed is not None}),
        "jobs": f"{len(runs)} ({sum(run.failed for run in runs)} failed)",
        "command": command(runs, directory),
        "wall time": walls,
    }


def provenance_table(record: dict) -> str:
    lines = ["| | |", "|---|---|"]
    for key, value in record.items():
        values = value if isinstance(value, list) else [value]
        if key == "command":  # one command per line
            text = "<br>".join(f"`{command}`" for command in values)
        else:  # dates and wall times of several commits: one per commit
            text = ("; " if key in ("dates", "wall time") else ", ").join(map(str, values))
        lines.append(f"| {key} | {text} |")
    return "\n".join(lines)


def claim_record(result) -> dict:
    t = result.test
    return {"name": result.claim.name, "a": result.claim.a, "b": result.claim.b, "metric": result.claim.metric,
            "expect": result.claim.expect, "units": t.units, "mean": t.mean, "sd": t.sd, "low": t.low, "high": t.high,
            "p": t.p, "adjusted": result.adjusted, "significant": result.significant, "verdict": result.verdict,
            "units_needed": result.units_needed, "covers": result.data.covers, "seeds": sorted(result.data.a),
            "above": sum(unit > 0 for unit in result.data.units)}


def save(data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{data['experiment']}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    page = RESULTS / f"{data['experiment']}.md"
    page.write_text(render_page(data))
    return page


def render_page(data: dict) -> str:
    source = (f"the runs of `ptlab/sweeps/experiment/{data['experiment']}.yaml`" if data.get("compose") is None
              else "runs of the default config")
    header = (f"# Results: `{data['experiment']}`\n\n"
              f"<!-- Generated from {data['experiment']}.json by ptlab/sweeps/pages.py: do not edit by hand. -->\n"
              f"Generated by `{data['generated_by']}` from {source} (config hash `{data['config_hash']}`)"
              + ("; replications by `python -m ptlab.sweeps.replicate`" if data.get("compose") is None else "") + ". Not edited by hand.")
    if data.get("status"):
        header += f"\n\n**Status: {data['status']}**"
    sections = [header, "## Provenance\n\n" + provenance_table(data["provenance"])]
    sections += [replication_section(record, data) for record in data.get("replications", [])]
    sections.append("## Report\n\n" + data["body"])
    return "\n\n".join(sections) + "\n"


def number(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.3g}"


def p_value(p) -> str:
    return "" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.2g}"


def replication_table(record: dict, original: dict | None) -> str:
    by_name = {(c["name"], c["metric"]): c for c in (original or {}).get("claims", [])}
    lines = ["| claim | metric | original: A - B [interval], p (Holm), verdict | re-run: units, A - B [interval], p (Holm), verdict "
             "| replication | note |", "|---" * 6 + "|"]
    for row in record["claims"]:
        old = by_name.get((row["name"], row["metric"]))
        before = (f"{number(old['mean'])} [{number(old['low'])}, {number(old['high'])}], {p_value(old['adjusted'])}, {old['verdict']}"
                  if old else "")
        after = (f"{row['units']}, {number(row['mean'])} [{number(row['low'])}, {number(row['high'])}], "
                 f"{p_value(row['adjusted'])}, {row['verdict']}" + (f"; A > B in {row['above']} of {row['units']}" if "above" in row else ""))
        lines.append(f"| {row['name']} | {row['metric']} | {before} | {after} | **{row['replication']}** | {row['note']} |")
    return "\n".join(lines)


def replication_section(record: dict, data: dict) -> str:
    stale = "" if record["config_hash"] == data["config_hash"] else " (made with another config of the experiment)"
    return (f"## Replication on seeds {record['seeds'][0]}-{record['seeds'][-1]}{stale}\n\n"
            f"`{record['command']}`: the declared claims re-run on seeds the study never used (new warm starts and "
            f"task draws where the experiment ties them to the seed), Holm over the {len(record['claims'])} claims at alpha "
            f"{record['alpha']}. Replicated: the original was significant and the re-run is too, same sign; not "
            "replicated: the other sign, or not significant with 80% power to detect the original difference at the re-run's "
            "spread; inconclusive: "
            "less power than that.\n\n" + replication_table(record, data)
            + "\n\n<details><summary>Provenance of the re-run</summary>\n\n" + provenance_table(record["provenance"])
            + "\n\n</details>")

