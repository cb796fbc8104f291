"""The LightningModule: rollout -> reward -> weights -> one loss -> optimiser steps.

Manual optimisation: one `training_step` receives a batch of prompts, asks the sampler for a
rollout, lets the algorithm prepare it once (e.g. PPO's values and GAE), then makes
update_epochs x minibatches optimiser steps on it, each minibatch made of whole groups.
`trainer.max_steps` therefore counts optimiser steps (Lightning's `global_step`); with one epoch
and one minibatch it counts rollouts. Lightning keeps devices, strategies, loggers, callbacks and
the progress bar.

The loss of a minibatch is the weighted log-likelihood surrogate, plus the algorithm's auxiliary
loss (PPO's critic), minus entropy_coef times the mean token entropy (an exact entropy of the
next-token distributions, the one term that is not a weighted log-likelihood; default 0).
"""
import math
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from functools import partial

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from ptlab import parallel
from ptlab.algorithms.base import aggregate, sequence_logprobs
from ptlab.models.lm import token_logprobs
from ptlab.errors import ConfigError, RunStopped
from ptlab.training.rollout import Rollout, truncated


def weighted_log_likelihood_loss(logprobs: Tensor, weights: Tensor, mask: Tensor, loss_agg: str, group_size: int,
                                 norm_length: int | None = None, totals: tuple[int, int] | None = None) -> Tensor:
    """The one loss: -(1/N) * sum_{i,t} m * w * l, with N set by loss_agg. Weights are detached."""
    return -aggregate(weights.detach() * logprobs, mask, loss_agg, group_size, norm_length, totals)


def summarise(history: dict[str, list[float]]) -> dict[str, float]:
    """One value per metric from several updates: the max of *_max keys, the mean of the others."""
    return {key: max(values) if key.endswith("_max") else sum(values) / len(values) for key, values in history.items()}


@dataclass
class Budget:
    """What a run has spent, logged under budget/ so algorithms can be compared at equal cost."""

    prompts_seen: int = 0
    responses_generated: int = 0
    tokens_generated: int = 0
    reward_calls: int = 0
    optimizer_steps: int = 0
    wall_seconds: float = 0.0  # since training started
    sampling_seconds: float = 0.0  # generating and scoring rollouts
    reference_seconds: float = 0.0  # pi_ref's log-probs
    update_seconds: float = 0.0  # everything from the first policy forward to the last optimiser step

    def add(self, rollout: Rollout) -> None:
        """Count a batch, on every rank (data parallelism: the sums over ranks); only its freshly
        generated groups cost generation and reward calls, and so do the responses generated for it
        that it does not hold (greedy baselines, groups dynamic sampling dropped)."""
        groups = rollout.num_groups if rollout.generated_groups is None else rollout.generated_groups
        rows = groups * rollout.group_size
        extra_prompts, extra_rows, extra_tokens = rollout.extra_generated  # generated, scored and not trained on
        counts = torch.tensor([rollout.num_groups + extra_prompts, rows + extra_rows, int(rollout.response_mask[:rows].sum()) + extra_tokens],
                              dtype=torch.float64)
        prompts, rows, tokens = (int(count) for count in parallel.all_sum(counts))
        self.prompts_seen += prompts
        self.responses_generated += rows
        self.reward_calls += rows
        self.tokens_generated += tokens

    def metrics(self) -> dict[str, float]:
        return {f"budget/{key}": float(value) for key, value in asdict(self).items()}


def rng_states() -> dict:
    """torch's, numpy's and Python's global RNG states, as tensors, numbers and tuples (weights_only-safe)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss))}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    name, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))


class PostTrainingModule(L.LightningModule):
    def __init__(self, policy, tokenizer, algorithm, sampler, reference, optimizer, evaluator=None, scheduler=None,
                 update_epochs: int = 1, minibatches: int = 1, max_grad_norm: float | None = 1.0,
                 entropy_coef: float = 0.0, kl_diagnostic: bool = True, norm_length: int | None = None,
                 critic=None, accumulate_grad_batches: int = 1, max_nonfinite_steps: int = 3, length_buckets: int = 1,
                 overlong_filter: bool = False):
        super().__init__()
        self.automatic_optimization = False
        self.policy, self.reference = policy.train(), reference  # reference may be None (e.g. SFT)
        self.tokenizer, self.algorithm, self.sampler = tokenizer, algorithm, sampler
        self.extras = nn.ModuleDict(algorithm.setup(critic))  # e.g. PPO's critic, trained alongside
        self.accumulate_grad_batches = accumulate_grad_batches  # micro-batches per optimiser step
        self.length_buckets = length_buckets  # forwards on buckets of rows of similar length (models/lm.py)
        self.optimizer_factory, self.scheduler_factory, self.evaluator = optimizer, scheduler, evaluator
        self.update_epochs, self.minibatches, self.max_grad_norm = update_epochs, minibatches, max_grad_norm
        self.entropy_coef, self.kl_diagnostic = entropy_coef, kl_diagnostic and reference is not None
        self.norm_length = norm_length  # constant length of the seq-mean-token-sum-norm aggregation
        # DAPO's overlong filtering (Yu et al. 2025, section 3.4): a response the generation budget cut
        # gets weight 0 (it still counts in its group's statistics and in the aggregation's denominator)
        self.overlong_filter = overlong_filter
        self.budget = Budget()
        self.max_nonfinite_steps, self.nonfinite_in_a_row = max_nonfinite_steps, 0  # rollouts whose every update was skipped
        self.nonfinite: str | None = None  # what was not finite in the last skipped update
        self.last_rollout: Rollout | None = None
        self.last_validation: tuple[int, dict[str, float]] | None = None  # (step, metrics) of the latest validation
        self.validation_seconds: float | None = None  # how long the latest validation took
        self._start = None
        self.rollouts_done = 0  # training batches consumed, for a resumed run's prompt order
        self.prompt_order = None  # the train loader's PromptOrder, told where to resume
        self.rank_weights: list[str] = []  # SHA-256 of the trainable weights of each process, at the end of training

    def configure_optimizers(self):
        params = [p for p in list(self.policy.parameters()) + list(self.extras.parameters()) if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    def on_train_start(self) -> None:
        self._start = time.perf_counter() - self.budget.wall_seconds

    def on_train_end(self) -> None:
        """Every process's weights, to check data parallelism kept them identical."""
        self.rank_weights = parallel.gather_objects(parallel.digest(self))

    def policy_logprobs(self, rollout: Rollout, entropy: str | None = None):  # (B, T), with grad
        return token_logprobs(self.policy, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                              rollout.response_mask, entropy=entropy, buckets=self.length_buckets)

    def training_step(self, rows: list[dict], batch_idx: int) -> None:
        clock = time.perf_counter()
        self.rollouts_done += 1
        rollout = self.sampler.sample(rows, self.policy).to(self.device)
        self.budget.add(rollout)
        self.budget.sampling_seconds += time.perf_counter() - clock
        if parallel.any_rank(not torch.isfinite(rollout.rewards).all()):  # e.g. scores beyond float32's range: no update
            self.nonfinite, self.last_rollout = "rewards", rollout
            self.log("train/nonfinite", 1.0, batch_size=rollout.num_groups)
            return self.stop_if_never_finite(made_a_step=False)
        clock = time.perf_counter()
        if (self.algorithm.needs_reference or self.kl_diagnostic) and rollout.ref_logprobs is None:
            reference_logprobs = partial(self.reference.logprobs, buckets=self.length_buckets)
            rollout.ref_logprobs = self._in_parts(reference_logprobs, rollout)  # unless pi_ref itself sampled it
        self.budget.reference_seconds += time.perf_counter() - clock
        clock = time.perf_counter()
        single_update = self.update_epochs * self.minibatches == 1
        if rollout.sampler_logprobs is None and (not single_update or self.algorithm.prepare_needs_sampler_logprobs):
            with torch.no_grad():  # the policy before any update sampled this rollout
                rollout.sampler_logprobs = self._in_parts(self.policy_logprobs, rollout)
        with torch.no_grad():
            self.algorithm.prepare(rollout)
        history, steps_before = defaultdict(list), self.budget.optimizer_steps
        for _ in range(self.update_epochs):
            for groups in torch.randperm(rollout.num_groups, device=self.device).chunk(self.minibatches):
                for key, value in self._update(rollout.select_groups(groups) if not single_update else rollout).items():
                    history[key].append(value)
        self.last_rollout = rollout
        self.stop_if_never_finite(made_a_step=self.budget.optimizer_steps > steps_before)
        self.budget.update_seconds += time.perf_counter() - clock
        self.budget.wall_seconds = time.perf_counter() - self._start
        metrics = parallel.average_metrics(summarise(history) | self._rollout_metrics(rollout))  # over ranks
        self.log("step", float(self.global_step), batch_size=rollout.num_groups)  # the row's step: steps done (1, 2, ...)
        self.log("train/reward", metrics.pop("train/reward"), prog_bar=True, batch_size=rollout.num_groups)
        self.log_dict(metrics | self.budget.metrics(), on_step=True, batch_size=rollout.num_groups)

    def _update(self, batch: Rollout) -> dict[str, float]:
        """One optimiser step on a minibatch, its gradient accumulated over micro-batches of whole
        groups, each normalised by the minibatch's totals so they add up to the minibatch's gradient;
        returns train/ and algo/ metrics. Under data parallelism the totals are the global
        minibatch's (all ranks') and each rank's loss is scaled by the number of ranks, so the
        gradient DDP averages over ranks is the global minibatch's."""
        optimizer = self.optimizers()
        optimizer.zero_grad()
        local = torch.tensor([batch.response_mask.shape[0], int(batch.response_mask.sum())], dtype=torch.float64)
        rows, tokens = (int(total) for total in parallel.all_sum(local))
        totals = (rows, tokens or 1)
        chunks = batch.groups_by_length(self.accumulate_grad_batches) if self.accumulate_grad_batches > 1 else []
        parts = [replace(batch.select_groups(groups).trimmed(), totals=totals) for groups in chunks]
        parts = parts or [replace(batch, totals=totals)]
        history, fill_sampler_logprobs = defaultdict(list), batch.sampler_logprobs is None
        for part in parts:
            loss, metrics = self._loss(part)
            for key, value in metrics.items():
                history[key].append(value)
            if parallel.any_rank(self.nonfinite is not None):  # every rank skips, or none
                self.nonfinite = self.nonfinite or "values on another rank"
                optimizer.zero_grad()
                return summarise(history) | {"train/nonfinite": 1.0}  # reported, the step is skipped
            self.manual_backward(loss * parallel.world_size())
        if fill_sampler_logprobs:  # on-policy: the parts' first forwards, back in row order
            batch.sampler_logprobs = (self._reassemble(batch, chunks, [part.sampler_logprobs for part in parts])
                                      if chunks else parts[0].sampler_logprobs)
        loss = sum(history["train/loss"]) * parallel.world_size()  # averaged over ranks: the global minibatch's
        metrics = summarise(history) | {"train/loss": loss, "train/lr": optimizer.param_groups[0]["lr"]}
        params = [p for p in list(self.policy.parameters()) + list(self.extras.parameters()) if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm or float("inf")).item()
        if not math.isfinite(grad_norm):
            self.nonfinite = "gradient norm"
            optimizer.zero_grad()
            return metrics | {"train/nonfinite": 1.0}
        if self.max_grad_norm:
            metrics["train/grad_norm"] = grad_norm
        optimizer.step()
        if self.sampler.generator is not None:
            self.sampler.generator.on_optimizer_step(self.policy)  # e.g. vLLM's copy of the weights
        if self.lr_schedulers() is not None:
            self.lr_schedulers().step()  # manual optimisation: Lightning leaves the scheduler to us
        self.budget.optimizer_steps += 1
        return metrics

    def stop_if_never_finite(self, made_a_step: bool) -> None:
        """Skipped updates make no optimiser step, so trainer.max_steps would never be reached: after
        max_nonfinite_steps rollouts in a row without one, save the last good state and stop."""
        self.nonfinite_in_a_row = 0 if made_a_step else self.nonfinite_in_a_row + 1
        if self.nonfinite_in_a_row < self.max_nonfinite_steps:
            return
        checkpoint = getattr(self.trainer.checkpoint_callback, "dirpath", None)
        if checkpoint:
            self.trainer.save_checkpoint(f"{checkpoint}/last.ckpt")
        raise RunStopped(f"step {self.global_step}: non-finite {self.nonfinite or 'update'} in {self.nonfinite_in_a_row} "
                         f"rollouts in a row, every update skipped (module.max_nonfinite_steps="
                         f"{self.max_nonfinite_steps}); the last good state is "
                         + (f"in {checkpoint}/last.ckpt" if checkpoint else "not saved (checkpointing is off)"))

    def _in_parts(self, logprobs_fn, rollout: Rollout) -> Tensor:
        """A log-prob forward without gradient (B, T), made on as many parts as gradient accumulation
        uses (whole groups of similar length, each trimmed of its padding) to bound its memory."""
        if self.accumulate_grad_batches == 1:
            return logprobs_fn(rollout)
        chunks = rollout.groups_by_length(self.accumulate_grad_batches)
        return self._reassemble(rollout, chunks, [logprobs_fn(rollout.select_groups(g).trimmed()) for g in chunks])

    @staticmethod
    def _reassemble(rollout: Rollout, chunks: list[Tensor], values: list[Tensor]) -> Tensor:
        """Per-token values of trimmed parts (the groups `chunks`), back in the rollout's rows. (B, T)"""
        whole = torch.zeros(rollout.response_mask.shape, dtype=values[0].dtype, device=values[0].device)
        for groups, part in zip(chunks, values):
            whole[rollout.rows_of(groups), : part.shape[1]] = part
        return whole

    def _loss(self, batch: Rollout) -> tuple[Tensor, dict[str, float]]:
        """The surrogate of a (micro-)batch, plus the algorithm's auxiliary loss and the entropy bonus."""
        logprobs, entropy = self.policy_logprobs(batch, entropy="grad" if self.entropy_coef else "detached")
        if batch.sampler_logprobs is None:  # on-policy, single update: the current policy sampled
            batch.sampler_logprobs = logprobs.detach()
        weights, algo_metrics = self.algorithm.weights(logprobs.detach(), batch)
        if self.overlong_filter:
            weights = weights * ~truncated(batch.response_ids, batch.response_mask, self.tokenizer.eos_token_id).unsqueeze(-1)
        self.nonfinite = next((name for name, value in (("log-probs", logprobs), ("weights", weights))
                               if not torch.isfinite(value.detach()[batch.response_mask.bool()]).all()), None)
        mask, agg = batch.response_mask, self.algorithm.loss_agg
        loss = weighted_log_likelihood_loss(logprobs, weights, mask, agg, batch.group_size, self.norm_length, batch.totals)
        aux = self.algorithm.aux_loss(batch)
        if aux is not None:
            loss = loss + aux[0]
            algo_metrics |= aux[1]
        if self.entropy_coef:
            loss = loss - self.entropy_coef * aggregate(entropy, mask, agg, batch.group_size, self.norm_length, batch.totals)
        self.nonfinite = self.nonfinite or (None if torch.isfinite(loss) else "loss")
        ratio = torch.exp(logprobs.detach() - batch.sampler_logprobs)[mask.bool()]
        metrics = {
            "train/loss": loss.item(),
            "train/entropy": (entropy.detach().sum() / mask.sum()).item(),
            "train/ratio_mean": ratio.mean().item(), "train/ratio_max": ratio.max().item(),
            "train/clip_fraction": algo_metrics.pop("clip_fraction", 0.0),
            "algo/objective": self.algorithm.objective(logprobs.detach(), batch).item(),
        }
        return loss, metrics | {f"algo/{key}": value for key, value in algo_metrics.items()}

    def _rollout_metrics(self, rollout: Rollout) -> dict[str, float]:
        rewards, mask = rollout.rewards, rollout.response_mask
        grouped = rewards.view(-1, rollout.group_size)
        lengths = mask.sum(-1)
        cut = truncated(rollout.response_ids, mask, getattr(self.tokenizer, "eos_token_id", None))
        metrics = {
            "train/reward": rewards.mean().item(),
            "train/accuracy": rollout.correct.float().mean().item(),
            **{f"train/reward/{name}": values.mean().item() for name, values in rollout.reward_terms.items()},
            "train/response_length": lengths.float().mean().item(),  # TRL: completions/mean_length
            "train/response_length_min": lengths.min().item(),  # TRL: completions/min_length
            "train/response_length_max": lengths.max().item(),  # TRL: completions/max_length
            # responses cut by the generation budget, no eos (TRL: completions/clipped_ratio)
            "train/truncated_fraction": cut.float().mean().item(),
            # groups whose responses all scored the same: no learning signal for group baselines
            "train/zero_spread_groups": (grouped.max(1).values == grouped.min(1).values).float().mean().item(),  # TRL:
            #                                                                          frac_reward_zero_std
        }
        if self.sampler.generator is not None and self.sampler.generator.reports_staleness:
            metrics["train/sampler_staleness"] = float(self.sampler.generator.staleness)
        if self.sampler.on_reward_failure is not None:
            metrics["train/reward_failures"] = float(self.sampler.reward_failures)
        if getattr(self.sampler, "dynamic_sampling", False):  # groups with no spread dynamic sampling could not replace
            metrics["train/dynamic_shortfall"] = float(self.sampler.shortfall)
        if rollout.greedy_rewards is not None:  # the greedy response's reward (ReMax's baseline)
            metrics["train/greedy_reward"] = rollout.greedy_rewards.mean().item()
        if rollout.ref_logprobs is not None:
            # k1 estimate of KL(pi_sampler || pi_ref) per response, on the sampled responses
            log_ratio = sequence_logprobs(rollout.sampler_logprobs, mask) - sequence_logprobs(rollout.ref_logprobs, mask)
            metrics["train/kl_ref"] = log_ratio.mean().item()
        return metrics

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints hold what training changes: trainable weights (all of them, or LoRA's adapters),
        buffers and the critic, not the frozen reference nor frozen base weights; and (Lightning
        keeps the optimiser, scheduler and step) what a resumed run needs to go on exactly as an
        uninterrupted one: the RNG states, the sampler's state, the budget, the prompts consumed.
        The RNG and sampler states are per rank (`ranks`, one entry per process)."""
        frozen = {name for name, value in self.state_dict(keep_vars=True).items()  # tied weights under every name
                  if isinstance(value, nn.Parameter) and not value.requires_grad}
        frozen |= {name for name in checkpoint["state_dict"] if name.startswith("reference.")}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
        ranks = parallel.gather_objects({"rng": rng_states(), "sampler": self.sampler.state_dict()})
        checkpoint["ptlab"] = {"rollouts": self.rollouts_done, "budget": asdict(self.budget), "ranks": ranks,
                               "last_validation": self.last_validation, "nonfinite_in_a_row": self.nonfinite_in_a_row}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """The frozen weights a checkpoint leaves out are those this module was built with."""
        checkpoint["state_dict"] = self.state_dict() | checkpoint["state_dict"]
        state = checkpoint.get("ptlab")
        if state is None:  # a checkpoint of weights only (e.g. from before resumable runs)
            return
        self.rollouts_done, self.budget = state["rollouts"], Budget(**state["budget"])
        self.last_validation, self.nonfinite_in_a_row = state["last_validation"], state["nonfinite_in_a_row"]
        if len(state["ranks"]) != parallel.world_size():
            raise ConfigError(f"resume: the checkpoint was written by {len(state['ranks'])} process(es), this run has "
                              f"{parallel.world_size()}; resume with the same trainer.devices x trainer.num_nodes")
        mine = state["ranks"][parallel.rank()]
        self.sampler.load_state_dict(mine["sampler"])
        set_rng_states(mine["rng"])
        if self.prompt_order is not None:
            self.prompt_order.position = self.rollouts_done

    def validation_step(self, rows: list[dict], batch_idx: int) -> None:
        """The task's evaluator: greedy val/reward and val/accuracy, or exact/ metrics (over every
        prompt, whatever the number of ranks)."""
        clock = time.perf_counter()
        metrics = self.evaluator(self.policy, rows)
        self.validation_seconds = time.perf_counter() - clock
        for key, value in metrics.items():
            self.log(key, value, batch_size=len(rows), prog_bar=key in ("val/accuracy", "exact/kl_to_optimum"),
                     sync_dist=True)  # the same on every rank (the evaluator gathers): no warning, no change
        self.log("step", float(self.global_step), batch_size=len(rows))  # the steps done before it: 0 for the reference
        self.last_validation = (self.global_step, {key: float(value) for key, value in metrics.items()})
