"""summary.json: the numbers a run is judged by, beside its resolved config."""
import datetime
import functools
import json
import math
import os
import subprocess
from pathlib import Path

from omegaconf import OmegaConf

from ptlab.storage import write_atomically


def write_summary(output_dir: str, cfg, choices: dict, values: dict) -> dict:
    summary = {
        "output_dir": str(output_dir),
        "algorithm": choices.get("algorithm"),
        "task": choices.get("task"),
        "model": choices.get("model"),
        "sampler": choices.get("sampler"),
        "beta": cfg.beta,
        "seed": cfg.seed,
        "lr": cfg.lr,
        "group_size": cfg.group_size,
        **({"regime": choices["regime"]} if choices.get("regime") else {}),  # sweeps/regime/, off-policy sweep
        **values,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),  # provenance's dates
    }
    summary = {key: (None if isinstance(value, float) and not math.isfinite(value) else value) for key, value in summary.items()}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_config(out, cfg)
    return summary


def completed_values(trainer, module, task, measured: tuple[dict, dict, dict], warm, exported, start: float) -> dict:
    """The values of a completed run's summary.json (write_summary adds what the config says)."""
    import time

    from ptlab.tasks.base import fingerprint

    before, after, seconds = measured
    return {
        "status": "completed",
        "steps": trainer.global_step,
        **after,  # val/reward, val/accuracy and, on the exact task, exact/*
        **{f"ref/{key}": value for key, value in before.items()},  # the same for the policy before training
        "ref_from_cache": getattr(module.evaluator, "hits", 0) > 0,  # read from <cache_dir>/evaluations, not recomputed
        **seconds,  # the evaluations before training (cached or not) and of the final policy
        **module.budget.metrics(),
        "wall_seconds": time.perf_counter() - start,
        "warmstart": str(warm) if warm else None,
        "task_data": fingerprint(task),  # what the task drew: whether a claim's seeds saw other data
        "policy": str(exported) if exported else None,
        "environment": environment(),
        "processes": trainer.world_size,
        "rank_weights_sha256": module.rank_weights,  # one per process, all equal
    }


def environment() -> dict:
    """What a run's numbers depend on besides its config: library versions, the CPU, the threads.
    The same config gives the same summary only on the same kind of processor with the same
    thread count (floating-point sums are ordered by the kernels each picks), and not on GPUs
    with non-deterministic kernels."""
    import platform

    import lightning
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "lightning": lightning.__version__, "cpu": cpu, "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None, **code_version()}


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """The git commit of the code that ran and whether its tracked files differed from it (null
    outside a git checkout), so a result can be traced to the code that made it. Read once per
    process, when the run starts (run.py calls it first): the code a run imported, not what the
    checkout holds when it ends."""
    root = Path(__file__).resolve().parents[2]
    git = lambda *args: subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    try:
        head, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def logged_config(cfg, choices: dict) -> dict:
    """The resolved config as the loggers' hyperparameters (the W&B run's config): every key of
    config.yaml, and each config group's node carries the option chosen as `name`, so runs can be
    filtered and grouped by `lr`, `beta`, `algorithm.name`, `model.name`, ... in the W&B UI (`task.name`
    is the option, e.g. chain_sum_chat; the reasoning-gym dataset it draws from is `task.dataset`)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for group, choice in choices.items():
        if isinstance(config.get(group), dict) and choice is not None:
            node = dict(config[group])
            own = node.pop("name", None)  # a task's own `name` is its reasoning-gym dataset: kept as `dataset`
            config[group] = {"name": choice, **({"dataset" if group == "task" else "config_name": own} if own else {}), **node}
    return config


def write_config(output_dir: str | Path, cfg) -> None:
    """config.yaml: the run's config with every interpolation resolved."""
    try:
        resolved = OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:  # a failed run's config may not resolve (e.g. a missing model.path)
        resolved = OmegaConf.to_yaml(cfg)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    write_atomically(Path(output_dir) / "config.yaml", resolved)


def write_failure(output_dir: str, cfg, choices: dict, error: BaseException) -> dict:
    """A failed run's summary: status, the error's first line, and what was asked for."""
    line = (str(error).strip().splitlines() or [""])[0]
    return write_summary(output_dir, cfg, choices, {"status": "failed", "error": f"{type(error).__name__}: {line}"})


def headline(summary: dict) -> str:
    """The one line a run ends with: its result against the reference, its cost, where it is. The
    result is the exact distance to pi* on the exact task; else the mean score of sampled held-out
    answers (with its standard error) when the task samples them, and greedy accuracy."""
    parts = []
    metrics = ["exact/kl_to_optimum"] if "exact/kl_to_optimum" in summary else ["val/sampled_accuracy", "val/accuracy"]
    for metric in metrics:
        value, before = summary.get(metric), summary.get(f"ref/{metric}")
        if value is None or before is None:
            continue
        error = summary.get(f"{metric}_se")
        parts.append(f"{metric} {value:.4g}" + (f" ± {error:.2g}" if error is not None else "") + f" (reference {before:.4g})")
    result = ", ".join(parts) or f"{metrics[-1]} n/a"
    return (f"{summary['algorithm']} on {summary['task']}, seed {summary['seed']}: {result} after {summary['steps']} steps, "
            f"{summary['wall_seconds']:.0f} s; {summary['output_dir']}")
