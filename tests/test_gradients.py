"""The weighted log-likelihood gradient equals the gradient of each algorithm's native objective
(autograd on a tiny Llama, float64, atol 1e-5)."""
import pytest
import torch

from ptlab.algorithms.dpo import DPO
from ptlab.algorithms.grpo import GRPO
from ptlab.algorithms.gvpo import GVPO
from ptlab.algorithms.policy_losses import POLICY_LOSSES
from ptlab.algorithms.rs import RS
from ptlab.algorithms.sft import SFT
from ptlab.models.lm import token_logprobs
from tests.conftest import rollout_from_lists
from ptlab.training.module import weighted_log_likelihood_loss


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def logprobs_of(model, rollout):
    return token_logprobs(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask)


def assert_same_gradient(model, algorithm, rollout):
    algorithm.prepare(rollout)
    surrogate_weights, _ = algorithm.weights(logprobs_of(model, rollout).detach(), rollout)
    surrogate = weighted_log_likelihood_loss(logprobs_of(model, rollout), surrogate_weights, rollout.response_mask,
                                             algorithm.loss_agg, rollout.group_size)
    native = algorithm.objective(logprobs_of(model, rollout), rollout)
    g_surrogate, g_native = grads(model, surrogate), grads(model, native)
    assert g_native.abs().max() > 1e-4  # the comparison is not between two zeros
    assert torch.allclose(g_surrogate, g_native, atol=1e-5, rtol=0)


def scored_rollout(model, rewards, group_size, lengths, sampler_shift=0.0):
    rollout = rollout_from_lists(rewards, group_size, lengths, prompt_len=3)
    with torch.no_grad():
        current = logprobs_of(model, rollout)
        noise = torch.randn(current.shape, generator=torch.Generator().manual_seed(3), dtype=current.dtype)
        rollout.ref_logprobs = (current + 0.3 * noise) * rollout.response_mask
        rollout.sampler_logprobs = (current + sampler_shift * noise) * rollout.response_mask
    return rollout


REWARDS = [1.0, 0.0, 0.5, 0.0, 0.0, 1.0, 1.0, 1.0]
LENGTHS = [3, 1, 4, 2, 4, 4, 2, 3]


@pytest.mark.parametrize("beta", [0.05, 0.5])
def test_gvpo_gradient_equals_eq15_mse(model, beta):
    assert_same_gradient(model, GVPO(beta=beta, group_size=4), scored_rollout(model, REWARDS, 4, LENGTHS))


@pytest.mark.parametrize("group_size", [2, 4])
def test_dpo_gradient_equals_minus_log_sigmoid(model, group_size):
    assert_same_gradient(model, DPO(beta=0.2, group_size=group_size), scored_rollout(model, REWARDS, group_size, LENGTHS))


def test_grpo_gradient_equals_clipped_surrogate_minus_k3(model):
    rollout = scored_rollout(model, REWARDS, 4, LENGTHS, sampler_shift=0.5)  # ratios far from 1: some clipped
    algorithm = GRPO(beta=0.1, group_size=4)
    algorithm.prepare(rollout)
    _, metrics = algorithm.weights(logprobs_of(model, rollout).detach(), rollout)
    assert 0 < metrics["clip_fraction"] < 1
    assert_same_gradient(model, algorithm, rollout)


def test_sft_and_rs_gradients_equal_their_nll(model):
    assert_same_gradient(model, SFT(), scored_rollout(model, [1.0] * 4, 1, LENGTHS[:4]))
    assert_same_gradient(model, RS(group_size=4), scored_rollout(model, REWARDS, 4, LENGTHS))


def test_on_policy_gvpo_is_rloo_with_the_kl_in_the_reward(model):
    """On-policy with one update per rollout (pi_sampler = pi_theta), RLOO's leave-one-out advantage of
    the KL-shaped reward R_i - beta * (L_i - L_ref_i) is k/(k-1) times its centred value, and its
    seq-mean-token-sum divides by G*k: the same gradient as GVPO's group-mean-token-sum of
    (centred R - beta * centred log-ratio) / (k-1). Off-policy or after an update they differ."""
    rollout = scored_rollout(model, REWARDS, 4, LENGTHS, sampler_shift=0.0)  # sampler = current policy
    gvpo = GVPO(beta=0.3, group_size=4)
    rloo = GRPO(beta=0.3, group_size=4, baseline="leave_one_out", advantage_norm="none", clip_eps=None,
                kl_estimator="k1", kl_placement="reward", loss_agg="seq-mean-token-sum")

    def gradient(algorithm, batch):
        algorithm.prepare(batch)
        weights, _ = algorithm.weights(logprobs_of(model, batch).detach(), batch)
        return grads(model, weighted_log_likelihood_loss(logprobs_of(model, batch), weights, batch.response_mask,
                                                         algorithm.loss_agg, batch.group_size))

    assert torch.allclose(gradient(gvpo, rollout), gradient(rloo, rollout), atol=1e-10, rtol=0)
    stale = scored_rollout(model, REWARDS, 4, LENGTHS, sampler_shift=0.5)  # another policy sampled
    assert not torch.allclose(gradient(gvpo, stale), gradient(rloo, stale), atol=1e-4, rtol=0)


def group_advantages(rewards, group_size, eps=1e-4):
    """GRPO's (R - mean) / (sample std + eps) per group, written here on its own."""
    grouped = torch.tensor(rewards, dtype=torch.float64).view(-1, group_size)
    return ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + eps)).flatten()


def surrogate_gradient(model, algorithm, rollout):
    algorithm.prepare(rollout)
    weights, metrics = algorithm.weights(logprobs_of(model, rollout).detach(), rollout)
    loss = weighted_log_likelihood_loss(logprobs_of(model, rollout), weights, rollout.response_mask,
                                        algorithm.loss_agg, rollout.group_size)
    return grads(model, loss), metrics


def test_gspo_gradient_equals_its_sequence_level_clipped_objective_written_here(model):
    """GSPO, Zheng et al. 2025, Eq. 5-7: J = mean_i min(s_i A_i, clip(s_i, 1-eps, 1+eps_high) A_i),
    s_i = exp(mean_t log(pi / pi_old)); beta 0 as the paper."""
    rollout = scored_rollout(model, REWARDS, 4, LENGTHS, sampler_shift=0.3)
    algorithm = GRPO(beta=0.0, group_size=4, policy_loss="gspo", clip_eps=0.05, clip_eps_high=0.08)
    g_surrogate, metrics = surrogate_gradient(model, algorithm, rollout)
    assert 0 < metrics["clip_fraction"] < 1  # some responses clipped, some not
    mask, old = rollout.response_mask, rollout.sampler_logprobs
    l = logprobs_of(model, rollout)
    s = torch.exp(((l - old) * mask).sum(-1) / mask.sum(-1))
    advantages = group_advantages(REWARDS, 4)
    objective = -torch.minimum(s * advantages, s.clamp(1 - 0.05, 1 + 0.08) * advantages).mean()
    g_native = grads(model, objective)
    assert g_native.abs().max() > 1e-4 and torch.allclose(g_surrogate, g_native, atol=1e-5, rtol=0)
    assert_same_gradient(model, GRPO(beta=0.1, group_size=4, policy_loss="gspo", clip_eps=0.05), rollout)  # with the KL


def test_cispo_gradient_equals_its_capped_is_weight_objective_written_here(model):
    """CISPO, MiniMax-M1 Eq. 4-5: J = (1/sum|y|) sum_{i,t} sg(min(r, 1+eps_high)) A_i log pi, no lower bound."""
    rollout = scored_rollout(model, REWARDS, 4, LENGTHS, sampler_shift=0.5)
    algorithm = GRPO(beta=0.0, group_size=4, policy_loss="cispo", clip_eps=None, clip_eps_high=0.2, loss_agg="token-mean")
    g_surrogate, metrics = surrogate_gradient(model, algorithm, rollout)
    assert 0 < metrics["clip_fraction"] < 1  # some ratios capped
    mask, old = rollout.response_mask, rollout.sampler_logprobs
    l = logprobs_of(model, rollout)
    capped = torch.exp(l.detach() - old).clamp(max=1.2)
    advantages = group_advantages(REWARDS, 4).unsqueeze(-1)
    objective = -(capped * advantages * l * mask).sum() / mask.sum()
    g_native = grads(model, objective)
    assert g_native.abs().max() > 1e-4 and torch.allclose(g_surrogate, g_native, atol=1e-5, rtol=0)
    # PPO's clipping drops a capped token's gradient where CISPO keeps it: the two differ here
    ppo, _ = surrogate_gradient(model, GRPO(beta=0.0, group_size=4, clip_eps=0.2, loss_agg="token-mean"), rollout)
    assert not torch.allclose(ppo, g_surrogate, atol=1e-5)


def test_gmpo_gradient_equals_its_geometric_mean_objective_written_here(model):
    """GMPO, Zhao et al. 2025, Eq. 4: J = mean_i A_i * (prod_t clip-by-sign(r_t))^(1/|y_i|), the clip in
    log space, (e^-eps, e^eps_high); beta 0 as the paper."""
    rollout = scored_rollout(model, REWARDS, 4, LENGTHS, sampler_shift=0.5)
    algorithm = GRPO(beta=0.0, group_size=4, policy_loss="gmpo", clip_eps=0.3, clip_eps_high=0.3)
    g_surrogate, metrics = surrogate_gradient(model, algorithm, rollout)
    assert 0 < metrics["clip_fraction"] < 1
    mask, old = rollout.response_mask, rollout.sampler_logprobs
    log_ratio = logprobs_of(model, rollout) - old
    advantages = group_advantages(REWARDS, 4)
    sign = torch.sign(advantages).unsqueeze(-1)
    kept = sign * torch.minimum(sign * log_ratio, sign * log_ratio.clamp(-0.3, 0.3))
    geometric = torch.exp((kept * mask).sum(-1) / mask.sum(-1))
    objective = -(advantages * geometric).mean()
    g_native = grads(model, objective)
    assert g_native.abs().max() > 1e-4 and torch.allclose(g_surrogate, g_native, atol=1e-5, rtol=0)
    assert_same_gradient(model, GRPO(beta=0.1, group_size=4, policy_loss="gmpo", clip_eps=0.3), rollout)


def test_sapo_gradient_equals_its_soft_gate_objective_written_here(model):
    """SAPO (arXiv 2511.20347): J = mean_i mean_t f(r) A_i, f(r) = sigmoid(tau (r - 1)) * 4 / tau, tau_pos
    for positive advantages, tau_neg otherwise; on-policy (r = 1) its gradient is GRPO's unclipped one."""
    rollout = scored_rollout(model, REWARDS, 4, LENGTHS, sampler_shift=0.5)
    algorithm = GRPO(beta=0.0, group_size=4, policy_loss="sapo", tau_pos=1.0, tau_neg=1.05)
    g_surrogate, _ = surrogate_gradient(model, algorithm, rollout)
    mask = rollout.response_mask
    ratio = torch.exp(logprobs_of(model, rollout) - rollout.sampler_logprobs)
    advantages = group_advantages(REWARDS, 4).unsqueeze(-1)
    tau = torch.where(advantages > 0, 1.0, 1.05)
    gate = torch.sigmoid(tau * (ratio - 1)) * 4 / tau
    objective = -((gate * advantages * mask).sum(-1) / mask.sum(-1)).mean()
    g_native = grads(model, objective)
    assert g_native.abs().max() > 1e-4 and torch.allclose(g_surrogate, g_native, atol=1e-5, rtol=0)
    on_policy = scored_rollout(model, REWARDS, 4, LENGTHS)  # r = 1: the gate's slope is 1
    unclipped = GRPO(beta=0.0, group_size=4, clip_eps=None)
    assert torch.allclose(surrogate_gradient(model, algorithm, on_policy)[0],
                          surrogate_gradient(model, unclipped, on_policy)[0], atol=1e-8)


def test_gpg_gradient_is_reinforce_without_a_ratio_written_here(model):
    """GPG: J = (1 / sum |y|) sum_{i,t} A_i log pi, no importance ratio even when another policy sampled."""
    rollout = scored_rollout(model, REWARDS, 4, LENGTHS, sampler_shift=0.5)
    algorithm = GRPO(beta=0.0, group_size=4, policy_loss="gpg", advantage_norm="none", loss_agg="token-mean")
    g_surrogate, _ = surrogate_gradient(model, algorithm, rollout)
    mask, l = rollout.response_mask, logprobs_of(model, rollout)
    grouped = torch.tensor(REWARDS, dtype=torch.float64).view(-1, 4)
    advantages = (grouped - grouped.mean(1, keepdim=True)).flatten().unsqueeze(-1)
    g_native = grads(model, -(advantages * l * mask).sum() / mask.sum())
    assert g_native.abs().max() > 1e-4 and torch.allclose(g_surrogate, g_native, atol=1e-5, rtol=0)


def covariance_written_here(l, advantages, mask):
    """Cui et al. 2025, Eq. 11: (A - mean A)(l - mean l), the means over the batch's response tokens."""
    valid = mask.bool()
    a = advantages.expand_as(l)
    return (a - a[valid].mean()) * (l - l[valid].mean())


def test_clip_cov_drops_the_gradient_of_a_random_few_unclipped_tokens_in_the_covariance_band(model):
    """Clip-Cov (arXiv 2505.22617, Eq. 12): PPO's clipped surrogate with the gradient of
    max(1, floor(fraction * tokens)) tokens detached, drawn among the unclipped tokens whose covariance
    lies in (low, high); the test checks the selection by that rule and the gradient against the
    surrogate written here without the selected tokens."""
    rollout = scored_rollout(model, REWARDS, 4, LENGTHS, sampler_shift=0.5)
    algorithm = GRPO(beta=0.0, group_size=4, policy_loss="clip_cov", cov_fraction=0.2, cov_low=-1.0, cov_high=1.0,
                     advantage_norm="none", loss_agg="token-mean")
    torch.manual_seed(0)
    g_surrogate, _ = surrogate_gradient(model, algorithm, rollout)
    selected, mask = algorithm.selected, rollout.response_mask
    l = logprobs_of(model, rollout)
    grouped = torch.tensor(REWARDS, dtype=torch.float64).view(-1, 4)
    advantages = (grouped - grouped.mean(1, keepdim=True)).flatten().unsqueeze(-1)
    ratio = torch.exp(l - rollout.sampler_logprobs)
    unclipped_loss, clipped_loss = -ratio * advantages, -ratio.clamp(0.8, 1.2) * advantages
    ppo_clipped = (clipped_loss > unclipped_loss) & mask.bool()
    covariance = covariance_written_here(l.detach(), advantages, mask)
    band = mask.bool() & ~ppo_clipped & (covariance > -1.0) & (covariance < 1.0)
    assert int(selected.sum()) == min(int(0.2 * int(mask.sum())), int(band.sum())) > 0
    assert not (selected & ~band).any()  # every selected token is in the band
    objective = (torch.maximum(unclipped_loss, clipped_loss) * ~selected * mask).sum() / mask.sum()
    g_native = grads(model, objective)
    assert g_native.abs().max() > 1e-4 and torch.allclose(g_surrogate, g_native, atol=1e-5, rtol=0)


def test_kl_cov_penalises_the_top_covariance_tokens_with_the_absolute_log_ratio(model):
    """KL-Cov (arXiv 2505.22617, Eq. 13): J = mean_t [r A - coef |log r| 1[top-k covariance]], no clipping."""
    rollout = scored_rollout(model, REWARDS, 4, LENGTHS, sampler_shift=0.5)
    algorithm = GRPO(beta=0.0, group_size=4, policy_loss="kl_cov", cov_fraction=0.2, kl_coef=0.5,
                     advantage_norm="none", loss_agg="token-mean")
    g_surrogate, _ = surrogate_gradient(model, algorithm, rollout)
    mask, l = rollout.response_mask, logprobs_of(model, rollout)
    grouped = torch.tensor(REWARDS, dtype=torch.float64).view(-1, 4)
    advantages = (grouped - grouped.mean(1, keepdim=True)).flatten().unsqueeze(-1)
    covariance = covariance_written_here(l.detach(), advantages, mask)
    count = int(0.2 * int(mask.sum()))
    threshold = covariance[mask.bool()].sort(descending=True).values[count - 1]
    top = (covariance >= threshold) & mask.bool()
    assert torch.equal(algorithm.selected, top) and int(top.sum()) == count
    log_ratio = l - rollout.sampler_logprobs
    objective = ((-torch.exp(log_ratio) * advantages + 0.5 * log_ratio.abs() * top) * mask).sum() / mask.sum()
    g_native = grads(model, objective)
    assert g_native.abs().max() > 1e-4 and torch.allclose(g_surrogate, g_native, atol=1e-5, rtol=0)


@pytest.mark.parametrize("policy_loss", sorted(POLICY_LOSSES))
def test_every_registered_policy_loss_with_its_kl_in_the_loss_and_ratios_away_from_one(model, policy_loss):
    """Every loss of algorithms/policy_losses/ (a new file there is picked up here): its weights, with the k3
    term in the loss, are the gradient of its objective on a batch sampled by another policy (ratios away
    from 1, so clipping, capping and gating act) with one advantage per response."""
    rollout = scored_rollout(model, REWARDS, 4, LENGTHS, sampler_shift=0.5)
    algorithm = GRPO(beta=0.1, group_size=4, policy_loss=policy_loss, clip_eps=0.2, clip_eps_high=0.28,
                     cov_fraction=0.2, cov_low=-9.0, cov_high=9.0)
    algorithm.prepare(rollout)
    old = rollout.sampler_logprobs
    ratio = torch.exp(logprobs_of(model, rollout).detach() - old)[rollout.response_mask.bool()]
    assert (ratio > 1.28).any() and (ratio < 0.8).any()  # beyond the clip range both ways
    torch.manual_seed(0)
    assert_same_gradient(model, algorithm, rollout)


@pytest.mark.parametrize("policy_loss", sorted(POLICY_LOSSES))
def test_every_policy_loss_keeps_its_objectives_gradient_when_the_advantage_varies_over_the_tokens(model, policy_loss):
    """With the KL credited to go (REINFORCE++, ReMax) each token has its own advantage: the weights
    must still be the gradient of the objective (GSPO: its GSPO-token form; GMPO: the response's mean
    advantage, as verl's geo_mean)."""
    rollout = scored_rollout(model, REWARDS, 4, LENGTHS, sampler_shift=0.5)
    algorithm = GRPO(beta=0.5, group_size=4, policy_loss=policy_loss, kl_placement="reward", kl_estimator="k1",
                     kl_credit="to_go", advantage_norm="none", clip_eps=0.2, cov_fraction=0.2, cov_low=-9.0, cov_high=9.0)
    algorithm.prepare(rollout)
    advantages, mask = rollout.extras["advantages"], rollout.response_mask.bool()
    assert any(len(set(row[m].tolist())) > 1 for row, m in zip(advantages, mask))  # varies within a response
    torch.manual_seed(0)
    assert_same_gradient(model, algorithm, rollout)
