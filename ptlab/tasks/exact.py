"""The exact test bed: a few prompts whose responses can all be enumerated.

A response is a string over a small alphabet, cut at `max_new_tokens` tokens: either 0 to
max_new_tokens-1 symbols followed by <eos>, or max_new_tokens symbols with no <eos> (the length
limit). With 3 symbols and 4 tokens that is 1 + 3 + 9 + 27 + 81 = 121 responses, and their
probabilities under the policy sum to one because the model may emit only the alphabet and <eos>
(models.lm.restrict_vocabulary). So pi*(y|x) = pi_ref(y|x) exp(R(x,y)/beta) / Z(x), Z and every KL
are computed exactly (training.evaluation.ExactMetrics).
"""
import itertools
import random

import torch
from datasets import Dataset

from ptlab.errors import ConfigError
from ptlab.rewards.exact import pattern_table, random_table


def enumerate_responses(alphabet: str, max_tokens: int) -> list[str]:
    """Every response text: shorter than max_tokens symbols (then <eos>), or exactly max_tokens."""
    return ["".join(symbols) for length in range(max_tokens + 1) for symbols in itertools.product(alphabet, repeat=length)]


class ExactTask:
    enumerable = True  # every response can be listed (samplers like `uniform` need it)
    evaluation = "exact"  # exact KLs to pi_ref and pi* (training/evaluation.py)

    def __init__(self, reward: str = "random", num_prompts: int = 4, alphabet: str = "abc", max_new_tokens: int = 4,
                 seed: int = 0):
        if reward not in ("random", "pattern"):
            raise ConfigError(f"task.reward={reward!r} is not one of random, pattern")
        self.alphabet, self.max_new_tokens = alphabet, max_new_tokens
        self.response_tokens = list(alphabet)  # the model may emit only these (and eos)
        self.prompts = [f"q{i}=" for i in range(num_prompts)]
        self.responses = enumerate_responses(alphabet, max_new_tokens)
        self.response_index = {text: j for j, text in enumerate(self.responses)}
        if reward == "random":
            self.table = random_table(num_prompts, self.responses, seed)  # (P, N)
        else:
            rng = random.Random(seed)
            self.targets = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, max_new_tokens - 1)))
                            for _ in self.prompts]
            self.table = pattern_table(self.targets, self.responses)
        best, worst = self.table.argmax(1), self.table.argmin(1)
        self.rows = [{"prompt": p, "index": i, "answer": self.responses[best[i]], "rejected": self.responses[worst[i]],
                      "entry": ""} for i, p in enumerate(self.prompts)]

    def reward(self, completions: list[str], rows: list[dict]) -> list[float]:
        return [float(self.table[row["index"], self.response_index[text]]) for text, row in zip(completions, rows)]

    def train_dataset(self) -> Dataset:
        return Dataset.from_list(self.rows)

    def val_dataset(self) -> Dataset:
        return Dataset.from_list(self.rows)

    def format_prompts(self, tokenizer, model_name: str = "") -> None:
        """The prompts are symbols (q0=, q1=, ...) for a model trained from scratch: no chat template."""

    def all_responses(self, tokenizer):
        """Every (prompt, response) pair, prompt-major: prompt ids/mask (P*N, Lp), response ids/mask (P*N, T).
        A response of max_new_tokens symbols has no <eos>: it was cut at the length limit."""
        from ptlab.models.encoding import encode_prompts, encode_responses

        prompts = [p for p in self.prompts for _ in self.responses]
        prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
        response_ids, response_mask = encode_responses(tokenizer, self.responses, self.max_new_tokens)
        repeat = len(self.prompts)
        return prompt_ids, prompt_mask, response_ids.repeat(repeat, 1), response_mask.repeat(repeat, 1)
