"""Build a policy: (model, tokenizer).

A model config (conf/model/*.yaml) names a builder (`_target_`: `tiny_llama`, `from_pretrained`,
`ptlab.models.gguf.from_package`) with its arguments, plus the policy options of conf/model/_policy.yaml
(dtype, gradient checkpointing, LoRA), applied by `prepare_policy` to whatever the builder made.
"""
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ptlab.models.options import DTYPES, POLICY_OPTIONS
from ptlab.models.tokenizer import char_tokenizer
from ptlab.errors import ConfigError



def tiny_llama(
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 512,
    max_length: int = 128,
    seed: int = 0,
):
    """A small Llama-style causal LM from a config, with the local character tokenizer.

    `seed` fixes the initial weights independently of the run seed, so every run starts from the
    same network (the warm start is then shared across seeds and algorithms).
    """
    tokenizer = char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def from_pretrained(path: str):
    """Any local Hugging Face causal-LM directory (config, weights, tokenizer). Never the hub."""
    if not Path(path).is_dir():
        raise ConfigError(f"model.path={path!r} is not a directory; it must be a local Hugging Face model directory")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    return model, tokenizer


def builder_config(model_cfg):
    """The part of a model config that makes the weights (the builder and its arguments)."""
    resolved = OmegaConf.to_container(model_cfg, resolve=True)  # interpolations point into the whole config
    return OmegaConf.create({key: value for key, value in resolved.items() if key not in POLICY_OPTIONS})


def build_base(model_cfg, path: str | None = None):
    """(model, tokenizer) from the config's builder, or from a saved directory (e.g. a warm start)."""
    return from_pretrained(path) if path else instantiate(builder_config(model_cfg))


def prepare_policy(model, dtype: str = "float32", gradient_checkpointing: bool = False, lora=None, onednn: bool = False):
    """The trainable policy: the model in `dtype`, with gradient checkpointing, and with LoRA
    adapters (peft) when lora.r > 0, in which case only the adapters are trainable. `onednn`: its
    forwards without autograd (sampling, pi_ref, no-gradient log-probs) run its linear layers
    through oneDNN with reordered weights (models/onednn.py)."""
    model = model.to(DTYPES[dtype])
    if gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ConfigError(f"model.gradient_checkpointing=true is not supported by {type(model).__name__}")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora and lora.get("r", 0) > 0:
        model = add_lora(model, **lora)
    model.onednn_inference = onednn  # read by models/onednn.py; a frozen reference's copy inherits it
    return model


def linear_layer_names(model) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def check_lora_targets(model, lora: dict | None) -> None:
    """LoRA's target modules must be linear layers of the model (one line naming those it has)."""
    if not lora or not lora.get("r"):
        return
    targets = lora.get("target_modules", "all-linear")
    if targets == "all-linear":
        return
    targets = [targets] if isinstance(targets, str) else list(targets)
    unknown = sorted(set(targets) - linear_layer_names(model))
    if unknown:
        raise ConfigError(f"model.lora.target_modules={targets} names {', '.join(unknown)}, not a linear layer of "
                          f"{type(model).__name__}; its linear layers are: {', '.join(sorted(linear_layer_names(model)))} "
                          "(or all-linear)")


def add_lora(model, r: int, alpha: float = 16, dropout: float = 0.0, target_modules="all-linear", seed: int = 0):
    """Wrap the model in peft LoRA adapters of rank r; every base weight is frozen. The adapters' A
    matrices are drawn from `seed`, not from whatever the process drew before (a model's conversion,
    an earlier job in the same launcher worker), so the same command builds the same adapters."""
    import torch
    from peft import LoraConfig, get_peft_model

    check_lora_targets(model, {"r": r, "target_modules": target_modules})
    targets = "all-linear" if target_modules == "all-linear" else (
        [target_modules] if isinstance(target_modules, str) else list(target_modules))
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
