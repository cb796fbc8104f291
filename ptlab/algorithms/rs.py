"""Rejection sampling fine-tuning (RAFT; Dong et al. 2023, "RAFT: Reward rAnked FineTuning").

Weight 1 on every token of the best-rewarded response of each group, 0 elsewhere. Departure from
the paper: a group whose best reward is not above `reward_threshold` (default 0: nothing correct)
is skipped rather than imitated, so wrong answers are never reinforced on a 0/1 reward.
Native objective: the NLL of the kept responses (token-sum per response, mean over groups).
"""
import torch
from torch import Tensor

from ptlab.algorithms.base import Algorithm, aggregate, per_token


class RS(Algorithm):
    min_group_size = 2
    default_loss_agg = "group-mean-token-sum"

    def __init__(self, reward_threshold: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.reward_threshold = reward_threshold

    def selected(self, rollout) -> Tensor:
        """1.0 for the kept best response of each group, else 0. (B,)"""
        rewards = rollout.rewards.view(-1, rollout.group_size)  # (G, k)
        best = rewards.argmax(dim=1, keepdim=True)  # first best on ties
        keep = rewards.gather(1, best) > self.reward_threshold  # (G, 1)
        chosen = torch.zeros_like(rewards).scatter(1, best, keep.to(rewards.dtype))
        return chosen.view(-1)

    def weights(self, logprobs: Tensor, rollout) -> tuple[Tensor, dict[str, float]]:
        selected = self.selected(rollout)
        metrics = {"kept_fraction": selected.sum().item() / (len(selected) // rollout.group_size)}
        return per_token(selected, rollout.response_mask).to(logprobs.dtype), metrics

    def objective(self, logprobs: Tensor, rollout) -> Tensor:
        kept = per_token(self.selected(rollout), rollout.response_mask)
        return -aggregate(logprobs * kept, rollout.response_mask, self.loss_agg, rollout.group_size)
