"""summary.json: the numbers a run is judged by, beside its resolved config."""
import json
import math
from pathlib import Path

from omegaconf import OmegaConf


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
        **values,
    }
    summary = {key: (None if isinstance(value, float) and not math.isfinite(value) else value) for key, value in summary.items()}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_config(out, cfg)
    return summary


def write_config(output_dir: str | Path, cfg) -> None:
    """config.yaml: the run's config with every interpolation resolved."""
    try:
        resolved = OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:  # a failed run's config may not resolve (e.g. a missing model.path)
        resolved = OmegaConf.to_yaml(cfg)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "config.yaml").write_text(resolved)


def write_failure(output_dir: str, cfg, choices: dict, error: BaseException) -> dict:
    """A failed run's summary: status, the error's first line, and what was asked for."""
    line = (str(error).strip().splitlines() or [""])[0]
    return write_summary(output_dir, cfg, choices, {"status": "failed", "error": f"{type(error).__name__}: {line}"})


def headline(summary: dict) -> str:
    """The one line a run ends with: its result against the reference, its cost, where it is."""
    metric = "exact/kl_to_optimum" if "exact/kl_to_optimum" in summary else "val/accuracy"
    value, before = summary.get(metric), summary.get(f"ref/{metric}")
    result = f"{metric} {value:.4g} (reference {before:.4g})" if value is not None and before is not None else f"{metric} n/a"
    return (f"{summary['algorithm']} on {summary['task']}, seed {summary['seed']}: {result} after {summary['steps']} steps, "
            f"{summary['wall_seconds']:.0f} s; {summary['output_dir']}")
