"""DPO (Rafailov et al. 2023, Eq. 7) and IPO (Azar et al. 2023, Eq. 17) on the best and worst
response of each group.

Online (sampler=on_policy etc.): the pair of a group is its best- and worst-rewarded response; a
group whose rewards are all equal gives no pair and weight 0. Offline (sampler=pairs): each group
is a given (chosen, rejected) pair with rewards (1, 0), so the same rule picks it.

With L = log pi(y|x) summed over tokens and the margin m = (L_c - L_ref_c) - (L_r - L_ref_r):
    loss=sigmoid (DPO): h = beta * m, loss -log sigmoid(h),   w_c = beta * sigmoid(-h)
    loss=ipo     (IPO): loss (m - 1/(2 beta))^2,              w_c = 1/beta - 2m
and w_r = -w_c, on every token of the response. The loss is summed over pairs and divided by the
number of groups (pair-less groups count as 0), which group-mean-token-sum matches.
`reference: rollout` measures the margin against the policy that sampled the pair.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from ptlab.algorithms.base import Algorithm, per_token, sequence_logprobs
from ptlab.errors import ConfigError


class DPO(Algorithm):
    uses_reference = True
    beta_rule = "positive"
    min_group_size = 2
    sources = ("policy", "pairs")
    default_loss_agg = "group-mean-token-sum"

    def __init__(self, loss: str = "sigmoid", **kwargs):
        super().__init__(**kwargs)
        if loss not in ("sigmoid", "ipo"):
            raise ConfigError(f"algorithm.loss={loss!r} is not one of sigmoid, ipo")
        self.loss = loss

    def _pairs(self, logprobs: Tensor, rollout):
        """Margins m (G,), chosen and rejected indices (G, 1), and which groups have a pair (G,)."""
        k, mask = rollout.group_size, rollout.response_mask
        rewards = rollout.rewards.view(-1, k)  # (G, k)
        chosen, rejected = rewards.argmax(1, keepdim=True), rewards.argmin(1, keepdim=True)
        has_pair = (rewards.max(1).values > rewards.min(1).values).to(logprobs.dtype)
        log_ratio = (sequence_logprobs(logprobs, mask) - sequence_logprobs(self.anchor(rollout), mask)).view(-1, k)
        margin = (log_ratio.gather(1, chosen) - log_ratio.gather(1, rejected)).squeeze(1)
        return margin, chosen, rejected, has_pair

    def weights(self, logprobs: Tensor, rollout) -> tuple[Tensor, dict[str, float]]:
        margin, chosen, rejected, has_pair = self._pairs(logprobs, rollout)
        if self.loss == "sigmoid":
            pair_weight = self.beta * torch.sigmoid(-self.beta * margin)
        else:
            pair_weight = 1 / self.beta - 2 * margin
        pair_weight = (pair_weight * has_pair).unsqueeze(1)  # (G, 1)
        weights = torch.zeros_like(rollout.rewards.view(-1, rollout.group_size), dtype=logprobs.dtype)
        weights = weights.scatter(1, chosen, pair_weight).scatter_add(1, rejected, -pair_weight)
        pairs = max(has_pair.sum().item(), 1)
        metrics = {
            "pair_fraction": has_pair.mean().item(),
            "margin": (margin * has_pair).sum().item() / pairs,
            "pair_accuracy": ((margin > 0) * has_pair).sum().item() / pairs,
        }
        return per_token(weights.view(-1), rollout.response_mask), metrics

    def objective(self, logprobs: Tensor, rollout) -> Tensor:
        margin, _, _, has_pair = self._pairs(logprobs, rollout)
        if self.loss == "sigmoid":
            per_pair = -F.logsigmoid(self.beta * margin)
        else:
            per_pair = (margin - 1 / (2 * self.beta)).pow(2)
        return (per_pair * has_pair).sum() / len(margin)
