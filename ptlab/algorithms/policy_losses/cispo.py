"""CISPO (MiniMax-M1, Chen et al. 2025, arXiv 2506.13585, Eq. 4-5): the importance ratio only caps
each token's weight, and no token's gradient is dropped (as PPO's clip drops them):

    J = sum_t sg(clip(r_t, 1 - eps_low, 1 + eps_high)) A_t log pi_t,   so   w = A * clip(r)
clip_eps null: no lower bound (as the paper); clip_eps_high caps the weight. As verl's and SkyRL's
cispo losses (-A * clamp(r).detach() * log_prob). TRL's cispo `epsilon_high` is the cap itself
(TRL's 5.0 is clip_eps_high 4.0 here); at matching caps the gradients equal TRL's to 3e-17.
"""
import torch
from torch import Tensor

from ptlab.algorithms.policy_losses import PolicyLoss, register_policy_loss


@register_policy_loss("cispo")
class CISPO(PolicyLoss):
    def capped(self, ratio: Tensor) -> Tensor:
        """clip(r, 1 - eps_low, 1 + eps_high); a null bound is no bound."""
        low = None if self.clip_low is None else 1 - self.clip_low
        high = None if self.clip_high is None else 1 + self.clip_high
        return ratio.clamp(min=low, max=high) if (low is not None or high is not None) else ratio

    def weights(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        ratio = torch.exp(logprobs - old)
        capped = self.capped(ratio)
        return advantages * capped, capped != ratio

    def objective(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
        return -self.capped(torch.exp(logprobs - old)).detach() * advantages * logprobs
