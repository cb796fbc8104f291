"""Sweeps and the report: a real multirun, its table checked against the runs' summaries, valid
PNG plots, a failing job that leaves the others intact, the Optuna example, W&B groups and tags."""
import json
import math
import statistics
from pathlib import Path

import matplotlib.image
import pytest

from ptlab.sweeps.report import main as report
from ptlab.sweeps.runs import load_runs
from tests.conftest import compose_config
from tests.test_run import TINY, cli
from ptlab.checks.commands import group_options

SMALL = [*TINY, "trainer.max_steps=4", "logger=csv", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    proc, _ = cli("-m", "algorithm=sft,gvpo", "seed=0,1", f"hydra.sweep.dir={root / 'runs'}", *SMALL,
                  env_extra=root / "cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "runs"


def test_report_table_matches_the_summaries_and_plots_are_images(sweep):
    text = report([str(sweep), "--metrics", "val/accuracy,budget/tokens_generated", "--x", "step,budget/tokens_generated"])
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| algorithm=")}
    assert set(rows) == {"algorithm=sft", "algorithm=gvpo"}
    for algorithm in ("sft", "gvpo"):
        summaries = [s for s in (json.loads(p.read_text()) for p in sweep.glob("*/summary.json")) if s["algorithm"] == algorithm]
        assert len(summaries) == 2
        accuracy = [s["val/accuracy"] for s in summaries]
        mean = statistics.fmean(accuracy)
        half = 12.706 * statistics.stdev(accuracy) / math.sqrt(2)
        cells = rows[f"algorithm={algorithm}"].split(" | ")
        assert cells[1] == "2"
        expected = f"{mean:.2g}" if abs(mean) < 0.01 else f"{mean:.3f}"
        assert cells[2].startswith(expected)
        if half > 0:
            assert f"± {half:.2g}" in cells[2] or f"± {half:.3f}" in cells[2]
    for name in ("val_accuracy_vs_step.png", "val_accuracy_vs_budget_tokens_generated.png"):
        image = matplotlib.image.imread(sweep / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert (sweep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "val_accuracy_vs_step.png" in (sweep / "report.md").read_text()


def test_value_at_equal_budget(sweep):
    text = report([str(sweep), "--metrics", "val/accuracy", "--at", "budget/tokens_generated=1", "--plot", "val/accuracy",
                   "--x", "step"])
    assert "val/accuracy at budget/tokens_generated=1" in text.splitlines()[4]
    assert "beyond the runs" in [line for line in text.splitlines() if line.startswith("| algorithm=sft")][0]


def test_a_failing_job_leaves_the_other_jobs_and_the_report_intact(tmp_path, monkeypatch):
    """The first job's reward function raises mid-run (a bad value would be refused before any job)."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent / "fixtures"))
    runs = tmp_path / "runs"
    proc, _ = cli("-m", "algorithm=gvpo", "task.reward._target_=flaky_reward.Flaky", "task.reward.dataset=raise,correct",
                  f"hydra.sweep.dir={runs}", *SMALL, env_extra=tmp_path / "cache")
    assert proc.returncode != 0  # Hydra reports the failure after running every job
    loaded = {run.label: run for run in load_runs(runs)}
    good, bad = loaded["task.reward.dataset=correct"].summary, loaded["task.reward.dataset=raise"].summary
    assert good["status"] == "completed" and good["steps"] == 4
    assert bad["status"] == "failed" and "reward Flaky raised ZeroDivisionError" in bad["error"]
    text = report([str(runs), "--metrics", "val/accuracy", "--x", "step"])
    assert "| task.reward.dataset=correct | 1 |" in text
    assert "Failed jobs:" in text and "`task.reward.dataset=raise`" in text and "RewardError: reward Flaky raised" in text


@pytest.mark.slow  # the Optuna sweeper plugin's two trials through run.py (10 s)
def test_optuna_example_tunes_lr(tmp_path):
    runs = tmp_path / "optuna"
    proc, _ = cli("-m", "experiment=optuna_lr", "algorithm=gvpo", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={runs}",
                  *SMALL, "trainer.val_check_interval=2", env_extra=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = (runs / "optimization_results.yaml").read_text()
    assert "best_params" in results and "lr:" in results
    lrs = [json.loads(p.read_text())["lr"] for p in runs.glob("*/summary.json")]
    assert len(lrs) == 2 and all(1e-5 <= lr <= 1e-2 for lr in lrs) and lrs[0] != lrs[1]


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_shipped_sweep_composes_with_a_wandb_group_and_tags(experiment, tmp_path):
    cfg = compose_config([f"experiment={experiment}", "logger=wandb"], tmp_path)
    assert cfg.sweep == experiment and cfg.hydra.sweep.dir == f"multirun/{experiment}"
    assert cfg.logger.wandb.group == experiment
    assert f"seed={cfg.seed}" in cfg.logger.wandb.tags and any(t.startswith("algorithm=") for t in cfg.logger.wandb.tags)


def test_a_multirun_without_a_sweep_name_is_grouped_by_its_sweep_directory(tmp_path):
    from ptlab.training.assemble import build_trainer

    cfg = compose_config(["logger=wandb", "trainer.enable_progress_bar=false"], tmp_path)
    assert cfg.sweep is None
    grouped = build_trainer(cfg, sweep_dir="multirun/2026-11-24/10-00-00")
    wandb_logger = next(logger for logger in grouped.loggers if type(logger).__name__ == "WandbLogger")
    assert wandb_logger._wandb_init["group"] == "multirun/2026-11-24/10-00-00"
    named = compose_config(["experiment=off_policy", "logger=wandb"], tmp_path)
    wandb_logger = next(logger for logger in build_trainer(named, sweep_dir="multirun/x").loggers
                        if type(logger).__name__ == "WandbLogger")
    assert wandb_logger._wandb_init["group"] == "off_policy"  # a named sweep keeps its name


def test_off_policy_regimes_set_the_sampler_and_the_update_epochs(tmp_path):
    expected = {"on_policy": ("ptlab.training.samplers.OnPolicy", 1), "replay": ("ptlab.training.samplers.Replay", 1), "stale": ("ptlab.training.samplers.Stale", 1),
                "epochs2": ("ptlab.training.samplers.OnPolicy", 2), "epochs4": ("ptlab.training.samplers.OnPolicy", 4),
                "stale4": ("ptlab.training.samplers.Stale", 1)}
    assert set(group_options("regime")) == set(expected)
    for regime, (sampler, epochs) in expected.items():
        cfg = compose_config(["experiment=off_policy", f"+regime={regime}", "algorithm=rloo"], tmp_path)
        assert (cfg.sampler._target_, cfg.module.update_epochs, cfg.algorithm._target_) == (sampler, epochs, "ptlab.algorithms.grpo.GRPO")
        assert cfg.sampler.get("refresh_every") == {"stale": 10, "stale4": 4}.get(regime)
