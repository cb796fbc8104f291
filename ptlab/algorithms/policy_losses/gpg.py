"""GPG (Chu et al. 2025, arXiv 2504.02546): J = A * log pi, no ratio and no clipping, so w = A: plain
REINFORCE on the advantages (the gpg config supplies them, with GPG's alpha). As verl's gpg loss
(-log_prob * A). Off-policy (stale or replayed samples, several epochs) it is not importance-corrected:
that is the paper's.
"""
import torch
from torch import Tensor

from ptlab.algorithms.policy_losses import PolicyLoss, register_policy_loss


@register_policy_loss("gpg")
class GPG(PolicyLoss):
    def weights(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return advantages.clone(), torch.zeros_like(mask, dtype=torch.bool)

    def objective(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
        return -advantages * logprobs
