"""GRPO (Shao et al. 2024, DeepSeekMath, Eq. 3 and section 4.1.3), and by configuration the other
critic-free advantage rules: RLOO (Ahmadian et al. 2024), Dr. GRPO (Liu et al. 2025), REINFORCE++
and REINFORCE++-baseline (Hu 2025), ReMax (Li et al. 2023), OPO (Hao et al. 2025), GPG (Chu et al.
2025) and pass@k training (Tang et al. 2025); the policy loss each uses is policy_gradient.py's.

Outcome supervision: one advantage per response from the group's rewards, on every token:
    baseline group_mean:        A_i = R_i - mean_g R                        (GRPO, Dr. GRPO, GPG)
    baseline leave_one_out:     A_i = R_i - mean_{j != i} R_j               (RLOO)
    baseline length_weighted:   A_i = R_i - sum_j |y_j| R_j / sum_j |y_j|   (OPO: the optimal baseline
                                when the gradient's norm grows with the length)
    baseline leave_one_out_max: A_i = max_g R - max_{j != i} R_j            (pass@k: only a group's single best
                                response has an advantage, the gap to the second best)
    baseline greedy:            A_i = R_i - R(x, greedy response)           (ReMax, Algorithm 1: the sampler
                                draws one greedy response per prompt, turned on by this baseline)
    baseline none:              A_i = R_i                                   (REINFORCE++)
    advantage_norm group | batch | none: divide by the group's or the batch's sample std (+ eps) of R;
    token: whiten the per-token advantages over all tokens of the batch, (A - mean) / (std + eps)
    (REINFORCE++'s global normalisation)
    valid_scale: multiply by B / (responses in groups whose rewards are not all equal) (GPG's alpha,
    Eq. 7-8: the groups with no signal dilute a batch mean's gradient; this undoes it)
With the KL placed in the reward, each token's -beta * k(pi_sampler, pi_ref) is a reward: kl_credit
`sequence` adds their sum to the outcome reward before the baseline (every token gets the whole
response's penalty: RLOO, GRPO-with-KL-in-reward); `to_go` gives a token the penalties of itself and
the tokens after it (REINFORCE++, ReMax: the return to go with gamma 1), added after the baseline.
Process supervision (a task with step rewards, e.g. task=chain_steps): each step's reward is
standardised over all steps of the group and a token's advantage is the sum of the standardised
rewards of its step and every later step.
With the KL placed in the reward, beta * sum_t k(pi_sampler, pi_ref) is subtracted from the
outcome reward (or from the last step's) before the advantages are formed.
The clipped ratio and the KL-in-the-loss weight are algorithms/policy_gradient.py.
Departures: std is the sample std (as TRL); beta = 0 drops the KL and the reference forward.
"""
import torch

from ptlab.algorithms import advantages as adv
from ptlab.algorithms.base import per_token
from ptlab.errors import ConfigError
from ptlab.algorithms.policy_gradient import PolicyGradient


class GRPO(PolicyGradient):
    min_group_size = 2
    default_loss_agg = "seq-mean-token-mean"

    def __init__(self, baseline: str = "group_mean", advantage_norm: str = "group", supervision: str = "outcome",
                 std_eps: float = 1e-4, kl_credit: str = "sequence", valid_scale: bool = False, **kwargs):
        if baseline in ("none", "greedy") and advantage_norm in ("none", "batch", "token"):
            self.min_group_size = 1  # no statistic of the group: one response per prompt is enough (ReMax, REINFORCE++)
        super().__init__(**kwargs)
        adv.check(baseline, advantage_norm)
        if supervision not in ("outcome", "process"):
            raise ConfigError(f"algorithm.supervision={supervision!r} is not one of outcome, process")
        if kl_credit not in ("sequence", "to_go"):
            raise ConfigError(f"algorithm.kl_credit={kl_credit!r} is not one of sequence, to_go")
        if kl_credit == "to_go" and advantage_norm in ("group", "batch"):
            raise ConfigError(f"algorithm.kl_credit=to_go is not allowed with algorithm.advantage_norm={advantage_norm}:"
                              " per-token returns are normalised per token (token) or not at all (none)")
        self.baseline, self.advantage_norm, self.supervision, self.std_eps = baseline, advantage_norm, supervision, std_eps
        self.kl_credit, self.valid_scale = kl_credit, valid_scale

    def prepare(self, rollout) -> None:
        mask, k = rollout.response_mask, rollout.group_size
        kl_tokens = self.kl_rewards(rollout)  # (B, T), 0 unless the KL is in the reward
        if self.supervision == "outcome":
            rewards = rollout.rewards.to(torch.promote_types(rollout.rewards.dtype, kl_tokens.dtype))
            if self.kl_credit == "sequence":
                rewards = rewards + kl_tokens.sum(-1)
            advantages = adv.outcome_advantages(rewards, k, self.baseline, self.advantage_norm, self.std_eps,
                                                lengths=mask.sum(-1), greedy_rewards=rollout.greedy_rewards)
            advantages = per_token(advantages, mask)
            if self.kl_credit == "to_go":
                advantages = advantages + adv.to_go(kl_tokens, mask)
            if self.advantage_norm == "token":
                advantages = adv.whiten_tokens(advantages, mask, self.std_eps)
            if self.valid_scale:
                advantages = advantages * adv.valid_scale(rollout.rewards, k)
            rollout.extras["advantages"] = advantages
            return
        if rollout.step_rewards is None:
            raise ConfigError("algorithm.supervision=process needs step rewards: a task with steps (task=chain_steps)"
                              " and a sampler that generates")
        step_rewards = rollout.step_rewards.clone().float()
        last_step = (rollout.step_mask.cumsum(-1) == rollout.step_mask.sum(-1, keepdim=True)) & rollout.step_mask.bool()
        step_rewards = step_rewards + last_step * kl_tokens.sum(-1).unsqueeze(1)
        rollout.extras["advantages"] = adv.process_advantages(step_rewards, rollout.step_mask, k, self.std_eps) * mask
