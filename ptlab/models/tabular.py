"""A tabular policy: one free logit vector per context (the prompt and the response so far).

On the exact task this is one softmax table per prompt over the response tree, the most expressive
policy there is, so what a run converges to is the algorithm's fixed point and not a limit of the
network. It speaks the causal-LM interface that ptlab uses (`forward(...).logits`, `generate`,
`generation_config.suppress_tokens`), so samplers, the reference and the module need no special case.
Rows are given to contexts as they are first seen; `capacity` bounds them (small tasks only).
"""
from types import SimpleNamespace

import torch
from torch import nn

from ptlab.errors import ConfigError


class TabularLM(nn.Module):
    def __init__(self, vocab_size: int, capacity: int = 4096):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size)
        self.generation_config = SimpleNamespace(suppress_tokens=None)
        self.table = nn.Parameter(torch.zeros(capacity, vocab_size))  # uniform at start
        self.rows: dict[tuple[int, ...], int] = {}

    def _row(self, context: tuple[int, ...]) -> int:
        if context not in self.rows:
            if len(self.rows) == len(self.table):
                raise ConfigError(f"model=tabular is out of rows (capacity {len(self.table)}): it is meant for task=exact")
            self.rows[context] = len(self.rows)
        return self.rows[context]

    def get_extra_state(self) -> dict:  # the context -> row map travels with the table in state_dict
        return {"rows": dict(self.rows)}

    def set_extra_state(self, state: dict) -> None:
        self.rows = dict(state["rows"])

    def forward(self, input_ids, attention_mask=None, position_ids=None, **unused):
        """logits[b, t] = the row of the context input_ids[b, :t+1] (masked tokens skipped). (B, L, V)"""
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        index = []
        for ids, keep in zip(input_ids.tolist(), mask.tolist()):
            context, row = (), []
            for token, kept in zip(ids, keep):
                context = context + (token,) if kept else context
                row.append(self._row(context))
            index.append(row)
        # an embedding lookup, not `table[index]`: the latter's backward (index_put_ with accumulate)
        # adds rows that share a context with atomic adds across threads, in an order that varies from
        # run to run; embedding's backward adds them in a fixed order (the same command, the same weights)
        return SimpleNamespace(logits=nn.functional.embedding(torch.tensor(index, device=self.table.device), self.table))

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, max_new_tokens: int, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, pad_token_id: int = 0, eos_token_id: int | None = None,
                 **unused):
        """Sample (or pick greedily) up to max_new_tokens tokens; pad after eos. (B, P + T)"""
        if top_p < 1:
            raise ConfigError(f"generation.top_p={top_p} is not supported by model=tabular (temperature only)")
        suppressed = list(self.generation_config.suppress_tokens or [])
        sequences, mask = input_ids, attention_mask
        done = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            logits = self(sequences, mask).logits[:, -1].clone()
            logits[:, suppressed] = float("-inf")
            if do_sample:
                token = torch.multinomial(torch.softmax(logits / temperature, -1), 1).squeeze(1)
            else:
                token = logits.argmax(-1)
            token = torch.where(done, torch.full_like(token, pad_token_id), token)
            sequences = torch.cat([sequences, token[:, None]], 1)
            mask = torch.cat([mask, (~done).long()[:, None]], 1)
            done |= token == eos_token_id
            if done.all():
                break
        return sequences


def tabular(capacity: int = 4096):
    """Hydra target of conf/model/tabular.yaml: (model, tokenizer) with the character tokenizer."""
    from ptlab.models.tokenizer import char_tokenizer

    tokenizer = char_tokenizer()
    return TabularLM(len(tokenizer), capacity), tokenizer
