"""Build a policy: (model, tokenizer). Each function is a Hydra `_target_` of conf/model/*.yaml."""
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from models.tokenizer import char_tokenizer


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
        raise FileNotFoundError(f"model.path={path!r} is not a directory")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    return model, tokenizer
