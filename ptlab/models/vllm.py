"""generation=vllm: sampling with a vLLM engine that holds its own copy of the policy's weights.

The engine is built on the first call from the policy as it is then (saved to a temporary Hugging
Face directory), in this process ("colocated", as TRL's vllm_mode=colocate), and the policy's
weights are pushed into it after every `sync_every` optimiser steps. Between two pushes the engine
samples with weights up to sync_every - 1 steps old: `staleness` says how many (logged as
train/sampler_staleness), and `sampling_policy` hands the samplers a frozen copy of the weights the
engine has, so a rollout's sampler log-probs are those of the policy that actually sampled it (the
importance ratios of PPO/GRPO then correct for the lag). With sync_every=1 the engine always has
the current weights and the rollout is on-policy. Validation pushes the weights first: it scores
the policy, not the engine's older copy.

vLLM is imported only when the engine is built: a CPU install needs no vLLM, and
`generation=vllm` without it is refused before anything starts (ptlab/checks/targets.py). The engine
is reached through a small adapter (`VLLMEngine`: generate token ids, load weights), the one part
that needs a GPU; tests use a fake engine with the same two methods to check the weight-sync and
log-prob contract.

Departures and limits: the engine samples with its own kernels and precision (e.g. bf16), so its
token probabilities differ slightly from the policy's forward; ptlab's log-probs come from its own
forward of the weights that sampled. Only policies without LoRA adapters (the engine serves plain
weights), and only samplers that generate from the policy (on_policy, replay): the engine holds the
policy, not pi_ref or a stale snapshot. A resumed run rebuilds the engine from the checkpoint's
weights (staleness 0).
"""
import copy
import importlib
import tempfile
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ptlab.models.generation import Generator, response_mask_after_eos
from ptlab.errors import ConfigError

ENGINE = "ptlab.models.vllm.VLLMEngine"


class VLLMEngine:
    """The adapter to vllm.LLM, colocated in this process."""

    def __init__(self, model_dir: str, seed: int = 0, **engine_args):
        import os

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the model in this process: weights pushed in place
        from vllm import LLM

        self.llm = LLM(model=model_dir, seed=seed, **engine_args)

    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_p: float) -> list[list[int]]:
        """One sampled (temperature 0: greedy) continuation's token ids per prompt's token ids."""
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False)
        return [list(output.outputs[0].token_ids) for output in outputs]

    def load_weights(self, named_tensors) -> None:
        """Replace the engine's weights by (Hugging Face name, tensor) pairs; cached prefixes are stale."""
        self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(named_tensors)
        self.llm.reset_prefix_cache()


@dataclass
class VLLMGenerator(Generator):
    max_new_tokens: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    sync_every: int = 1  # optimiser steps between weight pushes into the engine
    seed: int = 0
    engine: str = ENGINE  # the adapter class, as a dotted path
    engine_args: dict = field(default_factory=dict)  # vllm.LLM's own arguments (gpu_memory_utilization, dtype, ...)
    reports_staleness = True

    def __post_init__(self):
        if not isinstance(self.sync_every, int) or self.sync_every < 1:
            raise ConfigError(f"generation.sync_every={self.sync_every!r} is not allowed: an integer >= 1")
        self.policy = self.llm = None
        self.behind = 0  # optimiser steps the engine's weights are behind the policy's now
        self.staleness = 0  # ... when the last call sampled
        self.snapshot = None  # with sync_every > 1: a frozen copy of the weights the engine has

    def _start(self, model, tokenizer) -> None:
        """Build the engine from `model` (the policy, on the first call, which may come from inside a
        validation's inference mode: its tensors must stay updatable)."""
        self.policy = model
        with torch.inference_mode(False), tempfile.TemporaryDirectory(prefix="ptlab-vllm-") as directory:
            model.save_pretrained(directory)
            tokenizer.save_pretrained(directory)
            module, name = self.engine.rsplit(".", 1)
            self.llm = getattr(importlib.import_module(module), name)(directory, seed=self.seed, **self.engine_args)
            if self.sync_every > 1:
                self.snapshot = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def __call__(self, model, tokenizer, prompt_ids: Tensor, prompt_mask: Tensor, greedy: bool = False):
        if self.llm is None:
            self._start(model, tokenizer)
        if model is not self.policy:
            raise ConfigError("generation=vllm samples from the policy only; this sampler generates from another model "
                              "(pi_ref or a snapshot): use generation=hf")
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask)]
        outputs = self.llm.generate(prompts, self.max_new_tokens, 0.0 if greedy else self.temperature, self.top_p)
        response_ids = torch.full((len(outputs), self.max_new_tokens), tokenizer.pad_token_id, dtype=torch.long)
        for row, tokens in enumerate(outputs):
            response_ids[row, : len(tokens)] = torch.tensor(tokens[: self.max_new_tokens], dtype=torch.long)
        response_ids = response_ids.to(prompt_ids.device)
        self.staleness = self.behind
        return response_ids, response_mask_after_eos(response_ids, tokenizer.eos_token_id)

    def on_optimizer_step(self, model) -> None:
        """Count the step; every sync_every steps push the policy's weights into the engine."""
        self.behind += 1
        if self.behind >= self.sync_every:
            self.sync(model)

    def sync(self, model) -> None:
        """Push the policy's weights into the engine (and the snapshot) now."""
        if self.llm is None or self.behind == 0:
            return
        with torch.inference_mode(False), torch.no_grad():
            weights = {name: tensor.detach() for name, tensor in model.state_dict().items()}
            self.llm.load_weights(list(weights.items()))
            if self.snapshot is not None:
                self.snapshot.load_state_dict(weights)
        self.behind = 0

    def sampling_policy(self, model):
        """The frozen copy of the engine's weights when the last call sampled with weights behind the policy's."""
        return self.snapshot if self.staleness else model
