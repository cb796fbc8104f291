"""reasoning-gym's own scorer as the reward (1.0 exact; chain_sum gives partial credit when the
right number appears inside a longer answer), applied to the extracted answer."""
import json

import reasoning_gym

from ptlab.rewards.extract import extractor


class ReasoningGymScore:
    def __init__(self, dataset: str, extract: str = "none"):
        self.dataset, self.extract = dataset, extractor(extract)
        self.score = reasoning_gym.get_score_answer_fn(dataset)

    def __call__(self, completions: list[str], rows: list[dict]) -> list[float]:
        return [float(self.score(self.extract(text), json.loads(row["entry"]))) for text, row in zip(completions, rows)]
