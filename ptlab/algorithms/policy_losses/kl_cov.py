"""KL-Cov (Cui et al. 2025, arXiv 2505.22617, Eq. 13): no clipping; the top max(1, floor(cov_fraction *
tokens)) tokens by the covariance of Clip-Cov (clip_cov.py) get a penalty kl_coef * |l - l_old|:

    J = r A - kl_coef |l - l_old| 1[selected],   so   w = A r - kl_coef * sign(l - l_old) * 1[selected]
On a rollout's first update l = l_old and the penalty's gradient is 0 (sign 0); it acts from the
second minibatch or epoch. The selection is kept in `self.selected`. As verl's kl_cov loss.
"""
import torch
from torch import Tensor

from ptlab.algorithms.policy_losses import PolicyLoss, register_policy_loss
from ptlab.algorithms.policy_losses.clip_cov import covariance, token_count


@register_policy_loss("kl_cov")
class KLCov(PolicyLoss):
    options = {"cov_fraction": 2e-4, "kl_coef": 1.0}

    def select(self, logprobs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
        """The `token_count` tokens of largest covariance. (B, T) bool"""
        valid = mask.bool()
        flat = covariance(logprobs, advantages, mask).masked_fill(~valid, float("-inf")).flatten()
        selected = torch.zeros_like(valid)
        selected.view(-1)[flat.topk(min(token_count(self.cov_fraction, mask), int(valid.sum()))).indices] = True
        return selected

    def weights(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        self.selected = self.select(logprobs, advantages, mask)
        return advantages * torch.exp(logprobs - old) - self.kl_coef * torch.sign(logprobs - old) * self.selected, self.selected

    def objective(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
        log_ratio = logprobs - old  # the tokens of the last weights() call
        return -torch.exp(log_ratio) * advantages + self.kl_coef * log_ratio.abs() * self.selected
