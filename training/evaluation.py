"""Validation metrics. A task picks its evaluator: rewards of greedy and sampled answers to held-out
prompts, or the exact metrics of the enumerable task."""
import torch

import parallel
from models.lm import token_logprobs
from rewards import score
from training.rollout import encode_prompts


class HeldOutEvaluation:
    """Rewards on the held-out prompts, from the greedy answer and from `samples` sampled answers
    per prompt (the sampling distribution the policy is trained on).

      val/reward, val/accuracy           mean reward and fraction fully right (correctness score 1) of
                                         greedy answers; val/reward/<name> for each reward term
      val/sampled_reward, _accuracy      the same over samples x prompts sampled answers, drawn with
                                         the task's own seed (every run, before and after training,
                                         is scored on the same draws of the random stream)
      val/sampled_accuracy_se            its standard error over prompts

    Prompts are generated `batch_size` rows at a time; sampling never touches the training RNG.
    Under data parallelism rank r answers prompts r, r + W, ... (its samples drawn with seed + r) and
    the per-prompt results are gathered, so the metrics cover every prompt once.
    """

    def __init__(self, tokenizer, generator, reward_fn, samples: int = 0, seed: int = 0, batch_size: int = 256):
        self.tokenizer, self.generator, self.reward_fn = tokenizer, generator, reward_fn
        self.samples, self.seed, self.batch_size = samples, seed, batch_size
        self.on_reward_failure = None  # as training's: run.py sets it from `reward_on_failure`

    def _answers(self, policy, rows: list[dict], greedy: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Rewards (N,), reward terms and correctness (N,) of one answer per row."""
        device = next(policy.parameters()).device
        completions = []
        for start in range(0, len(rows), self.batch_size):
            prompt_ids, prompt_mask = encode_prompts(self.tokenizer, [row["prompt"] for row in rows[start : start + self.batch_size]])
            response_ids, response_mask = self.generator(policy, self.tokenizer, prompt_ids.to(device),
                                                         prompt_mask.to(device), greedy=greedy)
            completions += self.tokenizer.batch_decode(response_ids * response_mask, skip_special_tokens=True)
        total, terms, _ = score(self.reward_fn, completions, rows, self.on_reward_failure)
        rewards, terms = torch.tensor(total), {name: torch.tensor(values) for name, values in terms.items()}
        return rewards, terms, next(iter(terms.values()), rewards) == 1

    def per_prompt(self, policy, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Per-prompt results (N,) each: greedy reward, correctness and reward terms; the mean sampled
        reward and accuracy."""
        rewards, terms, correct = self._answers(policy, rows, greedy=True)
        values = {"val/reward": rewards, "val/accuracy": correct.float(),
                  **{f"val/reward/{name}": values for name, values in terms.items()}}
        if self.samples:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + parallel.rank())
                repeated = [row for row in rows for _ in range(self.samples)]  # a prompt's samples side by side
                rewards, _, correct = self._answers(policy, repeated, greedy=False)
            values |= {"val/sampled_reward": rewards.float().view(len(rows), self.samples).mean(1),
                       "val/sampled_accuracy": correct.float().view(len(rows), self.samples).mean(1)}
        return values

    def __call__(self, policy, rows: list[dict]) -> dict[str, torch.Tensor]:
        self.generator.sync(policy)  # a backend with its own copy of the weights scores the policy as it is
        mine = self.per_prompt(policy, parallel.shard(rows))
        values = {key: parallel.gather_shards(value.float(), len(rows)) for key, value in mine.items()}
        metrics = {key: value.mean() for key, value in values.items()}
        if self.samples:
            metrics["val/sampled_accuracy_se"] = values["val/sampled_accuracy"].std() / len(rows) ** 0.5
        return metrics


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
