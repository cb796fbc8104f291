"""Each arm at its own setting: the tuning a study declares, then its claims at the chosen settings.

    python -m ptlab.sweeps.tune algorithms_tuned --jobs 2       # tune, choose, run the claim seeds
    python -m ptlab.sweeps.report multirun/algorithms_tuned --page

A study's `study.tuning` (claims.Tuning) names tuning seeds, a grid (lr, and beta where it matters)
and a rule. An arm is a configuration the sweep runs (its swept keys but the seed). For every arm,
each point of its grid runs on the tuning seeds into multirun/<name>-tuning; the rule picks the arm's
setting from those runs alone and the choices are written to multirun/<name>/tuning.json before any
claim seed runs; then every arm runs the sweep's own seeds (the claim seeds) at its setting into
multirun/<name>, where the report tests the claims and shows the whole tuning table. Tuning seeds
that are claim seeds are refused, so no claim is tested on the data that chose its settings.

Resumable: the same command again skips finished jobs and resumes unfinished ones (run.py's own
rule for a directory), and keeps the choices already written (a study whose grid, seeds or rule
changed since is refused: delete tuning.json to choose again, or declare a new study).

Rule `final`: the grid point with the best mean, over the tuning seeds, of the study's metric at the
end of the run; a point where any tuning seed failed or ended without the metric (diverged) is never
chosen; ties go to the point declared first (declare learning rates ascending: ties to the smaller).
"""
import argparse
import itertools
import json
import math
from pathlib import Path

from omegaconf import OmegaConf

from ptlab.sweeps import claims
from ptlab.sweeps.pages import EXPERIMENTS, compose
from ptlab.sweeps.replicate import run_jobs
from ptlab.sweeps.runs import Run, load_runs, matches, same_value

RECORD = "tuning.json"


def swept(cfg) -> dict[str, list[str]]:
    """The sweep's keys and their values (Hydra's sweeper params), as the command line spells them."""
    return {str(key): [value.strip() for value in str(values).split(",")] for key, values in (cfg.hydra.sweeper.params or {}).items()}


def arms(params: dict[str, list[str]], grid_keys: set[str]) -> list[dict[str, str]]:
    """Every configuration of the sweep but the seed: {key: value}, keys as the sweep spells them."""
    keys = [key for key in params if key.lstrip("+~") != "seed"]
    clash = sorted(key for key in keys if key.lstrip("+~") in grid_keys)
    if clash:
        raise SystemExit(f"error: {', '.join(clash)} is both swept and tuned: the tuning grid chooses it per arm")
    return [dict(zip(keys, values)) for values in itertools.product(*(params[key] for key in keys))]


def label(arm: dict[str, str]) -> str:
    return ",".join(f"{key.lstrip('+~')}={value}" for key, value in arm.items()) or "(default)"


def grid_of(tuning: claims.Tuning, arm: dict[str, str]) -> dict[str, list]:
    """The arm's grid: the study's, with the keys of the first `arms` entry that selects this arm replaced."""
    settings = {key.lstrip("+~"): value for key, value in arm.items()}
    own = next((grid for selector, grid in tuning.arms.items()
                if all(same_value(settings.get(key), value) for key, value in claims.parse_selector(selector).items())), {})
    return {**tuning.grid, **own}


def points(grid: dict[str, list]) -> list[dict]:
    """The grid's points in declared order (the first key varies slowest)."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def choose(runs: list[Run], arm: dict[str, str], grid: dict[str, list], metric: str, seeds: list[int]) -> dict:
    """Rule `final` on the tuning runs of one arm: every point with its per-seed values and mean, and the choice."""
    selector = {key.lstrip("+~"): value for key, value in arm.items()}
    rows, best = [], None
    for point in points(grid):
        chosen = [run for run in runs if run.seed in seeds and matches(run, {**selector, **{k: str(v) for k, v in point.items()}})]
        values = {run.seed: run.summary.get(metric) for run in chosen if not run.failed}
        complete = len(values) == len(seeds) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values.values())
        mean = sum(values.values()) / len(values) if complete else None
        rows.append({"setting": point, "values": {str(seed): values.get(seed) for seed in seeds}, "mean": mean,
                     "complete": complete})
        if complete and (best is None or mean > best["mean"]):
            best = rows[-1]
    return {"arm": label(arm), "grid": grid, "points": rows, "chosen": best["setting"] if best else None}


def overrides_of(setting: dict) -> list[str]:
    return [f"{key}={value}" for key, value in setting.items()]


def tune(experiment: str, directory: Path, jobs: int = 1, run: bool = True, extra=()) -> dict:
    """Run the tuning, write the choices to <directory>/tuning.json, then run the claim seeds."""
    cfg = compose([f"experiment={experiment}", *extra], hydra=True)
    study = claims.declared(OmegaConf.to_container(cfg.study) if cfg.get("study") else None)
    if not study or not study.tuning:
        raise SystemExit(f"error: experiment={experiment} declares no tuning (study.tuning): run it with python run.py -m")
    params = swept(cfg)
    claim_seeds = [int(seed) for seed in params.pop("seed", [])] or [int(cfg.seed)]
    tuning_seeds = list(study.tuning.seeds)
    if set(tuning_seeds) & set(claim_seeds):
        raise SystemExit(f"error: study.tuning.seeds {sorted(set(tuning_seeds) & set(claim_seeds))} are claim seeds of "
                         f"experiment={experiment} (its seeds {claim_seeds}): tuning on the claim seeds is refused")
    grid_keys = {key for grid in [study.tuning.grid, *study.tuning.arms.values()] for key in grid}
    tuning_dir = directory.with_name(directory.name + "-tuning")
    record_path = directory / RECORD
    declaration = {"rule": study.tuning.rule, "metric": study.metric, "seeds": tuning_seeds,
                   "grid": study.tuning.grid, "arms": study.tuning.arms}
    previous = json.loads(record_path.read_text()) if record_path.exists() else None
    if previous and previous.get("declaration") != json.loads(json.dumps(declaration)):
        raise SystemExit(f"error: {record_path} holds choices made under another tuning declaration; delete it to "
                         "choose again (a new declaration is a new study: give it new claim seeds)")
    results = previous["arms"] if previous else []
    if not previous:
        for arm in arms(params, grid_keys):
            grid = grid_of(study.tuning, arm)
            if run:
                sweep = [f"{key}={','.join(str(value) for value in values)}" for key, values in grid.items()]
                run_jobs(experiment, [*overrides_of(arm), *sweep], tuning_seeds, tuning_dir, jobs, extra)
            runs = load_runs(tuning_dir) if tuning_dir.is_dir() else []
            results.append(choose(runs, arm, grid, study.metric, tuning_seeds))
        unchosen = [result["arm"] for result in results if result["chosen"] is None]
        if unchosen:
            raise SystemExit(f"error: no setting of {', '.join(unchosen)} completed on every tuning seed ({tuning_dir}): "
                             "rerun the same command to finish them")
        directory.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps({"declaration": declaration, "tuning_dir": str(tuning_dir), "arms": results},
                                          indent=1) + "\n")
    if run:
        for arm, result in zip(arms(params, grid_keys), results):
            run_jobs(experiment, [*overrides_of(arm), *overrides_of(result["chosen"])], claim_seeds, directory, jobs, extra)
    return json.loads(record_path.read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="a shipped experiment that declares study.tuning")
    parser.add_argument("--jobs", type=int, default=1, help="jobs at a time (each with 1 thread when > 1)")
    parser.add_argument("--dir", type=Path, help="multirun directory of the claim seeds (default multirun/<experiment>)")
    parser.add_argument("--no-run", action="store_true", help="only choose from the tuning runs already there")
    args, extra = parser.parse_known_args(argv)
    if any(o.startswith("-") for o in extra):
        parser.error(f"unrecognized arguments: {' '.join(o for o in extra if o.startswith('-'))}")
    if not (EXPERIMENTS / f"{args.experiment}.yaml").exists():
        shipped = sorted(path.stem for path in EXPERIMENTS.glob("*.yaml"))
        raise SystemExit(f"error: experiment {args.experiment!r} is not shipped; one of {', '.join(shipped)}")
    record = tune(args.experiment, (args.dir or Path("multirun") / args.experiment).resolve(), args.jobs, not args.no_run, extra)
    for arm in record["arms"]:
        print(f"{arm['arm']}: {' '.join(overrides_of(arm['chosen']))}")
    return record


if __name__ == "__main__":
    from ptlab.errors import ConfigError

    try:
        main()
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
