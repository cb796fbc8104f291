"""Where responses come from. Each sampler turns a list of task rows into a scored Rollout.

A row is a dict with at least `prompt` and `answer` (and `rejected` for pairs). `source` tells an
algorithm what kind of responses it gets: sampled by a policy, dataset demonstrations, or dataset
preference pairs.
"""
import torch

from algorithms.base import ConfigError
from training.rollout import Rollout, encode_prompts, encode_responses


class Sampler:
    source = "policy"

    def __init__(self, tokenizer, reward_fn, generator=None, group_size: int = 1):
        self.tokenizer, self.reward_fn, self.generator = tokenizer, reward_fn, generator
        self.group_size = group_size

    def sample(self, rows: list[dict], policy) -> Rollout:
        raise NotImplementedError

    def _score(self, rows: list[dict], completions: list[str]) -> torch.Tensor:
        repeated = [row for row in rows for _ in range(self.group_size)]
        return torch.tensor(self.reward_fn(completions, repeated), dtype=torch.float32)

    def _decode(self, response_ids, response_mask) -> list[str]:
        return self.tokenizer.batch_decode(response_ids * response_mask, skip_special_tokens=True)


class OnPolicy(Sampler):
    """k responses per prompt from the current policy (temperature and top-p from the generator)."""

    def sample(self, rows: list[dict], policy) -> Rollout:
        prompts = [row["prompt"] for row in rows for _ in range(self.group_size)]
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts)
        device = next(policy.parameters()).device
        prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
        response_ids, response_mask = self.generator(policy, self.tokenizer, prompt_ids, prompt_mask)
        completions = self._decode(response_ids, response_mask)
        rewards = self._score(rows, completions).to(device)
        return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, rewards, self.group_size,
                       prompts=prompts, completions=completions)


class Demonstrations(Sampler):
    """The dataset's solution as the one response per prompt (SFT)."""

    source = "demonstrations"
    fixed_group_size = 1

    def __init__(self, tokenizer, reward_fn, generator=None, group_size: int | None = None):
        if group_size not in (None, self.fixed_group_size):
            raise ConfigError(f"sampler.group_size={group_size} is not allowed for {self.source}: it is {self.fixed_group_size}")
        super().__init__(tokenizer, reward_fn, generator, self.fixed_group_size)

    def sample(self, rows: list[dict], policy) -> Rollout:
        return self._from_responses(rows, [row["answer"] for row in rows])

    def _from_responses(self, rows: list[dict], responses: list[str]) -> Rollout:
        prompts = [row["prompt"] for row in rows for _ in range(self.group_size)]
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts)
        response_ids, response_mask = encode_responses(self.tokenizer, responses)
        rewards = self._score(rows, responses)
        return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, rewards, self.group_size,
                       prompts=prompts, completions=responses)


class Pairs(Demonstrations):
    """Given (chosen, rejected) pairs as groups of two: the row's answer and its `rejected` column."""

    source = "pairs"
    fixed_group_size = 2

    def sample(self, rows: list[dict], policy) -> Rollout:
        return self._from_responses(rows, [text for row in rows for text in (row["answer"], row["rejected"])])
