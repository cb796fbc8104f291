"""A short SFT stage on the task's solutions that gives RL a reference policy that is right some
of the time. It runs once per configuration and is cached as a local Hugging Face model directory
under <cache_dir>/warmstart/<hash of model, task and warm-start configs>.

It reuses the training module itself: SFT is the algorithm, demonstrations are the sampler.

With `target_accuracy` the stage stops at an accuracy, not at a step count: every `check_every`
steps it computes the expected accuracy of temperature-1 sampling on held-out calibration prompts,
the mean over prompts of pi(answer + eos | prompt) (teacher-forced, no sampling noise), and stops
at the first check that reaches the target (`steps` is then a ceiling). A fixed step count lands
wherever the trajectory has got to, and the trajectory depends on the CPU's rounding and thread
count (the reference moved between 0.13 and 0.32 sampled accuracy at 800 steps); an accuracy
target lands every machine's reference at the same level. The calibration prompts are training
prompts picked by a hash of their text, with all their rows, and left out of the SFT data (RL
trains on them later: it never sees their solutions); the held-out validation set is not used.
"""
import hashlib
import json
import sys
import time
import zlib
from functools import partial
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from ptlab.algorithms.sft import SFT
from ptlab.models.build import builder_config
from ptlab.models.lm import token_logprobs
from ptlab.errors import RunStopped
from ptlab.storage import build_once, code_digest
from ptlab.tasks.base import fingerprint
from ptlab.training.callbacks import step_bar
from ptlab.training.data import prompt_loader
from ptlab.heartbeat import phase
from ptlab.training.module import PostTrainingModule
from ptlab.training.rollout import encode_prompts, encode_responses
from ptlab.training.samplers import Demonstrations

MANIFEST = "ptlab_warmstart.json"


def cache_key(cfg, task) -> str:
    """The warm start depends on the model's weights (its builder, not its policy options such as
    LoRA or dtype, which apply after it), the task (its config and the rows it drew: code that draws
    other rows for the same config gets another warm start), the warm-start settings, ptlab's code
    and torch's version."""
    settings = {name: OmegaConf.to_container(cfg[name], resolve=True) for name in ("task", "warmstart")}
    settings["code"], settings["torch"] = code_digest(), torch.__version__
    settings["task_data"] = fingerprint(task, ("train", "val"))
    settings["model"] = OmegaConf.to_container(builder_config(cfg.model), resolve=True)
    settings["warmstart"].pop("cache_dir", None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def warm_start(cfg, task, model, tokenizer) -> Path:
    """Path of the warm-started policy for this config, training `model` (the model as built, left
    as it is when the cache has it) into it first if no verified copy is cached (storage.build_once:
    locked against a concurrent build, sealed with the files' hashes, rebuilt if corrupted)."""
    path = Path(cfg.warmstart.cache_dir).expanduser() / "warmstart" / cache_key(cfg, task)
    return build_once(path, partial(train_warm_start, cfg, task, model, tokenizer), MANIFEST, "the warm start")


def calibration_split(dataset, size: int):
    """(SFT rows, calibration rows): every row of the prompts picked in the order of a hash of their
    text until they hold `size` rows, and the dataset without them. Whole prompts with all their rows,
    as the validation split is made, so the calibration rows follow the task's distribution (frequent
    easy prompts as often as in training)."""
    rows_of = {}
    for index, prompt in enumerate(dataset["prompt"]):
        rows_of.setdefault(prompt, []).append(index)
    held, picked = set(), []
    for prompt in sorted(rows_of, key=lambda prompt: (zlib.crc32(b"calibration:" + prompt.encode()), prompt)):
        if len(picked) >= size:
            break
        held.add(prompt)
        picked += rows_of[prompt]
    return dataset.filter(lambda row: row["prompt"] not in held), dataset.select(sorted(picked))


class StopAtAccuracy(L.Callback):
    """Every `every` steps, the expected accuracy of the policy on `rows` (mean of pi(answer + eos |
    prompt)); at the first check >= `target`, training stops on the target itself: the weights are
    moved back along the line to the previous check's (below the target), to the point where the
    accuracy meets the target, found by bisection (`landing`). Ten SGD steps at the warm start's
    learning rate move the accuracy by up to 0.05; stopping at the check alone would overshoot by that
    much. `history` keeps (step, accuracy) of the checks, then the landing's."""

    def __init__(self, rows, tokenizer, target: float, every: int, bisections: int = 10):
        self.target, self.every, self.bisections, self.history = target, every, bisections, []
        self.prompts = encode_prompts(tokenizer, list(rows["prompt"]))
        self.responses = encode_responses(tokenizer, list(rows["answer"]))
        self.below = None  # the trainable weights at the last check below the target

    @torch.no_grad()
    def expected_accuracy(self, policy) -> float:
        device = next(policy.parameters()).device
        was_training = policy.training
        policy.eval()
        logprobs = token_logprobs(policy, *(t.to(device) for t in (*self.prompts, *self.responses)))  # (N, T)
        policy.train(was_training)
        return float(logprobs.sum(-1).exp().mean())

    @torch.no_grad()
    def landing(self, policy) -> float:
        """Weights between the last check below the target and now whose accuracy is just >= target."""
        params = [p for p in policy.parameters() if p.requires_grad]
        above = [p.detach().clone() for p in params]
        low, high, accuracy = 0.0, 1.0, self.history[-1][1]  # fractions of the way from `below` to `above`
        for _ in range(self.bisections):
            middle = (low + high) / 2
            for p, start, end in zip(params, self.below, above):
                p.copy_(torch.lerp(start, end, middle))
            value = self.expected_accuracy(policy)
            low, high, accuracy = (middle, high, accuracy) if value < self.target else (low, middle, value)
        for p, start, end in zip(params, self.below, above):
            p.copy_(torch.lerp(start, end, high))
        return accuracy

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every and step < trainer.max_steps:
            return
        accuracy = self.expected_accuracy(module.policy)
        self.history.append((step, accuracy))
        if accuracy >= self.target:
            if self.below is not None:
                accuracy = self.landing(module.policy)
                self.history.append((step, accuracy))
            trainer.should_stop = True
        else:
            self.below = [p.detach().clone() for p in module.policy.parameters() if p.requires_grad]
        if step % (self.every * 10) == 0 or trainer.should_stop:
            print(f"warm start: step {step}, expected accuracy on calibration prompts {accuracy:.3f} "
                  f"(target {self.target})", flush=True)


def train_warm_start(cfg, task, model, tokenizer, directory: Path) -> dict:
    """SFT on the task's solutions, saved to `directory`; returns what the manifest records."""
    start = time.perf_counter()
    settings = cfg.warmstart
    data, stop = task.train_dataset(), None
    if settings.get("target_accuracy") is not None:
        data, calibration = calibration_split(data, settings.calibration_rows)
        stop = StopAtAccuracy(calibration, tokenizer, settings.target_accuracy, settings.check_every)
    module = PostTrainingModule(
        policy=model, tokenizer=tokenizer, algorithm=SFT(), reference=None,
        sampler=Demonstrations(tokenizer, task.reward),
        optimizer=partial(torch.optim.AdamW, lr=settings.lr, weight_decay=0.0),
        max_grad_norm=1.0,
    )
    terminal = sys.stdout.isatty()  # without one: no bar, the heartbeat's lines (ptlab/heartbeat.py)
    trainer = L.Trainer(max_steps=settings.steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, accelerator=cfg.trainer.accelerator, devices=1,
                        limit_val_batches=0, enable_progress_bar=terminal,
                        callbacks=([stop] if stop else []) + ([step_bar("warm start")] if terminal else []))
    with torch.random.fork_rng(), phase("warm start", progress=lambda: f"step {trainer.global_step}/{settings.steps}"):
        torch.manual_seed(settings.seed)
        trainer.fit(module, prompt_loader(data, settings.batch_size, shuffle=True, seed=settings.seed))
    record = {"config": OmegaConf.to_container(settings, resolve=True), "seconds": time.perf_counter() - start,
              "steps": trainer.global_step,
              "final_nll": float(trainer.callback_metrics.get("algo/objective", float("nan")))}
    if stop:
        step, accuracy = stop.history[-1]
        if accuracy < stop.target:
            raise RunStopped(f"the warm start reached expected accuracy {accuracy:.3f} on its calibration prompts in "
                             f"warmstart.steps={settings.steps} steps, below warmstart.target_accuracy={stop.target}: "
                             "raise warmstart.steps or lower the target")
        record |= {"calibration_accuracy": accuracy, "calibration_history": stop.history}
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return record
