"""Critics for PPO: V(x, y_<t) for every response position t, initialised from the policy.

For a Hugging Face causal LM the critic is a copy of the policy's transformer body with a scalar
head (zero at the start, so the first values are 0); for the tabular policy it is one value per
context. Position t's value is read where the policy's logits for token t are read.
"""
import copy

import torch
from torch import Tensor, nn

from models.tabular import TabularLM


class ValueModel(nn.Module):
    def __init__(self, policy):
        super().__init__()
        self.body = copy.deepcopy(policy.base_model).train()
        self.head = nn.Linear(policy.config.hidden_size, 1, dtype=next(policy.parameters()).dtype)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def hidden(self, input_ids, attention_mask, position_ids) -> Tensor:
        return self.body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state

    def forward(self, rollout) -> Tensor:  # (B, T)
        input_ids = torch.cat([rollout.prompt_ids, rollout.response_ids], dim=1)
        attention_mask = torch.cat([rollout.prompt_mask, rollout.response_mask], dim=1)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.hidden(input_ids, attention_mask, position_ids)[:, rollout.prompt_ids.shape[1] - 1 : -1]
        return self.head(hidden).squeeze(-1).float() * rollout.response_mask


class TabularValue(ValueModel):
    def __init__(self, policy: TabularLM):
        nn.Module.__init__(self)
        self.table = TabularLM(vocab_size=1, capacity=len(policy.table))  # one value per context

    def hidden(self, input_ids, attention_mask, position_ids) -> Tensor:
        return self.table(input_ids, attention_mask).logits

    def head(self, hidden: Tensor) -> Tensor:
        return hidden


def critic_for(policy) -> nn.Module:
    return TabularValue(policy) if isinstance(policy, TabularLM) else ValueModel(policy)
