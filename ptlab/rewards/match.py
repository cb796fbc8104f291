"""Correctness against a row's `answer` column, for tasks read from files (tasks/files.py)."""
from ptlab.rewards.extract import extractor


def same_answer(given: str, expected: str) -> bool:
    """Equal as numbers when both are numbers (so "42.0" matches "42"), else as stripped strings."""
    try:
        return float(given.replace(",", "")) == float(str(expected).replace(",", ""))
    except ValueError:
        return given.strip() == str(expected).strip()


class AnswerMatch:
    """1.0 when the extracted answer equals the row's answer, else 0.0."""

    def __init__(self, extract: str = "last_number", answer_field: str = "answer"):
        self.extract, self.answer_field = extractor(extract), answer_field

    def __call__(self, completions: list[str], rows: list[dict]) -> list[float]:
        return [float(same_answer(self.extract(text), row[self.answer_field])) for text, row in zip(completions, rows)]
