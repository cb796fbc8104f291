"""The reference policy pi_ref: the initial policy, kept frozen.

Two kinds behind one interface (`logprobs(rollout)`, and `sampling()`, a context that yields a
model to generate with):
  FrozenReference   a frozen copy of the initial policy (full fine-tuning);
  AdapterReference  a LoRA policy with its adapters switched off: the base model, which LoRA never
                    changes, so pi_ref costs no memory at all.
"""
import copy
from contextlib import contextmanager

import torch
from torch import nn

from ptlab.models.build import is_lora
from ptlab.models.lm import token_logprobs
from ptlab.models.onednn import onednn_linears


class FrozenReference(nn.Module):
    def __init__(self, policy: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(policy).eval().requires_grad_(False)
        self.onednn_weights = {}  # reordered once: these weights never change (models/onednn.py)

    def logprobs(self, rollout, buckets: int = 1):  # -> (B, T)
        with torch.inference_mode(), onednn_linears(self.model, self.onednn_weights):  # no autograd bookkeeping
            logprobs = token_logprobs(self.model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                                      rollout.response_mask, buckets=buckets)
        return logprobs.clone()  # cloned outside inference mode: a normal tensor, safe anywhere in autograd

    @contextmanager
    def sampling(self):
        with onednn_linears(self.model, self.onednn_weights):
            yield self.model

    def train(self, mode: bool = True):  # stays in eval mode whatever Lightning asks
        return super().train(False)


class AdapterReference:
    """pi_ref = the LoRA policy with its adapters disabled. Not an nn.Module: it owns no weights (the
    policy does), so it adds nothing to the module's parameters or checkpoints."""

    def __init__(self, policy):
        self.policy = policy

    @contextmanager
    def sampling(self):
        was_training = self.policy.training
        self.policy.eval()  # no adapter dropout
        try:
            with self.policy.disable_adapter():
                yield self.policy
        finally:
            self.policy.train(was_training)

    def logprobs(self, rollout, buckets: int = 1):  # -> (B, T)
        with self.sampling() as model, torch.inference_mode():
            logprobs = token_logprobs(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                                      rollout.response_mask, buckets=buckets)
        return logprobs.clone()  # a normal tensor


def reference_for(policy):
    return AdapterReference(policy) if is_lora(policy) else FrozenReference(policy)
