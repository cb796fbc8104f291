"""Token log-probabilities of responses under a causal LM.

Prompts are left-padded and responses right-padded, so position ids come from the attention mask
(a left-padded prompt must still start at position 0).
"""
import torch
from torch import Tensor


def token_logprobs(
    model,
    prompt_ids: Tensor,  # (B, P) left-padded
    prompt_mask: Tensor,  # (B, P)
    response_ids: Tensor,  # (B, T) right-padded
    response_mask: Tensor,  # (B, T)
) -> Tensor:
    """log pi(y[i,t] | x_i, y[i,<t]) at temperature 1, shape (B, T); zero where response_mask is 0."""
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)  # (B, P+T)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    prompt_len = prompt_ids.shape[1]
    logits = logits[:, prompt_len - 1 : -1]  # (B, T, V): position t predicts response token t
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    chosen = logits.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
    logprobs = chosen - torch.logsumexp(logits, dim=-1)
    return logprobs * response_mask
