"""ptlab's GRPO-family losses against TRL's GRPOTrainer loss on identical inputs: the gradient with
respect to the per-token log-probs of ptlab's training path (its weights, then the weighted
log-likelihood loss) equals that of TRL's `GRPOTrainer._compute_loss`, called with a stand-in trainer
(no model: its log-prob hook returns our tensor). Runs where TRL is installed (`pip install -e .[bench]`);
TRL's private method may change between versions: checked with trl 1.16.0."""
import math
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from ptlab.algorithms.grpo import GRPO
from tests.conftest import rollout_from_lists
from ptlab.training.module import weighted_log_likelihood_loss

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
ROOT = Path(__file__).resolve().parent.parent

GROUP, LENGTHS = 4, [5, 2, 3, 1, 4, 5, 3, 2]
REWARDS = [1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 0.25, 1.0]  # the second group's mean is 0.5: two advantages exactly 0


def inputs():
    g = torch.Generator().manual_seed(0)
    rollout = rollout_from_lists(REWARDS, GROUP, LENGTHS, prompt_len=3)
    mask = rollout.response_mask.double()
    old = (-0.05 - 2.95 * torch.rand(mask.shape, generator=g, dtype=torch.float64)) * mask
    current = (old + 0.3 * torch.randn(mask.shape, generator=g, dtype=torch.float64)) * mask  # ratios 0.4-2.5
    ref = (old + 0.2 * torch.randn(mask.shape, generator=g, dtype=torch.float64)) * mask
    return rollout, old, current, ref


def ptlab_gradient(config: str, beta: float, rollout, old, current, ref, **overrides):
    cfg = OmegaConf.load(ROOT / "conf" / "algorithm" / f"{config}.yaml")
    cfg = OmegaConf.to_container(cfg.get("algorithm", cfg))  # dapo.yaml is `@package _global_`
    cfg.pop("_target_")
    algorithm = GRPO(**(cfg | {"beta": beta, "group_size": GROUP} | overrides))
    rollout.sampler_logprobs, rollout.ref_logprobs, rollout.extras = old.clone(), ref.clone(), {}
    algorithm.prepare(rollout)
    logprobs = current.clone().requires_grad_(True)
    weights, _ = algorithm.weights(logprobs.detach(), rollout)
    weighted_log_likelihood_loss(logprobs, weights, rollout.response_mask, algorithm.loss_agg, GROUP).backward()
    return logprobs.grad, rollout.extras["advantages"][:, 0]


def trl_gradient(loss_type: str, level: str, eps: tuple, beta: float, advantages, rollout, old, current, ref):
    logprobs = current.clone().requires_grad_(True)
    trainer = SimpleNamespace(  # what _compute_loss reads off the trainer, for one process and no accumulation
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (logprobs, torch.zeros_like(logprobs), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level,
        beta=beta, loss_type=loss_type, epsilon_low=eps[0], epsilon_high=eps[1], use_vllm=False,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, sapo_temperature_pos=1.0,
                             sapo_temperature_neg=1.05, steps_per_generation=1),
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
        accelerator=SimpleNamespace(num_processes=1, gather=lambda x: x, gather_for_metrics=lambda x: x,
                                    reduce=lambda x, reduction="sum": x),
        max_completion_length=current.shape[1], _metrics=defaultdict(lambda: defaultdict(list)))
    mask = rollout.response_mask
    batch = dict(prompt_ids=rollout.prompt_ids, prompt_mask=rollout.prompt_mask, completion_ids=rollout.response_ids,
                 completion_mask=mask, advantages=advantages.clone(), old_per_token_logps=old.clone(),
                 ref_per_token_logps=ref.clone(), num_items_in_batch=mask.sum())
    trl_grpo.GRPOTrainer._compute_loss(trainer, None, batch).backward()
    return logprobs.grad


# (ptlab config, its overrides, TRL loss_type, importance_sampling_level, TRL (epsilon_low, epsilon_high))
CASES = {
    "grpo": ("grpo", {}, "grpo", "token", (0.2, 0.2)),
    "dapo": ("dapo", {}, "dapo", "token", (0.2, 0.28)),
    "gspo": ("gspo", {}, "grpo", "sequence", (3e-4, 4e-4)),  # GSPO: TRL's sequence-level ratio
    "gspo_wide": ("gspo", {"clip_eps": 0.03, "clip_eps_high": 0.05}, "grpo", "sequence", (0.03, 0.05)),
    "cispo": ("cispo", {"clip_eps_high": 0.2}, "cispo", "token", (0.2, 1.2)),  # TRL's epsilon_high is the cap itself
    "sapo": ("sapo", {}, "sapo", "token", (0.2, 0.2)),
}


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("case", list(CASES))
def test_the_gradient_equals_trl_s_grpo_trainer_loss(case, beta):
    config, overrides, loss_type, level, eps = CASES[case]
    rollout, old, current, ref = inputs()
    ours, advantages = ptlab_gradient(config, beta, rollout, old, current, ref, **overrides)
    theirs = trl_gradient(loss_type, level, eps, beta, advantages, rollout, old, current, ref)
    assert advantages.eq(0).sum() == 2 and theirs.abs().max() > 0.05
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-12), (ours - theirs).abs().max()
    if beta:  # the KL term moves the gradient: the comparison checks how it is aggregated too
        without = trl_gradient(loss_type, level, eps, 0.0, advantages, rollout, old, current, ref)
        assert (theirs - without).abs().max() > 1e-4


def test_clipping_is_active_on_these_inputs():
    """Where clipping changes the weights (otherwise the cases above would not test it)."""
    _, old, current, _ = inputs()
    ratio = torch.exp(current - old)
    assert ((ratio > 1.28) | (ratio < 0.8)).any() and (ratio > 1.2).sum() >= 3  # DAPO's and CISPO's caps bind


def test_trl_s_cispo_cap_is_ours_plus_one():
    """The one setting to translate: TRL caps CISPO's ratio at epsilon_high, ptlab at 1 + clip_eps_high. A token
    with ratio 5.5 is capped at 5 by TRL's 5.0 and not by the shipped clip_eps_high 5.0 (cap 6): the gradients
    differ by (5.5 - 5) * A / tokens on that token alone."""
    rollout, old, current, ref = inputs()
    current[0, 1] = old[0, 1] + math.log(5.5)
    ours, advantages = ptlab_gradient("cispo", 0.0, rollout, old, current, ref)
    theirs = trl_gradient("cispo", "token", (0.2, 5.0), 0.0, advantages, rollout, old, current, ref)
    difference = ours - theirs
    tokens = rollout.response_mask.sum()
    assert difference[0, 1] == pytest.approx(-(5.5 - 5.0) * advantages[0].item() / tokens.item(), abs=1e-12)
    difference[0, 1] = 0
    assert difference.abs().max() < 1e-12
