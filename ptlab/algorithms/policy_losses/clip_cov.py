"""Clip-Cov (Cui et al. 2025, arXiv 2505.22617, Eq. 11-12): PPO's clipped surrogate, and in addition
the gradient of a few tokens with a large covariance between their advantage and their log-prob is
dropped, to keep the policy's entropy from collapsing: among the tokens PPO did not clip, those with

    cov = (A - mean A) (l - mean l)   (means over the batch's tokens)
in [cov_low, cov_high], a random max(1, floor(cov_fraction * tokens)) of them. w = PPO's w * 1[not
selected]. The draw uses torch's RNG (checkpointed with the run); the selection is kept in
`self.selected` (the objective drops the same tokens). As verl's clip_cov loss (adapted by verl from
the paper's code).
"""
import torch
from torch import Tensor

from ptlab.algorithms.policy_losses import PolicyLoss, register_policy_loss


def covariance(logprobs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """(A - mean A) (l - mean l) per token (B, T), the means over the batch's tokens (Eq. 11)."""
    mask = mask.bool()
    count = mask.sum().clamp(min=1)
    centred = lambda x: x - (x * mask).sum() / count
    return centred(advantages) * centred(logprobs.detach())


def token_count(fraction: float, mask: Tensor) -> int:
    """max(1, floor(fraction * the batch's tokens)): how many tokens a covariance rule selects."""
    return max(1, int(fraction * int(mask.bool().sum())))


@register_policy_loss("clip_cov")
class ClipCov(PolicyLoss):
    options = {"cov_fraction": 2e-4, "cov_low": 1.0, "cov_high": 5.0}

    def select(self, logprobs: Tensor, advantages: Tensor, mask: Tensor, clipped: Tensor) -> Tensor:
        """A random `token_count` of the unclipped tokens in the covariance band. (B, T) bool"""
        valid, cov = mask.bool(), covariance(logprobs, advantages, mask)
        band = (valid & ~clipped & (cov > self.cov_low) & (cov < self.cov_high)).flatten().nonzero().squeeze(1)
        chosen = band[torch.randperm(len(band), device=band.device)[:token_count(self.cov_fraction, mask)]]
        selected = torch.zeros_like(valid)
        selected.view(-1)[chosen] = True
        return selected

    def weights(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        ratio = torch.exp(logprobs - old)
        clipped = self.clipped(ratio, advantages)
        self.selected = self.select(logprobs, advantages, mask, clipped)
        clipped = clipped | self.selected
        return advantages * ratio * ~clipped, clipped

    def objective(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
        return self.clipped_surrogate(torch.exp(logprobs - old), advantages) * ~self.selected  # the last weights() call's
