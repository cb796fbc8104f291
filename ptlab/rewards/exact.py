"""Reward tables R(x, y) for the exact task: one row per prompt, one column per response."""
import torch


def random_table(num_prompts: int, responses: list[str], seed: int) -> torch.Tensor:
    """R(x, y) ~ Uniform[0, 1), independently for every prompt and response. (P, N)"""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num_prompts, len(responses), generator=generator, dtype=torch.float64)


def pattern_table(targets: list[str], responses: list[str]) -> torch.Tensor:
    """R(x, y) = (positions where y matches the prompt's target) / max(len(y), len(target)).
    1 for the target itself, partial credit for near misses, 0 for the empty response. (P, N)"""
    def score(target: str, response: str) -> float:
        matches = sum(a == b for a, b in zip(target, response))
        return matches / max(len(target), len(response), 1)

    return torch.tensor([[score(t, r) for r in responses] for t in targets], dtype=torch.float64)
