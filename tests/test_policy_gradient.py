"""PPO, GRPO and its configurations: advantages by hand, GAE, and the weighted log-likelihood
gradient against the clipped surrogate written directly."""
import pytest
import torch

from ptlab.algorithms import advantages as adv
from ptlab.algorithms.dpo import DPO
from ptlab.algorithms.grpo import GRPO
from ptlab.algorithms.ppo import PPO
from ptlab.models.lm import token_logprobs
from ptlab.models.value import critic_for
from tests.conftest import rollout_from_lists
from tests.test_gradients import LENGTHS, REWARDS, assert_same_gradient, logprobs_of, scored_rollout


def test_gae_with_unit_gamma_lambda_and_zero_critic_is_reward_to_go():
    rewards = torch.tensor([[0.0, 1.0, 0.0, 2.0], [3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    advantages, returns = adv.gae(rewards, torch.zeros(2, 4), mask, gamma=1.0, lam=1.0)
    assert advantages.tolist() == [[3, 3, 2, 2], [3, 0, 0, 0]] and torch.equal(returns, advantages)


def test_gae_four_tokens_by_hand():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.6, 0.7]])
    # deltas: d3 = 1 - 0.7 = 0.3; d2 = 0 + 0.9*0.7 - 0.6 = 0.03; d1 = 0.9*0.6 - 0.4 = 0.14; d0 = 0.9*0.4 - 0.5 = -0.14
    a3 = 0.3
    a2 = 0.03 + gamma * lam * a3
    a1 = 0.14 + gamma * lam * a2
    a0 = -0.14 + gamma * lam * a1
    advantages, returns = adv.gae(rewards, values, torch.ones(1, 4), gamma, lam)
    assert torch.allclose(advantages, torch.tensor([[a0, a1, a2, a3]]), atol=1e-6)
    assert torch.allclose(returns, advantages + values)


def test_outcome_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    loo = adv.outcome_advantages(rewards, 3, "leave_one_out", "none", 1e-4)
    assert torch.allclose(loo, torch.tensor([1.0, -0.5, -0.5, 0.0, 0.0, 0.0]))  # R_i - mean of the others
    batch = adv.outcome_advantages(rewards, 3, "group_mean", "batch", 0.0)
    assert torch.allclose(batch, (rewards - torch.tensor([1 / 3] * 3 + [1.0] * 3)) / rewards.std())


# Every registered baseline on one input worked by hand: two groups of 3, rewards [1, 0, 0.5 | 0, 0, 1], lengths
# [2, 4, 2 | 1, 1, 2], greedy rewards 0.5 and 0 (a baseline added to algorithms/advantages.py needs its line here)
BY_HAND = {
    "group_mean": [0.5, -0.5, 0.0, -1 / 3, -1 / 3, 2 / 3],  # group means 0.5 and 1/3
    "leave_one_out": [0.75, -0.75, 0.0, -0.5, -0.5, 1.0],  # R_i - mean of the other two
    "length_weighted": [0.625, -0.375, 0.125, -0.5, -0.5, 0.5],  # b = (2 + 0 + 1) / 8 and (0 + 0 + 2) / 4
    "leave_one_out_max": [0.5, 0.0, 0.0, 0.0, 0.0, 1.0],  # the best's gap to the second best, 0 elsewhere
    "greedy": [0.5, -0.5, 0.0, 0.0, 0.0, 1.0],
    "none": [1.0, 0.0, 0.5, 0.0, 0.0, 1.0],
}


@pytest.mark.parametrize("baseline", sorted(adv.BASELINES))
def test_every_registered_baseline_by_hand(baseline):
    assert baseline in BY_HAND, f"baseline {baseline!r} is registered but has no hand-computed case here"
    rewards, lengths = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0, 1.0]), torch.tensor([2, 4, 2, 1, 1, 2])
    greedy = torch.tensor([0.5] * 3 + [0.0] * 3)
    advantages = adv.outcome_advantages(rewards, 3, baseline, "none", 1e-4, lengths=lengths, greedy_rewards=greedy)
    assert torch.allclose(advantages, torch.tensor(BY_HAND[baseline]))


def test_the_catalogues_baselines_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.5, 1.0, 1.0, 1.0])  # two groups of 3
    lengths = torch.tensor([2, 4, 2, 1, 5, 3])
    # OPO: b = sum |y| R / sum |y| = (2 + 0 + 1) / 8 = 0.375 for the first group; the second all 1
    opo = adv.outcome_advantages(rewards, 3, "length_weighted", "none", 1e-4, lengths=lengths)
    assert torch.allclose(opo, torch.tensor([0.625, -0.375, 0.125, 0.0, 0.0, 0.0]))
    # pass@k: only a group's single best gets the gap to the second best; a tie for the best gives 0
    passk = adv.outcome_advantages(rewards, 3, "leave_one_out_max", "none", 1e-4)
    assert torch.allclose(passk, torch.tensor([0.5, 0.0, 0.0, 0.0, 0.0, 0.0]))
    grouped_std = torch.tensor([0.5, 0.0]).repeat_interleave(3)  # sample stds of the groups
    assert torch.allclose(adv.outcome_advantages(rewards, 3, "leave_one_out_max", "group", 1e-4),
                          passk / (grouped_std + 1e-4))
    # ReMax: R - R(greedy), the greedy reward repeated for the group
    remax = adv.outcome_advantages(rewards, 3, "greedy", "none", 1e-4, greedy_rewards=torch.tensor([0.5] * 3 + [0.0] * 3))
    assert torch.allclose(remax, torch.tensor([0.5, -0.5, 0.0, 1.0, 1.0, 1.0]))
    assert torch.equal(adv.outcome_advantages(rewards, 3, "none", "none", 1e-4), rewards)
    # GPG's alpha: 6 responses, 3 of them in a group with spread -> 2
    assert adv.valid_scale(rewards, 3).item() == 2.0
    assert adv.valid_scale(torch.ones(6), 3).item() == 1.0  # no group has signal: no scaling


def test_reinforce_plus_plus_advantages_by_hand():
    """Hu 2025: token returns with the KL in the reward (gamma 1), whitened over the batch's tokens."""
    token_kl = torch.tensor([[-0.1, -0.2, -0.3], [-0.4, 0.0, 0.0]])  # -beta * k per token
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert torch.allclose(adv.to_go(token_kl, mask), torch.tensor([[-0.6, -0.5, -0.3], [-0.4, 0.0, 0.0]]))
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    # tokens 1, 2, 3, 4: mean 2.5, sample std sqrt(5/3)
    expected = (torch.tensor([[1.0, 2.0, 3.0], [4.0, 2.5, 2.5]]) - 2.5) / (5 / 3) ** 0.5 * mask
    assert torch.allclose(adv.whiten_tokens(values, mask, 0.0), expected)


def test_grpo_with_to_go_kl_credit_and_token_whitening_is_reinforce_plus_plus():
    rollout = rollout_from_lists([1.0, 0.0], 1, [3, 1])
    rollout.sampler_logprobs = torch.tensor([[-1.0, -2.0, -1.0], [-3.0, 0.0, 0.0]])
    rollout.ref_logprobs = torch.tensor([[-1.5, -2.0, -0.5], [-2.0, 0.0, 0.0]])
    algorithm = GRPO(beta=0.2, group_size=1, baseline="none", advantage_norm="token", kl_credit="to_go",
                     kl_estimator="k1", kl_placement="reward", std_eps=0.0)
    algorithm.prepare(rollout)
    # k1 per token: (0.5, 0, -0.5) and (-1); -beta * k: (-0.1, 0, 0.1), (0.2); returns to go: (1.0, 1.1, 1.1), (0.2)
    returns = torch.tensor([[1.0, 1.1, 1.1], [0.2, 0.0, 0.0]])
    assert torch.allclose(rollout.extras["advantages"].double(), adv.whiten_tokens(returns, rollout.response_mask, 0.0).double())
    with pytest.raises(Exception, match="kl_credit=to_go"):
        GRPO(beta=0.2, group_size=2, kl_credit="to_go", advantage_norm="group")


def test_process_advantages_sum_standardised_step_rewards_from_each_step_on():
    # one group of 2 responses, steps end at tokens 1 and 3 (response 0) and 1 (response 1)
    step_rewards = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    step_mask = torch.tensor([[0, 1, 0, 1], [0, 1, 0, 0]])
    # step rewards (1, 0, 0): mean 1/3, sample std sqrt(1/3) -> (1.1547, -0.5774, -0.5774)
    s = 1 / 3 ** 0.5
    hi, lo = (1 - 1 / 3) / s, (0 - 1 / 3) / s
    expected = torch.tensor([[hi + lo, hi + lo, lo, lo], [lo, lo, 0.0, 0.0]])
    assert torch.allclose(adv.process_advantages(step_rewards, step_mask, 2, 0.0), expected, atol=1e-6)


def test_grpo_process_supervision_weights(model):
    rollout = scored_rollout(model, [1.0, 0.0], 2, [4, 2])
    rollout.step_rewards = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    rollout.step_mask = torch.tensor([[0, 1, 0, 1], [0, 1, 0, 0]])
    algorithm = GRPO(beta=0.0, group_size=2, supervision="process", std_eps=0.0)
    algorithm.prepare(rollout)
    weights, _ = algorithm.weights(logprobs_of(model, rollout).detach(), rollout)  # on-policy: ratio 1
    expected = adv.process_advantages(rollout.step_rewards, rollout.step_mask, 2, 0.0) * rollout.response_mask
    assert torch.allclose(weights, expected.double())
    assert_same_gradient(model, algorithm, rollout)


@pytest.mark.parametrize("settings", [
    dict(beta=0.1),  # GRPO: k3 in the loss
    dict(beta=0.1, kl_estimator="k2", advantage_norm="batch"),
    dict(beta=0.1, baseline="leave_one_out", advantage_norm="none", kl_estimator="k1", kl_placement="reward",
         loss_agg="seq-mean-token-sum"),  # RLOO
    dict(beta=0.1, advantage_norm="none", loss_agg="seq-mean-token-sum-norm"),  # Dr. GRPO
    dict(beta=0.05, reference="rollout", clip_eps=0.1, clip_eps_high=0.3),
])
def test_grpo_family_gradient_equals_the_clipped_surrogate(model, settings):
    rollout = scored_rollout(model, REWARDS, 4, LENGTHS, sampler_shift=0.5)
    algorithm = GRPO(group_size=4, **settings)
    algorithm.prepare(rollout)
    _, metrics = algorithm.weights(logprobs_of(model, rollout).detach(), rollout)
    assert 0 < metrics["clip_fraction"] < 1  # both clipped and unclipped tokens
    assert_same_gradient(model, algorithm, rollout)


@pytest.mark.parametrize("settings", [dict(), dict(kl_placement="loss", kl_estimator="k3", advantage_norm="none"),
                                      dict(gamma=0.9, lam=0.7, advantage_norm="group")])
def test_ppo_gradient_equals_the_clipped_surrogate(model, settings):
    rollout = scored_rollout(model, REWARDS, 4, LENGTHS, sampler_shift=0.5)
    algorithm = PPO(beta=0.1, group_size=4, **settings)
    algorithm.setup(critic_for(model))
    with torch.no_grad():
        torch.nn.init.normal_(algorithm.critic.head.weight, std=0.5)  # non-zero values, so GAE uses them
    with torch.no_grad():
        algorithm.prepare(rollout)
    assert rollout.extras["values"].abs().sum() > 0
    _, metrics = algorithm.weights(logprobs_of(model, rollout).detach(), rollout)
    assert 0 < metrics["clip_fraction"] < 1
    assert_same_gradient(model, algorithm, rollout)


def test_ppo_rewards_put_the_task_reward_at_the_last_token_and_kl_everywhere(model):
    rollout = scored_rollout(model, [1.0, 0.5], 1, [3, 2])
    algorithm = PPO(beta=0.2, group_size=1)
    rewards = algorithm.token_rewards(rollout)
    kl = (rollout.sampler_logprobs - rollout.ref_logprobs) * rollout.response_mask
    expected = -0.2 * kl
    expected[0, 2] += 1.0
    expected[1, 1] += 0.5
    assert torch.allclose(rewards, expected.to(rewards.dtype), atol=1e-6)


def test_ppo_critic_loss_trains_only_the_critic(model):
    rollout = scored_rollout(model, REWARDS, 4, LENGTHS)
    algorithm = PPO(beta=0.0, group_size=4)
    algorithm.setup(critic_for(model))
    with torch.no_grad():
        algorithm.prepare(rollout)
    loss, metrics = algorithm.aux_loss(rollout)
    loss.backward()
    assert metrics["value_loss"] > 0 and algorithm.critic.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_ipo_gradient_equals_its_squared_loss(model):
    assert_same_gradient(model, DPO(beta=0.2, group_size=4, loss="ipo"), scored_rollout(model, REWARDS, 4, LENGTHS))


def test_ipo_weights_by_hand():
    beta = 0.5
    rollout = rollout_from_lists([1.0, 0.0], group_size=2, lengths=[1, 1])
    logprobs = torch.tensor([[-1.0], [-2.0]], dtype=torch.float64)
    rollout.ref_logprobs = torch.tensor([[-1.5], [-1.0]], dtype=torch.float64)
    weights, _ = DPO(beta=beta, group_size=2, loss="ipo").weights(logprobs, rollout)
    margin = (-1.0 + 1.5) - (-2.0 + 1.0)  # 1.5
    assert torch.allclose(weights, torch.tensor([[1 / beta - 2 * margin], [-(1 / beta - 2 * margin)]], dtype=torch.float64))


def test_entropy_matches_a_direct_computation(tokenizer, model):
    rollout = scored_rollout(model, [1.0, 0.0], 2, [3, 2])
    _, entropy = token_logprobs(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                                rollout.response_mask, entropy="detached")
    ids = torch.cat([rollout.prompt_ids[0], rollout.response_ids[0, :1]])
    probs = torch.softmax(model(ids[None]).logits[0, -1], -1)
    assert torch.allclose(entropy[0, 1], -(probs * probs.log()).sum(), atol=1e-8)
    assert entropy[1, 2] == 0  # masked
