"""GVPO (Zhang et al. 2025, "GVPO: Group Variance Policy Optimization", Eqs. 9, 12, 13, 15).

With L_i = log pi_theta(y_i|x) summed over response tokens and the same L_ref_i under pi_ref,

    w_i = [(R_i - mean_j R_j) - beta * ((L_i - L_ref_i) - mean_j (L_j - L_ref_j))] / (k - 1)

on every token of response i. The weights sum to zero in each group, so the intractable log Z(x)
of the implicit reward beta * log(pi_theta / pi_ref) + beta * log Z cancels (paper section 3.1).
Native loss (Eq. 15): with e_i = beta * centred log-ratio_i - centred R_i,
    (1 / (2 beta (k-1))) * sum_i e_i^2        per group, averaged over groups,
whose gradient is exactly -(1/(k-1)) * sum_i w_i * grad L_i.

`reference` chooses pi_ref:
  initial  the frozen initial policy, as in Theorem 3.1: the unique minimiser is the KL-regularised
           optimum pi* = pi_ref exp(R/beta) / Z, for any sampler whose support covers pi_ref's.
  rollout  the policy that sampled the batch (its log-probs ride on the rollout), as in the authors'
           released verl code. Each update then pulls toward pi_old exp(R/beta) / Z: the anchor moves
           with the policy, so repeated updates drift toward the highest-reward responses (a mirror
           descent on E[R] with step 1/beta), not toward the regularised optimum of pi_0.

On-policy, with one update per rollout, this is exactly RLOO with the k1 KL in the reward
(conf/algorithm/rloo.yaml): the leave-one-out advantage of R_i - beta * (L_i - L_ref_i) is
k/(k-1) times its centred value (tests/test_gradients.py). The two differ off-policy, after an
update, or with reference=rollout.

Departures from the authors' released code: that code minimises (1/(k-1)) * sum_i e_i^2 / 2, which
is beta times this loss, and lets the loss grow with the micro-batch size. Here the loss is averaged
over groups so it does not depend on batch size, and the default reference is `initial`.
A non-finite log-ratio (long responses make the sum large) zeroes its group's weights and is
counted in algo/nonfinite_groups; nothing is clipped silently.
"""
import torch
from torch import Tensor

from ptlab.algorithms.base import Algorithm, sequence_logprobs


class GVPO(Algorithm):
    uses_reference = True
    beta_rule = "positive"
    min_group_size = 2
    default_loss_agg = "group-mean-token-sum"

    def _residuals(self, logprobs: Tensor, rollout) -> Tensor:
        """e_i = beta * centred (L_i - L_ref_i) - centred R_i, shape (G, k)."""
        mask = rollout.response_mask
        log_ratio = (sequence_logprobs(logprobs, mask) - sequence_logprobs(self.anchor(rollout), mask)).view(-1, rollout.group_size)
        rewards = rollout.rewards.view(-1, rollout.group_size).to(log_ratio.dtype)
        centred_log_ratio = log_ratio - log_ratio.mean(dim=1, keepdim=True)
        centred_reward = rewards - rewards.mean(dim=1, keepdim=True)
        return self.beta * centred_log_ratio - centred_reward

    def weights(self, logprobs: Tensor, rollout) -> tuple[Tensor, dict[str, float]]:
        k = rollout.group_size
        residuals = self._residuals(logprobs, rollout)  # (G, k)
        finite = torch.isfinite(residuals).all(dim=1, keepdim=True)
        weights = torch.where(finite, -residuals, torch.zeros_like(residuals)) / (k - 1)
        metrics = {
            "nonfinite_groups": (~finite).sum().item(),
            "residual_rms": residuals[finite.expand_as(residuals)].pow(2).mean().sqrt().item() if finite.any() else float("nan"),
        }
        return weights.view(-1, 1) * rollout.response_mask, metrics

    def objective(self, logprobs: Tensor, rollout) -> Tensor:
        residuals = self._residuals(logprobs, rollout)  # (G, k)
        per_group = residuals.pow(2).sum(dim=1) / (2 * self.beta * (rollout.group_size - 1))
        return per_group.mean()
