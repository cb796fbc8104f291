"""Callbacks: sample tables of prompts, completions and rewards."""
import json
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger


class SampleTable(L.Callback):
    """Every `every_n_steps` rollouts, log `num_samples` (prompt, completion, reward) rows as a W&B
    table (key samples/train) and append them to samples.jsonl in `output_dir`."""

    def __init__(self, every_n_steps: int = 50, num_samples: int = 16, output_dir: str | None = None):
        self.every_n_steps, self.num_samples = every_n_steps, num_samples
        self.path = Path(output_dir) / "samples.jsonl" if output_dir else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rollout = pl_module.last_rollout
        if rollout is None or batch_idx % self.every_n_steps or not rollout.completions:
            return
        count = min(self.num_samples, len(rollout.completions))
        rows = [[rollout.prompts[i], rollout.completions[i], float(rollout.rewards[i])] for i in range(count)]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key="samples/train", columns=["prompt", "completion", "reward"], data=rows,
                                 step=trainer.global_step)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                for prompt, completion, reward in rows:
                    f.write(json.dumps({"step": trainer.global_step, "prompt": prompt, "completion": completion,
                                        "reward": reward}) + "\n")
