"""GRPO (Shao et al. 2024, DeepSeekMath, Eq. 3) with outcome supervision.

    A_i = (R_i - mean(R)) / (std(R) + eps)            group-standardised reward, same for every token
    rho = pi_theta / pi_sampler per token              importance ratio to the policy that sampled
    w[i,t] = A_i * rho * 1[not clipped] + beta * (r - 1),   r = pi_ref / pi_theta per token

The first term is the gradient of min(rho*A, clip(rho, 1-eps, 1+eps_high)*A); the second that of the
k3 KL estimator k3 = r - log r - 1 (d k3/dl = 1 - r), added as a loss term as in the paper.
Native loss: -(clipped surrogate - beta * k3), aggregated seq-mean-token-mean as in Eq. 3.
Departures: std is the sample std (as TRL); beta = 0 drops the KL term and the reference forward.
"""
import torch
from torch import Tensor

from algorithms.base import Algorithm, aggregate, per_token


def group_standardised(rewards: Tensor, group_size: int, eps: float) -> Tensor:
    """(R_i - mean) / (std + eps) within each group. (B,) -> (B,)"""
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    return (centred / (grouped.std(dim=1, keepdim=True) + eps)).view(-1)


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = r - log r - 1 with r = pi_ref / pi_theta, per token (Schulman 2020)."""
    log_r = ref_logprobs - logprobs
    return torch.exp(log_r) - log_r - 1


class GRPO(Algorithm):
    beta_rule = "nonnegative"
    min_group_size = 2
    default_loss_agg = "seq-mean-token-mean"

    def __init__(self, clip_eps: float = 0.2, clip_eps_high: float | None = None, std_eps: float = 1e-4, **kwargs):
        super().__init__(**kwargs)
        self.clip_low, self.clip_high = clip_eps, clip_eps_high if clip_eps_high is not None else clip_eps
        self.std_eps = std_eps

    @property
    def needs_reference(self) -> bool:
        return self.beta > 0

    def _ratio_and_advantage(self, logprobs: Tensor, rollout) -> tuple[Tensor, Tensor]:
        old = rollout.sampler_logprobs if rollout.sampler_logprobs is not None else logprobs.detach()
        ratio = torch.exp(logprobs - old)  # (B, T)
        advantage = per_token(group_standardised(rollout.rewards, rollout.group_size, self.std_eps), rollout.response_mask)
        return ratio, advantage

    def weights(self, logprobs: Tensor, rollout) -> tuple[Tensor, dict[str, float]]:
        mask = rollout.response_mask
        ratio, advantage = self._ratio_and_advantage(logprobs, rollout)
        clipped = ((advantage > 0) & (ratio > 1 + self.clip_high)) | ((advantage < 0) & (ratio < 1 - self.clip_low))
        weights = advantage * ratio * (~clipped)
        if self.beta > 0:
            weights = weights + self.beta * (torch.exp(rollout.ref_logprobs - logprobs) - 1)
        metrics = {"clip_fraction": ((clipped * mask).sum() / mask.sum().clamp(min=1)).item()}
        return weights * mask, metrics

    def objective(self, logprobs: Tensor, rollout) -> Tensor:
        ratio, advantage = self._ratio_and_advantage(logprobs, rollout)
        surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - self.clip_low, 1 + self.clip_high) * advantage)
        loss = -surrogate
        if self.beta > 0:
            loss = loss + self.beta * k3_kl(logprobs, rollout.ref_logprobs)
        return aggregate(loss, rollout.response_mask, self.loss_agg, rollout.group_size)
