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

`policy_loss` picks the ratio and what clipping does (each a weight rule on the same advantages):
  ppo    per-token ratio, clipped surrogate (above)
  gspo   GSPO (Zheng et al. 2025, Eq. 5-7): one ratio per response, the geometric mean of its tokens'
         s_i = exp(mean_t (l - l_old)), clipped per response: J = mean_i min(s_i A_i, clip(s_i) A_i).
         grad s_i = s_i * mean_t grad l, so w[i,t] = A_i * s_i * 1[response not clipped]: the weight of
         every token of a response is the same (with any of ptlab's aggregations, which weigh a
         response's tokens alike, the surrogate's gradient is the objective's). Compared with TRL's
         `importance_sampling_level="sequence"` and verl's gspo loss: same ratio (verl's GSPO-token
         form sg[s_i] * pi/sg[pi] has this gradient too).
  cispo  CISPO (MiniMax-M1, Chen et al. 2025, Eq. 4-5): J = sum sg(clip(r, 1-eps_low, 1+eps_high)) A log pi,
         so w = A * clip(r) on every token: no token's gradient is dropped, the ratio is only capped.
         clip_eps null: no lower bound (as the paper); clip_eps_high caps the weight. As verl's and
         SkyRL's cispo losses (-A * clamp(r).detach() * log_prob).
  gmpo   GMPO (Zhao et al. 2025, Eq. 4): the geometric mean of the tokens' clipped ratios per response,
         J = mean_i A_i * exp(mean_t sgn(A_i) min(sgn(A_i) log r, sgn(A_i) clip(log r, -eps, eps_high))),
         clipped in log space (clip_eps and clip_eps_high are log-ratio bounds: the paper's (e^-0.4, e^0.4)
         is 0.4 / 0.4). grad = A_i G_i mean_t 1[t not clipped] grad l, so w[i,t] = A_i G_i 1[t not clipped],
         G_i the response's clipped geometric-mean ratio. As verl's gmpo loss (its advantage: the token mean).
"""
import torch
from torch import Tensor

from algorithms import kl
from algorithms.base import Algorithm, aggregate
from schema import ConfigError

POLICY_LOSSES = ("ppo", "gspo", "cispo", "gmpo")


class PolicyGradient(Algorithm):
    uses_reference = True
    beta_rule = "nonnegative"

    def __init__(self, clip_eps: float | None = 0.2, clip_eps_high: float | None = None, kl_estimator: str = "k3",
                 kl_placement: str = "loss", policy_loss: str = "ppo", **kwargs):
        super().__init__(**kwargs)
        kl.check(kl_estimator, kl_placement)
        if policy_loss not in POLICY_LOSSES:
            raise ConfigError(f"algorithm.policy_loss={policy_loss!r} is not one of {', '.join(POLICY_LOSSES)}")
        self.policy_loss = policy_loss
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

    def _sequence_ratio(self, logprobs: Tensor, rollout) -> Tensor:
        """GSPO's s_i = exp(mean over the response's tokens of l - l_old), on every token. (B, T)"""
        mask = rollout.response_mask
        old = rollout.sampler_logprobs if rollout.sampler_logprobs is not None else logprobs.detach()
        mean = ((logprobs - old) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return torch.exp(mean).unsqueeze(-1).expand_as(logprobs)

    def _capped(self, ratio: Tensor) -> Tensor:
        """CISPO's clip(r, 1 - eps_low, 1 + eps_high); a null bound is no bound."""
        low = None if self.clip_low is None else 1 - self.clip_low
        high = None if self.clip_high is None else 1 + self.clip_high
        return ratio.clamp(min=low, max=high) if (low is not None or high is not None) else ratio

    def _geometric(self, logprobs: Tensor, rollout) -> tuple[Tensor, Tensor]:
        """GMPO: (G_i on every token (B, T), tokens clipped (B, T)); log-space clipping by advantage sign."""
        mask, advantages = rollout.response_mask, rollout.extras["advantages"]
        old = rollout.sampler_logprobs if rollout.sampler_logprobs is not None else logprobs.detach()
        log_ratio = logprobs - old
        sign = torch.where(advantages < 0, -1.0, 1.0).to(log_ratio.dtype)
        low = -self.clip_low if self.clip_low is not None else None
        bounded = log_ratio.clamp(min=low, max=self.clip_high) if self.clip_high is not None or low is not None else log_ratio
        kept = sign * torch.minimum(sign * log_ratio, sign * bounded)
        clipped = (kept != log_ratio) & mask.bool()
        mean = (kept * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return torch.exp(mean).unsqueeze(-1).expand_as(logprobs), clipped

    def weights(self, logprobs: Tensor, rollout) -> tuple[Tensor, dict[str, float]]:
        mask, advantages = rollout.response_mask, rollout.extras["advantages"]
        if self.policy_loss == "gmpo":
            geometric, clipped = self._geometric(logprobs, rollout)
            weights = advantages * geometric * (~clipped)
        elif self.policy_loss == "cispo":
            ratio = self._ratio(logprobs, rollout)
            capped = self._capped(ratio)
            clipped, weights = capped != ratio, advantages * capped
        else:
            ratio = self._sequence_ratio(logprobs, rollout) if self.policy_loss == "gspo" else self._ratio(logprobs, rollout)
            clipped = self._clipped(ratio, advantages)
            weights = advantages * ratio * (~clipped)
        if self._kl_in_loss():
            weights = weights + kl.loss_weight(logprobs, self.anchor(rollout), self.kl_estimator, self.beta)
        metrics = {"clip_fraction": ((clipped * mask).sum() / mask.sum().clamp(min=1)).item(),
                   "advantage_abs_mean": ((advantages.abs() * mask).sum() / mask.sum().clamp(min=1)).item()}
        return weights * mask, metrics

    def objective(self, logprobs: Tensor, rollout) -> Tensor:
        advantages = rollout.extras["advantages"]
        if self.policy_loss == "gmpo":  # -A_i G_i on every token: its response-mean is -A_i G_i
            loss = -advantages * self._geometric(logprobs, rollout)[0]
        elif self.policy_loss == "cispo":  # sg(clip(r)) * A * log pi
            loss = -self._capped(self._ratio(logprobs, rollout)).detach() * advantages * logprobs
        else:
            ratio = self._sequence_ratio(logprobs, rollout) if self.policy_loss == "gspo" else self._ratio(logprobs, rollout)
            surrogate = ratio * advantages
            if self.clip_low is not None:
                surrogate = torch.minimum(surrogate, ratio.clamp(1 - self.clip_low, 1 + self.clip_high) * advantages)
            loss = -surrogate
        if self._kl_in_loss():
            loss = loss + self.beta * kl.estimate(logprobs, self.anchor(rollout), self.kl_estimator)
        return aggregate(loss, rollout.response_mask, self.loss_agg, rollout.group_size)
