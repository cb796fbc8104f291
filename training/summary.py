"""summary.json: the numbers a run is judged by, beside its resolved config."""
import json
import math
from pathlib import Path

from omegaconf import OmegaConf


def write_summary(output_dir: str, cfg, choices: dict, values: dict) -> dict:
    summary = {
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
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return summary
