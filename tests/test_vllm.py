"""generation=vllm without a GPU: the weight-sync and log-prob contract, with a fake engine
(tests/fixtures/fake_engine.py) in place of vLLM."""
import json
import os
import subprocess
import sys

import pytest
import torch

from ptlab.models.lm import token_logprobs
from ptlab.models.vllm import VLLMGenerator
from tests.conftest import tiny_lm
from tests.fixtures.fake_engine import FakeEngine
from tests.test_run import ROOT
from ptlab.training.rollout import encode_prompts
from ptlab.training.samplers import OnPolicy

FAKE = "tests.fixtures.fake_engine.FakeEngine"


def step(policy, seed: int) -> None:
    """Stand-in for an optimiser step: every weight moves."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def same_weights(model, other) -> bool:
    theirs = other.state_dict()
    return all(torch.equal(value, theirs[name]) for name, value in model.state_dict().items())


def test_weights_reach_the_engine_every_sync_every_steps_and_log_probs_come_from_the_weights_that_sampled(tokenizer):
    policy = tiny_lm(tokenizer)
    generator = VLLMGenerator(max_new_tokens=5, sync_every=2, engine=FAKE)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, ["1+2=", "33+4="] * 2)

    def sample():
        ids, mask = generator(policy, tokenizer, prompt_ids, prompt_mask)
        return ids, mask, generator.sampling_policy(policy)

    ids, mask, sampled_by = sample()
    engine = FakeEngine.built[-1]
    assert sampled_by is policy and generator.staleness == 0 and same_weights(engine.model, policy)
    assert mask.sum() > 0 and ids.shape == (4, 5)

    step(policy, 1)
    generator.on_optimizer_step(policy)  # one step of two: the engine keeps the old weights
    assert engine.loads == 0 and not same_weights(engine.model, policy)
    ids, mask, sampled_by = sample()
    assert generator.staleness == 1 and sampled_by is not policy and same_weights(sampled_by, engine.model)
    engine_logprobs = token_logprobs(engine.model, prompt_ids, prompt_mask, ids, mask)
    assert torch.allclose(token_logprobs(sampled_by, prompt_ids, prompt_mask, ids, mask), engine_logprobs, atol=1e-10)
    assert not torch.allclose(token_logprobs(policy, prompt_ids, prompt_mask, ids, mask), engine_logprobs)

    step(policy, 2)
    generator.on_optimizer_step(policy)  # the second: pushed, engine and snapshot are the policy
    assert engine.loads == 1 and same_weights(engine.model, policy) and same_weights(generator.snapshot, policy)
    _, _, sampled_by = sample()
    assert sampled_by is policy and generator.staleness == 0

    step(policy, 3)
    generator.on_optimizer_step(policy)
    generator.sync(policy)  # what a validation does first: it scores the policy as it is
    assert engine.loads == 2 and same_weights(engine.model, policy)
    generator(policy, tokenizer, prompt_ids, prompt_mask, greedy=True)
    assert generator.staleness == 0


def test_the_on_policy_sampler_takes_the_engines_log_probs_while_the_engine_lags(tokenizer):
    policy = tiny_lm(tokenizer)
    generator = VLLMGenerator(max_new_tokens=4, sync_every=3, engine=FAKE)
    sampler = OnPolicy(tokenizer, lambda completions, rows: [0.0] * len(completions), generator, group_size=2)
    rows = [{"prompt": "1+2=", "answer": "3"}, {"prompt": "40+2=", "answer": "42"}]
    assert sampler.sample(rows, policy).sampler_logprobs is None  # fresh weights: the module's first forward
    step(policy, 1)
    generator.on_optimizer_step(policy)
    rollout = sampler.sample(rows, policy)
    engine = FakeEngine.built[-1]
    expected = token_logprobs(engine.model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                              rollout.response_mask)
    assert torch.allclose(rollout.sampler_logprobs, expected, atol=1e-10)


def test_the_engine_serves_the_policy_only(tokenizer):
    policy, other = tiny_lm(tokenizer), tiny_lm(tokenizer, seed=1)
    generator = VLLMGenerator(max_new_tokens=3, engine=FAKE)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, ["1+2="])
    generator(policy, tokenizer, prompt_ids, prompt_mask)
    with pytest.raises(Exception, match="samples from the policy only"):
        generator(other, tokenizer, prompt_ids, prompt_mask)


def test_a_run_with_the_engine_logs_its_staleness_and_trains(tmp_path):
    """run.py with generation=vllm and the fake engine, sync_every=2: the staleness alternates 0, 1."""
    env = dict(os.environ, PTLAB_CACHE_DIR=str(tmp_path / "cache"), WANDB_MODE="offline",
               PYTHONPATH=str(ROOT / "tests" / "fixtures"))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "generation=vllm", "generation.engine=fake_engine.FakeEngine",
                           "generation.sync_every=2", "algorithm=grpo", "logger=csv", "warmstart=none", "task.train_size=256",
                           "task.val_size=16", "prompts_per_step=2", "group_size=2", "trainer.max_steps=4",
                           "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", f"hydra.run.dir={out}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    import csv

    rows = list(csv.DictReader(next(out.rglob("metrics.csv")).open()))
    staleness = [float(row["train/sampler_staleness"]) for row in rows if row.get("train/sampler_staleness")]
    assert staleness == [0.0, 1.0, 0.0, 1.0]


def test_generation_vllm_without_vllm_is_refused_in_one_line_naming_the_install(tmp_path):
    pytest.importorskip("hydra")
    if __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "generation=vllm"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: generation=vllm needs vLLM, which is not installed: pip install vllm (a CUDA machine); "
        "generation=hf samples without it"]
    assert not (tmp_path / "outputs").exists()
