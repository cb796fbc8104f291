"""The clipped, importance-weighted policy gradient shared by GRPO (and its RLOO and Dr. GRPO
configurations) and PPO. A subclass only prepares per-token advantages A (B, T) in
rollout.extras["advantages"]; this class turns them into weights.

    rho = pi_theta / pi_sampler per token (the ratio to the policy that sampled the batch)
    w = A * rho * 1[not clipped] + (KL in the loss) -beta * dk/dl
The first term is the gradient of min(rho*A, clip(rho, 1-eps, 1+eps_high)*A) (PPO, Schulman et al.
2017, Eq. 7): where the clipped branch is the minimum its gradient is 0. With clip_eps null there
is no clipping (plain importance-weighted REINFORCE). The KL estimator (k1, k2, k3) and its
placement (a loss term, or a per-token reward the subclass folds into its advantages) are shared
settings (algorithms/kl.py), as is the reference: initial | rollout.
Native loss: -(clipped surrogate) + beta * k (when in the loss), under the aggregation loss_agg.
"""
import torch
from torch import Tensor

from algorithms import kl
from algorithms.base import Algorithm, aggregate


class PolicyGradient(Algorithm):
    uses_reference = True
    beta_rule = "nonnegative"

    def __init__(self, clip_eps: float | None = 0.2, clip_eps_high: float | None = None, kl_estimator: str = "k3",
                 kl_placement: str = "loss", **kwargs):
        super().__init__(**kwargs)
        kl.check(kl_estimator, kl_placement)
        self.clip_low = clip_eps
        self.clip_high = clip_eps_high if clip_eps_high is not None else clip_eps
        self.kl_estimator, self.kl_placement = kl_estimator, kl_placement

    @property
    def needs_reference(self) -> bool:
        return self.beta > 0 and super().needs_reference

    @property
    def prepare_needs_sampler_logprobs(self) -> bool:
        return self.beta > 0 and self.kl_placement == "reward"

    def kl_rewards(self, rollout) -> Tensor:
        """-beta * k(pi_sampler, pi_ref) at every token when the KL is placed in the reward, else 0. (B, T)"""
        if self.beta == 0 or self.kl_placement != "reward":
            return torch.zeros_like(rollout.response_mask, dtype=torch.float32)
        return -self.beta * kl.estimate(rollout.sampler_logprobs, self.anchor(rollout), self.kl_estimator) * rollout.response_mask

    def _ratio(self, logprobs: Tensor, rollout) -> Tensor:
        old = rollout.sampler_logprobs if rollout.sampler_logprobs is not None else logprobs.detach()
        return torch.exp(logprobs - old)  # (B, T)

    def _clipped(self, ratio: Tensor, advantages: Tensor) -> Tensor:
        if self.clip_low is None:
            return torch.zeros_like(ratio, dtype=torch.bool)
        return ((advantages > 0) & (ratio > 1 + self.clip_high)) | ((advantages < 0) & (ratio < 1 - self.clip_low))

    def _kl_in_loss(self) -> bool:
        return self.beta > 0 and self.kl_placement == "loss"

    def weights(self, logprobs: Tensor, rollout) -> tuple[Tensor, dict[str, float]]:
        mask, advantages = rollout.response_mask, rollout.extras["advantages"]
        ratio = self._ratio(logprobs, rollout)
        clipped = self._clipped(ratio, advantages)
        weights = advantages * ratio * (~clipped)
        if self._kl_in_loss():
            weights = weights + kl.loss_weight(logprobs, self.anchor(rollout), self.kl_estimator, self.beta)
        metrics = {"clip_fraction": ((clipped * mask).sum() / mask.sum().clamp(min=1)).item(),
                   "advantage_abs_mean": ((advantages.abs() * mask).sum() / mask.sum().clamp(min=1)).item()}
        return weights * mask, metrics

    def objective(self, logprobs: Tensor, rollout) -> Tensor:
        advantages = rollout.extras["advantages"]
        ratio = self._ratio(logprobs, rollout)
        surrogate = ratio * advantages
        if self.clip_low is not None:
            surrogate = torch.minimum(surrogate, ratio.clamp(1 - self.clip_low, 1 + self.clip_high) * advantages)
        loss = -surrogate
        if self._kl_in_loss():
            loss = loss + self.beta * kl.estimate(logprobs, self.anchor(rollout), self.kl_estimator)
        return aggregate(loss, rollout.response_mask, self.loss_agg, rollout.group_size)
