"""The policy options of a model config (conf/model/_policy.yaml) and the export modes, checked
before any model is built. Light on imports: run.py checks a config in seconds."""
import torch

from schema import ConfigError

POLICY_OPTIONS = ("dtype", "gradient_checkpointing", "lora", "onednn")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXPORTS = ("merged", "adapter", "none")


def check_model_config(model_cfg, accelerator: str = "auto") -> None:
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
    if "package" in model_cfg:  # a model shipped inside a PyPI package: is it installed?
        from models.gguf import locate

        locate(model_cfg.package, model_cfg.file, model_cfg.install)


def check_export(mode: str, lora_rank: int) -> None:
    if mode not in EXPORTS:
        raise ConfigError(f"export={mode!r} is not one of {', '.join(EXPORTS)}")
    if mode == "adapter" and not lora_rank:
        raise ConfigError("export=adapter needs a LoRA policy (model.lora.r > 0); use export=merged")
