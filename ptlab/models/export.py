"""Write a trained policy as a Hugging Face directory that `AutoModelForCausalLM.from_pretrained`
(and vLLM) loads as it is.

  merged   full weights; a LoRA policy has its adapters merged into a copy of the base weights
  adapter  a LoRA policy's adapter only (adapter_config.json + adapter_model.safetensors), loaded
           on top of its base with peft's `PeftModel.from_pretrained` (or vLLM's LoRA support); its
           base_model_name_or_path is the model's public Hub name where ptlab knows it (a packaged
           GGUF model: models/gguf.py PUBLIC_IDS), else the local path it was loaded from
The tokenizer (with its chat template) is written beside the weights in both cases.
"""
import copy
import json
from pathlib import Path

from ptlab.models.build import is_lora
from ptlab.storage import write_atomically

def export_policy(policy, tokenizer, directory: str | Path, mode: str = "merged") -> Path | None:
    """Save the policy under `directory`; returns the directory (None for mode none)."""
    if mode == "none":
        return None
    directory = Path(directory)
    if is_lora(policy) and mode == "merged":
        policy = copy.deepcopy(policy).merge_and_unload()  # the live policy keeps its adapters
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" for a one-file model
    policy.save_pretrained(directory)
    tokenizer.save_pretrained(directory)  # left padding, as batched generation wants it (TRL's GRPO sets the same)
    public = getattr(policy.get_base_model() if is_lora(policy) else policy, "public_id", None)
    config = directory / "adapter_config.json"
    if mode == "adapter" and public and config.exists():  # not ptlab's cache path: the model's public name
        record = json.loads(config.read_text())
        record["base_model_name_or_path"] = public
        write_atomically(config, json.dumps(record, indent=2, sort_keys=True))
    return directory
