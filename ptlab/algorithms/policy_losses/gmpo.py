"""GMPO (Zhao et al. 2025, arXiv 2507.20673, Eq. 4): the geometric mean of the tokens' clipped ratios
per response, clipped in log space by the sign of the advantage:

    J = mean_i A_i * exp(mean_t sgn(A_i) min(sgn(A_i) log r_it, sgn(A_i) clip(log r_it, -eps, eps_high)))
clip_eps and clip_eps_high are log-ratio bounds (the paper's (e^-0.4, e^0.4) is 0.4 / 0.4).
grad J = A_i G_i mean_t 1[t not clipped] grad l_it, so w[i,t] = A_i G_i 1[t not clipped], G_i the
response's clipped geometric-mean ratio. A_i is the mean of the advantage over the response's tokens
(the paper's is per response; when it varies over the tokens this is what verl's geo_mean loss does)
and so is the clip's sign (verl takes each token's own sign there). Compared with verl's geo_mean on
identical inputs: gradients equal to 2e-9 for per-response advantages; with per-token advantages and
clipped tokens, 1e-2 apart by that sign.
"""
import torch
from torch import Tensor

from ptlab.algorithms.policy_losses import PolicyLoss, register_policy_loss


def response_mean(advantages: Tensor, mask: Tensor) -> Tensor:
    """The advantage's mean over each response's tokens, on every token (B, T): GMPO's A_i."""
    mean = (advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return mean.unsqueeze(-1).expand_as(advantages) * mask


@register_policy_loss("gmpo")
class GMPO(PolicyLoss):
    def geometric(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(G_i on every token (B, T), tokens clipped (B, T)); log-space clipping by the advantage's sign."""
        log_ratio = logprobs - old
        sign = torch.where(response_mean(advantages, mask) < 0, -1.0, 1.0).to(log_ratio.dtype)
        low = -self.clip_low if self.clip_low is not None else None
        bounded = log_ratio.clamp(min=low, max=self.clip_high) if self.clip_high is not None or low is not None else log_ratio
        kept = sign * torch.minimum(sign * log_ratio, sign * bounded)
        clipped = (kept != log_ratio) & mask.bool()
        mean = (kept * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return torch.exp(mean).unsqueeze(-1).expand_as(logprobs), clipped

    def weights(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        geometric, clipped = self.geometric(logprobs, old, advantages, mask)
        return response_mean(advantages, mask) * geometric * ~clipped, clipped

    def objective(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
        # -A_i G_i on every token: its mean over the response is -A_i G_i
        return -response_mean(advantages, mask) * self.geometric(logprobs, old, advantages, mask)[0]
