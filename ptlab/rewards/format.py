"""Format rewards: 1.0 when a completion has the asked-for shape, else 0.0."""
import re


class Matches:
    """1.0 when the completion matches `pattern` (re.search, DOTALL), e.g. an answer in tags."""

    def __init__(self, pattern: str = r"<answer>.*?</answer>\s*$"):
        self.pattern = re.compile(pattern, re.DOTALL)

    def __call__(self, completions: list[str], rows: list[dict]) -> list[float]:
        return [float(bool(self.pattern.search(text))) for text in completions]
