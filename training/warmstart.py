"""A short SFT stage on the task's solutions that gives RL a reference policy that is right some
of the time. It runs once per configuration and is cached as a local Hugging Face model directory
under <cache_dir>/warmstart/<hash of model, task and warm-start configs>.

It reuses the training module itself: SFT is the algorithm, demonstrations are the sampler.
"""
import hashlib
import json
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from algorithms.sft import SFT
from models.build import builder_config
from storage import build_once
from training.data import prompt_loader
from training.module import PostTrainingModule
from training.samplers import Demonstrations

MANIFEST = "ptlab_warmstart.json"


def cache_key(cfg) -> str:
    """The warm start depends on the model's weights (its builder, not its policy options such as
    LoRA or dtype, which apply after it), the task and the warm-start settings."""
    settings = {name: OmegaConf.to_container(cfg[name], resolve=True) for name in ("task", "warmstart")}
    settings["model"] = OmegaConf.to_container(builder_config(cfg.model), resolve=True)
    settings["warmstart"].pop("cache_dir", None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def warm_start(cfg, task, model, tokenizer) -> Path:
    """Path of the warm-started policy for this config, training `model` (the model as built, left
    as it is when the cache has it) into it first if no verified copy is cached (storage.build_once:
    locked against a concurrent build, sealed with the files' hashes, rebuilt if corrupted)."""
    path = Path(cfg.warmstart.cache_dir).expanduser() / "warmstart" / cache_key(cfg)
    return build_once(path, partial(train_warm_start, cfg, task, model, tokenizer), MANIFEST, "the warm start")


def train_warm_start(cfg, task, model, tokenizer, directory: Path) -> dict:
    """SFT on the task's solutions, saved to `directory`; returns what the manifest records."""
    start = time.perf_counter()
    settings = cfg.warmstart
    module = PostTrainingModule(
        policy=model, tokenizer=tokenizer, algorithm=SFT(), reference=None,
        sampler=Demonstrations(tokenizer, task.reward),
        optimizer=partial(torch.optim.AdamW, lr=settings.lr, weight_decay=0.0),
        max_grad_norm=1.0,
    )
    trainer = L.Trainer(max_steps=settings.steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, accelerator=cfg.trainer.accelerator, devices=1,
                        limit_val_batches=0)
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)
        trainer.fit(module, prompt_loader(task.train_dataset(), settings.batch_size, shuffle=True, seed=settings.seed))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return {"config": OmegaConf.to_container(settings, resolve=True), "seconds": time.perf_counter() - start,
            "final_nll": float(trainer.callback_metrics.get("algo/objective", float("nan")))}
