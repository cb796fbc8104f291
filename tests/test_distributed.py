"""Data parallelism: W processes compute what one process computes on the global batch."""
import json
import os
import subprocess
import sys

import pytest
import yaml
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ptlab import parallel
from ptlab.algorithms import advantages as adv
from tests.test_run import ROOT
from ptlab.training.data import PromptOrder


def test_prompt_order_splits_each_global_batch_between_ranks(monkeypatch):
    """Rank r trains on the r-th slice of the batch one process with W x the prompts would draw,
    over epochs and after a resume."""
    whole = PromptOrder(size=40, batch_size=8, seed=3)
    expected = [batch for _ in range(3) for batch in whole]  # three epochs of one process
    assert len(whole) == 5
    monkeypatch.setattr(parallel, "world_size", lambda: 2)
    for rank in (0, 1):
        monkeypatch.setattr(parallel, "rank", lambda rank=rank: rank)
        order = PromptOrder(size=40, batch_size=4, seed=3)
        assert len(order) == 5
        seen = [batch for _ in range(2) for batch in order]
        order.position = 7  # a resumed run goes on from where the checkpoint was
        seen += list(order) + list(order)
        assert seen == [batch[4 * rank : 4 * rank + 4] for batch in expected[:10] + expected[7:15]]


def _collectives(rank: int, world: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    values, mask = torch.randn(6, 5), (torch.rand(6, 5) > 0.3).float()  # the same global batch on every rank
    rewards = torch.randn(8)
    mine = slice(3 * rank, 3 * rank + 3)
    rows = list(range(7))
    results[rank] = {
        "whiten": adv.whiten(values[mine], mask[mine]),
        "batch_norm": adv.outcome_advantages(rewards[4 * rank : 4 * rank + 4], 2, "group_mean", "batch", 1e-6),
        "gathered": parallel.gather_shards(torch.tensor(parallel.shard(rows), dtype=torch.float32) * 10, len(rows)),
        "metrics": parallel.average_metrics({"a": float(rank), "ratio_max": float(rank)}),
        "any": parallel.any_rank(rank == 1),
    }
    dist.destroy_process_group()


def test_batch_statistics_metrics_and_validation_rows_are_global_across_two_processes(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_collectives, args=(2, str(tmp_path / "init"), results), nprocs=2)
    torch.manual_seed(0)
    values, mask = torch.randn(6, 5), (torch.rand(6, 5) > 0.3).float()
    rewards = torch.randn(8)
    whitened = adv.whiten(values, mask)  # one process, the whole batch
    normalised = adv.outcome_advantages(rewards, 2, "group_mean", "batch", 1e-6)
    for rank in (0, 1):
        got = results[rank]
        assert torch.allclose(got["whiten"], whitened[3 * rank : 3 * rank + 3], atol=1e-6)
        assert torch.allclose(got["batch_norm"], normalised[4 * rank : 4 * rank + 4], atol=1e-6)
        assert got["gathered"].tolist() == [10.0 * row for row in range(7)]  # every row once, in order
        assert got["metrics"] == {"a": 0.5, "ratio_max": 1.0} and got["any"] is True


def run_tiny(tmp_path, name, *args):
    """One tiny GRPO run on rollouts fixed by the prompts (tests/fixtures/fixed_sampler.py), plain SGD
    and no clipping, so the weights after it show any difference in the gradient's scale or content."""
    env = dict(os.environ, PTLAB_CACHE_DIR=str(tmp_path / "cache"), WANDB_MODE="offline",
               PYTHONPATH=str(ROOT / "tests" / "fixtures"))
    out = tmp_path / name
    command = [sys.executable, str(ROOT / "run.py"), "logger=none", "warmstart=none", "task.train_size=256",
               "task.val_size=16", "task.eval_samples=2", "group_size=4", "algorithm=grpo",
               "algorithm.advantage_norm=batch", "optimizer._target_=torch.optim.SGD", "~optimizer.betas",
               "module.max_grad_norm=null", "lr=0.5", "trainer.max_steps=2", "trainer.enable_progress_bar=false",
               "trainer.enable_model_summary=false", "sampler._target_=fixed_sampler.Fixed", f"hydra.run.dir={out}", *args]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "summary.json").read_text())


def test_two_ddp_processes_train_as_one_process_on_the_global_batch(tmp_path):
    """trainer=ddp, 2 CPU processes (gloo), 4 prompts each, against one process with 8: the same
    weights after two SGD steps (token-mean loss, batch-normalised advantages: both need global
    sums), identical on both ranks, twice the prompts of one process of 4, one summary.json."""
    from safetensors.torch import load_file

    ddp, summary = run_tiny(tmp_path, "ddp", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                            "prompts_per_step=4")
    single, reference = run_tiny(tmp_path, "single", "prompts_per_step=8")
    assert summary["processes"] == 2 and len(set(summary["rank_weights_sha256"])) == 1
    assert summary["budget/prompts_seen"] == 2 * 4 * 2 == reference["budget/prompts_seen"]
    assert summary["budget/tokens_generated"] == reference["budget/tokens_generated"]
    ours, theirs = load_file(ddp / "policy" / "model.safetensors"), load_file(single / "policy" / "model.safetensors")
    assert max((ours[key] - theirs[key]).abs().max().item() for key in ours) < 1e-5
    for key in ("val/reward", "ref/val/reward"):  # greedy validation over all 16 prompts, split over ranks
        assert summary[key] == pytest.approx(reference[key], abs=1e-6)
    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("summary.json")) == [
        ddp.relative_to(tmp_path) / "summary.json", single.relative_to(tmp_path) / "summary.json"]
    assert (ddp / "train_ddp_process_1.log").exists() and not (tmp_path / "outputs").exists()


def test_a_sweep_runs_its_jobs_in_parallel_through_the_joblib_launcher(tmp_path):
    env = dict(os.environ, PTLAB_CACHE_DIR=str(tmp_path / "cache"), WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=joblib", "seed=0,1", "logger=none",
                           "warmstart=none", "task.train_size=256", "task.val_size=16", "prompts_per_step=2", "group_size=2",
                           "trainer.max_steps=2", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel" in proc.stdout + proc.stderr  # Hydra's joblib launcher ran them
    summaries = [json.loads((tmp_path / "sweep" / job / "summary.json").read_text()) for job in ("0", "1")]
    assert [(s["status"], s["seed"], s["steps"]) for s in summaries] == [("completed", 0, 2), ("completed", 1, 2)]
    # joblib gives each worker a share of the cores, so two jobs do not fight over them
    assert all(s["environment"]["threads"] == max(os.cpu_count() // 2, 1) for s in summaries)


def test_the_slurm_launcher_config_composes_with_its_fields_from_the_trainer():
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                           "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "--cfg", "hydra"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["partition"], launcher["timeout_min"], launcher["max_num_timeout"]) == ("gpu", 240, 3)
    assert launcher["gpus_per_node"] == launcher["tasks_per_node"] == "${trainer.devices}"
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
                      return_hydra_config=True)
    assert [OmegaConf.select(cfg, f"hydra.launcher.{key}") for key in ("gpus_per_node", "tasks_per_node", "nodes")] == [4, 4, 2]


def test_a_launcher_whose_plugin_is_missing_is_refused_naming_the_install(monkeypatch):
    import importlib.util

    from ptlab.errors import ConfigError
    from ptlab.checks.commands import check_overrides

    check_overrides(["hydra/launcher=joblib"])  # installed here (the dev extra)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if "launcher" in name else real(name, *a))
    with pytest.raises(ConfigError, match=r"hydra/launcher=slurm needs Hydra's hydra-submitit-launcher plugin.*"
                                          r"pip install hydra-submitit-launcher"):
        check_overrides(["-m", "hydra/launcher=slurm", "seed=0,1"])


def test_a_local_sweep_of_multi_process_jobs_is_refused_and_a_slurm_one_is_not(tmp_path, monkeypatch):
    """Lightning starts a job's other processes once per Python process: a local sweep of DDP jobs
    would run its first job only. Each SLURM job is a process of its own."""
    from ptlab.errors import ConfigError
    from ptlab.checks import check_command_line

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"trainer.devices=2 .* in a sweep: .*hydra/launcher=slurm"):
        check_command_line(["-m", "trainer=ddp", "seed=0,1"])
    check_command_line(["-m", "trainer=ddp", "hydra/launcher=slurm", "seed=0,1"])
    check_command_line(["trainer=ddp"])  # one run: Lightning's launcher starts its second process
