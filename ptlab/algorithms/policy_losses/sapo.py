"""SAPO (Gao et al. 2025, arXiv 2511.20347): a smooth, temperature-controlled gate in place of the hard
clip, per token:

    J = f(r) A,   f(r) = sigmoid(tau (r - 1)) * 4 / tau,   tau = tau_pos where A > 0, else tau_neg
grad f(r) = 4 sigma (1 - sigma) r grad l, so w = A * r * 4 sigma(tau (r - 1)) (1 - sigma(...)): 1 * A
on-policy (r = 1), falling smoothly to 0 as r leaves 1 (faster for negative advantages, tau_neg >
tau_pos). As verl's sapo loss (which also clamps log r to +-20 and aggregates seq-mean-token-mean
whatever its loss_agg_mode; here the config sets that aggregation) and TRL's (gradients equal to 1e-17).
"""
import torch
from torch import Tensor

from ptlab.algorithms.policy_losses import PolicyLoss, register_policy_loss


@register_policy_loss("sapo")
class SAPO(PolicyLoss):
    options = {"tau_pos": 1.0, "tau_neg": 1.05}  # the gate's temperature for positive and negative advantages

    def gate(self, ratio: Tensor, advantages: Tensor) -> tuple[Tensor, Tensor]:
        """(f(r), f'(r)) per token."""
        tau = torch.where(advantages > 0, self.tau_pos, self.tau_neg).to(ratio.dtype)
        sigma = torch.sigmoid(tau * (ratio - 1))
        return sigma * 4 / tau, 4 * sigma * (1 - sigma)

    def weights(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        ratio = torch.exp(logprobs - old)
        return advantages * ratio * self.gate(ratio, advantages)[1], torch.zeros_like(mask, dtype=torch.bool)

    def objective(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
        return -self.gate(torch.exp(logprobs - old), advantages)[0] * advantages
