"""Texts into the padded id tensors a rollout holds, for any tokenizer: prompts padded on the left,
responses on the right and ending in eos."""
import torch
from torch import Tensor


def encode_prompts(tokenizer, prompts: list[str]) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids and mask, (B, P) each."""
    encoded = tokenizer(prompts, padding=True, return_tensors="pt")
    return encoded.input_ids, encoded.attention_mask



def encode_responses(tokenizer, responses: list[str], max_tokens: int | None = None) -> tuple[Tensor, Tensor]:
    """Right-padded response ids ending in eos, and their mask, (B, T) each. With max_tokens, a
    response is cut there as generation would cut it (one of max_tokens symbols has no eos)."""
    ids = [tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for text in responses]
    length = max(len(row) for row in ids)
    response_ids = torch.full((len(ids), length), tokenizer.pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((len(ids), length), dtype=torch.long)
    for i, row in enumerate(ids):
        response_ids[i, : len(row)] = torch.tensor(row)
        response_mask[i, : len(row)] = 1
    return response_ids[:, :max_tokens], response_mask[:, :max_tokens]

