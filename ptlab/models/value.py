"""Critics for PPO: V(x, y_<t) for every response position t, initialised from the policy.

Built here, by the model layer, and handed to the algorithm (algorithms/ never imports models/).
For a Hugging Face causal LM the critic is a copy of the policy's decoder stack (without its LM
head) with a scalar head, zero at the start so the first values are 0. For a LoRA policy the copy
keeps the LoRA layers: the critic trains its own adapters and head, its base weights stay frozen.
For the tabular policy it is one value per context. Position t's value is read where the policy's
logits for token t are read.
"""
import copy

import torch
from torch import Tensor, nn

from ptlab.models.lm import SharedPrompts, in_row_order, shares_prompts
from ptlab.models.tabular import TabularLM


def decoder_stack(policy) -> nn.Module:
    """The transformer body of a causal LM (plain or peft-wrapped): hidden states, no LM head."""
    if hasattr(policy, "get_base_model"):  # a peft model: the wrapped LM, LoRA layers injected
        policy = policy.get_base_model()
    return policy.base_model  # Hugging Face: the decoder stack (e.g. LlamaModel)


class ValueModel(nn.Module):
    def __init__(self, policy, buckets: int = 1):
        super().__init__()
        self.buckets = buckets  # forwards on up to that many buckets of rows of similar response length
        self.body = copy.deepcopy(decoder_stack(policy)).train()
        hidden_size = self.body.config.hidden_size
        self.head = nn.Linear(hidden_size, 1, dtype=next(policy.parameters()).dtype)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def hidden(self, input_ids, attention_mask, position_ids) -> Tensor:  # (B, L, H)
        return self.body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=False).last_hidden_state

    def forward(self, rollout) -> Tensor:  # (B, T)
        """Each distinct prompt runs once when a group repeats it, and the rows go in up to `buckets`
        buckets of similar response length (models/lm.py `SharedPrompts`), as the policy's log-probs
        do; otherwise one forward of the whole sequences."""
        if not shares_prompts(self.body, rollout.prompt_ids, rollout.prompt_mask):
            return self.head(self.whole_sequence_hidden(rollout)).squeeze(-1).float() * rollout.response_mask
        shared = SharedPrompts(self.body, rollout.prompt_ids, rollout.prompt_mask)
        order, parts = shared.buckets(rollout.response_mask, self.buckets)
        values = []
        for rows, end in parts:
            hidden = self.body(**shared.inputs(rows, rollout.response_ids, rollout.response_mask, end)).last_hidden_state
            values.append((self.head(hidden).squeeze(-1).float() * rollout.response_mask[rows, :end],))
        return in_row_order(values, order, rollout.response_ids.shape[1], entropy=None)

    def whole_sequence_hidden(self, rollout) -> Tensor:  # (B, T, H)
        input_ids = torch.cat([rollout.prompt_ids, rollout.response_ids], dim=1)
        attention_mask = torch.cat([rollout.prompt_mask, rollout.response_mask], dim=1)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return self.hidden(input_ids, attention_mask, position_ids)[:, rollout.prompt_ids.shape[1] - 1 : -1]


class TabularValue(ValueModel):
    def __init__(self, policy: TabularLM):
        nn.Module.__init__(self)
        self.table = TabularLM(vocab_size=1, capacity=len(policy.table))  # one value per context

    def hidden(self, input_ids, attention_mask, position_ids) -> Tensor:
        return self.table(input_ids, attention_mask).logits

    def forward(self, rollout) -> Tensor:  # (B, T): the table's entry is the value itself
        return self.whole_sequence_hidden(rollout).squeeze(-1).float() * rollout.response_mask


def critic_for(policy, buckets: int = 1) -> nn.Module:
    return TabularValue(policy) if isinstance(policy, TabularLM) else ValueModel(policy, buckets)
