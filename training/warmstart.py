"""A short SFT stage on the task's solutions that gives RL a reference policy that is right some
of the time. It runs once per configuration and is cached as a local Hugging Face model directory
under <cache_dir>/warmstart/<hash of model, task and warm-start configs>.

It reuses the training module itself: SFT is the algorithm, demonstrations are the sampler.
"""
import hashlib
import json
import shutil
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from algorithms.sft import SFT
from training.data import prompt_loader
from training.module import PostTrainingModule
from training.samplers import Demonstrations


def cache_key(cfg) -> str:
    settings = {name: OmegaConf.to_container(cfg[name], resolve=True) for name in ("model", "task", "warmstart")}
    settings["warmstart"].pop("cache_dir", None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def warm_start(cfg, task) -> Path:
    """Path of the warm-started policy for this config, training it first if it is not cached."""
    path = Path(cfg.warmstart.cache_dir).expanduser() / "warmstart" / cache_key(cfg)
    if (path / "ptlab_warmstart.json").exists():
        return path
    start = time.perf_counter()
    model, tokenizer = instantiate(cfg.model)
    settings = cfg.warmstart
    module = PostTrainingModule(
        policy=model, tokenizer=tokenizer, algorithm=SFT(), reference=None,
        sampler=Demonstrations(tokenizer, task.reward),
        optimizer=partial(torch.optim.AdamW, lr=settings.lr, weight_decay=0.0),
        max_grad_norm=1.0,
    )
    trainer = L.Trainer(max_steps=settings.steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, accelerator="cpu", devices=1, limit_val_batches=0)
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)
        trainer.fit(module, prompt_loader(task.train_dataset(), settings.batch_size, shuffle=True, seed=settings.seed))
    partial_path = path.with_name(path.name + ".partial")
    shutil.rmtree(partial_path, ignore_errors=True)
    model.save_pretrained(partial_path)
    tokenizer.save_pretrained(partial_path)
    record = {"config": OmegaConf.to_container(settings, resolve=True), "seconds": time.perf_counter() - start,
              "final_nll": float(trainer.callback_metrics.get("algo/objective", float("nan")))}
    (partial_path / "ptlab_warmstart.json").write_text(json.dumps(record, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    partial_path.rename(path)
    return path
