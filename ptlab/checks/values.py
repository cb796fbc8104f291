"""The first check, after the schema (schema.py): the rules between keys, and values that name files.
Only the config is read (and, for resume, the checkpoint's zip directory); nothing is imported or built."""
from pathlib import Path

from omegaconf import OmegaConf

from ptlab.errors import ConfigError
from ptlab.models.options import DTYPES, EXPORTS
from ptlab.training.outputs import damaged


def check(cfg) -> None:
    """Raise ConfigError, naming the key, for the first value the rules between keys refuse."""
    if cfg.module.minibatches > cfg.prompts_per_step:
        raise ConfigError(f"module.minibatches={cfg.module.minibatches} is not allowed with prompts_per_step="
                          f"{cfg.prompts_per_step}: each minibatch holds whole groups, so at most {cfg.prompts_per_step}")
    check_warmstart(cfg)
    if "reward" in cfg.task and cfg.task.reward is None:
        raise ConfigError("task.reward=null is not allowed: a task needs its reward function (a _target_ and its arguments)")
    if cfg.get("resume") and not Path(cfg.resume).expanduser().is_file():
        raise ConfigError(f"resume={cfg.resume!r} is not a checkpoint file; e.g. <output_dir>/checkpoints/last.ckpt")
    if cfg.get("resume") and damaged(Path(cfg.resume).expanduser()):
        raise ConfigError(f"resume={cfg.resume!r} cannot be read ({damaged(Path(cfg.resume).expanduser())}); resume from "
                          "another checkpoint, or leave resume out to start over")
    if "path" in cfg.model and not Path(str(cfg.model.path)).expanduser().is_dir():
        raise ConfigError(f"model.path={cfg.model.path!r} does not exist; it must be a local model directory")
    check_model_config(cfg.model, cfg.trainer.accelerator)
    check_export(cfg.export, (cfg.model.get("lora") or {}).get("r", 0))
    check_trainer(cfg)
    check_task_template(cfg)
    check_model_shape(cfg)


def check_warmstart(cfg) -> None:
    """A warm start needs its settings, and calibration rows that leave training rows."""
    if cfg.warmstart.steps > 0 and not {"batch_size", "lr", "seed", "cache_dir"} <= set(cfg.warmstart):
        raise ConfigError(f"warmstart.steps={cfg.warmstart.steps} needs warmstart=sft (this warm start has no "
                          "settings to train with); warmstart=none starts from the model as built")
    settings, size = cfg.warmstart, cfg.task.get("train_size")
    if (settings.steps > 0 and settings.get("target_accuracy") is not None and isinstance(size, int)
            and size <= settings.get("calibration_rows", 0)):
        raise ConfigError(f"warmstart.calibration_rows={settings.calibration_rows} is not allowed with task.train_size="
                          f"{size}: the calibration rows are held out of the training rows, and would take all of them "
                          "(fewer calibration rows, more training rows, or warmstart.target_accuracy=null)")


def check_model_config(model_cfg, accelerator: str = "auto") -> None:
    """The policy options of conf/model/_policy.yaml: a dtype the device runs, a LoRA rank and dropout."""
    import torch

    dtype = model_cfg.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype={dtype!r} is not one of {', '.join(DTYPES)}")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if dtype == "float16" and not on_gpu:
        raise ConfigError("model.dtype=float16 needs a GPU (trainer.accelerator=gpu); on the CPU use float32 or bfloat16")
    if dtype == "bfloat16" and on_gpu and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError("model.dtype=bfloat16 is not supported by this GPU; use float32 or float16")
    lora = model_cfg.get("lora") or {}
    rank = lora.get("r", 0)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
        raise ConfigError(f"model.lora.r={rank!r} is not allowed: an integer >= 0 (0: full fine-tuning)")
    if rank and not 0 <= lora.get("dropout", 0.0) < 1:
        raise ConfigError(f"model.lora.dropout={lora.get('dropout')} is not allowed: it must be in [0, 1)")


def check_export(mode: str, lora_rank: int) -> None:
    if mode not in EXPORTS:
        raise ConfigError(f"export={mode!r} is not one of {', '.join(EXPORTS)}")
    if mode == "adapter" and not lora_rank:
        raise ConfigError("export=adapter needs a LoRA policy (model.lora.r > 0); use export=merged")


def check_trainer(cfg) -> None:
    """Trainer settings that ptlab handles itself under manual optimisation."""
    if cfg.trainer.get("gradient_clip_val") is not None:
        raise ConfigError(f"trainer.gradient_clip_val={cfg.trainer.gradient_clip_val} is not supported under manual "
                          "optimisation; ptlab clips gradients with module.max_grad_norm")
    if cfg.trainer.get("use_distributed_sampler"):
        raise ConfigError("trainer.use_distributed_sampler=true is not allowed: under data parallelism ptlab gives each "
                          "process its own prompts, whole groups (training/data.py); leave it false")
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
    groups = cfg.prompts_per_step // cfg.module.minibatches
    if not isinstance(accumulate, int) or not 1 <= accumulate <= max(groups, 1):
        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate!r} is not allowed: an integer from 1 to the "
                          f"prompts of one optimiser step ({groups} = prompts_per_step / module.minibatches), "
                          "each micro-batch holding whole groups")


def check_task_template(cfg) -> None:
    """A prompt template must name a field of the task's records: without one every prompt is the same text."""
    import string

    template = cfg.task.get("prompt_template")
    if template is None:
        return
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(str(template)) if field]
    except ValueError as error:
        raise ConfigError(f"task.prompt_template={template!r} is not allowed: {error}") from None
    if not fields:
        raise ConfigError(f"task.prompt_template={template!r} is not allowed: it names no field of the records "
                          "(e.g. {question} or {metadata[expression]}), so every prompt would be the same text")


def check_model_shape(cfg) -> None:
    """The tiny Llama's shape: attention heads must divide the hidden size, the context hold more
    than the generation budget (each prompt is checked against it once the tokenizer is built)."""
    if not str(cfg.model.get("_target_", "")).endswith("tiny_llama"):
        return
    hidden, heads = cfg.model.get("hidden_size"), cfg.model.get("num_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads:
        raise ConfigError(f"model.num_heads={heads} is not allowed: it must divide model.hidden_size={hidden}")
    context, budget = cfg.model.get("max_length"), cfg.generation.get("max_new_tokens")
    if isinstance(context, int) and isinstance(budget, int) and context <= budget:  # prompts checked once tokenized
        raise ConfigError(f"model.max_length={context} is not allowed: it is the model's context, which must hold a prompt "
                          f"and up to generation.max_new_tokens={budget} response tokens")

