"""Offline sampler: groups generated once by a named policy, saved with the datasets library and
reloaded from disk by later runs.

The data is keyed by a hash of what produced it (the initial policy's weights, the task's prompts,
the generating policy, group size, number of groups, seed), under <cache_dir>/offline/<key>; runs
with different run seeds share it and differ in the order they draw groups (`draw_seed`).
Training draws stored groups uniformly at random: the batch's own prompts are not used, the stored
data is the training set, as in offline RL.

Only the responses and their sampler log-probs are stored: every run scores them with its own reward
function when it loads them. A reward is not part of what sampled the responses, so it is not in the
key, and a stored reward would be silently wrong for a run with another reward or task seed (the
exact task's prompts, and so the key, are the same for every reward table).
"""
import hashlib
import json
import random
from functools import partial
from pathlib import Path

import torch
from datasets import Dataset, load_from_disk

from ptlab.errors import ConfigError
from ptlab.storage import build_once, code_digest
from ptlab.training.rollout import Rollout, encode_prompts
from ptlab.training.samplers import Reference, Sampler, Uniform


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            digest.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


class Offline(Sampler):
    def __init__(self, tokenizer, reward_fn, generator=None, group_size: int = 1, policy: str = "reference",
                 num_groups: int = 256, cache_dir: str = ".cache", seed: int = 0, draw_seed: int = 0,
                 batch_prompts: int = 64, **options):
        super().__init__(tokenizer, reward_fn, generator, group_size, **options)
        if policy not in ("reference", "uniform"):
            raise ConfigError(f"sampler.policy={policy!r} is not one of reference, uniform")
        self.policy, self.num_groups, self.cache_dir, self.seed = policy, num_groups, cache_dir, seed
        self.batch_prompts = batch_prompts
        self.rng = random.Random(draw_seed)  # the order groups are drawn in (the run seed)

    @property
    def needs_reference(self) -> bool:
        return self.policy == "reference"

    @property
    def needs_enumerable_task(self) -> bool:
        return self.policy == "uniform"

    def setup(self, policy, reference, task) -> None:
        prompts = list(dict.fromkeys(task.train_dataset()["prompt"]))
        path = self.entry(policy, prompts)
        path.parent.mkdir(parents=True, exist_ok=True)
        build_once(path, partial(self._generate, task, reference, prompts), "ptlab_offline.json", "the offline data")
        self.data = load_from_disk(str(path))
        self.rewards = self._score_stored(task)

    def entry(self, policy, prompts: list[str]) -> Path:
        """The cache directory of the groups these settings generate: keyed by the generating policy's
        weights, the prompts, the sampling settings, ptlab's code and torch's version (not the reward:
        each run scores the stored responses with its own)."""
        key = json.dumps([weights_digest(policy), prompts, self.policy, self.group_size, self.num_groups, self.seed,
                          vars(self.generator) if self.generator else None, code_digest(), torch.__version__], default=str)
        return Path(self.cache_dir).expanduser() / "offline" / hashlib.sha256(key.encode()).hexdigest()[:16]

    def _score_stored(self, task) -> list[list[float]]:
        """This run's rewards of every stored group, (G, k) as lists."""
        rows_by_prompt = {row["prompt"]: row for row in task.train_dataset()}
        rows = [rows_by_prompt[prompt] for prompt in self.data["prompt"]]
        rewards, _ = self._score(rows, [text for group in self.data["completions"] for text in group])
        return rewards.view(len(rows), self.group_size).tolist()

    def _generate(self, task, reference, prompts: list[str], directory: Path) -> dict:
        kind = Reference if self.policy == "reference" else Uniform
        source = kind(self.tokenizer, self.reward_fn, self.generator, self.group_size)
        source.setup(None, reference, task)
        rows_by_prompt = {row["prompt"]: row for row in task.train_dataset()}
        wanted = [rows_by_prompt[prompts[g % len(prompts)]] for g in range(self.num_groups)]
        records = []
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            for start in range(0, len(wanted), self.batch_prompts):
                rollout = source.sample(wanted[start : start + self.batch_prompts], None).to("cpu")
                records += [self._record(rollout, g) for g in range(rollout.num_groups)]
        Dataset.from_list(records).save_to_disk(str(directory))
        return {"policy": self.policy, "groups": len(records)}

    @staticmethod
    def _record(rollout: Rollout, group: int) -> dict:
        rows = range(group * rollout.group_size, (group + 1) * rollout.group_size)
        lengths = [int(rollout.response_mask[i].sum()) for i in rows]
        return {
            "prompt": rollout.prompts[rows[0]],
            "response_ids": [rollout.response_ids[i, :n].tolist() for i, n in zip(rows, lengths)],
            "sampler_logprobs": [rollout.sampler_logprobs[i, :n].tolist() for i, n in zip(rows, lengths)],
            "completions": [rollout.completions[i] for i in rows],
        }

    def sample(self, rows: list[dict], policy) -> Rollout:
        indices = [self.rng.randrange(len(self.data)) for _ in rows]
        groups = [self.data[i] for i in indices]
        prompts = [group["prompt"] for group in groups for _ in range(self.group_size)]
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts)
        responses = [ids for group in groups for ids in group["response_ids"]]
        length = max(len(ids) for ids in responses)
        response_ids = torch.full((len(responses), length), self.tokenizer.pad_token_id, dtype=torch.long)
        response_mask = torch.zeros((len(responses), length), dtype=torch.long)
        sampler_logprobs = torch.zeros((len(responses), length))
        for i, (ids, logprobs) in enumerate(zip(responses, [lp for group in groups for lp in group["sampler_logprobs"]])):
            response_ids[i, : len(ids)], response_mask[i, : len(ids)] = torch.tensor(ids), 1
            sampler_logprobs[i, : len(ids)] = torch.tensor(logprobs)
        rewards = torch.tensor([r for i in indices for r in self.rewards[i]])
        # the stored data's key holds the initial policy's weights: with policy=reference, pi_ref sampled it
        ref_logprobs = sampler_logprobs if self.policy == "reference" else None
        return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, rewards, self.group_size,
                       sampler_logprobs=sampler_logprobs, ref_logprobs=ref_logprobs, prompts=prompts,
                       completions=[c for group in groups for c in group["completions"]], generated_groups=0)
