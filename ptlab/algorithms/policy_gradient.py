"""The importance-weighted policy gradient shared by GRPO (and its RLOO, Dr. GRPO, DAPO, REINFORCE++,
... configurations) and PPO. A subclass only prepares per-token advantages A (B, T) in
rollout.extras["advantages"]; this class turns them into weights with its policy loss:

    w = (the policy loss's weight on A, ratio r = pi_theta / pi_old) + (KL in the loss) -beta * dk/dl

`policy_loss` names one registered unit of algorithms/policy_losses/ (ppo: PPO's clipped surrogate,
gspo, cispo, gmpo, sapo, gpg, clip_cov, kl_cov; each file holds its weight rule, its objective, its
paper and equation). This class keeps what they share: the ratio's denominator pi_old (the policy
that sampled the batch; on-policy before the first update, the current one), the KL estimator (k1,
k2, k3) and its placement (a loss term, or a per-token reward the subclass folds into its
advantages; algorithms/kl.py), the reference (initial | rollout) and the aggregation loss_agg.
Native loss: the policy loss's objective + beta * k (when in the loss), under loss_agg.
Compared with TRL 1.16.0's GRPOTrainer._compute_loss (a stand-in trainer, the same float64 log-probs
and advantages, clipping active, beta 0 and 0.04 with k3 in the loss): the grpo, dapo, gspo, cispo
and sapo configs' gradients equal TRL's grpo, dapo, sequence-level grpo, cispo and sapo losses' to
3e-17, the KL term aggregated with the policy term on both sides (tests/test_trl_losses.py).
"""
import torch
from torch import Tensor

from ptlab.algorithms import kl
from ptlab.algorithms.base import Algorithm, aggregate
from ptlab.algorithms.policy_losses import policy_loss as build_policy_loss


class PolicyGradient(Algorithm):
    uses_reference = True
    beta_rule = "nonnegative"

    def __init__(self, clip_eps: float | None = 0.2, clip_eps_high: float | None = None, kl_estimator: str = "k3",
                 kl_placement: str = "loss", policy_loss: str = "ppo", beta: float | None = None, group_size: int = 1,
                 loss_agg: str | None = None, reference: str = "initial", **loss_options):
        """`loss_options`: the policy losses' own settings (tau_pos, cov_fraction, ...; each unit's `options`)."""
        super().__init__(beta=beta, group_size=group_size, loss_agg=loss_agg, reference=reference)
        kl.check(kl_estimator, kl_placement)
        self.clip_low = clip_eps
        self.clip_high = clip_eps_high if clip_eps_high is not None else clip_eps
        self.policy_loss = policy_loss
        self.loss = build_policy_loss(policy_loss, self.clip_low, self.clip_high, loss_options)
        self.kl_estimator, self.kl_placement = kl_estimator, kl_placement

    @property
    def selected(self) -> Tensor | None:
        """The tokens clip_cov / kl_cov picked in the last call (None for the other losses)."""
        return self.loss.selected

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

    @staticmethod
    def _old(logprobs: Tensor, rollout) -> Tensor:
        """The sampling policy's log-probs; on-policy before the first update, the current ones."""
        return rollout.sampler_logprobs if rollout.sampler_logprobs is not None else logprobs.detach()

    def _kl_in_loss(self) -> bool:
        return self.beta > 0 and self.kl_placement == "loss"

    def weights(self, logprobs: Tensor, rollout) -> tuple[Tensor, dict[str, float]]:
        mask, advantages = rollout.response_mask, rollout.extras["advantages"]
        weights, clipped = self.loss.weights(logprobs, self._old(logprobs, rollout), advantages, mask)
        if self._kl_in_loss():
            weights = weights + kl.loss_weight(logprobs, self.anchor(rollout), self.kl_estimator, self.beta)
        metrics = {"clip_fraction": ((clipped * mask).sum() / mask.sum().clamp(min=1)).item(),
                   "advantage_abs_mean": ((advantages.abs() * mask).sum() / mask.sum().clamp(min=1)).item()}
        return weights * mask, metrics

    def objective(self, logprobs: Tensor, rollout) -> Tensor:
        loss = self.loss.objective(logprobs, self._old(logprobs, rollout), rollout.extras["advantages"], rollout.response_mask)
        if self._kl_in_loss():
            loss = loss + self.beta * kl.estimate(logprobs, self.anchor(rollout), self.kl_estimator)
        return aggregate(loss, rollout.response_mask, self.loss_agg, rollout.group_size)
