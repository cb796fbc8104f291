"""How much does the default's reference depend on the machine? Builds the default warm start for
several warm-start seeds at 1 and 2 threads (other thread counts round differently, as other CPUs
do), evaluates each reference on the held-out prompts, and prints its sampled and greedy accuracy,
the SFT steps the warm start took and the spread (max - min) of each column.

    python -m ptlab.bench.reference_spread                          # seeds 0-4, 1 and 2 threads
    python -m ptlab.bench.reference_spread --seeds 0-2 --threads 2 warmstart.target_accuracy=null warmstart.steps=800

Each build runs `python run.py warmstart.seed=S trainer.max_steps=1` with OMP_NUM_THREADS=T in its
own cache directory (a cached warm start would otherwise be reused across thread counts) and reads
the reference's metrics (`ref/*`) from its summary.json. Extra arguments are overrides for every run.
A build already in the work directory is read, not redone, so `--page` on a finished work directory
writes docs/results/reference_spread.md (the table, the spreads and their provenance) without rerunning.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ("ref/val/sampled_accuracy", "ref/val/accuracy")


def seed_range(text: str) -> list[int]:
    """"0-4" -> [0, 1, 2, 3, 4]; "0,2,7" -> [0, 2, 7]."""
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(part) for part in text.split(",")]


def build_and_evaluate(seed: int, threads: int, workdir: Path, overrides: list[str]) -> dict:
    out = workdir / f"threads{threads}-seed{seed}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PTLAB_CACHE_DIR": str(workdir / f"cache-threads{threads}")}
    command = [sys.executable, str(ROOT / "run.py"), f"warmstart.seed={seed}", "trainer.max_steps=1",
               "trainer.val_check_interval=1", "logger=none", "export=none", "callbacks.samples=null",
               f"hydra.run.dir={out}", *overrides]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"warm start seed {seed} at {threads} threads failed:\n{done.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    manifest = json.loads((Path(summary["warmstart"]) / "ptlab_warmstart.json").read_text())
    record = manifest.get("record", manifest)
    return {"seed": seed, "threads": threads, **{key: summary[key] for key in COLUMNS},
            "steps": record.get("steps"), "calibration": record.get("calibration_accuracy"),
            "seconds": record.get("seconds")}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-4", help="warm-start seeds, e.g. 0-4 or 0,3")
    parser.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    parser.add_argument("--workdir", type=Path, help="where runs and caches go (default: a temporary directory)")
    parser.add_argument("--page", action="store_true", help="write docs/results/reference_spread.md")
    args, overrides = parser.parse_known_args(argv)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="reference_spread-"))).resolve()
    rows, lines = [], [HEADER, "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for threads in seed_range(args.threads):
        for seed in seed_range(args.seeds):
            row = build_and_evaluate(seed, threads, workdir, overrides)
            rows.append(row)
            lines.append(f"| {seed} | {threads} | {row[COLUMNS[0]]:.3f} | {row[COLUMNS[1]]:.3f} | {row['steps']} "
                         f"| {row['calibration'] if row['calibration'] is None else round(row['calibration'], 3)} "
                         f"| {row['seconds']:.0f} |")
            print(lines[-1], flush=True)
    spreads = []
    for column in COLUMNS:
        values = [row[column] for row in rows]
        spreads.append(f"{column}: spread {max(values) - min(values):.3f} (min {min(values):.3f}, max {max(values):.3f}) "
                       f"over {len(values)} builds")
    print("\n".join(spreads))
    if args.page:
        command = " ".join(["python -m ptlab.bench.reference_spread", f"--seeds {args.seeds}", f"--threads {args.threads}", *overrides])
        print(f"wrote {write_page(workdir, lines, spreads, command)}")
    return rows


HEADER = "| warm-start seed | threads | sampled accuracy | greedy accuracy | SFT steps | calibration | seconds (warm start) |"


def write_page(workdir: Path, lines: list[str], spreads: list[str], command: str) -> Path:
    """docs/results/reference_spread.md from this measurement, with its provenance (sweeps/pages.py)."""
    from ptlab.sweeps import pages
    from ptlab.sweeps.runs import load_runs

    record = pages.provenance(load_runs(workdir), workdir)
    record["command"], record["seeds"] = command, "run seed 0; warm-start seeds as in the table"
    body = ("The default config's reference, built for each warm-start seed at 1 and 2 threads (another thread count "
            "rounds differently, as another CPU does) and evaluated on the held-out prompts: sampled accuracy "
            "(1,000 prompts x 4 answers) and greedy accuracy. The warm start stops when the expected accuracy on its "
            "calibration prompts reaches `warmstart.target_accuracy` (the calibration column: where it landed).\n\n"
            + "\n".join(lines) + "\n\n" + "\n".join(f"- {line}" for line in spreads))
    data = {"experiment": "reference_spread", "compose": [], "config_hash": pages.config_hash(None),
            "generated_by": command + " --workdir <its work directory> --page", "status": None, "provenance": record, "alpha": None,
            "claims": [], "body": body, "replications": []}
    return pages.save(data)


if __name__ == "__main__":
    main()
