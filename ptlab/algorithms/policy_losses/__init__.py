"""Policy losses: how a policy-gradient algorithm (GRPO and its configurations, PPO) turns per-token
advantages into weights. Each loss is one unit, one file of this package: a PolicyLoss subclass
registered under its name (`algorithm.policy_loss`), holding its weight rule, its objective and its
docstring (paper, equation, departures) side by side, as verl registers its policy losses
(`register_policy_loss`). PolicyGradient (algorithms/policy_gradient.py) keeps what they share: the
ratio's denominator (the sampling policy), the KL term and the aggregation.

A unit sees, per call, the policy's token log-probs l (B, T) (detached in `weights`, with their
gradient in `objective`), the sampling policy's l_old (B, T), the advantages A (B, T) and the
response mask (B, T):
    weights(l, l_old, A, mask)   -> (w (B, T), clipped (B, T) bool): w is the gradient of the
                                    objective with respect to l, per token, before the mask;
                                    `clipped` marks the tokens whose gradient the loss cut (a metric)
    objective(l, l_old, A, mask) -> the per-token loss (B, T) to minimise, before aggregation
The gradient tests (tests/test_gradients.py) run every registered loss: a new file here is picked up
by them with no other change. Its settings are the class's `options` (name: default), read from
the algorithm's config beside the shared clip_eps / clip_eps_high.
"""
import importlib
import pkgutil

import torch
from torch import Tensor

from ptlab.errors import ConfigError

POLICY_LOSSES: dict[str, type["PolicyLoss"]] = {}


def register_policy_loss(name: str):
    """Class decorator: the loss is `algorithm.policy_loss=<name>`."""
    def register(cls):
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is registered twice ({POLICY_LOSSES[name].__module__}, {cls.__module__})")
        cls.name, POLICY_LOSSES[name] = name, cls
        return cls
    return register


class PolicyLoss:
    """One policy loss. `clip_low` / `clip_high` are clip_eps / clip_eps_high (null: no bound); the
    subclass's `options` are its own settings with their defaults."""

    name: str = ""
    options: dict[str, float] = {}

    def __init__(self, clip_low: float | None, clip_high: float | None, **options):
        self.clip_low, self.clip_high = clip_low, clip_high
        for key, default in self.options.items():
            setattr(self, key, options.get(key, default))
        self.selected: Tensor | None = None  # tokens a covariance rule picked in the last `weights` call

    def weights(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def objective(self, logprobs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError

    def clipped(self, ratio: Tensor, advantages: Tensor) -> Tensor:
        """PPO's clipped tokens (B, T): where min(r A, clip(r, 1 - eps, 1 + eps_high) A) takes the clipped
        branch, whose gradient is 0. None: nothing is clipped."""
        if self.clip_low is None:
            return torch.zeros_like(ratio, dtype=torch.bool)
        return ((advantages > 0) & (ratio > 1 + self.clip_high)) | ((advantages < 0) & (ratio < 1 - self.clip_low))

    def clipped_surrogate(self, ratio: Tensor, advantages: Tensor) -> Tensor:
        """PPO's per-token loss -min(r A, clip(r) A) (Schulman et al. 2017, Eq. 7); -r A unclipped."""
        surrogate = ratio * advantages
        if self.clip_low is not None:
            surrogate = torch.minimum(surrogate, ratio.clamp(1 - self.clip_low, 1 + self.clip_high) * advantages)
        return -surrogate


def option_names() -> set[str]:
    """Every setting some registered loss reads (an algorithm's config may hold them all)."""
    return {key for cls in POLICY_LOSSES.values() for key in cls.options}


def policy_loss(name: str, clip_low: float | None, clip_high: float | None, options: dict) -> PolicyLoss:
    """The registered loss `name` with its settings; refused in one line if there is no such loss."""
    if name not in POLICY_LOSSES:
        raise ConfigError(f"algorithm.policy_loss={name!r} is not one of {', '.join(POLICY_LOSSES)}")
    unknown = sorted(set(options) - option_names())
    if unknown:
        raise ConfigError(f"algorithm.{unknown[0]} is not a setting of any policy loss (policy_loss={name} reads "
                          f"{', '.join(POLICY_LOSSES[name].options) or 'none but clip_eps and clip_eps_high'})")
    return POLICY_LOSSES[name](clip_low, clip_high, **{k: v for k, v in options.items() if k in POLICY_LOSSES[name].options})


for _module in sorted(pkgutil.iter_modules(__path__), key=lambda module: module.name):  # every unit registers itself
    importlib.import_module(f"{__name__}.{_module.name}")
