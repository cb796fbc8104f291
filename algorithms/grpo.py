"""GRPO (Shao et al. 2024, DeepSeekMath, Eq. 3 and section 4.1.3), and by configuration RLOO
(Ahmadian et al. 2024) and Dr. GRPO (Liu et al. 2025).

Outcome supervision: one advantage per response from the group's rewards, on every token:
    baseline group_mean:    A_i = R_i - mean_g R            (GRPO, Dr. GRPO)
    baseline leave_one_out: A_i = R_i - mean_{j != i} R_j   (RLOO)
    advantage_norm group | batch | none: divide by the group's or the batch's sample std (+ eps)
Process supervision (a task with step rewards, e.g. task=chain_steps): each step's reward is
standardised over all steps of the group and a token's advantage is the sum of the standardised
rewards of its step and every later step.
With the KL placed in the reward, beta * sum_t k(pi_sampler, pi_ref) is subtracted from the
outcome reward (or from the last step's) before the advantages are formed.
The clipped ratio and the KL-in-the-loss weight are algorithms/policy_gradient.py.
Departures: std is the sample std (as TRL); beta = 0 drops the KL and the reference forward.
"""
import torch

from algorithms import advantages as adv
from algorithms.base import per_token
from schema import ConfigError
from algorithms.policy_gradient import PolicyGradient


class GRPO(PolicyGradient):
    min_group_size = 2
    default_loss_agg = "seq-mean-token-mean"

    def __init__(self, baseline: str = "group_mean", advantage_norm: str = "group", supervision: str = "outcome",
                 std_eps: float = 1e-4, **kwargs):
        super().__init__(**kwargs)
        adv.check(baseline, advantage_norm)
        if supervision not in ("outcome", "process"):
            raise ConfigError(f"algorithm.supervision={supervision!r} is not one of outcome, process")
        self.baseline, self.advantage_norm, self.supervision, self.std_eps = baseline, advantage_norm, supervision, std_eps

    def prepare(self, rollout) -> None:
        mask, k = rollout.response_mask, rollout.group_size
        kl_penalty = self.kl_rewards(rollout).sum(-1)  # (B,), 0 unless the KL is in the reward
        if self.supervision == "outcome":
            rewards = rollout.rewards.to(kl_penalty.dtype) + kl_penalty
            advantages = adv.outcome_advantages(rewards, k, self.baseline, self.advantage_norm, self.std_eps)
            rollout.extras["advantages"] = per_token(advantages, mask)
            return
        if rollout.step_rewards is None:
            raise ConfigError("algorithm.supervision=process needs step rewards: a task with steps (task=chain_steps)"
                              " and a sampler that generates")
        step_rewards = rollout.step_rewards.clone().float()
        last_step = (rollout.step_mask.cumsum(-1) == rollout.step_mask.sum(-1, keepdim=True)) & rollout.step_mask.bool()
        step_rewards = step_rewards + last_step * kl_penalty.unsqueeze(1)
        rollout.extras["advantages"] = adv.process_advantages(step_rewards, rollout.step_mask, k, self.std_eps) * mask
