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
    entropy: str | None = None,
):
    """log pi(y[i,t] | x_i, y[i,<t]) at temperature 1, shape (B, T); zero where response_mask is 0.

    entropy="detached" or "grad" also returns the entropy of each next-token distribution (B, T),
    without or with its graph (an entropy bonus needs the graph; a diagnostic does not)."""
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)  # (B, P+T)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    response_len = response_ids.shape[1]
    # logits only where they are read (a Hugging Face model skips the LM head on prompt positions)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                   logits_to_keep=response_len + 1).logits
    logits = logits[:, -(response_len + 1) : -1]  # (B, T, V): position t predicts response token t
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    suppressed = suppressed_token_ids(model)
    if suppressed:
        logits = logits.index_fill(-1, torch.tensor(suppressed, device=logits.device), float("-inf"))
    chosen = logits.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
    log_norm = torch.logsumexp(logits, dim=-1)
    logprobs = torch.where(response_mask.bool(), chosen - log_norm, torch.zeros_like(chosen))
    if entropy is None:
        return logprobs
    with torch.set_grad_enabled(entropy == "grad" and torch.is_grad_enabled()):
        source, norm = (logits, log_norm) if entropy == "grad" else (logits.detach(), log_norm.detach())
        probs = torch.exp(source - norm.unsqueeze(-1))
        finite = source.nan_to_num(neginf=0.0) if suppressed else source  # 0 * -inf would be nan
        token_entropy = norm - torch.linalg.vecdot(probs, finite)  # H = log Z - sum_v p_v * logit_v
    return logprobs, token_entropy * response_mask
