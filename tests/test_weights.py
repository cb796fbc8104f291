"""Hand-computed weights for every algorithm on small tensors (DESIGN.md section 2)."""
import math

import pytest
import torch

from ptlab.algorithms.base import aggregate
from ptlab.errors import ConfigError
from ptlab.algorithms.dpo import DPO
from ptlab.algorithms import kl
from ptlab.algorithms.grpo import GRPO
from ptlab.algorithms.gvpo import GVPO
from ptlab.algorithms.rs import RS
from ptlab.algorithms.sft import SFT
from tests.conftest import rollout_from_lists


def constant_logprobs(rollout, values):
    """Token log-probs (B, T) with response i's log-prob spread evenly over its tokens."""
    mask = rollout.response_mask.double()
    return mask * torch.tensor(values, dtype=torch.float64).unsqueeze(1) / mask.sum(1, keepdim=True)


def test_sft_weight_is_one_on_demonstration_tokens():
    rollout = rollout_from_lists([1.0, 1.0], group_size=1, lengths=[2, 3])
    weights, _ = SFT().weights(torch.zeros(2, 3, dtype=torch.float64), rollout)
    assert weights.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_rs_weights_the_best_response_and_skips_groups_with_nothing_right():
    rollout = rollout_from_lists([0.0, 1.0, 0.5, 0.0, 0.0, 0.0], group_size=3, lengths=[1, 2, 1, 1, 1, 1])
    weights, metrics = RS(group_size=3).weights(torch.zeros(6, 2, dtype=torch.float64), rollout)
    assert weights.tolist() == [[0, 0], [1, 1], [0, 0], [0, 0], [0, 0], [0, 0]]
    assert metrics["kept_fraction"] == 0.5


def test_grpo_weight_is_the_standardised_reward_on_policy():
    # group [1, 0]: mean 0.5, sample std sqrt(0.5) -> A = +-0.5 / (sqrt(0.5) + eps)
    rollout = rollout_from_lists([1.0, 0.0], group_size=2, lengths=[2, 1])
    algorithm = GRPO(beta=0.0, group_size=2, std_eps=0.0)
    algorithm.prepare(rollout)
    weights, _ = algorithm.weights(torch.zeros(2, 2, dtype=torch.float64), rollout)
    a = 0.5 / math.sqrt(0.5)
    assert torch.allclose(weights, torch.tensor([[a, a], [-a, 0.0]], dtype=torch.float64))


def test_grpo_clipping_and_k3_weight_by_hand():
    rollout = rollout_from_lists([1.0, 0.0], group_size=2, lengths=[2, 2])
    a = 0.5 / math.sqrt(0.5)
    logprobs = torch.log(torch.tensor([[0.6, 0.2], [0.3, 0.4]], dtype=torch.float64))
    # ratios: [1.5 (A>0, above 1.2: clipped), 0.5 (A>0, below: kept)], [1.5 (A<0: kept), 0.5 (A<0, below 0.8: clipped)]
    rollout.sampler_logprobs = torch.log(torch.tensor([[0.4, 0.4], [0.2, 0.8]], dtype=torch.float64))
    rollout.ref_logprobs = torch.log(torch.tensor([[0.3, 0.2], [0.6, 0.1]], dtype=torch.float64))  # r = [.5, 1], [2, .25]
    algorithm = GRPO(beta=0.1, group_size=2, std_eps=0.0)
    algorithm.prepare(rollout)
    weights, metrics = algorithm.weights(logprobs, rollout)
    expected = torch.tensor([[0 + 0.1 * (0.5 - 1), 0.5 * a + 0.0], [-1.5 * a + 0.1 * (2 - 1), 0 + 0.1 * (0.25 - 1)]],
                            dtype=torch.float64)
    assert torch.allclose(weights, expected)
    assert metrics["clip_fraction"] == 0.5


def test_kl_estimators_and_their_loss_weights_by_hand():
    l = torch.log(torch.tensor([0.5, 0.5]))
    ref = torch.log(torch.tensor([0.25, 0.5]))  # d = log 2, r = 0.5
    d = math.log(2)
    assert torch.allclose(kl.estimate(l, ref, "k1"), torch.tensor([d, 0.0]))
    assert torch.allclose(kl.estimate(l, ref, "k2"), torch.tensor([d * d / 2, 0.0]))
    assert torch.allclose(kl.estimate(l, ref, "k3"), torch.tensor([0.5 + d - 1, 0.0]))
    for estimator in kl.ESTIMATORS:  # the loss weight is -beta * dk/dl, checked by autograd
        x = l.clone().requires_grad_(True)
        (0.3 * kl.estimate(x, ref, estimator)).sum().backward()
        assert torch.allclose(kl.loss_weight(l, ref, estimator, 0.3), -x.grad)


def test_dpo_weights_on_best_and_worst_by_hand():
    beta = 0.5
    rollout = rollout_from_lists([0.0, 1.0, 0.5, 0.3, 0.3, 0.3], group_size=3, lengths=[1, 2, 2, 1, 1, 1])
    logprobs = constant_logprobs(rollout, [-1.0, -2.0, -3.0, -1.0, -1.0, -1.0])
    rollout.ref_logprobs = constant_logprobs(rollout, [-1.5, -1.0, -3.0, -1.0, -1.0, -1.0])
    weights, metrics = DPO(beta=beta, group_size=3).weights(logprobs, rollout)
    # chosen = response 1 (log-ratio -1), rejected = response 0 (log-ratio +0.5): h = 0.5 * (-1.5)
    w = beta * (1 / (1 + math.exp(-0.75)))  # beta * sigmoid(-h)
    expected = torch.tensor([[-w, 0], [w, w], [0, 0], [0, 0], [0, 0], [0, 0]], dtype=torch.float64)
    assert torch.allclose(weights, expected)
    assert metrics["pair_fraction"] == 0.5  # the tied group has no pair


def test_gvpo_weights_by_hand():
    beta = 0.5
    rollout = rollout_from_lists([1.0, 0.0, 0.0], group_size=3, lengths=[1, 2, 1])
    logprobs = constant_logprobs(rollout, [-1.0, -2.0, -3.0])
    rollout.ref_logprobs = constant_logprobs(rollout, [-2.0, -2.0, -2.0])
    weights, metrics = GVPO(beta=beta, group_size=3).weights(logprobs, rollout)
    # centred R = [2/3, -1/3, -1/3]; log-ratios [1, 0, -1] centred [1, 0, -1]
    w = [(2 / 3 - 0.5 * 1) / 2, (-1 / 3 - 0) / 2, (-1 / 3 + 0.5) / 2]
    expected = torch.tensor([[w[0], 0], [w[1], w[1]], [w[2], 0]], dtype=torch.float64)
    assert torch.allclose(weights, expected)
    assert metrics["nonfinite_groups"] == 0


def test_gvpo_weights_sum_to_zero_in_every_group():
    torch.manual_seed(0)
    k, groups = 4, 5
    rollout = rollout_from_lists(torch.rand(k * groups).tolist(), group_size=k, lengths=torch.randint(1, 6, (k * groups,)).tolist())
    logprobs = -torch.rand(rollout.response_mask.shape, dtype=torch.float64) * rollout.response_mask
    rollout.ref_logprobs = -torch.rand(rollout.response_mask.shape, dtype=torch.float64) * rollout.response_mask
    weights, _ = GVPO(beta=0.3, group_size=k).weights(logprobs, rollout)
    per_response = weights.sum(1) / rollout.response_mask.sum(1)  # the one weight of each response
    assert per_response.abs().min() > 0
    assert torch.allclose(per_response.view(groups, k).sum(1), torch.zeros(groups, dtype=torch.float64), atol=1e-12)


def test_gvpo_zeroes_and_reports_a_nonfinite_group():
    rollout = rollout_from_lists([1.0, 0.0, 1.0, 0.0], group_size=2, lengths=[1, 1, 1, 1])
    logprobs = torch.tensor([[-1.0], [-float("inf")], [-1.0], [-2.0]], dtype=torch.float64)
    rollout.ref_logprobs = torch.full((4, 1), -1.0, dtype=torch.float64)
    weights, metrics = GVPO(beta=0.1, group_size=2).weights(logprobs, rollout)
    assert metrics["nonfinite_groups"] == 1
    assert weights[:2].abs().sum() == 0 and weights[2:].abs().sum() > 0


def test_aggregations_by_hand():
    values = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert aggregate(values, mask, "token-mean", 1).item() == pytest.approx(15 / 5)
    assert aggregate(values, mask, "seq-mean-token-sum", 1).item() == pytest.approx((3 + 12) / 2)
    assert aggregate(values, mask, "seq-mean-token-mean", 1).item() == pytest.approx((1.5 + 4) / 2)
    assert aggregate(values, mask, "seq-mean-token-sum-norm", 1, norm_length=10).item() == pytest.approx(15 / 20)
    assert aggregate(values, mask, "group-mean-token-sum", 2).item() == pytest.approx(15 / 1)


@pytest.mark.parametrize("make", [lambda: GVPO(beta=0.0, group_size=4), lambda: DPO(beta=-1.0, group_size=4),
                                  lambda: GRPO(beta=-0.1, group_size=4), lambda: RS(group_size=1),
                                  lambda: GVPO(beta=0.1, group_size=1)])
def test_constructor_refuses_bad_beta_and_group_size(make):
    with pytest.raises(ConfigError):
        make()
