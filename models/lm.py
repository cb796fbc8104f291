"""Token log-probabilities of responses under a causal LM.

Prompts are left-padded and responses right-padded, so position ids come from the attention mask
(a left-padded prompt must still start at position 0).

A model may restrict what it can say: token ids listed in `model.generation_config.suppress_tokens`
get probability 0 both when sampling (Hugging Face `generate` reads the same field) and here, so the
policy that samples and the policy that is scored are one distribution (the exact task relies on it).
"""
import torch
from torch import Tensor


def suppressed_token_ids(model) -> list[int]:
    config = getattr(model, "generation_config", None)
    return list(getattr(config, "suppress_tokens", None) or [])


def restrict_vocabulary(model, tokenizer, allowed: list[str]) -> None:
    """Let the model emit only the tokens of `allowed` (and eos) from now on."""
    keep = {tokenizer.convert_tokens_to_ids(token) for token in allowed} | {tokenizer.eos_token_id}
    model.generation_config.suppress_tokens = [i for i in range(model.config.vocab_size) if i not in keep]


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
    suppressed = suppressed_token_ids(model)
    if suppressed:
        logits = logits.index_fill(-1, torch.tensor(suppressed, device=logits.device), float("-inf"))
    chosen = logits.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
    logprobs = chosen - torch.logsumexp(logits, dim=-1)
    return torch.where(response_mask.bool(), logprobs, torch.zeros_like(logprobs))
