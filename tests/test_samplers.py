"""Samplers: whose log-probs a rollout carries, refresh, replay, offline reuse, uniform; and every
algorithm with every sampler on the exact task."""
import copy
import math
import json

import pytest
import torch

from ptlab import run
from ptlab.errors import ConfigError
from ptlab.algorithms.gvpo import GVPO
from ptlab.models.generation import HFGenerator
from ptlab.models.lm import restrict_vocabulary, token_logprobs
from ptlab.models.reference import FrozenReference
from ptlab.models.tabular import TabularLM
from ptlab.tasks.exact import ExactTask
from tests.conftest import compose_config, rollout_from_lists
from ptlab.training.module import Budget
from ptlab.training.offline import Offline
from ptlab.training.rollout import concat
from ptlab.training.samplers import Reference, Replay, Stale, Uniform, uniform_token_logprobs
from ptlab.checks.commands import group_options
from ptlab.training.assemble import build


@pytest.fixture
def exact(tokenizer):
    task = ExactTask(num_prompts=3, seed=2)
    model = TabularLM(len(tokenizer))
    torch.nn.init.normal_(model.table, std=1.0)
    restrict_vocabulary(model, tokenizer, task.response_tokens)
    return task, model


def make(kind, tokenizer, task, **kwargs):
    return kind(tokenizer, task.reward, HFGenerator(max_new_tokens=task.max_new_tokens), group_size=4, **kwargs)


def logprobs_under(model, rollout):
    return token_logprobs(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask)


def test_reference_sampler_samples_the_frozen_initial_policy(tokenizer, exact):
    task, model = exact
    reference = FrozenReference(model)
    sampler = make(Reference, tokenizer, task)
    sampler.setup(model, reference, task)
    with torch.no_grad():
        model.table.add_(1.0 * torch.randn_like(model.table))  # the policy moves, pi_ref does not
    rollout = sampler.sample(task.rows, model)
    assert torch.allclose(rollout.sampler_logprobs, logprobs_under(reference.model, rollout))
    assert torch.allclose(rollout.ref_logprobs, logprobs_under(reference.model, rollout))  # no second forward needed
    assert not torch.allclose(rollout.sampler_logprobs, logprobs_under(model, rollout).detach())
    assert rollout.rewards.tolist() == pytest.approx(task.reward(rollout.completions, [r for r in task.rows for _ in range(4)]))


def test_stale_sampler_refreshes_its_snapshot_every_n_rollouts(tokenizer, exact):
    task, model = exact
    sampler = make(Stale, tokenizer, task, refresh_every=2)
    sampler.setup(model, None, task)
    model(*task.all_responses(tokenizer)[:2])  # the policy gives rows to the prompt contexts
    snapshots = []
    for _ in range(3):
        sampler.sample(task.rows, model)
        snapshots.append(sampler.model.table.detach().clone())
        with torch.no_grad():
            model.table.add_(0.5)
    assert torch.equal(snapshots[0], snapshots[1]) and not torch.equal(snapshots[1], snapshots[2])
    assert torch.allclose(snapshots[2], model.table.detach() - 0.5)
    assert model.rows.items() <= sampler.model.rows.items()  # a tabular snapshot carries its context -> row map


def test_replay_mixes_fresh_and_past_groups_at_the_ratio(tokenizer, exact):
    task, model = exact
    sampler = make(Replay, tokenizer, task, replay_ratio=0.5, capacity=5)
    rows = task.rows[:2]
    first = sampler.sample(rows, model)
    assert first.generated_groups == 2 and len(sampler.buffer) == 2  # buffer too small: all fresh
    second = sampler.sample(rows, model)
    assert second.generated_groups == 1 and second.num_groups == 2
    assert len(sampler.buffer) == 3
    for _ in range(4):
        sampler.sample(rows, model)
    assert len(sampler.buffer) == 5  # capacity
    replayed = second.select_groups(torch.tensor([1]))
    assert replayed.sampler_logprobs is not None and replayed.sampler_logprobs.abs().sum() > 0
    budget = Budget()
    budget.add(second)
    assert (budget.prompts_seen, budget.responses_generated) == (2, 4)


def test_offline_groups_are_generated_once_saved_and_reloaded(tokenizer, exact, tmp_path):
    task, model = exact
    reference = FrozenReference(model)
    first = make(Offline, tokenizer, task, num_groups=6, cache_dir=str(tmp_path))
    first.setup(model, reference, task)
    (path,) = [entry for entry in (tmp_path / "offline").iterdir() if entry.is_dir()]  # beside it, its build lock
    stamp = (path / "dataset_info.json").stat().st_mtime_ns
    second = make(Offline, tokenizer, task, num_groups=6, cache_dir=str(tmp_path))
    second.setup(model, reference, task)
    assert (path / "dataset_info.json").stat().st_mtime_ns == stamp and len(second.data) == 6
    rollout = second.sample(task.rows[:2], model)
    assert rollout.generated_groups == 0 and rollout.num_groups == 2
    assert torch.allclose(rollout.sampler_logprobs, logprobs_under(reference.model, rollout), atol=1e-6)
    assert torch.allclose(rollout.ref_logprobs, logprobs_under(reference.model, rollout), atol=1e-6)
    assert rollout.rewards.tolist() == pytest.approx(task.reward(rollout.completions,
                                                                 [task.rows[int(p[1])] for p in rollout.prompts]))
    other = make(Offline, tokenizer, task, num_groups=7, cache_dir=str(tmp_path))
    other.setup(model, reference, task)
    assert len([entry for entry in (tmp_path / "offline").iterdir() if entry.is_dir()]) == 2


def test_offline_data_stored_for_one_reward_table_is_scored_with_another_runs_own(tokenizer, exact, tmp_path):
    """The exact task's prompts do not depend on its seed, so two reward tables share the stored
    responses; each run's rewards must be its own table's (they were the first run's)."""
    task, model = exact
    reference = FrozenReference(model)
    make(Offline, tokenizer, task, num_groups=6, cache_dir=str(tmp_path)).setup(model, reference, task)
    other_task = ExactTask(num_prompts=3, seed=3)
    assert [r["prompt"] for r in other_task.rows] == [r["prompt"] for r in task.rows]
    assert not torch.equal(other_task.table, task.table)
    sampler = make(Offline, tokenizer, other_task, num_groups=6, cache_dir=str(tmp_path))
    sampler.setup(model, reference, other_task)
    assert len([entry for entry in (tmp_path / "offline").iterdir() if entry.is_dir()]) == 1  # the responses are reused
    rollout = sampler.sample(other_task.rows * 4, model)
    rows = [other_task.rows[int(p[1])] for p in rollout.prompts]
    assert rollout.rewards.tolist() == pytest.approx(other_task.reward(rollout.completions, rows))
    assert rollout.rewards.tolist() != pytest.approx(task.reward(rollout.completions, rows))


def test_the_offline_cache_key_changes_with_each_input_that_determines_the_responses(tokenizer, exact, monkeypatch):
    from ptlab import storage

    task, model = exact
    prompts = [row["prompt"] for row in task.rows]
    entry = lambda **options: make(Offline, tokenizer, task, **{"num_groups": 6, **options}).entry(model, prompts)
    reference = entry()
    for options in ({"num_groups": 7}, {"seed": 1}, {"policy": "uniform"}):
        assert entry(**options) != reference, options
    assert entry(draw_seed=5) == reference  # the order a run draws the stored groups in
    assert make(Offline, tokenizer, task, num_groups=6).entry(model, prompts[:-1]) != reference
    hotter = Offline(tokenizer, task.reward, HFGenerator(max_new_tokens=task.max_new_tokens, temperature=0.5), group_size=4,
                     num_groups=6)
    larger = Offline(tokenizer, task.reward, HFGenerator(max_new_tokens=task.max_new_tokens), group_size=5, num_groups=6)
    assert hotter.entry(model, prompts) != reference and larger.entry(model, prompts) != reference
    other = TabularLM(len(tokenizer))
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.table[0, 0] += 1e-3
    assert make(Offline, tokenizer, task, num_groups=6).entry(other, prompts) != reference
    monkeypatch.setattr(storage, "_CODE", {(): "other code"})
    assert entry() != reference


def test_uniform_sampler_is_uniform_over_all_responses(tokenizer, exact):
    task, _ = exact
    table = uniform_token_logprobs(task.responses, task.max_new_tokens)
    assert all(sum(v) == pytest.approx(-math.log(121)) for v in table.values())
    sampler = make(Uniform, tokenizer, task)
    sampler.setup(None, None, task)
    rollout = sampler.sample(task.rows * 200, None)  # 2,400 responses
    counts = torch.bincount(torch.tensor([task.response_index[c] for c in rollout.completions]), minlength=121)
    assert counts.min() > 0 and counts.float().std() < 10  # binomial std ~4.4
    lengths = rollout.response_mask.sum(1)
    assert lengths.max() == 4 and all(len(c) == 4 or n == len(c) + 1 for c, n in zip(rollout.completions, lengths.tolist()))
    assert torch.allclose(rollout.sampler_logprobs.sum(1), torch.full((len(lengths),), -math.log(121)))


def test_concat_pads_prompts_left_and_responses_right():
    a = rollout_from_lists([1.0, 0.0], 2, [1, 2], prompt_len=2)
    b = rollout_from_lists([0.0, 1.0], 2, [3, 1], prompt_len=4)
    a.sampler_logprobs, b.sampler_logprobs = torch.ones(2, 2), torch.ones(2, 3)
    both = concat([a, b])
    assert both.prompt_ids.shape == (4, 4) and both.prompt_mask[:2].tolist() == [[0, 0, 1, 1]] * 2
    assert both.response_mask.tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert both.sampler_logprobs[:2, 2].tolist() == [0, 0] and both.rewards.tolist() == [1, 0, 0, 1]


def test_gvpo_rollout_reference_anchors_to_the_sampling_policy():
    rollout = rollout_from_lists([1.0, 0.0], group_size=2, lengths=[1, 1])
    logprobs = torch.tensor([[-1.0], [-2.0]], dtype=torch.float64)
    rollout.sampler_logprobs = torch.tensor([[-1.5], [-1.5]], dtype=torch.float64)
    rollout.ref_logprobs = torch.tensor([[-9.0], [0.0]], dtype=torch.float64)  # ignored by `rollout`
    weights, _ = GVPO(beta=1.0, group_size=2, reference="rollout").weights(logprobs, rollout)
    # log-ratios to the sampler (0.5, -0.5), centred rewards (0.5, -0.5): weights 0
    assert torch.allclose(weights, torch.zeros(2, 1, dtype=torch.float64))
    assert not GVPO(beta=1.0, group_size=2, reference="rollout").needs_reference


ALGORITHMS = group_options("algorithm")
SAMPLERS = group_options("sampler")
SUPPORTED = {
    "sft": {"demonstrations"},
    "dpo": {"on_policy", "reference", "stale", "replay", "offline", "uniform", "pairs"},
    "ipo": {"on_policy", "reference", "stale", "replay", "offline", "uniform", "pairs"},
    "remax": {"on_policy", "reference", "stale", "replay"},  # its baseline is a greedy response it decodes
    "dapo": {"on_policy", "reference", "stale"},  # its dynamic sampling draws fresh groups
}


# Configurations of GRPO's class whose sampler handling is GRPO's (grpo's row runs every sampler): on-policy
# and replayed (off-policy, stored log-probs) samples, and one refusal.
VARIANTS = {"cispo", "clip_cov", "dapo", "gmpo", "gpg", "grpo_passk", "gspo", "kl_cov", "opo", "reinforce_pp",
            "reinforce_pp_baseline", "sapo"}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_runs_with_every_sampler_or_refuses_naming_both(algorithm, tmp_path):
    supported = SUPPORTED.get(algorithm, {"on_policy", "reference", "stale", "replay", "offline", "uniform"})
    for sampler in SAMPLERS if algorithm not in VARIANTS else ["on_policy", "replay", "demonstrations"]:
        overrides = ["task=exact", "model=tabular", f"algorithm={algorithm}", f"sampler={sampler}", "group_size=4",
                     "trainer.max_steps=2", "logger=none", "trainer.enable_progress_bar=false",
                     "trainer.enable_model_summary=false", "sampler.num_groups=8" if sampler == "offline" else "seed=0",
                     f"cache_dir={tmp_path / 'cache'}"]
        cfg = compose_config(overrides, tmp_path / sampler)
        if sampler in supported:
            summary = run.train(cfg)
            assert summary["steps"] == 2 and summary["sampler"] == sampler and "exact/kl_to_optimum" in summary
        else:
            with pytest.raises(ConfigError, match=f"algorithm={algorithm} cannot train on sampler={sampler}"):
                run.train(cfg)


def test_trl_s_per_step_diagnostics_by_hand(tokenizer):
    """Response lengths (mean, min, max), the fraction cut by the budget without eos, and the groups
    whose rewards are all equal, on a rollout built by hand."""
    from types import SimpleNamespace

    from ptlab.training.module import PostTrainingModule

    rollout = rollout_from_lists([1.0, 1.0, 0.0, 1.0], group_size=2, lengths=[2, 4, 3, 4], max_len=4)
    eos = tokenizer.eos_token_id
    rollout.response_ids[0, 1] = eos  # ends with eos: not truncated
    rollout.response_ids[2, 2] = eos
    rollout.response_ids[1, 3] = eos  # at the budget, but with eos
    rollout.response_ids[3, 3] = 7    # at the budget, no eos: truncated
    stub = SimpleNamespace(tokenizer=tokenizer, sampler=SimpleNamespace(generator=None, on_reward_failure=None))
    metrics = PostTrainingModule._rollout_metrics(stub, rollout)
    assert (metrics["train/response_length"], metrics["train/response_length_min"], metrics["train/response_length_max"]) == (3.25, 2, 4)
    assert metrics["train/truncated_fraction"] == 0.25 and metrics["train/zero_spread_groups"] == 0.5


class CountingGenerator(HFGenerator):
    """Counts every response and token it generates, greedy ones included."""

    def __call__(self, *args, **kwargs):
        ids, mask = super().__call__(*args, **kwargs)
        self.responses, self.tokens = getattr(self, "responses", 0) + len(ids), getattr(self, "tokens", 0) + int(mask.sum())
        return ids, mask


def test_greedy_baseline_is_the_greedy_responses_reward_and_its_cost_is_in_the_budget(tokenizer, exact):
    from ptlab.training.samplers import OnPolicy

    task, model = exact
    generator = CountingGenerator(max_new_tokens=task.max_new_tokens)
    sampler = OnPolicy(tokenizer, task.reward, generator, group_size=4, greedy_baseline=True)
    sampler.setup(model, None, task)
    rollout = sampler.sample(task.rows, model)
    prompt_ids, prompt_mask = rollout.prompt_ids[::4], rollout.prompt_mask[::4]
    greedy_ids, greedy_mask = HFGenerator(max_new_tokens=task.max_new_tokens)(model, tokenizer, prompt_ids, prompt_mask, greedy=True)
    greedy_text = tokenizer.batch_decode(greedy_ids * greedy_mask, skip_special_tokens=True)
    expected = torch.tensor(task.reward(greedy_text, task.rows)).repeat_interleave(4)
    assert torch.equal(rollout.greedy_rewards, expected.float())
    budget = Budget()
    budget.add(rollout)
    assert (budget.responses_generated, budget.tokens_generated) == (generator.responses, generator.tokens) == (
        3 * 4 + 3, int(rollout.response_mask.sum()) + int(greedy_mask.sum()))
    assert budget.prompts_seen == 3


def test_dynamic_sampling_keeps_only_groups_with_spread_and_counts_every_draw(tokenizer, exact):
    """DAPO's dynamic sampling: a prompt whose rewards are all equal is replaced by fresh prompts
    from the training set; everything generated is in the budget; at the cap the batch is filled
    with dropped groups and the shortfall reported."""
    from ptlab.training.samplers import OnPolicy

    task, model = exact
    flat = lambda completions, rows: [0.0 if row["index"] == 0 else task.reward([c], [row])[0] for c, row in zip(completions, rows)]
    generator = CountingGenerator(max_new_tokens=task.max_new_tokens)
    sampler = OnPolicy(tokenizer, flat, generator, group_size=4, dynamic_sampling=True, max_extra_batches=5)
    sampler.setup(model, None, task)
    torch.manual_seed(0)
    rollout = sampler.sample(task.rows[:2], model)  # prompt 0 never has spread
    grouped = rollout.rewards.view(-1, 4)
    assert rollout.num_groups == 2 and sampler.shortfall == 0
    assert (grouped.max(1).values > grouped.min(1).values).all()
    assert all(prompt != task.rows[0]["prompt"] for prompt in rollout.prompts)
    budget = Budget()
    budget.add(rollout)
    assert generator.responses > 8  # it drew more than one batch
    assert (budget.responses_generated, budget.tokens_generated) == (generator.responses, generator.tokens)
    assert budget.prompts_seen * 4 == generator.responses
    # every prompt flat: the cap is reached, the batch is the dropped groups, the shortfall is all of it
    never = OnPolicy(tokenizer, lambda c, rows: [0.0] * len(c), CountingGenerator(max_new_tokens=task.max_new_tokens),
                     group_size=4, dynamic_sampling=True, max_extra_batches=2)
    never.setup(model, None, task)
    capped = never.sample(task.rows[:2], model)
    assert capped.num_groups == 2 and never.shortfall == 2 and never.generator.responses == 3 * 8
    budget = Budget()
    budget.add(capped)
    assert budget.responses_generated == 24 and budget.prompts_seen == 6


def test_dynamic_sampling_under_data_parallelism_refills_each_rank_with_other_prompts(tokenizer, exact, monkeypatch):
    """Every rank draws the same permutation of the training set (the same RNG) and takes its own stride of
    it: two ranks replacing the same flat group refill it with different prompts."""
    import ptlab.training.samplers
    from ptlab.training.samplers import OnPolicy

    task, model = exact
    flat = lambda completions, rows: [0.0 if row["index"] == 0 else task.reward([c], [row])[0] for c, row in zip(completions, rows)]
    refills = []
    for rank in (0, 1):
        monkeypatch.setattr(ptlab.training.samplers.parallel, "rank", lambda rank=rank: rank)
        monkeypatch.setattr(ptlab.training.samplers.parallel, "world_size", lambda: 2)
        sampler = OnPolicy(tokenizer, flat, CountingGenerator(max_new_tokens=task.max_new_tokens), group_size=4,
                           dynamic_sampling=True, max_extra_batches=5)
        sampler.setup(model, None, task)
        drawn, generate = [], sampler._generate
        sampler._generate = lambda rows, *args, **kwargs: drawn.append([row["index"] for row in rows]) or generate(rows, *args, **kwargs)
        torch.manual_seed(0)  # the same RNG on both ranks, used alike up to the first refill
        assert sampler.sample(task.rows[:2], model).num_groups == 2
        assert drawn[0] == [0, 1] and len(drawn[1]) == 1  # the batch, then one fresh prompt for the flat group
        refills.append(drawn[1][0])
    assert refills[0] != refills[1]


def test_soft_overlong_punishment_by_hand_and_rows_carry_the_response_lengths(tokenizer, exact):
    from ptlab.rewards.length import SoftOverlong, Truncated
    from ptlab.training.samplers import OnPolicy

    rows = [{"response_tokens": n, "truncated": n == 10} for n in (6, 8, 10, 11)]
    # DAPO Eq. 13 with L_max 10, L_cache 4: free up to 6, then (6 - n) / 4, -1 beyond 10
    assert SoftOverlong(max_tokens=10, cache_tokens=4)(["x"] * 4, rows) == [0.0, -0.5, -1.0, -1.0]
    assert Truncated()(["x"] * 4, rows) == [0.0, 0.0, -1.0, 0.0]
    with pytest.raises(ConfigError, match="needs each response's length in tokens"):
        SoftOverlong(10, 4)(["x"], [{"prompt": "p"}])
    task, model = exact
    seen = []
    reward = lambda completions, rows: seen.extend(rows) or [0.0] * len(completions)
    sampler = OnPolicy(tokenizer, reward, HFGenerator(max_new_tokens=task.max_new_tokens), group_size=4)
    sampler.setup(model, None, task)
    rollout = sampler.sample(task.rows, model)
    lengths = rollout.response_mask.sum(-1).tolist()
    assert [row["response_tokens"] for row in seen] == lengths
    ends = [rollout.response_ids[i, n - 1].item() == tokenizer.eos_token_id for i, n in enumerate(lengths)]
    assert [row["truncated"] for row in seen] == [not end for end in ends] and any(ends)


def test_overlong_filter_zeroes_the_gradient_of_truncated_responses_only(tokenizer):
    from ptlab.algorithms.grpo import GRPO
    from tests.conftest import tiny_lm
    from ptlab.training.module import PostTrainingModule

    policy = tiny_lm(tokenizer)
    rollout = rollout_from_lists([1.0, 0.0, 0.5, 0.0], group_size=4, lengths=[3, 2, 4, 4], prompt_len=3)
    eos = tokenizer.eos_token_id
    for i, n in enumerate([3, 2, 4]):  # rows 0-2 end with eos; row 3 was cut at the budget
        rollout.response_ids[i, n - 1] = eos

    def gradient(overlong_filter, rows):
        module = PostTrainingModule(policy=policy, tokenizer=tokenizer, algorithm=GRPO(beta=0.0, group_size=4),
                                    sampler=None, reference=None, optimizer=None, overlong_filter=overlong_filter)
        batch = copy.copy(rollout)
        module.algorithm.prepare(batch)
        batch.extras = {"advantages": batch.extras["advantages"] * torch.tensor(rows).unsqueeze(-1)}
        batch.sampler_logprobs = None
        policy.zero_grad()
        module._loss(batch)[0].backward()
        return torch.cat([p.grad.flatten() for p in policy.parameters()])

    filtered = gradient(True, [1.0, 1.0, 1.0, 1.0])
    assert filtered.abs().max() > 1e-4
    assert torch.allclose(filtered, gradient(False, [1.0, 1.0, 1.0, 0.0]), atol=1e-10)  # row 3's weight removed
    assert not torch.allclose(filtered, gradient(False, [1.0, 1.0, 1.0, 1.0]), atol=1e-6)


def test_the_dapo_reward_in_the_usage_docs_builds_and_scores_length(tmp_path):
    import re
    from pathlib import Path

    from omegaconf import OmegaConf, open_dict

    from ptlab.training.assemble import build_task

    text = (Path(__file__).resolve().parent.parent / "docs" / "usage.md").read_text()
    snippet = re.search(r"### DAPO's recipe.*?```yaml\n(.*?)```", text, re.DOTALL).group(1)
    cfg = compose_config(["task.max_new_tokens=6", "task.train_size=64", "task.val_size=16"], tmp_path)
    with open_dict(cfg):
        cfg.merge_with(OmegaConf.create(snippet))
    task = build_task(cfg)
    row = task.train_dataset()[0]
    rows = [dict(row, response_tokens=n, truncated=False) for n in (3, 5, 6)]
    right, wrong = row["answer"], "no number"
    # the task's correctness first, then the soft overlong term (L_max 6, L_cache 2): free up to 4 tokens
    assert task.reward.components([right, right, wrong], rows) == {"correct": [1.0, 1.0, 0.0], "overlong": [0.0, -0.5, -1.0]}
    assert task.reward([right, right, wrong], rows) == [1.0, 0.5, -1.0]


def test_a_sampler_of_your_own_takes_the_replaced_configs_keys_and_refuses_dynamic_sampling(tokenizer, exact):
    """A subclass of Sampler named by sampler._target_ gets on_policy's keys (dynamic sampling's off);
    asking it for dynamic sampling it cannot do is refused naming the key."""
    from ptlab.training.samplers import Sampler

    class Mine(Sampler):
        pass

    task, _ = exact
    Mine(tokenizer, task.reward, None, group_size=4, dynamic_sampling=False, max_extra_batches=3)
    with pytest.raises(ConfigError, match="sampler.dynamic_sampling=true is not allowed for Mine"):
        Mine(tokenizer, task.reward, None, group_size=4, dynamic_sampling=True)
    with pytest.raises(ConfigError, match="sampler.max_extra_batches=-1"):
        make(Stale, tokenizer, task, dynamic_sampling=True, max_extra_batches=-1)


def test_dapo_turns_dynamic_sampling_on_and_its_loss_alone_runs_on_any_policy_sampler(tmp_path):
    cfg = compose_config(["algorithm=dapo"], tmp_path)
    assert cfg.sampler.dynamic_sampling is True and cfg.algorithm.clip_eps_high == 0.28
    for sampler in ("replay", "offline", "uniform"):  # samplers that keep no key of dynamic sampling's
        checked = compose_config(["task=exact", "model=tabular", "algorithm=dapo", f"sampler={sampler}",
                                  "sampler.dynamic_sampling=false", "sampler.num_groups=8"][:5 + (sampler == "offline")], tmp_path)
        assert build(checked.sampler, tokenizer=None, reward_fn=None).dynamic_sampling is False
