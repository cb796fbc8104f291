"""Advantages shared by the policy-gradient algorithms: baselines, normalisation, GAE, process
supervision. Pure functions of tensors and masks; none needs gradients. Statistics over the whole
batch sum over every rank under data parallelism (parallel.all_sum), so a batch split across
processes is normalised as one process would normalise it."""
from typing import Callable

import torch
from torch import Tensor

from ptlab.parallel import all_sum
from ptlab.errors import ConfigError

BASELINES: dict[str, Callable] = {}  # name -> rule, as verl registers its advantage estimators (register_adv_est)


def register_baseline(name: str):
    """A baseline rule: (rewards (G, k), lengths (G, k) or None, greedy rewards (G, k) or None) -> R - b (G, k),
    one group of k responses per row. It is `algorithm.baseline=<name>`."""
    def register(rule):
        BASELINES[name] = rule
        return rule
    return register


@register_baseline("group_mean")
def group_mean(rewards: Tensor, lengths=None, greedy=None) -> Tensor:
    """R_i - mean_g R: the mean of the group's rewards (GRPO, Dr. GRPO, GPG, REINFORCE++-baseline)."""
    return rewards - rewards.mean(dim=1, keepdim=True)


@register_baseline("leave_one_out")
def leave_one_out(rewards: Tensor, lengths=None, greedy=None) -> Tensor:
    """R_i - mean_{j != i} R_j = (R_i - mean R) k / (k - 1) (RLOO, Ahmadian et al. 2024, Eq. 6)."""
    k = rewards.shape[1]
    return (rewards - rewards.mean(dim=1, keepdim=True)) * k / (k - 1)


@register_baseline("length_weighted")
def length_weighted(rewards: Tensor, lengths: Tensor, greedy=None) -> Tensor:
    """R_i - sum_j |y_j| R_j / sum_j |y_j| (OPO, Hao et al. 2025: the optimal baseline when the gradient's
    norm grows with the response's length)."""
    weights = lengths.to(rewards.dtype)
    return rewards - (weights * rewards).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)


@register_baseline("leave_one_out_max")
def leave_one_out_max(rewards: Tensor, lengths=None, greedy=None) -> Tensor:
    """max_g R - max_{j != i} R_j (pass@k training, Tang et al. 2025): only a group's single best response
    has an advantage, the gap to the second best; a tie for the best gives 0 (as verl's topk)."""
    top2 = rewards.topk(2, dim=1).values  # (G, 2): the best and the second best
    others_max = torch.where(rewards == top2[:, :1], top2[:, 1:], top2[:, :1])  # max over j != i
    return top2[:, :1] - others_max


@register_baseline("greedy")
def greedy(rewards: Tensor, lengths=None, greedy: Tensor | None = None) -> Tensor:
    """R_i - R(x, greedy response) (ReMax, Li et al. 2023, Algorithm 1; the sampler decodes the greedy
    response of each prompt when this baseline is chosen)."""
    if greedy is None:
        raise ConfigError("algorithm.baseline=greedy needs the greedy response's reward of every prompt, which"
                          " only a generating sampler decodes (on_policy, stale, reference, replay)")
    return rewards - greedy.to(rewards.dtype)


@register_baseline("none")
def no_baseline(rewards: Tensor, lengths=None, greedy=None) -> Tensor:
    """R_i (REINFORCE++, whose token whitening then centres the advantages)."""
    return rewards.clone()


NORMALISATIONS = ("none", "group", "batch", "token")


def check(baseline: str, normalisation: str) -> None:
    if baseline not in BASELINES:
        raise ConfigError(f"algorithm.baseline={baseline!r} is not one of {', '.join(BASELINES)}")
    if normalisation not in NORMALISATIONS:
        raise ConfigError(f"algorithm.advantage_norm={normalisation!r} is not one of {', '.join(NORMALISATIONS)}")


def baselined(rewards: Tensor, group_size: int, baseline: str, lengths: Tensor | None = None,
              greedy_rewards: Tensor | None = None) -> Tensor:
    """R_i - b_i (B,) by the registered rule `baseline`. `lengths` (B,) are the responses' token counts
    (length_weighted); `greedy_rewards` (B,) the reward of each row's prompt's greedy response (greedy)."""
    grouped = lambda values: values.view(-1, group_size) if values is not None else None
    return BASELINES[baseline](grouped(rewards), grouped(lengths), grouped(greedy_rewards)).reshape(-1)


def outcome_advantages(rewards: Tensor, group_size: int, baseline: str, normalisation: str, eps: float,
                       lengths: Tensor | None = None, greedy_rewards: Tensor | None = None) -> Tensor:
    """One advantage per response (B,): R_i - b_i (see `baselined`), then divided by the group's or
    the batch's sample std of the rewards, or not. (`token` normalisation is per token: `whiten_tokens`.)"""
    centred = baselined(rewards, group_size, baseline, lengths, greedy_rewards).view(-1, group_size)
    if normalisation == "group":
        centred = centred / (rewards.view(-1, group_size).std(dim=1, keepdim=True) + eps)
    elif normalisation == "batch":
        centred = centred / (batch_std(rewards, torch.ones_like(rewards)) + eps)
    return centred.reshape(-1)


def whiten_tokens(advantages: Tensor, mask: Tensor, eps: float) -> Tensor:
    """REINFORCE++'s global normalisation: (A - mean) / (sample std + eps) over every response token
    of the batch (all ranks'), A (B, T). verl's masked_whiten divides by sqrt(var + 1e-8) instead."""
    _, mean, _ = batch_moments(advantages, mask)
    return (advantages - mean) / (batch_std(advantages, mask) + eps) * mask


def to_go(token_rewards: Tensor, mask: Tensor) -> Tensor:
    """sum_{s >= t} r_s over each response's tokens (B, T): the return to go with gamma = 1."""
    return (token_rewards * mask).flip(-1).cumsum(-1).flip(-1) * mask


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


def valid_scale(rewards: Tensor, group_size: int) -> Tensor:
    """GPG's alpha = B / (B - M) (Chu et al. 2025, Eq. 7-8), M the responses in groups whose rewards are
    all equal (their advantage is 0): the batch mean over B responses of which only B - M carry a
    gradient is scaled back to a mean over those. Counted over every rank. 1 when no group has signal."""
    grouped = rewards.view(-1, group_size)
    informative = (grouped.max(1).values != grouped.min(1).values).to(torch.float64).sum() * group_size
    total, informative = all_sum(torch.stack([torch.tensor(float(rewards.numel()), dtype=torch.float64,
                                                            device=rewards.device), informative]))
    return (total / informative).to(rewards.dtype) if informative > 0 else torch.ones((), dtype=rewards.dtype, device=rewards.device)
