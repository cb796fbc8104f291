"""Re-run an experiment's declared claims on seeds it never used and say, claim by claim, whether
they replicate.

    python -m ptlab.sweeps.replicate algorithms --seeds 100-105            # the claims' configurations only
    python -m ptlab.sweeps.replicate off_policy --seeds 100-107 --jobs 2   # 2 jobs at a time, 1 thread each
    python -m ptlab.sweeps.replicate default --seeds 100-104 logger=wandb  # any other argument: an override for every job

Runs `python run.py -m experiment=<name> <configuration> seed=<seeds>` for every configuration a
declared claim names, into multirun/<name>-seeds-<first>-<last> (a rerun of the command skips the
finished jobs and resumes the others), tests the claims on the new runs (Holm over the family, as
the original), and compares each with the original numbers on the results page
(docs/results/<name>.json, so a fresh clone can check the shipped claims). The replication is
added to the page unless --no-page.

Verdicts (per declared claim):
- replicated: the original was significant, and the re-run is significant after correction with
  the same sign;
- not replicated: the re-run is significant the other way, or not significant although it had 80%
  power or more to detect a difference as large as the original's, given the re-run's own spread of
  unit differences (at alpha / m);
- inconclusive: not significant with less power than that; the units it would need are printed;
- for an original that was not significant, nothing was claimed: the re-run's own verdict is given.
In the shipped studies each seed has its own warm start and task draw, so new seeds redraw those too.
"""
import argparse
import datetime
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from ptlab.sweeps import claims, stats
from ptlab.sweeps.pages import EXPERIMENTS, RESULTS, ROOT, claim_record, compose, config_hash, config_mismatch, provenance, replication_table, save
from ptlab.sweeps.runs import load_runs

POWER = stats.POWER


def seed_list(text: str) -> list[int]:
    """"100-105" -> [100, ..., 105]; "7,9" -> [7, 9]."""
    try:
        if "-" in text:
            first, last = (int(part) for part in text.split("-"))
            return list(range(first, last + 1))
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise SystemExit(f"error: --seeds {text!r}: write FIRST-LAST or a comma-separated list, e.g. 100-105") from None


def configurations(study: claims.Study, swept: list[str]) -> list[list[str]]:
    """The command-line overrides of every configuration a claim names, in the sweep's own spelling
    (`+regime=stale` where the sweep adds the key)."""
    spelled = {key.lstrip("+~"): key for key in swept}
    found = []
    for claim in study.claims:
        for side in (claim.a, claim.b):
            if side == claims.REFERENCE:
                continue
            overrides = [f"{spelled.get(key, key)}={value}" for key, value in claims.parse_selector(side).items()]
            if overrides not in found:
                found.append(overrides)
    return found


def tuned(overrides: list[str], chosen: dict[str, dict]) -> list[str]:
    """The setting a tuned study chose for the arm these overrides select (none for an untuned study)."""
    settings = claims.parse_selector(",".join(overrides)) if overrides else {}
    for arm, setting in chosen.items():
        if claims.parse_selector(arm) == settings:
            return [f"{key}={value}" for key, value in setting.items()]
    return []


def run_jobs(experiment: str, overrides: list[str], seeds: list[int], directory: Path, jobs: int, extra=()) -> None:
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    command = [sys.executable, str(ROOT / "run.py"), "-m", f"experiment={experiment}", *overrides, *extra,
               f"seed={','.join(map(str, seeds))}", f"hydra.sweep.dir={directory}", *launcher]
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if jobs > 1 else dict(os.environ)  # parallel jobs: 1 thread each
    print(f"running: {' '.join(command[1:])}", flush=True)
    done = subprocess.run(command, cwd=ROOT, env=env)
    if done.returncode in (130, 143):
        raise SystemExit(done.returncode)


def verdict(original: dict, new: claims.Result, family: int, alpha: float) -> tuple[str, str]:
    """(verdict, note) of a re-run against its original claim record."""
    if not original["significant"]:
        return "original not significant", f"re-run: {new.verdict}"
    if new.test.testable:
        return "inconclusive", new.test.testable
    same = (new.test.mean > 0) == (original["mean"] > 0)
    if new.significant:
        return ("replicated", "") if same else ("not replicated", "significant the other way")
    # the original difference, in the re-run's own spread: the power the re-run had to see a difference that large
    spread = new.test.sd if new.test.sd > 0 else original["sd"]
    effect = original["mean"] / spread if spread else float("nan")
    chance = stats.power(new.test.units, effect, alpha / family, original["expect"]) if math.isfinite(effect) else 0.0
    needed = stats.units_for_power(effect, alpha / family, original["expect"])
    power_note = f"power {chance:.2f} to detect the original difference ({original['mean']:+.3g}) at the re-run's spread (sd {spread:.3g})"
    if chance >= POWER:
        return "not replicated", power_note
    return "inconclusive", f"{power_note}; {needed if needed else '> 10,000'} units for 80%"


def replicate(experiment: str, seeds: list[int], directory: Path, jobs: int = 1, run: bool = True, extra=()) -> dict:
    """Run the claims' configurations on `seeds` (with `extra` overrides for every job) and test them."""
    cfg = compose([f"experiment={experiment}", *extra], hydra=True)
    study = claims.declared(OmegaConf.to_container(cfg.study) if cfg.get("study") else None)
    if not study or not study.claims:
        raise SystemExit(f"error: experiment={experiment} declares no claims (its study.claims): nothing to replicate")
    page = RESULTS / f"{experiment}.json"
    original = json.loads(page.read_text()) if page.exists() else None
    used = set(original["provenance"]["seeds"]) if original else set()
    swept = dict(cfg.hydra.sweeper.params or {})
    used |= {int(seed) for seed in str(swept.get("seed", "")).split(",") if seed.strip().isdigit()}
    used |= set(study.tuning.seeds) if study.tuning else set()  # a tuned study's tuning seeds chose its settings
    if used & set(seeds):
        raise SystemExit(f"error: --seeds {seeds}: seeds {sorted(used & set(seeds))} were used by the original study; "
                         "a replication needs seeds it never ran")
    # a tuned study: each arm runs at the setting its tuning chose (recorded on the page)
    chosen = {arm["arm"]: arm["chosen"] for arm in ((original or {}).get("tuning") or {}).get("arms", [])}
    if study.tuning and not chosen:
        raise SystemExit(f"error: experiment={experiment} is tuned and its page records no tuning: report the tuned study "
                         "first (python -m ptlab.sweeps.tune, then python -m ptlab.sweeps.report ... --page)")
    if run:
        for overrides in configurations(study, list(swept)):
            setting = tuned(overrides, chosen)
            if study.tuning and not setting:
                raise SystemExit(f"error: {','.join(overrides)} has no tuned setting on the page of {experiment}")
            run_jobs(experiment, overrides + setting, seeds, directory, jobs, extra)
    runs = [r for r in load_runs(directory) if r.seed in seeds] if directory.is_dir() else []
    mismatch = config_mismatch(runs)
    if mismatch:
        raise SystemExit(f"error: the runs in {directory} were made with another config of {experiment} ({mismatch})")
    results = claims.evaluate(runs, study)
    by_name = {(record["name"], record["metric"]): record for record in (original or {}).get("claims", [])}
    rows = []
    for result in results:
        record = by_name.get((result.claim.name, result.claim.metric))
        verdict_, note = verdict(record, result, len(results), study.alpha) if record else ("no original", "")
        rows.append({**claim_record(result),
                     "replication": verdict_, "note": note})
    return {"seeds": seeds, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "command": f"python -m ptlab.sweeps.replicate {experiment} --seeds {seeds[0]}-{seeds[-1]}"
                       + (f" --jobs {jobs}" if jobs > 1 else "") + "".join(f" {o}" for o in extra),
            "config_hash": config_hash(experiment), "alpha": study.alpha,
            "provenance": provenance(runs, directory) if runs else {}, "claims": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="a shipped experiment (sweeps/experiment/<name>.yaml)")
    parser.add_argument("--seeds", required=True, help="new seeds, e.g. 100-105")
    parser.add_argument("--jobs", type=int, default=1, help="jobs at a time (each with 1 thread when > 1)")
    parser.add_argument("--dir", type=Path, help="multirun directory (default multirun/<experiment>-seeds-<first>-<last>)")
    parser.add_argument("--no-run", action="store_true", help="only evaluate the runs already in the directory")
    parser.add_argument("--no-page", action="store_true", help="do not add the replication to docs/results/<experiment>.md")
    args, extra = parser.parse_known_args(argv)
    if any(o.startswith("-") for o in extra):
        parser.error(f"unrecognized arguments: {' '.join(o for o in extra if o.startswith('-'))}")
    if not (EXPERIMENTS / f"{args.experiment}.yaml").exists():
        shipped = sorted(path.stem for path in (EXPERIMENTS).glob("*.yaml"))
        raise SystemExit(f"error: experiment {args.experiment!r} is not shipped; one of {', '.join(shipped)}")
    seeds = seed_list(args.seeds)
    directory = (args.dir or Path("multirun") / f"{args.experiment}-seeds-{seeds[0]}-{seeds[-1]}").resolve()
    record = replicate(args.experiment, seeds, directory, args.jobs, run=not args.no_run, extra=extra)
    page = RESULTS / f"{args.experiment}.json"
    original = json.loads(page.read_text()) if page.exists() else None
    print(replication_table(record, original))
    if original and not args.no_page:
        original["replications"] = [r for r in original.get("replications", []) if r["seeds"] != seeds] + [record]
        print(f"\nwrote {save(original)}")
    return record


if __name__ == "__main__":
    from ptlab.errors import ConfigError

    try:
        main()
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
