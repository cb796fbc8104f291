"""PPO's clipped surrogate (Schulman et al. 2017, Eq. 7), per token: the loss of GRPO, Dr. GRPO, RLOO,
DAPO, REINFORCE++ and PPO itself.

    J = mean_t min(r_t A_t, clip(r_t, 1 - eps, 1 + eps_high) A_t),   r_t = pi_theta / pi_old
Where the clipped branch is the minimum its gradient is 0, elsewhere grad J = A r grad l, so
    w = A * r * 1[not clipped]
clip_eps null: no clipping (plain importance-weighted REINFORCE; on-policy r = 1 and w = A).
Compared with TRL 1.16.0's GRPOTrainer loss (grpo and dapo, clipping active) and verl's vanilla
policy loss on identical inputs: gradients equal to 1e-17 (tests/test_trl_losses.py). Departure from
verl: no dual clip (verl's clip_ratio_c bounds r A from below for A < 0; docs/usage.md adds it as
the example of a new loss).
"""
import torch
from torch import Tensor

from ptlab.algorithms.policy_losses import PolicyLoss, register_policy_loss


@register_policy_loss("ppo")
class PPOClip(PolicyLoss):
    def weights(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        ratio = torch.exp(logprobs - old)
        clipped = self.clipped(ratio, advantages)
        return advantages * ratio * ~clipped, clipped

    def objective(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
        return self.clipped_surrogate(torch.exp(logprobs - old), advantages)
