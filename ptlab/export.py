"""Export a run's policy from one of its checkpoints as a Hugging Face directory.

    python -m ptlab.export outputs/<date>/<time>                       # its checkpoints/last.ckpt
    python -m ptlab.export RUN_DIR --checkpoint PATH --out DIR --mode adapter

The run's config.yaml (written when the run starts) rebuilds the policy as the run built it (model,
warm start, LoRA); the checkpoint's trainable weights are loaded into it; models/export.py writes it.
Every run also exports its final policy to <output_dir>/policy by itself (`export=merged`).
"""
import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ptlab.checks.values import check_export
from ptlab.errors import ConfigError
from ptlab.models.export import export_policy
from ptlab.models.options import EXPORTS
from ptlab.training.assemble import build_policy, build_task


def load_trainable_weights(policy, checkpoint: Path) -> int:
    """Load the checkpoint's `policy.` weights; returns how many tensors it held."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    weights = {key.removeprefix("policy."): value for key, value in state.items() if key.startswith("policy.")}
    unexpected = policy.load_state_dict(weights, strict=False).unexpected_keys
    if unexpected or not weights:
        raise ConfigError(f"{checkpoint} does not hold this run's policy (unexpected: {unexpected[:3]}, found {len(weights)})")
    return len(weights)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoint", type=Path, help="default: RUN_DIR/checkpoints/last.ckpt")
    parser.add_argument("--out", type=Path, help="default: RUN_DIR/policy-<checkpoint name>")
    parser.add_argument("--mode", choices=[mode for mode in EXPORTS if mode != "none"], default="merged")
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint or args.run_dir / "checkpoints" / "last.ckpt"
    for path in (args.run_dir / "config.yaml", checkpoint):
        if not path.is_file():
            raise ConfigError(f"{path} does not exist")
    cfg = OmegaConf.load(args.run_dir / "config.yaml")
    check_export(args.mode, (cfg.model.get("lora") or {}).get("r", 0))
    policy, tokenizer, _ = build_policy(cfg, build_task(cfg))
    count = load_trainable_weights(policy, checkpoint)
    out = export_policy(policy, tokenizer, args.out or args.run_dir / f"policy-{checkpoint.stem}", args.mode)
    print(f"exported {count} trained tensors from {checkpoint} to {out} ({args.mode})")
    return out


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:
        sys.exit(f"error: {error}")
