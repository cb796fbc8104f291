"""Supervised fine-tuning: weight 1 on every demonstration token; native objective the token NLL."""
from torch import Tensor

from ptlab.algorithms.base import Algorithm, aggregate


class SFT(Algorithm):
    sources = ("demonstrations",)
    default_loss_agg = "token-mean"

    def weights(self, logprobs: Tensor, rollout) -> tuple[Tensor, dict[str, float]]:
        return rollout.response_mask.to(logprobs.dtype), {}

    def objective(self, logprobs: Tensor, rollout) -> Tensor:
        return -aggregate(logprobs, rollout.response_mask, self.loss_agg, rollout.group_size)
