"""Validation metrics. A task picks its evaluator: rewards of greedy and sampled answers to held-out
prompts, or the exact metrics of the enumerable task; the evaluation before training cached for the
runs that share it."""
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import torch

from ptlab import parallel
from ptlab.models.lm import token_logprobs
from ptlab.rewards import score
from ptlab.storage import file_lock, write_atomically
from ptlab.training.rollout import encode_prompts, with_lengths


class HeldOutEvaluation:
    """Rewards on the held-out prompts, from the greedy answer and from `samples` sampled answers
    per prompt (the sampling distribution the policy is trained on).

      val/reward, val/accuracy           mean reward and fraction fully right (correctness score 1) of
                                         greedy answers; val/reward/<name> for each reward term
      val/sampled_reward, _accuracy      the same over samples x prompts sampled answers, drawn with
                                         the task's own seed (every run, before and after training,
                                         is scored on the same draws of the random stream)
      val/sampled_accuracy_se            its standard error over prompts
      val/kl_ref, val/kl_ref_se          how far the policy moved: KL(pi_theta || pi_ref) on the held-out
                                         prompts, the mean over the sampled answers y of log pi_theta(y|x)
                                         - log pi_ref(y|x) (the k1 estimate, unbiased for responses drawn
                                         from pi_theta: exact in expectation at temperature 1 and top_p 1,
                                         the shipped settings), with its standard error over prompts; one
                                         answer per prompt is sampled for it when `samples` is 0. pi_ref is
                                         `reference` (the run's frozen initial policy), set by assemble.py

    Prompts are generated `batch_size` rows at a time; sampling never touches the training RNG.
    Under data parallelism rank r answers prompts r, r + W, ... (its samples drawn with seed + r) and
    the per-prompt results are gathered, so the metrics cover every prompt once.
    """

    def __init__(self, tokenizer, generator, reward_fn, samples: int = 0, seed: int = 0, batch_size: int = 256):
        self.tokenizer, self.generator, self.reward_fn = tokenizer, generator, reward_fn
        self.samples, self.seed, self.batch_size = samples, seed, batch_size
        self.on_reward_failure = None  # as training's: run.py sets it from `reward_on_failure`
        self.progress = None  # what it is generating now (ptlab/heartbeat.py prints it)
        self.reference = None  # pi_ref (models/reference.py): val/kl_ref is measured when it is set

    def _answers(self, policy, rows: list[dict], greedy: bool):
        """Rewards (N,), reward terms, correctness (N,) of one answer per row, and for sampled answers
        log pi_theta(y|x) - log pi_ref(y|x) (N,) (None when greedy or without a reference)."""
        device = next(policy.parameters()).device
        completions, kind, scored, log_ratios = [], "greedy" if greedy else "sampled", [], []
        for start in range(0, len(rows), self.batch_size):
            self.progress = f"{kind} answers {start}-{min(start + self.batch_size, len(rows))} of {len(rows)}"  # heartbeat
            prompt_ids, prompt_mask = encode_prompts(self.tokenizer, [row["prompt"] for row in rows[start : start + self.batch_size]])
            prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
            response_ids, response_mask = self.generator(policy, self.tokenizer, prompt_ids, prompt_mask, greedy=greedy)
            completions += self.tokenizer.batch_decode(response_ids * response_mask, skip_special_tokens=True)
            scored += with_lengths(rows[start : start + self.batch_size], response_ids.cpu(), response_mask.cpu(),
                                   getattr(self.tokenizer, "eos_token_id", None))
            if not greedy and self.reference is not None:
                log_ratios.append(self.log_ratio(policy, prompt_ids, prompt_mask, response_ids, response_mask))
        total, terms, _ = score(self.reward_fn, completions, scored, self.on_reward_failure)
        rewards, terms = torch.tensor(total), {name: torch.tensor(values) for name, values in terms.items()}
        return rewards, terms, next(iter(terms.values()), rewards) == 1, torch.cat(log_ratios) if log_ratios else None

    def log_ratio(self, policy, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        """log pi_theta(y|x) - log pi_ref(y|x) per response (B,), float64 on the CPU (the sum over the
        response's tokens of the token log-ratios)."""
        batch = SimpleNamespace(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                                response_mask=response_mask)
        with torch.inference_mode():
            mine = token_logprobs(policy, prompt_ids, prompt_mask, response_ids, response_mask)
        reference = self.reference.logprobs(batch)
        return ((mine.double() - reference.double()) * response_mask).sum(-1).cpu()

    def per_prompt(self, policy, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Per-prompt results (N,) each: greedy reward, correctness and reward terms; the mean sampled
        reward and accuracy."""
        rewards, terms, correct, _ = self._answers(policy, rows, greedy=True)
        values = {"val/reward": rewards, "val/accuracy": correct.float(),
                  **{f"val/reward/{name}": values for name, values in terms.items()}}
        draws = self.samples or (1 if self.reference is not None else 0)  # one draw per prompt for the KL alone
        if draws:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + parallel.rank())
                repeated = [row for row in rows for _ in range(draws)]  # a prompt's samples side by side
                rewards, _, correct, log_ratios = self._answers(policy, repeated, greedy=False)
            if self.samples:
                values |= {"val/sampled_reward": rewards.float().view(len(rows), draws).mean(1),
                           "val/sampled_accuracy": correct.float().view(len(rows), draws).mean(1)}
            if log_ratios is not None:
                values["val/kl_ref"] = log_ratios.view(len(rows), draws).mean(1)
        return values

    def __call__(self, policy, rows: list[dict]) -> dict[str, torch.Tensor]:
        self.generator.sync(policy)  # a backend with its own copy of the weights scores the policy as it is
        mine = self.per_prompt(policy, parallel.shard(rows))
        values = {key: parallel.gather_shards(value.float(), len(rows)) for key, value in mine.items()}
        metrics = {key: value.mean() for key, value in values.items()}
        if self.samples:
            metrics["val/sampled_accuracy_se"] = values["val/sampled_accuracy"].std() / len(rows) ** 0.5
        if "val/kl_ref" in values:
            metrics["val/kl_ref_se"] = values["val/kl_ref"].std() / len(rows) ** 0.5
        return metrics


def evaluator_for(task, policy, tokenizer, generator, beta: float):
    """The evaluator a task asks for by its `evaluation`: `held_out` (HeldOutEvaluation, text tasks) or
    `exact` (ExactMetrics, an enumerable task); `policy` is the initial policy (the exact task's pi_ref)."""
    if getattr(task, "evaluation", "held_out") == "exact":
        return ExactMetrics(task, policy, tokenizer, beta)
    return HeldOutEvaluation(tokenizer, generator, task.reward, samples=task.eval_samples, seed=task.eval_seed)


class ExactMetrics:
    """Exact KLs and rewards on an enumerable task, averaged over its prompts (DESIGN.md section 3).

    pi_ref is the policy given at construction (the initial policy), whatever the algorithm's own
    reference; pi*(y|x) = pi_ref(y|x) exp(R(x,y)/beta) / Z(x). val/reward is the exact expected
    reward and val/accuracy the probability of a best-rewarded response.
    """

    def __init__(self, task, policy, tokenizer, beta: float):
        self.beta, self.rewards = beta, task.table  # (P, N)
        self.batch = task.all_responses(tokenizer)
        self.log_ref = self.log_probs(policy)  # (P, N)
        self.best = self.rewards == self.rewards.max(1, keepdim=True).values

    @torch.no_grad()
    def log_probs(self, policy) -> torch.Tensor:
        """log pi(y|x) for every prompt and response, (P, N), in one batched forward."""
        device = next(policy.parameters()).device
        tensors = [t.to(device) for t in self.batch]
        sequence = token_logprobs(policy, *tensors).sum(-1).double().cpu()
        return sequence.view(self.rewards.shape)

    def __call__(self, policy, rows: list[dict] | None = None) -> dict[str, torch.Tensor]:
        metrics = exact_metrics(self.log_probs(policy), self.log_ref, self.rewards, self.beta)
        metrics["val/reward"] = metrics["exact/reward"]
        metrics["val/kl_ref"] = metrics["exact/kl_to_ref"]  # how far the policy moved, as on the text tasks (exact here)
        metrics["val/accuracy"] = (self.log_probs(policy).exp() * self.best).sum(1).mean().float()
        return metrics


def exact_metrics(log_pi: torch.Tensor, log_ref: torch.Tensor, rewards: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """KLs, rewards and regularised objectives of pi and of pi* = pi_ref exp(R/beta) / Z, from
    log pi, log pi_ref and R over all responses (P, N); averaged over prompts."""
    log_opt = torch.log_softmax(log_ref + rewards / beta, dim=1)
    pi, opt = log_pi.exp(), log_opt.exp()
    kl_ref, opt_kl_ref = (pi * (log_pi - log_ref)).sum(1), (opt * (log_opt - log_ref)).sum(1)
    reward, opt_reward = (pi * rewards).sum(1), (opt * rewards).sum(1)
    metrics = {
        "exact/kl_to_optimum": (pi * (log_pi - log_opt)).sum(1),
        "exact/kl_from_optimum": (opt * (log_opt - log_pi)).sum(1),
        "exact/kl_to_ref": kl_ref,
        "exact/reward": reward,
        "exact/optimum_reward": opt_reward,
        "exact/objective": reward - beta * kl_ref,
        "exact/optimum_objective": opt_reward - beta * opt_kl_ref,
    }
    return {key: value.mean().float() for key, value in metrics.items()}


def function_digest(policy) -> str:
    """SHA-256 of what a policy computes: every parameter and buffer, in name order. LoRA adapters
    whose B matrices are all zero (peft's initialisation) add nothing to the base model's output, so
    they are left out: runs whose adapters start from other random A matrices share one digest."""
    state = dict(policy.state_dict())
    lora = {name for name in state if ".lora_" in name}
    if lora and all(not state[name].any() for name in lora if ".lora_B." in name):
        state = {name: value for name, value in state.items() if name not in lora}
    sha = hashlib.sha256()
    for name in sorted(state):
        sha.update(f"{name}:{state[name].dtype}:{tuple(state[name].shape)}".encode())
        sha.update(state[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


class CachedFirstEvaluation:
    """An evaluator whose first call (the evaluation of the policy before training) is read from a
    cache when a run with the same numbers to compute has made it: the same policy (function_digest),
    held-out rows and `context` (the task, generation and precision settings, thread count and library
    versions, from run.py). The runs of a sweep that differ only in algorithm, learning rate or
    sampler evaluate their common starting policy once. Later calls, and every call under data
    parallelism (the evaluator gathers across ranks), go to the evaluator itself.

    Entries are JSON files under `directory`, written atomically; one that cannot be read is
    recomputed and overwritten. An entry is computed under a lock beside it (storage.file_lock): jobs
    started together that need the same entry compute it once, the others waiting to read it (before,
    two jobs of a seed each spent the whole evaluation). `hits` counts the calls answered from the cache."""

    def __init__(self, evaluator, directory, context: dict):
        self.evaluator, self.directory, self.context = evaluator, Path(directory), context
        self.first, self.hits = True, 0

    def key(self, policy, rows: list[dict]) -> str:
        record = {"policy": function_digest(policy), "rows": rows, "context": self.context}
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def __call__(self, policy, rows: list[dict]) -> dict[str, torch.Tensor]:
        first, self.first = self.first, False
        if not first or parallel.world_size() > 1:
            return self.evaluator(policy, rows)
        path = self.directory / f"{self.key(policy, rows)}.json"
        with file_lock(path.with_name(path.name + ".lock")):  # a job computing this entry: the others wait, then read it
            try:
                metrics = {key: torch.tensor(value) for key, value in json.loads(path.read_text())["metrics"].items()}
                self.hits += 1
                return metrics
            except (OSError, ValueError, KeyError, TypeError):
                pass
            metrics = self.evaluator(policy, rows)
            write_atomically(path, json.dumps({"metrics": {key: float(value) for key, value in metrics.items()},
                                               "context": self.context}, default=str, indent=1))
        return metrics
