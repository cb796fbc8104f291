"""The algorithm contract and loss aggregation.

An algorithm reads a scored rollout and the policy's detached token log-probs l (B, T) and returns
weights w (B, T); the module forms the one loss

    surrogate = -(1 / N) * sum_{i,t} m[i,t] * w[i,t] * l[i,t]        (GVPO paper, Eq. 9)

whose gradient is the weighted log-likelihood gradient. N is set by `loss_agg` (see `aggregate`).
`objective` is the algorithm's native loss, written directly; the tests check that its gradient
equals the surrogate's under the algorithm's default aggregation.
"""
from torch import Tensor

from ptlab.errors import ConfigError

LOSS_AGGREGATIONS = (
    "token-mean",  # sum over all tokens / number of tokens
    "seq-mean-token-sum",  # sum over each response's tokens, mean over responses
    "seq-mean-token-mean",  # mean over each response's tokens, mean over responses
    "seq-mean-token-sum-norm",  # sum over tokens / (responses * constant length) (Dr. GRPO)
    "group-mean-token-sum",  # sum over a group's tokens, mean over groups (GVPO Eq. 15, DPO pairs)
)


def aggregate(values: Tensor, mask: Tensor, mode: str, group_size: int, norm_length: int | None = None,
              totals: tuple[int, int] | None = None) -> Tensor:
    """Reduce per-token values (B, T) under mask (B, T) to a scalar.

    `totals` = (rows, tokens) of a larger batch that this one is a part of (a micro-batch of gradient
    accumulation): the sum is then divided by that batch's normaliser, so the parts' results add up
    to the whole batch's exactly."""
    masked = values * mask
    rows, tokens = totals if totals is not None else (values.shape[0], mask.sum().clamp(min=1))
    if mode == "token-mean":
        return masked.sum() / tokens
    if mode == "seq-mean-token-sum":
        return masked.sum() / rows
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / rows
    if mode == "seq-mean-token-sum-norm":
        return masked.sum() / (rows * (norm_length or values.shape[1]))
    if mode == "group-mean-token-sum":
        return masked.sum() / (rows // group_size)
    raise ConfigError(f"loss_agg={mode!r} is not one of {', '.join(LOSS_AGGREGATIONS)}")


def sequence_logprobs(logprobs: Tensor, mask: Tensor) -> Tensor:
    """L[i] = sum_t m[i,t] * l[i,t]: log pi(y_i | x_i). (B, T) -> (B,)."""
    return (logprobs * mask).sum(-1)


def per_token(sequence_weights: Tensor, mask: Tensor) -> Tensor:
    """Spread one weight per response (B,) over its tokens (B, T)."""
    return sequence_weights.unsqueeze(-1) * mask


REFERENCES = ("initial", "rollout")


class Algorithm:
    """Base class. Subclasses set the class attributes and implement `weights` and `objective`.

    Class attributes:
      uses_reference   regularises toward a reference policy; `reference` picks it: "initial" (the
                       frozen initial policy: the module fills rollout.ref_logprobs) or "rollout"
                       (the policy that sampled the batch: rollout.sampler_logprobs)
      beta_rule        None (beta unused), "positive" or "nonnegative"
      min_group_size   smallest group size the weights are defined for
      sources          response sources the algorithm trains on: "policy" (sampled responses),
                       "demonstrations" (dataset solutions), "pairs" (dataset chosen/rejected)
      default_loss_agg aggregation under which `objective` and the surrogate share a gradient
      needs_critic     wants a value model, built by the model layer and handed to `setup`
    """

    uses_reference: bool = False
    beta_rule: str | None = None
    min_group_size: int = 1
    sources: tuple[str, ...] = ("policy",)
    default_loss_agg: str = "token-mean"
    prepare_needs_sampler_logprobs: bool = False  # prepare() reads rollout.sampler_logprobs
    needs_critic: bool = False  # setup() must be handed a critic V(x, y_<t) (models/value.py)

    def __init__(self, beta: float | None = None, group_size: int = 1, loss_agg: str | None = None,
                 reference: str = "initial"):
        self.name = type(self).__name__.lower()
        self.beta = beta
        self.loss_agg = loss_agg or self.default_loss_agg
        self.reference = reference
        self._check(group_size)
        if reference not in REFERENCES:
            raise ConfigError(f"algorithm.reference={reference!r} is not one of {', '.join(REFERENCES)}")

    @property
    def needs_reference(self) -> bool:
        """The module must fill rollout.ref_logprobs with the initial policy's log-probs."""
        return self.uses_reference and self.reference == "initial"

    def anchor(self, rollout) -> Tensor:
        """Token log-probs (B, T) of the reference this algorithm regularises toward."""
        return rollout.ref_logprobs if self.reference == "initial" else rollout.sampler_logprobs

    def setup(self, critic=None) -> dict:
        """Take the extra trainable modules the algorithm needs (a critic, built by the model layer
        when `needs_critic`); returns them by name so the module trains them alongside the policy."""
        return {}

    def prepare(self, rollout) -> None:
        """Once per rollout, before any update and without gradients: store what every minibatch
        needs in rollout.extras (row-aligned tensors), e.g. values and advantages."""

    def aux_loss(self, rollout) -> tuple[Tensor, dict[str, float]] | None:
        """An auxiliary loss added to the surrogate (e.g. a critic's value loss), with metrics."""
        return None

    def _check(self, group_size: int) -> None:
        if self.beta_rule == "positive" and not (self.beta is not None and self.beta > 0):
            raise ConfigError(f"beta={self.beta} is not allowed for {self.name}: it needs beta > 0")
        if self.beta_rule == "nonnegative" and not (self.beta is not None and self.beta >= 0):
            raise ConfigError(f"beta={self.beta} is not allowed for {self.name}: it needs beta >= 0")
        if group_size < self.min_group_size:
            raise ConfigError(
                f"group_size={group_size} is not allowed for {self.name}: it needs group_size >= {self.min_group_size}"
            )
        if self.loss_agg not in LOSS_AGGREGATIONS:
            raise ConfigError(f"algorithm.loss_agg={self.loss_agg!r} is not one of {', '.join(LOSS_AGGREGATIONS)}")

    def weights(self, logprobs: Tensor, rollout) -> tuple[Tensor, dict[str, float]]:
        """Detached weights (B, T) and metrics (keys without the algo/ prefix)."""
        raise NotImplementedError

    def objective(self, logprobs: Tensor, rollout) -> Tensor:
        """The native objective (a scalar to minimise), differentiable in logprobs (B, T). Every shipped
        algorithm writes its paper's, and the tests check the weights' gradient against it; an algorithm
        of your own may leave it out: this default is the surrogate of its weights, -agg(w * l) (weights is
        called again)."""
        weights, _ = self.weights(logprobs.detach(), rollout)
        return -aggregate(weights * logprobs, rollout.response_mask, self.loss_agg, rollout.group_size)
