"""Advantages shared by the policy-gradient algorithms: baselines, normalisation, GAE, process
supervision. Pure functions of tensors and masks; none needs gradients. Statistics over the whole
batch sum over every rank under data parallelism (parallel.all_sum), so a batch split across
processes is normalised as one process would normalise it."""
import torch
from torch import Tensor

from parallel import all_sum
from schema import ConfigError

BASELINES = ("group_mean", "leave_one_out")
NORMALISATIONS = ("none", "group", "batch")


def check(baseline: str, normalisation: str) -> None:
    if baseline not in BASELINES:
        raise ConfigError(f"algorithm.baseline={baseline!r} is not one of {', '.join(BASELINES)}")
    if normalisation not in NORMALISATIONS:
        raise ConfigError(f"algorithm.advantage_norm={normalisation!r} is not one of {', '.join(NORMALISATIONS)}")


def outcome_advantages(rewards: Tensor, group_size: int, baseline: str, normalisation: str, eps: float) -> Tensor:
    """One advantage per response (B,). group_mean: R_i - mean_g R (GRPO); leave_one_out:
    R_i - mean_{j != i} R_j (RLOO). Then divided by the group's or the batch's sample std, or not."""
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if baseline == "leave_one_out":
        centred = centred * group_size / (group_size - 1)
    if normalisation == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif normalisation == "batch":
        centred = centred / (batch_std(rewards, torch.ones_like(rewards)) + eps)
    return centred.reshape(-1)


def process_advantages(step_rewards: Tensor, step_mask: Tensor, group_size: int, eps: float) -> Tensor:
    """GRPO process supervision (DeepSeekMath section 4.1.3). step_rewards (B, T) holds each step's
    reward at the step's last token, step_mask (B, T) marks those tokens. Step rewards are
    standardised over all steps of the group; a token's advantage is the sum of the standardised
    rewards of its step and the steps after it. Returns (B, T)."""
    k = group_size
    rewards, mask = step_rewards.view(-1, k * step_rewards.shape[1]), step_mask.view(-1, k * step_mask.shape[1]).float()
    count = mask.sum(1, keepdim=True).clamp(min=1)
    mean = (rewards * mask).sum(1, keepdim=True) / count
    std = (((rewards - mean) * mask).pow(2).sum(1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    normalised = (((rewards - mean) / (std + eps)) * mask).view_as(step_rewards)
    return normalised.flip(-1).cumsum(-1).flip(-1)  # sum over steps ending at or after t


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each response's tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last token is 0);
    A_t = delta_t + gamma * lam * A_{t+1}. Returns advantages and returns A + V, (B, T) each."""
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def batch_moments(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(count, mean, sum of squared deviations) of the masked entries of the whole batch, every rank's."""
    mask = mask.to(values.dtype)
    count, total = all_sum(torch.stack([mask.sum(), (values * mask).sum()]))
    mean = total / count.clamp(min=1)
    return count, mean, all_sum(((values - mean).pow(2) * mask).sum())


def batch_std(values: Tensor, mask: Tensor) -> Tensor:
    """The sample standard deviation (n - 1) of the masked entries of the whole batch, as Tensor.std."""
    count, _, squares = batch_moments(values, mask)
    return (squares / (count - 1).clamp(min=1)).sqrt()


def whiten(values: Tensor, mask: Tensor, eps: float = 1e-8, whole_batch: bool = True) -> Tensor:
    """(x - mean) / std (population std) over the masked entries of the whole batch, or of these
    rows only (whole_batch=False: a group's)."""
    if whole_batch:
        count, mean, squares = batch_moments(values, mask)
    else:
        mask_ = mask.to(values.dtype)
        count = mask_.sum()
        mean = (values * mask_).sum() / count
        squares = ((values - mean).pow(2) * mask_).sum()
    var = squares / count.clamp(min=1)
    return (values - mean) / (var.sqrt() + eps) * mask
