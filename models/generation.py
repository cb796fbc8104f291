"""Batched sampling with a KV cache (Hugging Face `generate`).

A generation backend maps left-padded prompts to right-padded responses. This one runs the policy
in-process; a vLLM backend (later) implements the same `__call__`.
"""
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class HFGenerator:
    max_new_tokens: int = 8
    temperature: float = 1.0
    top_p: float = 1.0

    @torch.no_grad()
    def __call__(self, model, tokenizer, prompt_ids: Tensor, prompt_mask: Tensor, greedy: bool = False):
        """Return (response_ids (B, T), response_mask (B, T)); one response per prompt row.

        The mask covers the response up to and including its first <eos>; a response that hits
        max_new_tokens without <eos> keeps all its tokens (truncated).
        """
        was_training = model.training
        model.eval()
        sampling = {} if greedy else dict(temperature=self.temperature, top_p=self.top_p, top_k=0)
        sequences = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=not greedy,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
        model.train(was_training)
        response_ids = sequences[:, prompt_ids.shape[1] :]  # (B, T)
        return response_ids, response_mask_after_eos(response_ids, tokenizer.eos_token_id)


def response_mask_after_eos(response_ids: Tensor, eos_token_id: int) -> Tensor:
    """1 up to and including the first eos of each row, 0 after it. (B, T) -> (B, T)."""
    is_eos = (response_ids == eos_token_id).long()
    eos_before = is_eos.cumsum(-1) - is_eos  # number of eos strictly before t
    return (eos_before == 0).long()
