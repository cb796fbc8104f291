"""Verifiable tasks generated offline by reasoning-gym, split into train and held-out validation.

The split is by a hash of the prompt text, so no validation prompt ever appears in training, and
both splits follow the generator's distribution. The task seed is fixed by the task config, not the
run seed: every run and algorithm sees the same validation set.

Task seeds draw disjoint streams. reasoning-gym builds item i of a dataset with seed s from
`Random(s + i)`, so the datasets of seeds s and s + 1 are the same items shifted by one: a study that
set `task.seed: ${seed}` would redraw nothing. Task seed s here asks reasoning-gym for seed
s * size (size: the items read), so seeds share no generator state; seed 0 is unchanged. The
held-out prompts are the ones whose hash falls in the validation fraction, for every seed: a task
seed draws which rows (and so which held-out prompts, and how often) are used, not which prompts
are held out.
"""
import json
import random
import zlib

import reasoning_gym
from datasets import Dataset

from ptlab.errors import ConfigError
from ptlab.tasks.base import TextTask


class ReasoningGymTask(TextTask):
    def __init__(
        self,
        name: str,
        reward,
        config: dict | None = None,
        prompt_template: str = "{question}",
        train_size: int = 20000,
        val_size: int = 200,
        val_fraction: float = 0.1,
        seed: int = 0,
        max_new_tokens: int = 8,
        chat: bool = False,
        system_prompt: str | None = None,
        eval_samples: int = 0,
        eval_seed: int = 0,
    ):
        if name not in reasoning_gym.factory.DATASETS:
            raise ConfigError(f"task.name={name!r} is not a reasoning-gym dataset; e.g. chain_sum, basic_arithmetic")
        super().__init__(reward, max_new_tokens, chat, system_prompt, eval_samples, eval_seed)
        self.name, self.config = name, dict(config or {})
        self.prompt_template, self.seed = prompt_template, seed
        self._train, self._val = self._generate(train_size, val_size, val_fraction)

    def _generate(self, train_size: int, val_size: int, val_fraction: float) -> tuple[Dataset, Dataset]:
        rng = random.Random(self.seed)
        train, val = [], []
        size = (train_size + val_size) * 4
        source = reasoning_gym.create_dataset(self.name, seed=self.seed * size, size=size, **self.config)  # disjoint streams
        for entry in source:
            row = self._row(entry, rng)
            in_val = zlib.crc32(row["prompt"].encode()) % 10_000 < val_fraction * 10_000
            split = val if in_val else train
            if len(split) < (val_size if in_val else train_size):
                split.append(row)
            if len(train) == train_size and len(val) == val_size:
                break
        return Dataset.from_list(train), Dataset.from_list(val)

    def _row(self, entry: dict, rng: random.Random) -> dict:
        return {
            "prompt": self.prompt_template.format(**entry),
            "answer": entry["answer"],
            "rejected": numeric_distractor(entry["answer"], rng),
            "entry": json.dumps(entry, default=str),  # some generators' metadata hold Fractions
        }


class ChainStepsTask(ReasoningGymTask):
    """chain_sum with its working shown: the answer is the running total after each operation,
    comma-separated ("12 + 5 - 3" -> "17,14"), and each total is a step with its own reward
    (rewards.steps.RunningTotals), for process supervision."""

    step_rewards = True

    def _row(self, entry: dict, rng: random.Random) -> dict:
        from ptlab.rewards.steps import running_totals

        row = super()._row(entry, rng)
        totals = running_totals(entry["metadata"]["expression"])
        row["answer"] = ",".join(map(str, totals))
        row["rejected"] = ",".join(map(str, totals[:-1] + [int(numeric_distractor(str(totals[-1]), rng))]))
        return row


def numeric_distractor(answer: str, rng: random.Random) -> str:
    """A wrong answer near an integer answer (for offline preference pairs); '' otherwise."""
    try:
        value = int(answer)
    except ValueError:
        return ""
    return str(value + rng.choice([-1, 1]) * rng.randint(1, 10))
