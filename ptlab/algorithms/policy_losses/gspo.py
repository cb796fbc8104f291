"""GSPO (Zheng et al. 2025, arXiv 2507.18071, Eq. 5-7): one importance ratio per response, the
geometric mean of its tokens' ratios, clipped per response:

    s_i = exp(mean_t (l_it - l_old_it)),   J = mean_i min(s_i A_i, clip(s_i, 1 - eps, 1 + eps_high) A_i)
grad s_i = s_i * mean_t grad l_it, so w[i,t] = A_i * s_i * 1[response not clipped]: the weight of every
token of a response is the same (with any of ptlab's aggregations, which weigh a response's tokens
alike, the surrogate's gradient is the objective's). When the advantage varies over a response's
tokens (kl_credit=to_go with beta > 0, process supervision, PPO's GAE) the objective is the paper's
GSPO-token form (section 4.3): s_it = sg[s_i] * pi_t / sg[pi_t], whose gradient is A_t s_i grad l_t,
the same weights, and which equals GSPO when A is constant over the response. Compared with verl's
gspo loss (the GSPO-token form) on identical inputs: gradients equal to 1e-9; TRL's
`importance_sampling_level="sequence"` takes the same ratio (gradients equal, tests/test_trl_losses.py).
The paper's clip range is tiny (3e-4 / 4e-4): a sequence ratio moves far less than a token's.
"""
import torch
from torch import Tensor

from ptlab.algorithms.policy_losses import PolicyLoss, register_policy_loss


def sequence_ratio(logprobs: Tensor, old: Tensor, mask: Tensor) -> Tensor:
    """s_i = exp(mean over the response's tokens of l - l_old), on every token. (B, T)"""
    mean = ((logprobs - old) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return torch.exp(mean).unsqueeze(-1).expand_as(logprobs)


@register_policy_loss("gspo")
class GSPO(PolicyLoss):
    def weights(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        ratio = sequence_ratio(logprobs, old, mask)
        clipped = self.clipped(ratio, advantages)
        return advantages * ratio * ~clipped, clipped

    def objective(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
        # GSPO-token: sg[s_i] * pi_t / sg[pi_t], equal to s_i, with the gradient s_i grad l_t
        ratio = sequence_ratio(logprobs, old, mask).detach() * torch.exp(logprobs - logprobs.detach())
        return self.clipped_surrogate(ratio, advantages)
