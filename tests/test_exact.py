"""The exact test bed: metrics against hand and brute-force computations, and GVPO's fixed point."""
import json
import math

import pytest
import torch

from ptlab import run
from ptlab.models.lm import restrict_vocabulary
from ptlab.models.tabular import TabularLM
from ptlab.tasks.exact import ExactTask, enumerate_responses
from tests.conftest import compose_config, tiny_lm
from ptlab.training.evaluation import evaluator_for, exact_metrics


def test_enumeration_lists_every_response_once():
    assert enumerate_responses("a", 2) == ["", "a", "aa"]
    responses = enumerate_responses("abc", 4)
    assert len(responses) == 1 + 3 + 9 + 27 + 81 == len(set(responses))


def test_exact_metrics_by_hand():
    # one prompt, pi_ref = (1/2, 1/4, 1/4), R = (0, 1, 0), beta = 1: pi* = (1/2, e/4, 1/4) / Z, Z = (3 + e) / 4
    log_ref = torch.log(torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64))
    rewards = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    pi = [0.2, 0.6, 0.2]
    z = (3 + math.e) / 4
    opt = [0.5 / z, math.e / 4 / z, 0.25 / z]
    ref = [0.5, 0.25, 0.25]
    m = exact_metrics(torch.log(torch.tensor([pi], dtype=torch.float64)), log_ref, rewards, beta=1.0)
    kl = lambda p, q: sum(a * math.log(a / b) for a, b in zip(p, q))
    assert m["exact/kl_to_optimum"].item() == pytest.approx(kl(pi, opt), abs=1e-6)
    assert m["exact/kl_from_optimum"].item() == pytest.approx(kl(opt, pi), abs=1e-6)
    assert m["exact/kl_to_ref"].item() == pytest.approx(kl(pi, ref), abs=1e-6)
    assert m["exact/reward"].item() == pytest.approx(0.6)
    assert m["exact/optimum_reward"].item() == pytest.approx(math.e / 4 / z, abs=1e-6)
    assert m["exact/objective"].item() == pytest.approx(0.6 - kl(pi, ref), abs=1e-6)
    # pi* maximises E[R] - beta KL(. || pi_ref), with value beta * log Z
    assert m["exact/optimum_objective"].item() == pytest.approx(math.log(z), abs=1e-6)
    assert m["exact/optimum_objective"] > m["exact/objective"]


def brute_force_logprob(model, tokenizer, prompt: str, response: str, max_tokens: int, allowed: list[int]) -> float:
    """log pi(response | prompt), one forward per token, softmax over the allowed tokens only."""
    ids = tokenizer(prompt).input_ids
    targets = tokenizer(response, add_special_tokens=False).input_ids
    if len(targets) < max_tokens:
        targets = targets + [tokenizer.eos_token_id]
    total = 0.0
    for token in targets:
        logits = model(torch.tensor([ids])).logits[0, -1, allowed]
        total += torch.log_softmax(logits, -1)[allowed.index(token)].item()
        ids = ids + [token]
    return total


@pytest.mark.parametrize("kind", ["llama", "tabular"])
def test_exact_metrics_match_brute_force_on_two_prompts_and_three_responses(tokenizer, kind):
    task = ExactTask(num_prompts=2, alphabet="a", max_new_tokens=2, seed=3)
    assert task.responses == ["", "a", "aa"]
    model = tiny_lm(tokenizer, seed=5) if kind == "llama" else TabularLM(len(tokenizer))
    if kind == "tabular":
        torch.nn.init.normal_(model.table, std=1.0)
    restrict_vocabulary(model, tokenizer, task.response_tokens)
    allowed = sorted({tokenizer.convert_tokens_to_ids("a"), tokenizer.eos_token_id})
    evaluator = evaluator_for(task, model, tokenizer, None, beta=0.7)
    log_pi = evaluator.log_probs(model)
    brute = torch.tensor([[brute_force_logprob(model, tokenizer, p, r, 2, allowed) for r in task.responses]
                          for p in task.prompts], dtype=torch.float64)
    assert torch.allclose(log_pi, brute, atol=1e-6)
    assert torch.allclose(torch.logsumexp(log_pi, 1), torch.zeros(2, dtype=torch.float64), atol=1e-6)
    # at the start pi = pi_ref: KL(pi || pi*) = log Z - E_pi[R] / beta, per prompt
    log_z = torch.logsumexp(brute + task.table / 0.7, 1)
    expected = (log_z - (brute.exp() * task.table).sum(1) / 0.7).mean()
    assert evaluator(model)["exact/kl_to_optimum"].item() == pytest.approx(expected.item(), abs=1e-5)
    assert evaluator(model)["exact/kl_to_ref"].item() == pytest.approx(0.0, abs=1e-6)


def test_pattern_reward_scores_the_target_highest():
    task = ExactTask(reward="pattern", num_prompts=3, seed=1)
    for i, target in enumerate(task.targets):
        assert task.reward([target, ""], [task.rows[i]] * 2)[0] == 1.0
        assert task.rows[i]["answer"] == target


@pytest.mark.parametrize("sampler", ["on_policy", "offline"])
def test_gvpo_reaches_the_regularised_optimum(sampler, tmp_path):
    """Theorem 3.1 on the cheapest policy that shows it: a tabular policy, 300 steps."""
    cfg = compose_config(["task=exact", "model=tabular", f"sampler={sampler}", "lr=0.1", "group_size=16",
                          "trainer.max_steps=300", "trainer.val_check_interval=300", "logger=none",
                          "trainer.enable_progress_bar=false", f"cache_dir={tmp_path / 'cache'}"], tmp_path)
    summary = run.train(cfg)
    assert summary["ref/exact/kl_to_optimum"] > 0.1
    assert summary["exact/kl_to_optimum"] < 0.01
    assert json.loads((tmp_path / "summary.json").read_text())["exact/kl_to_optimum"] == summary["exact/kl_to_optimum"]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["on_policy", "reference", "offline"])
def test_gvpo_reaches_the_optimum_with_the_default_llama(sampler, tmp_path):
    """The exact task as shipped (0.1M-parameter Llama, 700 steps): about 1.5 minutes each."""
    cfg = compose_config(["task=exact", f"sampler={sampler}", "logger=none", "trainer.enable_progress_bar=false",
                          f"cache_dir={tmp_path / 'cache'}"], tmp_path)
    summary = run.train(cfg)
    assert summary["ref/exact/kl_to_optimum"] > 0.1 and summary["exact/kl_to_optimum"] < 0.01


def test_the_held_out_kl_to_the_reference_is_the_exact_kl_within_its_monte_carlo_error(tokenizer):
    """val/kl_ref (the mean over sampled answers of log pi - log pi_ref) against KL(pi || pi_ref) summed over
    every response of an enumerable task, with another model as pi_ref; the tolerance is 4 standard errors
    of the estimate, computed exactly from the same enumeration. pi_ref against itself gives 0."""
    from ptlab.models.generation import HFGenerator
    from ptlab.models.reference import FrozenReference
    from ptlab.training.evaluation import HeldOutEvaluation

    task = ExactTask(num_prompts=6, alphabet="ab", max_new_tokens=3, seed=3)  # 15 responses per prompt
    policy, other = tiny_lm(tokenizer, seed=5), tiny_lm(tokenizer, seed=6)
    for model in (policy, other):
        restrict_vocabulary(model, tokenizer, task.response_tokens)
    log_pi, log_ref = (evaluator_for(task, model, tokenizer, None, beta=1.0).log_probs(model) for model in (policy, other))
    pi, ratio = log_pi.exp(), log_pi - log_ref  # (P, N)
    exact_kl = (pi * ratio).sum(1)  # per prompt
    samples = 800
    spread = (pi * (ratio - exact_kl[:, None]) ** 2).sum(1)  # the variance of one draw's log-ratio, per prompt
    tolerance = 4 * (spread.sum() / samples).sqrt() / len(task.prompts)
    held_out = HeldOutEvaluation(tokenizer, HFGenerator(max_new_tokens=3), task.reward, samples=samples, seed=0)
    held_out.reference = FrozenReference(other)
    metrics = held_out(policy, task.rows)
    assert exact_kl.mean() > 5 * tolerance  # the two models differ: a KL well above the estimate's noise
    assert abs(metrics["val/kl_ref"].item() - exact_kl.mean().item()) < tolerance
    assert metrics["val/kl_ref_se"] > 0
    held_out.reference = FrozenReference(policy)
    assert held_out(policy, task.rows)["val/kl_ref"].item() == pytest.approx(0.0, abs=1e-6)
