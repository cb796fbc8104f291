"""Where responses come from, chosen independently of the algorithm (conf/sampler/).

A sampler turns task rows (dicts with `prompt`, `answer`, ...) into a scored Rollout. Every
rollout carries the log-probs of the policy that sampled it (`sampler_logprobs`), except on-policy
ones, where the module fills them from its first forward (the policy has not moved yet).
`source` tells an algorithm what kind of responses it gets: "policy" (sampled), "demonstrations"
(dataset solutions) or "pairs" (dataset chosen/rejected).
"""
import copy
import math
import random
from dataclasses import fields

import torch

from ptlab import parallel
from ptlab.errors import ConfigError
from ptlab.models.lm import token_logprobs
from ptlab.rewards import score
from ptlab.training.rollout import Rollout, concat, encode_prompts, encode_responses, with_lengths


class Sampler:
    source = "policy"
    needs_reference = False  # run.py hands setup() a frozen copy of the initial policy
    needs_enumerable_task = False
    provides_step_rewards = False  # fills rollout.step_rewards when the reward has `steps`

    can_resample = False  # draws fresh groups on prompts of its own (dynamic sampling: OnPolicy below)

    def __init__(self, tokenizer, reward_fn, generator=None, group_size: int = 1, dynamic_sampling: bool = False,
                 max_extra_batches: int = 3):
        self.tokenizer, self.reward_fn, self.generator = tokenizer, reward_fn, generator
        self.group_size = group_size
        if dynamic_sampling and not self.can_resample:
            raise ConfigError(f"sampler.dynamic_sampling=true is not allowed for {type(self).__name__}: it cannot draw "
                              "fresh groups (on_policy, stale and reference can)")
        if max_extra_batches < 0:
            raise ConfigError(f"sampler.max_extra_batches={max_extra_batches} is not allowed: it must be >= 0")
        self.dynamic_sampling, self.max_extra_batches = dynamic_sampling, max_extra_batches
        self.shortfall = 0  # groups of the last batch that dynamic sampling could not replace
        self.on_reward_failure: float | None = None  # None: a failing reward function stops the run
        self.reward_failures = 0  # responses scored on_reward_failure in the last batch

    def setup(self, policy, reference, task) -> None:
        """Called once before training, with the initial policy."""

    def state_dict(self) -> dict:
        """What a checkpoint keeps so a resumed run samples as an uninterrupted one would: the draw
        order of a sampler that has its own `rng`; samplers with more state add theirs."""
        return {"rng": self.rng.getstate()} if hasattr(self, "rng") else {}

    def load_state_dict(self, state: dict) -> None:
        if "rng" in state:
            self.rng.setstate(state["rng"])

    def sample(self, rows: list[dict], policy) -> Rollout:
        raise NotImplementedError

    def _score(self, rows: list[dict], completions: list[str], response_ids=None, response_mask=None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Rewards (B,) and their named terms, rows[g] repeated for its group; given the responses' ids,
        each row also carries its response's length and whether it was cut (rollout.with_lengths)."""
        repeated = [row for row in rows for _ in range(self.group_size)]
        if response_ids is not None:
            repeated = with_lengths(repeated, response_ids, response_mask, getattr(self.tokenizer, "eos_token_id", None))
        total, terms, self.reward_failures = score(self.reward_fn, completions, repeated, self.on_reward_failure)
        as_tensor = lambda values: torch.tensor(values, dtype=torch.float32)
        return as_tensor(total), {name: as_tensor(values) for name, values in terms.items()}

    def _from_responses(self, rows: list[dict], responses: list[str], max_tokens: int | None = None) -> Rollout:
        """A rollout of given response texts, rows[g] repeated for its group."""
        prompts = [row["prompt"] for row in rows for _ in range(self.group_size)]
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts)
        response_ids, response_mask = encode_responses(self.tokenizer, responses, max_tokens)
        rewards, terms = self._score(rows, responses, response_ids, response_mask)
        return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, rewards, self.group_size,
                       reward_terms=terms, prompts=prompts, completions=responses)


def step_reward_tensors(tokenizer, reward_fn, completions, rows, response_ids, response_mask):
    """Step rewards (B, T) at the token where each step's text ends, and the mask of those tokens."""
    rewards = torch.zeros(response_ids.shape, dtype=torch.float32)
    ends = torch.zeros(response_ids.shape, dtype=torch.long)
    for i, steps in enumerate(reward_fn.steps(completions, rows)):
        ids = response_ids[i, : int(response_mask[i].sum())].tolist()
        decoded = [len(tokenizer.decode(ids[: t + 1], skip_special_tokens=True)) for t in range(len(ids))]
        for end_char, reward in steps:
            t = next((t for t, length in enumerate(decoded) if length >= end_char), len(ids) - 1)
            rewards[i, t] += reward
            ends[i, t] = 1
    return rewards.to(response_ids.device), ends.to(response_ids.device)


class OnPolicy(Sampler):
    """k responses per prompt from the current policy (temperature and top-p from the generator).

    Two options any generating sampler has (both counted in budget/: prompts, responses, tokens):
      greedy_baseline   also decode one greedy response per prompt and score it: the baseline of
                        ReMax (Li et al. 2023), rollout.greedy_rewards (B,); turned on by an algorithm
                        whose baseline is greedy (training/assemble.py), not a config key
      dynamic_sampling  DAPO's dynamic sampling (Yu et al. 2025, section 3.2, Eq. 11): drop the groups
                        whose rewards are all equal (no advantage under a group baseline) and draw
                        fresh groups, on prompts drawn from the training set with torch's RNG (seeded
                        by the run's seed, checkpointed with it), until the batch is full again; at
                        most `max_extra_batches` extra draws per step. Departures: each draw takes
                        as many prompts as there are places to fill (verl's recipe draws a whole
                        generation batch each time: on chain_sum that doubled the tokens generated
                        for about 10% of groups dropped); DAPO stops the run when its cap is reached,
                        here the batch is filled with dropped groups (what no dynamic sampling trains
                        on) and train/dynamic_shortfall says how many groups that was. Under data
                        parallelism each rank refills its own groups, from its own stride of one
                        shared permutation of the training set (no prompt on two ranks).
    """

    provides_step_rewards = True
    can_resample = True

    def __init__(self, tokenizer, reward_fn, generator=None, group_size: int = 1, greedy_baseline: bool = False, **options):
        super().__init__(tokenizer, reward_fn, generator, group_size, **options)
        self.greedy_baseline = greedy_baseline

    def setup(self, policy, reference, task) -> None:
        self.pool = task.train_dataset() if self.dynamic_sampling else None

    def sample(self, rows: list[dict], policy) -> Rollout:
        return self._collect(rows, lambda part: self._generate(part, policy, with_logprobs=False))

    def _collect(self, rows: list[dict], draw) -> Rollout:
        """draw(rows) -> Rollout, with DAPO's dynamic sampling when it is on."""
        batch = draw(rows)
        if not self.dynamic_sampling:
            return batch
        kept, dropped, extra_batches, greedy = [], [], 0, [0, 0, 0]
        while True:
            greedy = [total + part for total, part in zip(greedy, batch.extra_generated)]  # greedy baselines' cost
            rewards = batch.rewards.view(-1, self.group_size)
            informative = rewards.max(1).values != rewards.min(1).values
            kept.append(batch.select_groups(informative.nonzero().squeeze(1)))
            dropped.append(batch.select_groups((~informative).nonzero().squeeze(1)))
            if sum(part.num_groups for part in kept) >= len(rows) or extra_batches == self.max_extra_batches:
                break
            missing = len(rows) - sum(part.num_groups for part in kept)
            # as many fresh prompts as places to fill; under data parallelism every rank draws the same
            # permutation (the same RNG use on every rank) and takes its own stride of it: no two ranks refill
            # with the same prompt
            order = torch.randperm(len(self.pool))[parallel.rank()::parallel.world_size()]
            fresh = order[:missing].tolist()
            batch, extra_batches = draw([self.pool[i] for i in fresh]), extra_batches + 1
        full = concat([part for part in kept + dropped if part.num_groups])
        self.shortfall = max(0, len(rows) - sum(part.num_groups for part in kept))
        out = full.select_groups(torch.arange(len(rows), device=full.rewards.device))
        left = full.select_groups(torch.arange(len(rows), full.num_groups, device=full.rewards.device))
        # what was generated and scored for this batch but is not in it costs as much as what is
        out.extra_generated = (left.num_groups + greedy[0], int(left.rewards.numel()) + greedy[1],
                               int(left.response_mask.sum()) + greedy[2])
        return out

    @torch.no_grad()
    def _generate(self, rows: list[dict], model, with_logprobs: bool) -> Rollout:
        prompts = [row["prompt"] for row in rows for _ in range(self.group_size)]
        device = next(model.parameters()).device
        prompt_ids, prompt_mask = (t.to(device) for t in encode_prompts(self.tokenizer, prompts))
        response_ids, response_mask = self.generator(model, self.tokenizer, prompt_ids, prompt_mask)
        completions = self.tokenizer.batch_decode(response_ids * response_mask, skip_special_tokens=True)
        rewards, terms = self._score(rows, completions, response_ids.cpu(), response_mask.cpu())
        rollout = Rollout(prompt_ids, prompt_mask, response_ids, response_mask, rewards.to(device), self.group_size,
                          reward_terms={name: values.to(device) for name, values in terms.items()},
                          prompts=prompts, completions=completions)
        sampled_by = self.generator.sampling_policy(model)  # not `model` when a backend's weights lag behind it
        if with_logprobs or sampled_by is not model:
            rollout.sampler_logprobs = token_logprobs(sampled_by, prompt_ids, prompt_mask, response_ids, response_mask)
        if hasattr(self.reward_fn, "steps"):
            repeated = [row for row in rows for _ in range(self.group_size)]
            rollout.step_rewards, rollout.step_mask = step_reward_tensors(
                self.tokenizer, self.reward_fn, completions, repeated, response_ids, response_mask)
        if self.greedy_baseline:
            rollout.greedy_rewards, tokens = self._greedy_rewards(rows, model, prompt_ids[:: self.group_size],
                                                                  prompt_mask[:: self.group_size])
            rollout.extra_generated = (0, len(rows), tokens)
        return rollout

    def _greedy_rewards(self, rows: list[dict], model, prompt_ids, prompt_mask) -> tuple[torch.Tensor, int]:
        """The reward of each prompt's greedy response, repeated for its group (B,), and its tokens."""
        response_ids, response_mask = self.generator(model, self.tokenizer, prompt_ids, prompt_mask, greedy=True)
        completions = self.tokenizer.batch_decode(response_ids * response_mask, skip_special_tokens=True)
        rows = with_lengths(rows, response_ids.cpu(), response_mask.cpu(), self.tokenizer.eos_token_id)
        rewards, _, failures = score(self.reward_fn, completions, rows, self.on_reward_failure)
        self.reward_failures += failures
        greedy = torch.tensor(rewards, dtype=torch.float32, device=prompt_ids.device)
        return greedy.repeat_interleave(self.group_size), int(response_mask.sum())


class Reference(OnPolicy):
    """k responses per prompt from pi_ref, the frozen initial policy."""

    needs_reference = True

    def setup(self, policy, reference, task) -> None:
        super().setup(policy, reference, task)
        self.reference = reference

    def sample(self, rows: list[dict], policy) -> Rollout:
        with self.reference.sampling() as model:
            rollout = self._collect(rows, lambda part: self._generate(part, model, with_logprobs=True))
        rollout.ref_logprobs = rollout.sampler_logprobs  # the sampler is pi_ref: no second forward
        return rollout


class Stale(OnPolicy):
    """k responses per prompt from a snapshot of the policy, refreshed every `refresh_every` rollouts."""

    def __init__(self, tokenizer, reward_fn, generator=None, group_size: int = 1, refresh_every: int = 10, **options):
        super().__init__(tokenizer, reward_fn, generator, group_size, **options)
        self.refresh_every, self.calls = refresh_every, 0

    def setup(self, policy, reference, task) -> None:
        super().setup(policy, reference, task)
        self.model = copy.deepcopy(policy).requires_grad_(False)

    def state_dict(self) -> dict:
        return super().state_dict() | {"calls": self.calls, "snapshot": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.calls = state["calls"]
        self.model.load_state_dict(state["snapshot"])

    def sample(self, rows: list[dict], policy) -> Rollout:
        if self.calls % self.refresh_every == 0:
            self.model.load_state_dict(policy.state_dict())
        self.calls += 1
        return self._collect(rows, lambda part: self._generate(part, self.model, with_logprobs=True))


class Replay(OnPolicy):
    """Fresh on-policy groups mixed with groups replayed from a buffer of past ones.

    Of the G prompts of a batch, round(G * (1 - replay_ratio)) are sampled fresh; the other places
    go to past groups drawn uniformly from the last `capacity` groups, with the log-probs of the
    policy that sampled them then. Until the buffer holds enough, the batch is all fresh.
    """

    can_resample = False  # its batches mix in stored groups: dynamic sampling is not defined for it

    def __init__(self, tokenizer, reward_fn, generator=None, group_size: int = 1, replay_ratio: float = 0.5,
                 capacity: int = 256, seed: int = 0, greedy_baseline: bool = False, **options):
        super().__init__(tokenizer, reward_fn, generator, group_size, greedy_baseline=greedy_baseline, **options)
        if not 0 <= replay_ratio < 1:
            raise ConfigError(f"sampler.replay_ratio={replay_ratio} is not allowed: it must be in [0, 1)")
        self.replay_ratio, self.capacity = replay_ratio, capacity
        self.buffer: list[Rollout] = []
        self.rng = random.Random(seed)

    def state_dict(self) -> dict:
        """The buffer's groups as plain fields (tensors, lists, numbers): a checkpoint loads with weights_only."""
        return super().state_dict() | {"buffer": [{f.name: getattr(group, f.name) for f in fields(group)}
                                                  for group in self.buffer]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.buffer = [Rollout(**group) for group in state["buffer"]]

    def sample(self, rows: list[dict], policy) -> Rollout:
        num_replayed = round(len(rows) * self.replay_ratio) if len(self.buffer) >= len(rows) else 0
        fresh = self._generate(rows[: len(rows) - num_replayed], policy, with_logprobs=True)
        replayed = self.rng.sample(self.buffer, num_replayed)
        groups = [fresh.select_groups(torch.tensor([g], device=fresh.rewards.device)).to("cpu") for g in range(fresh.num_groups)]
        self.buffer = (self.buffer + groups)[-self.capacity :]
        batch = concat([fresh.to("cpu"), *replayed])
        batch.generated_groups = fresh.num_groups
        return batch


def uniform_token_logprobs(responses: list[str], max_tokens: int) -> dict[str, list[float]]:
    """Per-token log-probs of the uniform distribution over an enumerated response set: each token's
    probability is (responses below the prefix it extends) / (responses below the prefix before it),
    so a response's tokens sum to -log N exactly."""
    below: dict[str, int] = {}
    for text in responses:
        for j in range(len(text) + 1):
            below[text[:j]] = below.get(text[:j], 0) + 1
    table = {}
    for text in responses:
        steps = [below[text[: j + 1]] / below[text[:j]] for j in range(len(text))]
        if len(text) < max_tokens:  # then <eos>: only the response itself is below it
            steps.append(1 / below[text])
        table[text] = [math.log(p) for p in steps]
    return table


class Uniform(Sampler):
    """k responses per prompt drawn uniformly from all responses of an enumerable task (task=exact)."""

    needs_enumerable_task = True

    def __init__(self, tokenizer, reward_fn, generator=None, group_size: int = 1, seed: int = 0, **options):
        super().__init__(tokenizer, reward_fn, generator, group_size, **options)
        self.rng = random.Random(seed)

    def setup(self, policy, reference, task) -> None:
        self.responses, self.max_tokens = task.responses, task.max_new_tokens
        self.logprobs = uniform_token_logprobs(task.responses, task.max_new_tokens)

    def sample(self, rows: list[dict], policy) -> Rollout:
        texts = [self.rng.choice(self.responses) for _ in range(len(rows) * self.group_size)]
        rollout = self._from_responses(rows, texts, self.max_tokens)
        logprobs = torch.zeros(rollout.response_mask.shape)
        for i, text in enumerate(texts):
            logprobs[i, : len(self.logprobs[text])] = torch.tensor(self.logprobs[text])
        rollout.sampler_logprobs = logprobs
        return rollout


class Demonstrations(Sampler):
    """The dataset's solution as the one response per prompt (SFT)."""

    source = "demonstrations"
    fixed_group_size = 1

    def __init__(self, tokenizer, reward_fn, generator=None, group_size: int | None = None, **options):
        if group_size not in (None, self.fixed_group_size):
            raise ConfigError(f"sampler.group_size={group_size} is not allowed for {self.source}: it is {self.fixed_group_size}")
        super().__init__(tokenizer, reward_fn, generator, self.fixed_group_size, **options)

    def sample(self, rows: list[dict], policy) -> Rollout:
        batch = self._from_responses(rows, [row["answer"] for row in rows])
        batch.generated_groups = 0
        return batch


class Pairs(Demonstrations):
    """Given (chosen, rejected) pairs as groups of two: the row's answer and its `rejected` column."""

    source = "pairs"
    fixed_group_size = 2

    def sample(self, rows: list[dict], policy) -> Rollout:
        batch = self._from_responses(rows, [text for row in rows for text in (row["answer"], row["rejected"])])
        batch.generated_groups = 0
        return batch
