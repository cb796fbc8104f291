"""How often does a model solve a task before any training? The signal RL will have to work with.

    python -m ptlab.bench.pass_rate model=smollm2_135m task=chain_sum_chat prompts=64

Composes the config as run.py does (any override works), builds the policy (warm start included),
samples group_size responses to each of `prompts` training prompts with the run's generation
settings, and prints pass@1 (mean correctness, with its standard error over prompts), pass@k, the
fraction of groups with mixed rewards (the groups that give a group-relative algorithm a gradient),
mean response length and sampling speed.
"""
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from ptlab.paths import CONF_DIR
from ptlab.training.assemble import build_task


def pass_rate(overrides: list[str], prompts: int = 64, seed: int = 0) -> dict[str, float]:
    from hydra.core.hydra_config import HydraConfig

    from ptlab.training.assemble import build_policy
    from ptlab.training.samplers import OnPolicy

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path.cwd())
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    task = build_task(cfg)
    policy, tokenizer, _ = build_policy(cfg, task)
    sampler = OnPolicy(tokenizer, task.reward, instantiate(cfg.generation), group_size=cfg.group_size)
    rows = [task.train_dataset()[i] for i in range(prompts)]
    torch.manual_seed(seed)
    start, rollouts = time.perf_counter(), []
    for first in range(0, prompts, cfg.prompts_per_step):
        rollouts.append(sampler.sample(rows[first : first + cfg.prompts_per_step], policy))
    seconds = time.perf_counter() - start
    correct = torch.cat([r.correct.float().view(-1, cfg.group_size) for r in rollouts])  # (prompts, k)
    rewards = torch.cat([r.rewards.view(-1, cfg.group_size) for r in rollouts])
    tokens = sum(int(r.response_mask.sum()) for r in rollouts)
    per_prompt = correct.mean(1)
    return {
        "prompts": prompts, "group_size": cfg.group_size,
        "pass@1": per_prompt.mean().item(), "pass@1_se": (per_prompt.std() / prompts ** 0.5).item(),
        f"pass@{cfg.group_size}": (correct.max(1).values).mean().item(),
        "mixed_groups": (rewards.max(1).values > rewards.min(1).values).float().mean().item(),
        "mean_response_tokens": tokens / correct.numel(), "tokens_per_second": tokens / seconds,
        "seconds": seconds,
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    count = next((int(a.split("=", 1)[1]) for a in args if a.startswith("prompts=")), 64)
    result = pass_rate([a for a in args if not a.startswith("prompts=")], prompts=count)
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
