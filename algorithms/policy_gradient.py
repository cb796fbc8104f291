"""The clipped, importance-weighted policy gradient shared by GRPO (and its RLOO and Dr. GRPO
configurations) and PPO. A subclass only prepares per-token advantages A (B, T) in
rollout.extras["advantages"]; this class turns them into weights.

    rho = pi_theta / pi_sampler per token (the ratio to the policy that sampled the batch)
    w = A * rho * 1[not clipped] + (KL in the loss) -beta * dk/dl
The first term is the gradient of min(rho*A, clip(rho, 1-eps, 1+eps_high)*A) (PPO, Schulman et al.
2017, Eq. 7): where the clipped branch is the minimum its gradient is 0. With clip_eps null there
is no clipping (plain importance-weighted REINFORCE). The KL estimator (k1, k2, k3) and its
placement (a loss term, or a per-token reward the subclass folds into its advantages) are shared
settings (algorithms/kl.py), as is the reference: initial | rollout.
Native loss: -(clipped surrogate) + beta * k (when in the loss), under the aggregation loss_agg.
Compared with TRL 1.16.0's GRPOTrainer._compute_loss (a stand-in trainer, the same float64 log-probs
and advantages, clipping active, beta 0 and 0.04 with k3 in the loss): the grpo, dapo, gspo, cispo
and sapo configs' gradients equal TRL's grpo, dapo, sequence-level grpo, cispo and sapo losses' to
3e-17, the KL term aggregated with the policy term on both sides (tests/test_trl_losses.py).

`policy_loss` picks the ratio and what clipping does (each a weight rule on the same advantages):
  ppo    per-token ratio, clipped surrogate (above)
  gspo   GSPO (Zheng et al. 2025, Eq. 5-7): one ratio per response, the geometric mean of its tokens'
         s_i = exp(mean_t (l - l_old)), clipped per response: J = mean_i min(s_i A_i, clip(s_i) A_i).
         grad s_i = s_i * mean_t grad l, so w[i,t] = A_i * s_i * 1[response not clipped]: the weight of
         every token of a response is the same (with any of ptlab's aggregations, which weigh a
         response's tokens alike, the surrogate's gradient is the objective's). When the advantage varies
         over a response's tokens (kl_credit=to_go with beta > 0, process supervision, PPO's GAE) the
         objective is the paper's GSPO-token form (section 4.3): s_it = sg[s_i] * pi_t / sg[pi_t], whose
         gradient is A_t s_i grad l_t, the same weights, and which equals GSPO when A is constant over the
         response. Compared with verl's gspo loss (the GSPO-token form) on identical inputs: gradients equal
         to 1e-9; TRL's `importance_sampling_level="sequence"` takes the same ratio (gradients equal).
  cispo  CISPO (MiniMax-M1, Chen et al. 2025, Eq. 4-5): J = sum sg(clip(r, 1-eps_low, 1+eps_high)) A log pi,
         so w = A * clip(r) on every token: no token's gradient is dropped, the ratio is only capped.
         clip_eps null: no lower bound (as the paper); clip_eps_high caps the weight. As verl's and
         SkyRL's cispo losses (-A * clamp(r).detach() * log_prob); TRL's cispo `epsilon_high` is the
         cap itself (TRL's 5.0 is clip_eps_high 4.0 here).
  gmpo   GMPO (Zhao et al. 2025, Eq. 4): the geometric mean of the tokens' clipped ratios per response,
         J = mean_i A_i * exp(mean_t sgn(A_i) min(sgn(A_i) log r, sgn(A_i) clip(log r, -eps, eps_high))),
         clipped in log space (clip_eps and clip_eps_high are log-ratio bounds: the paper's (e^-0.4, e^0.4)
         is 0.4 / 0.4). grad = A_i G_i mean_t 1[t not clipped] grad l, so w[i,t] = A_i G_i 1[t not clipped],
         G_i the response's clipped geometric-mean ratio. A_i is the mean of the advantage over the
         response's tokens (the paper's is per response; when it varies over the tokens this is what
         verl's geo_mean loss does) and so is the clip's sign (verl takes each token's own sign there).
         Compared with verl's geo_mean on identical inputs: gradients equal to 2e-9 for per-response
         advantages; with per-token advantages and clipped tokens, 1e-2 apart by that sign.
  sapo   SAPO (Gao et al. 2025, arXiv 2511.20347): a smooth gate instead of the hard clip, per token,
         J = f(r) A with f(r) = sigmoid(tau (r - 1)) * 4 / tau, tau = tau_pos where A > 0 else tau_neg.
         grad f(r) = 4 sigma (1 - sigma) r grad l, so w = A * r * 4 sigma(tau (r - 1)) (1 - sigma(...)):
         1 * A on-policy (r = 1), falling smoothly to 0 as r leaves 1 (faster for negative advantages,
         tau_neg > tau_pos). As verl's sapo loss (which also clamps log r to +-20 and aggregates
         seq-mean-token-mean whatever its loss_agg_mode; here the config sets that aggregation).
  gpg    GPG (Chu et al. 2025): J = A * log pi, no ratio and no clipping, so w = A: plain REINFORCE on
         the advantages (the GPG config supplies them). As verl's gpg loss (-log_prob * A). Off-policy
         (stale or replayed samples, several epochs) it is not importance-corrected: that is the paper's.
  clip_cov Clip-Cov (Cui et al. 2025, arXiv 2505.22617, Eq. 11-12): PPO's clipped surrogate, and in
         addition the gradient of a few tokens with a large covariance between their advantage and
         their log-prob is dropped: among the tokens PPO did not clip, those with
         cov = (A - mean A) (l - mean l) in [cov_low, cov_high] (means over the batch's tokens), a random
         max(1, floor(cov_fraction * tokens)) of them. w = PPO's w * 1[not selected]. The draw uses
         torch's RNG (checkpointed with the run); the last selection is kept in `self.selected`.
         As verl's clip_cov loss (adapted by verl from the paper's code).
  kl_cov KL-Cov (same paper, Eq. 13): no clipping; the top max(1, floor(cov_fraction * tokens)) tokens by
         covariance get a penalty kl_coef * |l - l_old|: J = r A - kl_coef |l - l_old| 1[selected], so
         w = A r - kl_coef * sign(l - l_old) * 1[selected]. On a rollout's first update l = l_old and the
         penalty's gradient is 0 (sign 0); it acts from the second minibatch or epoch. As verl's kl_cov loss.
"""
import torch
from torch import Tensor

from algorithms import kl
from algorithms.base import Algorithm, aggregate
from schema import ConfigError

POLICY_LOSSES = ("ppo", "gspo", "cispo", "gmpo", "sapo", "gpg", "clip_cov", "kl_cov")


class PolicyGradient(Algorithm):
    uses_reference = True
    beta_rule = "nonnegative"

    def __init__(self, clip_eps: float | None = 0.2, clip_eps_high: float | None = None, kl_estimator: str = "k3",
                 kl_placement: str = "loss", policy_loss: str = "ppo", tau_pos: float = 1.0, tau_neg: float = 1.05,
                 cov_fraction: float = 2e-4, cov_low: float = 1.0, cov_high: float = 5.0, kl_coef: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        kl.check(kl_estimator, kl_placement)
        if policy_loss not in POLICY_LOSSES:
            raise ConfigError(f"algorithm.policy_loss={policy_loss!r} is not one of {', '.join(POLICY_LOSSES)}")
        self.policy_loss = policy_loss
        self.clip_low = clip_eps
        self.clip_high = clip_eps_high if clip_eps_high is not None else clip_eps
        self.kl_estimator, self.kl_placement = kl_estimator, kl_placement
        self.tau_pos, self.tau_neg = tau_pos, tau_neg  # sapo
        self.cov_fraction, self.cov_low, self.cov_high, self.kl_coef = cov_fraction, cov_low, cov_high, kl_coef  # *_cov
        self.selected: Tensor | None = None  # the tokens clip_cov / kl_cov picked in the last call

    @property
    def needs_reference(self) -> bool:
        return self.beta > 0 and super().needs_reference

    @property
    def prepare_needs_sampler_logprobs(self) -> bool:
        return self.beta > 0 and self.kl_placement == "reward"

    def kl_rewards(self, rollout) -> Tensor:
        """-beta * k(pi_sampler, pi_ref) at every token when the KL is placed in the reward, else 0. (B, T)"""
        if self.beta == 0 or self.kl_placement != "reward":
            return torch.zeros_like(rollout.response_mask, dtype=torch.float32)
        return -self.beta * kl.estimate(rollout.sampler_logprobs, self.anchor(rollout), self.kl_estimator) * rollout.response_mask

    @staticmethod
    def _old(logprobs: Tensor, rollout) -> Tensor:
        """The sampling policy's log-probs; on-policy before the first update, the current ones."""
        return rollout.sampler_logprobs if rollout.sampler_logprobs is not None else logprobs.detach()

    def _ratio(self, logprobs: Tensor, rollout) -> Tensor:
        return torch.exp(logprobs - self._old(logprobs, rollout))  # (B, T)

    def _clipped(self, ratio: Tensor, advantages: Tensor) -> Tensor:
        if self.clip_low is None:
            return torch.zeros_like(ratio, dtype=torch.bool)
        return ((advantages > 0) & (ratio > 1 + self.clip_high)) | ((advantages < 0) & (ratio < 1 - self.clip_low))

    def _kl_in_loss(self) -> bool:
        return self.beta > 0 and self.kl_placement == "loss"

    def _sequence_ratio(self, logprobs: Tensor, rollout) -> Tensor:
        """GSPO's s_i = exp(mean over the response's tokens of l - l_old), on every token. (B, T)"""
        mask = rollout.response_mask
        old = self._old(logprobs, rollout)
        mean = ((logprobs - old) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return torch.exp(mean).unsqueeze(-1).expand_as(logprobs)

    def _capped(self, ratio: Tensor) -> Tensor:
        """CISPO's clip(r, 1 - eps_low, 1 + eps_high); a null bound is no bound."""
        low = None if self.clip_low is None else 1 - self.clip_low
        high = None if self.clip_high is None else 1 + self.clip_high
        return ratio.clamp(min=low, max=high) if (low is not None or high is not None) else ratio

    def _geometric(self, logprobs: Tensor, rollout) -> tuple[Tensor, Tensor]:
        """GMPO: (G_i on every token (B, T), tokens clipped (B, T)); log-space clipping by advantage sign."""
        mask, advantages = rollout.response_mask, self._response_mean(rollout)
        old = self._old(logprobs, rollout)
        log_ratio = logprobs - old
        sign = torch.where(advantages < 0, -1.0, 1.0).to(log_ratio.dtype)
        low = -self.clip_low if self.clip_low is not None else None
        bounded = log_ratio.clamp(min=low, max=self.clip_high) if self.clip_high is not None or low is not None else log_ratio
        kept = sign * torch.minimum(sign * log_ratio, sign * bounded)
        clipped = (kept != log_ratio) & mask.bool()
        mean = (kept * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return torch.exp(mean).unsqueeze(-1).expand_as(logprobs), clipped

    @staticmethod
    def _response_mean(rollout) -> Tensor:
        """The advantage's mean over each response's tokens, on every token (B, T) (GMPO's A_i)."""
        mask, advantages = rollout.response_mask, rollout.extras["advantages"]
        mean = (advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return mean.unsqueeze(-1).expand_as(advantages) * mask

    def _gate(self, ratio: Tensor, advantages: Tensor) -> tuple[Tensor, Tensor]:
        """SAPO: (f(r), f'(r)) per token, f(r) = sigmoid(tau (r - 1)) * 4 / tau, tau by the advantage's sign."""
        tau = torch.where(advantages > 0, self.tau_pos, self.tau_neg).to(ratio.dtype)
        sigma = torch.sigmoid(tau * (ratio - 1))
        return sigma * 4 / tau, 4 * sigma * (1 - sigma)

    def _covariance(self, logprobs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
        """(A - mean A) (l - mean l) per token, the means over the batch's tokens (Cui et al. 2025, Eq. 11)."""
        mask = mask.bool()
        count = mask.sum().clamp(min=1)
        centred = lambda x: x - (x * mask).sum() / count
        return centred(advantages) * centred(logprobs.detach())

    def _cov_selected(self, logprobs: Tensor, advantages: Tensor, mask: Tensor, clipped: Tensor) -> Tensor:
        """The tokens whose gradient Clip-Cov drops or KL-Cov penalises. (B, T) bool"""
        covariance, valid = self._covariance(logprobs, advantages, mask), mask.bool()
        count = max(1, int(self.cov_fraction * int(valid.sum())))
        selected = torch.zeros_like(valid)
        if self.policy_loss == "clip_cov":  # a random `count` of the unclipped tokens in the band
            band = (valid & ~clipped & (covariance > self.cov_low) & (covariance < self.cov_high)).flatten().nonzero().squeeze(1)
            chosen = band[torch.randperm(len(band), device=band.device)[:count]]
        else:  # kl_cov: the `count` largest covariances
            flat = covariance.masked_fill(~valid, float("-inf")).flatten()
            chosen = flat.topk(min(count, int(valid.sum()))).indices
        selected.view(-1)[chosen] = True
        return selected

    def weights(self, logprobs: Tensor, rollout) -> tuple[Tensor, dict[str, float]]:
        mask, advantages = rollout.response_mask, rollout.extras["advantages"]
        if self.policy_loss == "gmpo":
            geometric, clipped = self._geometric(logprobs, rollout)
            weights = self._response_mean(rollout) * geometric * (~clipped)
        elif self.policy_loss == "cispo":
            ratio = self._ratio(logprobs, rollout)
            capped = self._capped(ratio)
            clipped, weights = capped != ratio, advantages * capped
        elif self.policy_loss == "sapo":
            ratio = self._ratio(logprobs, rollout)
            clipped, weights = torch.zeros_like(mask, dtype=torch.bool), advantages * ratio * self._gate(ratio, advantages)[1]
        elif self.policy_loss == "gpg":
            clipped, weights = torch.zeros_like(mask, dtype=torch.bool), advantages.clone()
        elif self.policy_loss == "kl_cov":
            ratio, log_ratio = self._ratio(logprobs, rollout), logprobs - self._old(logprobs, rollout)
            self.selected = self._cov_selected(logprobs, advantages, mask, torch.zeros_like(mask, dtype=torch.bool))
            clipped = self.selected
            weights = advantages * ratio - self.kl_coef * torch.sign(log_ratio) * self.selected
        else:
            ratio = self._sequence_ratio(logprobs, rollout) if self.policy_loss == "gspo" else self._ratio(logprobs, rollout)
            clipped = self._clipped(ratio, advantages)
            if self.policy_loss == "clip_cov":
                self.selected = self._cov_selected(logprobs, advantages, mask, clipped)
                clipped = clipped | self.selected
            weights = advantages * ratio * (~clipped)
        if self._kl_in_loss():
            weights = weights + kl.loss_weight(logprobs, self.anchor(rollout), self.kl_estimator, self.beta)
        metrics = {"clip_fraction": ((clipped * mask).sum() / mask.sum().clamp(min=1)).item(),
                   "advantage_abs_mean": ((advantages.abs() * mask).sum() / mask.sum().clamp(min=1)).item()}
        return weights * mask, metrics

    def objective(self, logprobs: Tensor, rollout) -> Tensor:
        advantages = rollout.extras["advantages"]
        if self.policy_loss == "gmpo":  # -A_i G_i on every token: its response-mean is -A_i G_i
            loss = -self._response_mean(rollout) * self._geometric(logprobs, rollout)[0]
        elif self.policy_loss == "cispo":  # sg(clip(r)) * A * log pi
            loss = -self._capped(self._ratio(logprobs, rollout)).detach() * advantages * logprobs
        elif self.policy_loss == "sapo":
            loss = -self._gate(self._ratio(logprobs, rollout), advantages)[0] * advantages
        elif self.policy_loss == "gpg":
            loss = -advantages * logprobs
        elif self.policy_loss == "kl_cov":  # the tokens of the last weights() call
            log_ratio = logprobs - self._old(logprobs, rollout)
            loss = -torch.exp(log_ratio) * advantages + self.kl_coef * log_ratio.abs() * self.selected
        else:  # GSPO-token: sg[s_i] * pi_t / sg[pi_t], equal to s_i, with the gradient s_i grad l_t
            ratio = (self._sequence_ratio(logprobs, rollout).detach() * torch.exp(logprobs - logprobs.detach())
                     if self.policy_loss == "gspo" else self._ratio(logprobs, rollout))
            surrogate = ratio * advantages
            if self.clip_low is not None:
                surrogate = torch.minimum(surrogate, ratio.clamp(1 - self.clip_low, 1 + self.clip_high) * advantages)
            loss = -surrogate * (~self.selected if self.policy_loss == "clip_cov" else 1)  # the last weights() call's
        if self._kl_in_loss():
            loss = loss + self.beta * kl.estimate(logprobs, self.anchor(rollout), self.kl_estimator)
        return aggregate(loss, rollout.response_mask, self.loss_agg, rollout.group_size)
