"""A second fuzz of run.py's command line, of another design than test_schema.py's.

test_schema.py's fuzz draws keys that have a rule and values just outside it. This one enumerates
every option of every config group (so every key any config can hold, rule or not) and draws
hostile values by what a key holds, the way a user or a script gets them wrong:

- interpolations: to an unset variable, to a key that does not exist, to a value of another type;
- huge and odd values: 5000-digit integers, 1e999, nan, empty or 300-character strings, unicode;
- container types: nested lists and mappings where a scalar goes, scalars where a list or mapping goes;
- null where a key is not nullable, deletions (`~key`) of keys ptlab reads, 300-character key names,
  unknown keys under a group's node, and each of the above as one value of a sweep.

Every generated line is bad, so every one must be refused before any job starts, in one line
that names the key. `python -m tests.fuzz_commands --count 500` runs each through run.py in a
subprocess and prints the count, the times and anything left behind; tests/test_schema.py runs a
few dozen in-process in CI.
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ptlab.checks import schema

ROOT = Path(__file__).resolve().parent.parent
# Groups whose options are whole runs' settings; the launcher and logging groups are Hydra's.
GROUPS = ("algorithm", "sampler", "task", "model", "generation", "optimizer", "scheduler", "warmstart", "logger", "trainer")


def options() -> list[list[str]]:
    """One override list per option of every group (the default config first)."""
    settings = [[]]
    for group in GROUPS:
        for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
            if not path.name.startswith("_"):
                settings.append([f"{group}={path.stem}"])
    return settings


def keys_of(settings: list[list[str]], composed) -> list[tuple[list[str], str, object]]:
    """(setting, key, rule or None) for every leaf of every setting's config that passes the schema
    as shipped (model=hf needs a model.path first: its keys come with model=tiny's)."""
    found = []
    for setting in settings:
        cfg = composed(setting)
        try:
            schema.check(cfg, cfg)
        except schema.ConfigError:
            continue
        for key, value in schema.leaves(cfg):
            if "[" in key or value is schema.MISSING or isinstance(value, schema.Unresolved):
                continue
            rule = schema.RULES.get(key) or (None if key.startswith(schema.NOT_INFERRED) else schema.inferred(cfg, key))
            found.append((setting, key, rule))
    return found


UNRESOLVED = ["${oc.env:PTLAB_FUZZ_UNSET}", "${no_such_key}", "${model.no_such_key}", "${oc.env:PTLAB_FUZZ_UNSET,${no_such_key}}"]
NOT_A_NUMBER = ["${oc.env:HOME}", "${task}", "''", "'π'", "'" + "x" * 300 + "'", "[[1,[2]],{a: null}]", "{a: {b: [1, 2]}}",
                "'1 0'", "true"]
HUGE = ["1" * 5000, "-" + "9" * 4400]


def bad_values(rule, rng: random.Random) -> list[str]:
    """Values `rule` (None: a string with no rule) refuses, as override strings."""
    values = list(UNRESOLVED)
    if rule is None:
        return values
    if rule.kind in ("integer", "number"):
        values += NOT_A_NUMBER + HUGE + ["1e999", "-1e999", "nan", "inf"]
        if rule.kind == "integer":
            values += ["1.0000001", "1e3"]  # a float, even an integral one written as a float
    elif rule.kind == "boolean":
        values += ["2", "'yes'", "[true]", "{a: true}", "${oc.env:HOME}", "''"]
    elif rule.kind == "string":
        values += ["[[1,[2]],{a: null}]", "{a: {b: [1, 2]}}", "${task}"]
    elif rule.kind == "choice":
        values += ["''", "[" + ",".join(map(str, rule.choices[:1] or ["x"])) + "]", "{a: 1}", "'" + "z" * 300 + "'"]
    elif rule.kind == "list":
        values += ["abc", "1", "{a: [1]}"]
    elif rule.kind == "mapping":
        values += ["abc", "1", "[1, 2]"]
    if not rule.nullable:
        values.append("null")
    return values


def cases(count: int, seed: int, composed) -> list[tuple[list[str], str]]:
    """(command line, the key its error must name): `count` bad command lines; `composed(overrides)`
    composes conf/'s config."""
    rng = random.Random(seed)
    keyed = keys_of(options(), composed)
    read = [(setting, key) for setting, key, _ in keyed if key in schema.RULES or "." not in key]
    groups = sorted({key.split(".")[0] for _, key, _ in keyed if "." in key})
    out = []
    while len(out) < count:
        kind = rng.random()
        if kind < 0.08:  # a deletion of a key ptlab reads
            setting, key = rng.choice(read)
            out.append(([*setting, f"~{key}"], key))
        elif kind < 0.12:  # a key too long for Hydra to look up
            name = rng.choice(groups) + "." + "k" * rng.choice([256, 300, 3000])
            out.append(([f"{rng.choice(['', '+'])}{name}=1"], name))
        elif kind < 0.18:  # an unknown key under a group's node
            name = f"{rng.choice(groups)}.{rng.choice(['typo', 'lr_', 'Beta', 'max-steps'])}"
            out.append(([f"{name}={rng.choice(['1', 'x', '[1]'])}"], name))
        else:
            setting, key, rule = rng.choice(keyed)
            value = rng.choice(bad_values(rule, rng))
            if kind < 0.3:  # one job of a sweep
                out.append((["-m", *setting, "seed=0,1", f"{key}={value}"], key))
            else:
                out.append(([*setting, f"{key}={value}"], key))
    return out


def run_all(count: int, seed: int, jobs_dir: Path) -> dict:
    """Each case through `python run.py` in its own process, with a fresh cache and output paths."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        drawn = cases(count, seed, lambda overrides: compose("config", overrides=overrides))
    GlobalHydra.instance().clear()
    failures, seconds = [], []
    progress = sys.stderr.isatty()
    for index, (args, key) in enumerate(drawn):
        work = jobs_dir / str(index)
        work.mkdir()
        env = {**os.environ, "PTLAB_CACHE_DIR": str(work / "cache"), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={work / 'run'}",
                               f"hydra.sweep.dir={work / 'sweep'}"], capture_output=True, text=True, env=env, cwd=work)
        seconds.append(time.perf_counter() - start)
        lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("warning: ")]
        left = sorted(path.name for path in work.iterdir())
        shown = key if len(key) <= 120 else key[:60]
        ok = (proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and shown in lines[0]
              and seconds[-1] < 5 and not left)
        if not ok:
            failures.append({"args": [a[:200] for a in args], "key": shown, "exit": proc.returncode,
                             "seconds": round(seconds[-1], 2), "left": left, "stderr": proc.stderr[-600:]})
        shutil.rmtree(work)
        if progress or (index + 1) % 50 == 0:
            print(f"\r{index + 1}/{len(drawn)} command lines, {len(failures)} not refused as required",
                  end="" if progress else "\n", file=sys.stderr, flush=True)
    return {"count": len(drawn), "failures": failures, "seconds_median": statistics.median(seconds),
            "seconds_max": max(seconds), "seconds_total": sum(seconds)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        result = run_all(args.count, args.seed, Path(scratch))
    print()
    for failure in result["failures"]:
        print(json.dumps(failure))
    print(f"{result['count']} command lines: {result['count'] - len(result['failures'])} refused in one line naming the key "
          f"with exit code 2 and nothing left behind; per line median {result['seconds_median']:.2f} s, max "
          f"{result['seconds_max']:.2f} s; total {result['seconds_total'] / 60:.1f} min")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
