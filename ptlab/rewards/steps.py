"""Step rewards for chain sums with their working shown: the response lists the running total
after each operation, comma-separated ("12 + 5 - 3" -> "17,14"). Each total is a step."""
import json


def running_totals(expression: str) -> list[int]:
    tokens = expression.split()
    total, totals = int(tokens[0]), []
    for op, value in zip(tokens[1::2], tokens[2::2]):
        total = total + int(value) if op == "+" else total - int(value)
        totals.append(total)
    return totals


class RunningTotals:
    """Outcome reward 1 if every total is right and nothing else is written, else 0; `steps` gives
    each written total's reward (1 right, 0 wrong or extra) at the character where it ends."""

    def _totals(self, row: dict) -> list[int]:
        return running_totals(json.loads(row["entry"])["metadata"]["expression"])

    def __call__(self, completions: list[str], rows: list[dict]) -> list[float]:
        return [float(text.strip() == ",".join(map(str, self._totals(row)))) for text, row in zip(completions, rows)]

    def steps(self, completions: list[str], rows: list[dict]) -> list[list[tuple[int, float]]]:
        """Per completion: (end character, reward) of each comma-separated step."""
        result = []
        for text, row in zip(completions, rows):
            totals, steps, start = self._totals(row), [], 0
            for j, part in enumerate(text.split(",")):
                start += len(part) + (1 if j else 0)
                right = j < len(totals) and part.strip() == str(totals[j])
                steps.append((start, float(right)))
            result.append(steps)
        return result
