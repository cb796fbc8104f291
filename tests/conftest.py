"""Shared fixtures: a tiny model, hand-made rollouts and the composed Hydra config."""
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from transformers import LlamaConfig, LlamaForCausalLM

from ptlab.models.tokenizer import char_tokenizer
from ptlab.training.rollout import Rollout

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@pytest.fixture(scope="session")
def tokenizer():
    return char_tokenizer()


def tiny_lm(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, initializer_range=0.5)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).double()


@pytest.fixture
def model(tokenizer):
    return tiny_lm(tokenizer)


def rollout_from_lists(rewards, group_size, lengths, max_len=None, prompt_len=2) -> Rollout:
    """A rollout with token ids 5.. and masks of the given response lengths (B,)."""
    max_len = max_len or max(lengths)
    batch = len(rewards)
    response_mask = torch.tensor([[1] * n + [0] * (max_len - n) for n in lengths])
    generator = torch.Generator().manual_seed(1)
    return Rollout(
        prompt_ids=torch.randint(5, 40, (batch, prompt_len), generator=generator),
        prompt_mask=torch.ones(batch, prompt_len, dtype=torch.long),
        response_ids=torch.randint(5, 40, (batch, max_len), generator=generator) * response_mask,
        response_mask=response_mask,
        rewards=torch.tensor(rewards, dtype=torch.float64),
        group_size=group_size,
    )


def compose_config(overrides: list[str], output_dir: Path):
    """The real config, composed as run.py would, with Hydra's runtime set for `${hydra:...}`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg
