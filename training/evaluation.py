"""Validation metrics. A task picks its evaluator: greedy accuracy on held-out prompts, or the exact
metrics of the enumerable task."""
import torch

from models.lm import token_logprobs
from rewards import score
from training.rollout import encode_prompts


class GreedyAccuracy:
    """val/reward: mean reward of greedy answers; val/accuracy: the fraction fully right (their
    correctness score is 1); val/reward/<name>: each term of a reward made of several."""

    def __init__(self, tokenizer, generator, reward_fn):
        self.tokenizer, self.generator, self.reward_fn = tokenizer, generator, reward_fn

    def __call__(self, policy, rows: list[dict]) -> dict[str, torch.Tensor]:
        device = next(policy.parameters()).device
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, [row["prompt"] for row in rows])
        response_ids, response_mask = self.generator(policy, self.tokenizer, prompt_ids.to(device), prompt_mask.to(device),
                                                     greedy=True)
        completions = self.tokenizer.batch_decode(response_ids * response_mask, skip_special_tokens=True)
        total, terms = score(self.reward_fn, completions, rows)
        rewards, terms = torch.tensor(total), {name: torch.tensor(values) for name, values in terms.items()}
        correct = next(iter(terms.values()), rewards) == 1
        return {"val/reward": rewards.mean(), "val/accuracy": correct.float().mean(),
                **{f"val/reward/{name}": values.mean() for name, values in terms.items()}}


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
