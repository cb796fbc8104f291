"""The reference policy pi_ref: a frozen copy of the initial policy.

The module asks a reference only for token log-probs of a rollout, so other kinds slot in behind the
same call (the base model with LoRA adapters disabled; the previous policy).
"""
import copy

import torch
from torch import nn

from models.lm import token_logprobs


class FrozenReference(nn.Module):
    def __init__(self, policy: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(policy).eval().requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, rollout):  # -> (B, T)
        return token_logprobs(
            self.model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask
        )

    def train(self, mode: bool = True):  # stays in eval mode whatever Lightning asks
        return super().train(False)
