"""PPO with a critic and GAE (Schulman et al. 2017; Ouyang et al. 2022 for the RLHF rewards).

Per-token rewards: the task reward at the last token (or each step's reward at its last token,
with supervision=process), minus beta * k(pi_sampler, pi_ref) at every token when the KL is placed
in the reward (the default, with k1 = log pi_old - log pi_ref as in InstructGPT). Advantages by GAE
(gamma, lambda) against the critic's values V_old, taken once per rollout; advantage_norm batch
(default) whitens them over the batch's tokens. Actor weight w_t = A_t * rho_t * 1[not clipped]
(algorithms/policy_gradient.py). The critic (built by the model layer, models/value.py: a copy of
the policy's body with a scalar head) is handed to `setup` and trained by an auxiliary loss:
    vf_coef * 1/2 * max((V - R)^2, (V_old + clip(V - V_old, -value_clip, value_clip) - R)^2),
R = A + V_old the GAE returns, aggregated token-mean (value_clip null: unclipped).
Several epochs of minibatches per rollout are module settings (module.update_epochs, minibatches).
"""
import torch
from torch import Tensor

from ptlab.algorithms import advantages as adv
from ptlab.algorithms.base import aggregate
from ptlab.errors import ConfigError
from ptlab.algorithms.policy_gradient import PolicyGradient


class PPO(PolicyGradient):
    default_loss_agg = "token-mean"
    needs_critic = True

    def __init__(self, gamma: float = 1.0, lam: float = 0.95, value_clip: float | None = 0.2, vf_coef: float = 0.5,
                 advantage_norm: str = "batch", supervision: str = "outcome", kl_estimator: str = "k1",
                 kl_placement: str = "reward", **kwargs):
        super().__init__(kl_estimator=kl_estimator, kl_placement=kl_placement, **kwargs)
        adv.check("group_mean", advantage_norm)
        if supervision not in ("outcome", "process"):
            raise ConfigError(f"algorithm.supervision={supervision!r} is not one of outcome, process")
        self.gamma, self.lam, self.value_clip, self.vf_coef = gamma, lam, value_clip, vf_coef
        self.advantage_norm, self.supervision = advantage_norm, supervision
        self.critic = None

    def setup(self, critic=None) -> dict:
        if critic is None:
            raise ValueError("PPO needs a critic: build one with ptlab.models.value.critic_for(policy)")
        self.critic = critic
        return {"critic": critic}

    def token_rewards(self, rollout) -> Tensor:
        """Task reward at each response's last token (or step rewards), plus the KL reward. (B, T)"""
        mask = rollout.response_mask
        if self.supervision == "process":
            if rollout.step_rewards is None:
                raise ConfigError("algorithm.supervision=process needs step rewards: task=chain_steps")
            rewards = rollout.step_rewards.float().clone()
        else:
            last = (mask.sum(-1) - 1).clamp(min=0)
            rewards = torch.zeros_like(mask, dtype=torch.float32).scatter(1, last.unsqueeze(1), rollout.rewards.float().unsqueeze(1))
        return rewards + self.kl_rewards(rollout)

    def prepare(self, rollout) -> None:
        mask = rollout.response_mask
        values = self.critic(rollout)
        advantages, returns = adv.gae(self.token_rewards(rollout), values, mask, self.gamma, self.lam)
        if self.advantage_norm == "batch":
            advantages = adv.whiten(advantages, mask)
        elif self.advantage_norm == "group":
            k = rollout.group_size
            advantages = torch.cat([adv.whiten(a, m, whole_batch=False) for a, m in zip(advantages.split(k), mask.split(k))])
        rollout.extras.update(advantages=advantages, returns=returns, values=values)

    def aux_loss(self, rollout) -> tuple[Tensor, dict[str, float]]:
        mask, returns, old = rollout.response_mask, rollout.extras["returns"], rollout.extras["values"]
        values = self.critic(rollout)
        loss = (values - returns).pow(2)
        if self.value_clip is not None:
            clipped = old + (values - old).clamp(-self.value_clip, self.value_clip)
            loss = torch.maximum(loss, (clipped - returns).pow(2))
        value_loss = 0.5 * aggregate(loss, mask, "token-mean", rollout.group_size, totals=rollout.totals)
        explained = 1 - ((returns - values) * mask).var() / ((returns * mask).var() + 1e-8)
        return self.vf_coef * value_loss, {"value_loss": value_loss.item(), "value_explained_variance": explained.item()}
