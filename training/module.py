"""The LightningModule: rollout -> reward -> weights -> one loss -> optimiser step.

Manual optimisation: one `training_step` receives a batch of prompts, asks the sampler for a
rollout, then makes `update_epochs` optimiser steps on it. `trainer.max_steps` therefore counts
optimiser steps (Lightning's `global_step`), which equals rollouts when update_epochs is 1.
Lightning keeps devices, strategies, loggers, callbacks and the progress bar.
"""
import math
import time
from dataclasses import asdict, dataclass

import lightning as L
import torch
from torch import Tensor

from algorithms.base import aggregate, sequence_logprobs
from models.lm import token_logprobs
from training.rollout import Rollout


def weighted_log_likelihood_loss(logprobs: Tensor, weights: Tensor, mask: Tensor, loss_agg: str, group_size: int,
                                 norm_length: int | None = None) -> Tensor:
    """The one loss: -(1/N) * sum_{i,t} m * w * l, with N set by loss_agg. Weights are detached."""
    return -aggregate(weights.detach() * logprobs, mask, loss_agg, group_size, norm_length)


@dataclass
class Budget:
    """What a run has spent, logged under budget/ so algorithms can be compared at equal cost."""

    prompts_seen: int = 0
    responses_generated: int = 0
    tokens_generated: int = 0
    reward_calls: int = 0
    optimizer_steps: int = 0
    wall_seconds: float = 0.0

    def add(self, rollout: Rollout) -> None:
        """Count a batch; only its freshly generated groups cost generation and reward calls."""
        groups = rollout.num_groups if rollout.generated_groups is None else rollout.generated_groups
        rows = groups * rollout.group_size
        self.prompts_seen += rollout.num_groups
        self.responses_generated += rows
        self.reward_calls += rows
        self.tokens_generated += int(rollout.response_mask[:rows].sum())

    def metrics(self) -> dict[str, float]:
        return {f"budget/{key}": float(value) for key, value in asdict(self).items()}


class PostTrainingModule(L.LightningModule):
    def __init__(self, policy, tokenizer, algorithm, sampler, reference, optimizer, evaluator=None, scheduler=None,
                 update_epochs: int = 1, max_grad_norm: float | None = 1.0, norm_length: int | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.policy, self.reference = policy.train(), reference  # reference may be None (e.g. SFT)
        self.tokenizer, self.algorithm, self.sampler = tokenizer, algorithm, sampler
        self.optimizer_factory, self.scheduler_factory, self.evaluator = optimizer, scheduler, evaluator
        self.update_epochs, self.max_grad_norm = update_epochs, max_grad_norm
        self.norm_length = norm_length  # constant length of the seq-mean-token-sum-norm aggregation
        self.budget = Budget()
        self.last_rollout: Rollout | None = None
        self._start = None

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=[p for p in self.policy.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    def on_train_start(self) -> None:
        self._start = time.perf_counter() - self.budget.wall_seconds

    def policy_logprobs(self, rollout: Rollout) -> Tensor:  # (B, T), with grad
        return token_logprobs(self.policy, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask)

    def training_step(self, rows: list[dict], batch_idx: int) -> None:
        rollout = self.sampler.sample(rows, self.policy).to(self.device)
        self.budget.add(rollout)
        if self.algorithm.needs_reference:
            rollout.ref_logprobs = self.reference.logprobs(rollout)
        if rollout.sampler_logprobs is None and self.update_epochs > 1:
            with torch.no_grad():
                rollout.sampler_logprobs = self.policy_logprobs(rollout)
        for _ in range(self.update_epochs):
            metrics = self._update(rollout)
        self.last_rollout = rollout
        self.budget.wall_seconds = time.perf_counter() - self._start
        metrics |= self._rollout_metrics(rollout) | self.budget.metrics()
        self.log_dict(metrics, on_step=True, prog_bar=False, batch_size=rollout.num_groups)
        self.log("train/reward", rollout.rewards.mean(), prog_bar=True, batch_size=rollout.num_groups)

    def _update(self, rollout: Rollout) -> dict[str, float]:
        """One optimiser step on the rollout; returns train/ and algo/ metrics."""
        optimizer = self.optimizers()
        logprobs = self.policy_logprobs(rollout)
        if rollout.sampler_logprobs is None:  # on-policy, first update: the current policy sampled
            rollout.sampler_logprobs = logprobs.detach()
        weights, algo_metrics = self.algorithm.weights(logprobs.detach(), rollout)
        loss = weighted_log_likelihood_loss(logprobs, weights, rollout.response_mask, self.algorithm.loss_agg,
                                            rollout.group_size, self.norm_length)
        metrics = {"train/loss": loss.item(), "train/lr": optimizer.param_groups[0]["lr"],
                   "algo/objective": self.algorithm.objective(logprobs.detach(), rollout).item()}
        metrics |= {f"algo/{key}": value for key, value in algo_metrics.items()}
        if not torch.isfinite(loss):
            metrics["train/nonfinite_loss"] = 1.0  # reported, the step is skipped
            return metrics
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.max_grad_norm:
            metrics["train/grad_norm"] = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm).item()
        optimizer.step()
        if self.lr_schedulers() is not None:
            self.lr_schedulers().step()  # manual optimisation: Lightning leaves the scheduler to us
        self.budget.optimizer_steps += 1
        return metrics

    def _rollout_metrics(self, rollout: Rollout) -> dict[str, float]:
        rewards, mask = rollout.rewards, rollout.response_mask
        grouped = rewards.view(-1, rollout.group_size)
        metrics = {
            "train/accuracy": (rewards == 1).float().mean().item(),
            "train/response_length": mask.sum(-1).float().mean().item(),
            "train/zero_spread_groups": (grouped.max(1).values == grouped.min(1).values).float().mean().item(),
        }
        if rollout.ref_logprobs is not None and self.sampler.source == "policy":
            # k1 estimate of KL(pi_sampler || pi_ref) per response, on the sampled responses
            log_ratio = sequence_logprobs(rollout.sampler_logprobs, mask) - sequence_logprobs(rollout.ref_logprobs, mask)
            metrics["train/kl_ref"] = log_ratio.mean().item()
        return metrics

    def validation_step(self, rows: list[dict], batch_idx: int) -> None:
        """The task's evaluator: greedy val/reward and val/accuracy, or exact/ metrics."""
        for key, value in self.evaluator(self.policy, rows).items():
            self.log(key, value, batch_size=len(rows), prog_bar=key in ("val/accuracy", "exact/kl_to_optimum"))
