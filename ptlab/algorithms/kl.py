"""KL-to-reference estimators (Schulman 2020, "Approximating KL divergence"), per token.

With log-ratio d = l - l_ref (l = log pi_theta) and r = exp(-d) = pi_ref / pi_theta:
    k1 = d               d k1/dl = 1
    k2 = d^2 / 2         d k2/dl = d
    k3 = r - log r - 1   d k3/dl = 1 - r
Placed in the loss (`placement: loss`), beta * k adds -beta * dk/dl to a token's weight. Placed in
the reward (`placement: reward`), -beta * k of the sampling policy is a reward at every token.
"""
import torch
from torch import Tensor

from ptlab.errors import ConfigError

ESTIMATORS = ("k1", "k2", "k3")
PLACEMENTS = ("loss", "reward")


def check(estimator: str, placement: str) -> None:
    if estimator not in ESTIMATORS:
        raise ConfigError(f"algorithm.kl_estimator={estimator!r} is not one of {', '.join(ESTIMATORS)}")
    if placement not in PLACEMENTS:
        raise ConfigError(f"algorithm.kl_placement={placement!r} is not one of {', '.join(PLACEMENTS)}")


def estimate(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    """Per-token KL estimate, same shape as logprobs."""
    d = logprobs - ref_logprobs
    if estimator == "k1":
        return d
    if estimator == "k2":
        return d.pow(2) / 2
    return torch.exp(-d) + d - 1


def loss_weight(logprobs: Tensor, ref_logprobs: Tensor, estimator: str, beta: float) -> Tensor:
    """The weight of `beta * k` as a loss term: -beta * dk/dl, per token."""
    d = logprobs - ref_logprobs
    if estimator == "k1":
        return torch.full_like(d, -beta)
    if estimator == "k2":
        return -beta * d
    return beta * (torch.exp(-d) - 1)
