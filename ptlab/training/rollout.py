"""The batch every algorithm sees: k scored responses for each of G prompts."""
from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

from ptlab.models.encoding import encode_prompts, encode_responses  # noqa: F401 - the encodings rollouts hold


@dataclass
class Rollout:
    """Rows [g*k, (g+1)*k) hold the k responses to prompt g; B = G * k. Groups never straddle
    a minibatch or a device: everything that splits a rollout splits it by whole groups."""

    prompt_ids: Tensor  # (B, P) left-padded
    prompt_mask: Tensor  # (B, P)
    response_ids: Tensor  # (B, T) right-padded, ends with eos unless truncated
    response_mask: Tensor  # (B, T)
    rewards: Tensor  # (B,)
    group_size: int
    sampler_logprobs: Tensor | None = None  # (B, T) log-probs of the policy that sampled; None: the
    #                                          current policy did, before this rollout's first update
    ref_logprobs: Tensor | None = None  # (B, T) pi_ref's; filled by the module when needed, or by a
    #                                      sampler whose responses pi_ref itself sampled
    step_rewards: Tensor | None = None  # (B, T) process supervision: a step's reward at its last token
    step_mask: Tensor | None = None  # (B, T) 1 at the last token of each step
    generated_groups: int | None = None  # groups sampled for this batch (the first ones); None: all
    greedy_rewards: Tensor | None = None  # (B,) the reward of the row's prompt's greedy response (sampler.greedy_baseline)
    extra_generated: tuple[int, int, int] = (0, 0, 0)  # (prompts, responses, tokens) drawn and generated for this
    #                                  batch but not in it: greedy baselines, groups dynamic sampling dropped
    extras: dict[str, Tensor] = field(default_factory=dict)  # (B, ...) each, set by algorithm.prepare
    reward_terms: dict[str, Tensor] = field(default_factory=dict)  # (B,) each: named terms of the reward, the
    #                                                                 first one the correctness score
    totals: tuple[int, int] | None = None  # (rows, tokens) of the minibatch this micro-batch belongs to
    prompts: list[str] = field(default_factory=list)  # (B,) text, for logs
    completions: list[str] = field(default_factory=list)  # (B,)

    @property
    def num_groups(self) -> int:
        return self.rewards.shape[0] // self.group_size

    @property
    def correct(self) -> Tensor:
        """(B,) bool: the response is fully right (its correctness score, or its reward, is 1)."""
        return next(iter(self.reward_terms.values()), self.rewards) == 1

    def _map(self, fn) -> dict:
        """fn applied to every row-aligned tensor, extras included, as replace() arguments."""
        tensors = {f.name: fn(getattr(self, f.name)) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return tensors | {name: {key: fn(value) for key, value in getattr(self, name).items()}
                          for name in ("extras", "reward_terms")}

    def to(self, device) -> "Rollout":
        return replace(self, **self._map(lambda t: t.to(device)))

    def select_groups(self, groups: Tensor) -> "Rollout":
        """The sub-rollout made of whole groups `groups` (G',)."""
        rows = self.rows_of(groups)
        text = {name: [getattr(self, name)[i] for i in rows.tolist()] for name in ("prompts", "completions") if getattr(self, name)}
        return replace(self, **self._map(lambda t: t[rows.to(t.device)]), **text, generated_groups=None)


    def rows_of(self, groups: Tensor) -> Tensor:
        """Row indices (G' * k,) of whole groups `groups` (G',), in order."""
        return (groups.unsqueeze(1) * self.group_size + torch.arange(self.group_size, device=groups.device)).view(-1)

    def trimmed(self) -> "Rollout":
        """The same rows without the padding columns every row has: prompt columns on the left,
        response columns on the right (a part of a batch pads only to its own longest row)."""
        prompt_start = int((self.prompt_mask.sum(0) == 0).cumprod(0).sum())  # leading all-padding columns
        length = int(self.response_mask.sum(-1).max()) if self.response_mask.numel() else 0
        response_len = self.response_mask.shape[1]
        cut = lambda t: t[:, :length] if t.dim() > 1 and t.shape[1] == response_len else t
        trimmed = {name: {key: cut(value) for key, value in getattr(self, name).items()} for name in ("extras",)}
        responses = {name: cut(getattr(self, name)) for name in RESPONSE_ALIGNED if getattr(self, name) is not None}
        return replace(self, prompt_ids=self.prompt_ids[:, prompt_start:], prompt_mask=self.prompt_mask[:, prompt_start:],
                       **responses, **trimmed)

    def groups_by_length(self, parts: int) -> list[Tensor]:
        """Group indices split into `parts` chunks of groups of similar longest-response length, so
        that trimmed parts carry little padding."""
        longest = self.response_mask.sum(-1).view(-1, self.group_size).max(1).values  # (G,)
        return [chunk for chunk in longest.argsort(stable=True).chunk(parts) if len(chunk)]


RESPONSE_ALIGNED = ("response_ids", "response_mask", "sampler_logprobs", "ref_logprobs", "step_rewards", "step_mask")


def concat(parts: list[Rollout]) -> Rollout:
    """Stack rollouts of one group size, padding prompts on the left and responses on the right."""
    prompt_len = max(part.prompt_ids.shape[1] for part in parts)
    response_len = max(part.response_ids.shape[1] for part in parts)

    def stack(name: str, length: int, left: bool, value: float = 0):
        tensors = [getattr(part, name) for part in parts]
        if any(t is None for t in tensors):
            return None
        pad = lambda t: torch.nn.functional.pad(t, (length - t.shape[1], 0) if left else (0, length - t.shape[1]), value=value)
        return torch.cat([pad(t) for t in tensors])

    first = parts[0]
    return Rollout(
        prompt_ids=stack("prompt_ids", prompt_len, left=True), prompt_mask=stack("prompt_mask", prompt_len, left=True),
        response_ids=stack("response_ids", response_len, left=False), response_mask=stack("response_mask", response_len, left=False),
        rewards=torch.cat([part.rewards for part in parts]), group_size=first.group_size,
        greedy_rewards=None if any(part.greedy_rewards is None for part in parts) else torch.cat([part.greedy_rewards for part in parts]),
        extra_generated=tuple(sum(part.extra_generated[i] for part in parts) for i in range(3)),
        reward_terms={name: torch.cat([part.reward_terms[name] for part in parts]) for name in first.reward_terms},
        sampler_logprobs=stack("sampler_logprobs", response_len, left=False),
        step_rewards=stack("step_rewards", response_len, left=False), step_mask=stack("step_mask", response_len, left=False),
        prompts=[text for part in parts for text in part.prompts],
        completions=[text for part in parts for text in part.completions],
    )


def truncated(response_ids: Tensor, response_mask: Tensor, eos_token_id: int | None) -> Tensor:
    """(B,) bool: the response was cut by the generation budget (its last token is not <eos>)."""
    lengths = response_mask.sum(-1)
    if eos_token_id is None:
        return torch.zeros_like(lengths, dtype=torch.bool)
    last = response_ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    return (last != eos_token_id) & (lengths > 0)


def with_lengths(rows: list[dict], response_ids: Tensor, response_mask: Tensor, eos_token_id: int | None) -> list[dict]:
    """The rows with two fields a reward may read: `response_tokens` (the response's length in tokens)
    and `truncated` (cut by the generation budget); e.g. rewards/length.py."""
    lengths, cut = response_mask.sum(-1).tolist(), truncated(response_ids, response_mask, eos_token_id).tolist()
    return [dict(row, response_tokens=int(n), truncated=bool(c)) for row, n, c in zip(rows, lengths, cut)]
