"""DPO (Rafailov et al. 2023, Eq. 7) on the best and worst response of each group.

Online (sampler=on_policy): the pair of a group is its best- and worst-rewarded response; a group
whose rewards are all equal gives no pair and weight 0. Offline (sampler=pairs): each group is a
given (chosen, rejected) pair with rewards (1, 0), so the same rule picks it.

    h = beta * ((L_c - L_ref_c) - (L_r - L_ref_r))       L = log pi(y|x), summed over tokens
    w_c = beta * sigmoid(-h),  w_r = -w_c                  on every token of the response
Native loss: -log sigmoid(h), summed over pairs and divided by the number of groups (pair-less
groups count as 0), which the default aggregation group-mean-token-sum matches.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from algorithms.base import Algorithm, per_token, sequence_logprobs


class DPO(Algorithm):
    needs_reference = True
    beta_rule = "positive"
    min_group_size = 2
    sources = ("policy", "pairs")
    default_loss_agg = "group-mean-token-sum"

    def _pairs(self, logprobs: Tensor, rollout):
        """Margins h (G,), chosen and rejected indices (G, 1), and which groups have a pair (G,)."""
        k = rollout.group_size
        rewards = rollout.rewards.view(-1, k)  # (G, k)
        chosen, rejected = rewards.argmax(1, keepdim=True), rewards.argmin(1, keepdim=True)
        has_pair = (rewards.max(1).values > rewards.min(1).values).to(logprobs.dtype)
        log_ratio = (sequence_logprobs(logprobs, rollout.response_mask) - sequence_logprobs(rollout.ref_logprobs, rollout.response_mask)).view(-1, k)
        margin = self.beta * (log_ratio.gather(1, chosen) - log_ratio.gather(1, rejected)).squeeze(1)
        return margin, chosen, rejected, has_pair

    def weights(self, logprobs: Tensor, rollout) -> tuple[Tensor, dict[str, float]]:
        margin, chosen, rejected, has_pair = self._pairs(logprobs, rollout)
        pair_weight = (self.beta * torch.sigmoid(-margin) * has_pair).unsqueeze(1)  # (G, 1)
        weights = torch.zeros_like(rollout.rewards.view(-1, rollout.group_size), dtype=logprobs.dtype)
        weights = weights.scatter(1, chosen, pair_weight).scatter_add(1, rejected, -pair_weight)
        metrics = {
            "pair_fraction": has_pair.mean().item(),
            "margin": (margin * has_pair).sum().item() / max(has_pair.sum().item(), 1),
            "pair_accuracy": ((margin > 0) * has_pair).sum().item() / max(has_pair.sum().item(), 1),
        }
        return per_token(weights.view(-1), rollout.response_mask), metrics

    def objective(self, logprobs: Tensor, rollout) -> Tensor:
        margin, _, _, has_pair = self._pairs(logprobs, rollout)
        return (-F.logsigmoid(margin) * has_pair).sum() / len(margin)
