"""What each cost lever buys on a real model: the time of a training step (sampling, reference,
update) and of an evaluation, with one lever changed at a time.

    python -m ptlab.bench.step_cost                     # SmolLM2-135M-Instruct, GVPO, chain_sum_chat, 4 steps a run
    python -m ptlab.bench.step_cost --page              # and docs/results/step_cost.md with its provenance
    python -m ptlab.bench.step_cost --model tiny --task chain_sum --steps 3 task.val_size=16

Each row is one `python run.py` of `--steps` optimiser steps (the model preset's prompts, group size
and micro-batches), in its own output directory under the work directory, on the threads this
process has (OMP_NUM_THREADS). The levers, in order:
  - before: float32, the task's own generation budget (chain_sum_chat: 128 new tokens);
  - bf16 autocast, decode too: trainer.precision=bf16-mixed with the decode under autocast;
  - bf16 autocast: the same, the decode outside it (generation.autocast null, the default on CPU);
  - 64 new tokens: float32, task.max_new_tokens=64;
  - bf16 + 64 new tokens;
  - bf16 + 64 new tokens, reference evaluation read back: the same run again, its evaluation before
    training read from the cache the row above wrote (cache_evaluation).
Per step: the median over steps 2 onwards (the first step warms up) of the budget/ clocks' increments
(metrics.csv); the evaluations' seconds and the job's come from summary.json. Evaluation rows are
the task's held-out prompts, answered greedily and `task.eval_samples` times sampled. One run per
row: a single measurement, its spread unknown (rerun to see it). Extra arguments are overrides for
every run. A row already in the work directory is read, not rerun.
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BF16 = ["trainer.precision=bf16-mixed"]
LEVERS = {  # name: overrides on top of the common ones; the cached row reuses the row before it's cache
    "before": ["trainer.precision=32-true", "cache_evaluation=false"],
    "bf16 autocast, decode too": [*BF16, "generation.autocast=true", "cache_evaluation=false"],
    "bf16 autocast": [*BF16, "cache_evaluation=false"],
    "64 new tokens": ["trainer.precision=32-true", "task.max_new_tokens=64", "cache_evaluation=false"],
    "bf16 + 64 new tokens": [*BF16, "task.max_new_tokens=64"],
    "bf16 + 64 new tokens, reference evaluation read back": [*BF16, "task.max_new_tokens=64"],
}
CLOCKS = ("budget/wall_seconds", "budget/sampling_seconds", "budget/reference_seconds", "budget/update_seconds")
HEADER = ("| lever | seconds per step | sampling / reference / update | tokens per response | reference evaluation s "
          "| final evaluation s | whole job s |")


def run_one(name: str, workdir: Path, args, overrides: list[str]) -> dict:
    """Run (unless done) one lever's job and read its step and evaluation times."""
    out = workdir / name.replace(" ", "_").replace(",", "").replace("+", "plus")
    if not (out / "summary.json").exists() or json.loads((out / "summary.json").read_text()).get("status") != "completed":
        command = [sys.executable, str(ROOT / "run.py"), f"model={args.model}", f"task={args.task}",
                   f"algorithm={args.algorithm}", f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}",
                   "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "logger=csv", "export=none",
                   "callbacks.samples=null", f"cache_dir={workdir / 'cache'}", f"hydra.run.dir={out}",
                   *LEVERS[name], *overrides]
        print(f"{name}: {' '.join(command[2:])}", file=sys.stderr, flush=True)
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    rows = [row for row in csv.DictReader(open(next(out.glob("csv/*/metrics.csv")))) if row.get(CLOCKS[0])]
    clocks = [[float(row[key]) for key in CLOCKS] for row in rows]
    steps = [[b - a for a, b in zip(before, after)] for before, after in zip(clocks, clocks[1:])] or clocks[:1]
    per_step = [statistics.median(column) for column in zip(*steps)]
    return {"lever": name, "step": per_step[0], "sampling": per_step[1], "reference": per_step[2], "update": per_step[3],
            "tokens": statistics.mean(float(row["train/response_length"]) for row in rows),
            "ref_eval": summary.get("ref_eval_seconds"), "ref_from_cache": summary.get("ref_from_cache"),
            "final_eval": summary.get("final_eval_seconds"), "job": summary["wall_seconds"], "directory": str(out)}


def line(row: dict) -> str:
    cached = " (read back)" if row["ref_from_cache"] else ""
    return (f"| {row['lever']} | {row['step']:.2f} | {row['sampling']:.2f} / {row['reference']:.2f} / {row['update']:.2f} "
            f"| {row['tokens']:.1f} | {row['ref_eval']:.1f}{cached} | {row['final_eval']:.1f} | {row['job']:.0f} |")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--task", default="chain_sum_chat")
    parser.add_argument("--algorithm", default="gvpo")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per run (the first is left out)")
    parser.add_argument("--levers", default=None, help="comma-separated row numbers (1-6) to run; default all")
    parser.add_argument("--workdir", type=Path, help="where runs and the cache go (default: a temporary directory); the "
                        "converted model is linked from PTLAB_CACHE_DIR so it is not rebuilt")
    parser.add_argument("--page", action="store_true", help="write docs/results/step_cost.md")
    args, overrides = parser.parse_known_args(argv)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="step_cost-"))).resolve()
    models = Path(os.environ.get("PTLAB_CACHE_DIR", ROOT / ".cache")).expanduser().resolve() / "models"
    (workdir / "cache").mkdir(parents=True, exist_ok=True)
    if models.exists() and not (workdir / "cache" / "models").exists():
        (workdir / "cache" / "models").symlink_to(models)  # the converted model, shared; the evaluation cache is not
    names = list(LEVERS)
    chosen = [names[int(i) - 1] for i in args.levers.split(",")] if args.levers else names
    lines, rows = [HEADER, "|---|---|---|---|---|---|---|"], []
    print("\n".join(lines), flush=True)
    for name in chosen:
        rows.append(run_one(name, workdir, args, overrides))
        lines.append(line(rows[-1]))
        print(lines[-1], flush=True)
    if args.page:
        command = " ".join(["python -m ptlab.bench.step_cost", f"--model {args.model}", f"--task {args.task}",
                            f"--algorithm {args.algorithm}", f"--steps {args.steps}", *overrides])
        print(f"wrote {write_page(workdir, lines, command, args)}")
    return rows


def write_page(workdir: Path, lines: list[str], command: str, args) -> Path:
    """docs/results/step_cost.md from this measurement, with its provenance (sweeps/pages.py)."""
    from ptlab.sweeps import pages
    from ptlab.sweeps.runs import load_runs

    record = pages.provenance(load_runs(workdir), workdir)
    record["command"], record["seeds"] = command, "0 (every run)"
    body = (f"{args.algorithm} on model={args.model}, task={args.task}: one run of {args.steps} optimiser steps per "
            "row, each row changing one lever (ptlab/bench/step_cost.py's docstring says which overrides). Seconds per step: "
            "the median over steps 2 onwards of the whole step and of its phases; evaluations: the held-out prompts "
            "before training (the reference; 'read back': from the cache) and after. One run per row: single "
            "measurements, whose spread this page does not show (rerun the command to see it).\n\n" + "\n".join(lines))
    data = {"experiment": "step_cost", "compose": [], "config_hash": pages.config_hash(None),
            "generated_by": command + " --workdir <its work directory> --page", "status": None, "provenance": record,
            "alpha": None, "claims": [], "body": body, "replications": []}
    return pages.save(data)


if __name__ == "__main__":
    main()
