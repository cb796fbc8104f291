"""Batched sampling with a KV cache.

A generation backend maps left-padded prompts to right-padded responses (one per prompt row). This
one runs the policy in-process with a lean decode loop over a Hugging Face `DynamicCache` whose
keys and values sit in buffers of the decode's whole width (`preallocated_cache`: written in place,
never concatenated):
  - a row that has written <eos> stops drawing tokens at once and leaves the batch (and the cache)
    when a quarter of the batch has finished, in one copy, so the long tail of a few rambling
    responses is decoded at about the batch size of those few, not of the whole batch;
  - a token is drawn by inverting the cumulative distribution with one uniform number per row,
    instead of the exponential draws over the whole vocabulary that `torch.multinomial` makes;
  - the logits come only from the last position (`logits_to_keep=1`), and a prompt repeated for
    the k responses of its group is read once.
It samples exactly softmax(logits / temperature) (restricted to the top-p nucleus when top_p < 1,
and never a token in `generation_config.suppress_tokens`), as `generate` does. Models without a KV
cache interface (the tabular policy) use their own `generate`.

A backend is a `Generator`: `__call__` samples; a backend that holds its own copy of the weights
(models/vllm.py) is told of every optimiser step (`on_optimizer_step`) and names the model whose
weights sampled the last responses (`sampling_policy`), so samplers take the log-probs of the
policy that actually sampled.
"""
import inspect
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from ptlab.models.lm import cache_keyword, suppressed_token_ids
from ptlab.models.onednn import onednn_linears


class Generator:
    """The generation backend interface. Backends that run the policy itself (HFGenerator) need
    nothing but `__call__`."""

    staleness = 0  # optimiser steps between the weights that sampled the last call and the policy's
    reports_staleness = False  # log train/sampler_staleness

    def __call__(self, model, tokenizer, prompt_ids: Tensor, prompt_mask: Tensor, greedy: bool = False):
        """(response_ids (B, T), response_mask (B, T)): one response per left-padded prompt row."""
        raise NotImplementedError

    def on_optimizer_step(self, model) -> None:
        """Called by the module after each optimiser step of `model` (the policy)."""

    def sync(self, model) -> None:
        """Bring the backend's weights up to `model`'s now (before a validation)."""

    def sampling_policy(self, model):
        """The model whose weights sampled the last call's responses, given the `model` it was called with."""
        return model


@dataclass
class HFGenerator(Generator):
    max_new_tokens: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    autocast: bool | None = None  # decode under the trainer's mixed precision (trainer.precision=bf16-mixed);
    #   null: not on CPU, where autocast re-casts every weight at every decode step (SmolLM2's rollout of
    #   32 responses sampled in 10.2 s against 4.3 s in float32), yes on other devices (untested: no GPU)

    def __call__(self, model, tokenizer, prompt_ids: Tensor, prompt_mask: Tensor, greedy: bool = False):
        """Return (response_ids (B, T), response_mask (B, T)); one response per prompt row.

        The mask covers the response up to and including its first <eos>; a response that hits
        max_new_tokens without <eos> keeps all its tokens (truncated).

        Runs under inference mode (no autograd bookkeeping at all: the tiny decode 16 x 8 at 64
        tokens, 0.390 / 0.403 s min / median against 0.410 / 0.435 s under no_grad, same tokens);
        the ids are cloned out of it, since training's forward saves them for its backward.
        """
        was_training = model.training
        model.eval()
        device = prompt_ids.device.type
        autocast = self.autocast if self.autocast is not None else device != "cpu"
        try:
            with (torch.inference_mode(), nullcontext() if autocast else torch.autocast(device, enabled=False),
                  onednn_linears(model)):
                if hasattr(getattr(model, "config", None), "num_hidden_layers"):  # a Hugging Face LM: KV cache
                    response_ids = self._decode(model, tokenizer, prompt_ids, prompt_mask, greedy)
                else:
                    response_ids = self._generate(model, tokenizer, prompt_ids, prompt_mask, greedy)
        finally:
            model.train(was_training)
        response_ids = response_ids.clone()  # a normal tensor
        return response_ids, response_mask_after_eos(response_ids, tokenizer.eos_token_id)

    def _generate(self, model, tokenizer, prompt_ids: Tensor, prompt_mask: Tensor, greedy: bool) -> Tensor:
        sampling = {} if greedy else dict(temperature=self.temperature, top_p=self.top_p, top_k=0)
        sequences = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=self.max_new_tokens,
                                   do_sample=not greedy, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id, **sampling)
        return sequences[:, prompt_ids.shape[1] :]  # (B, T)

    def _decode(self, model, tokenizer, prompt_ids: Tensor, prompt_mask: Tensor, greedy: bool) -> Tensor:
        batch, device = prompt_ids.shape[0], prompt_ids.device
        suppressed = torch.tensor(suppressed_token_ids(model), dtype=torch.long, device=device)
        responses = torch.full((batch, self.max_new_tokens), tokenizer.pad_token_id, dtype=torch.long, device=device)
        width = prompt_ids.shape[1] + self.max_new_tokens
        cache = preallocated_cache(model, width)
        cached = {cache_keyword(model): cache, "use_cache": True}
        # the attention mask grows in place too: a (B, width) buffer read through a view of its filled columns
        attention_buffer = prompt_mask.new_ones(batch, width)
        attention_buffer[:, : prompt_ids.shape[1]] = prompt_mask
        positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
        # Cache rows: the response row each holds (`rows`) and whether it is still writing (`alive`).
        # A row that writes <eos> stays in the batch, its outputs ignored, until the finished rows are a
        # quarter of it; then the cache is compacted in one copy (instead of one per step with an eos).
        rows, alive = torch.arange(batch, device=device), torch.ones(batch, dtype=torch.bool, device=device)
        # the prompt is read once per distinct prompt (a group repeats its prompt k times), then shared
        distinct, copies = torch.cat([prompt_ids, prompt_mask], dim=1).unique(dim=0, return_inverse=True)
        inputs, step_positions, filled = prompt_ids, positions, prompt_ids.shape[1]
        for t in range(self.max_new_tokens):
            attention = attention_buffer[:, :filled]
            if t == 0 and len(distinct) < batch:
                first = torch.zeros(len(distinct), dtype=torch.long, device=device).scatter_(0, copies, rows)
                logits = model(input_ids=prompt_ids[first], attention_mask=attention[first], position_ids=positions[first],
                               logits_to_keep=1, **cached).logits[:, -1]
                cache.batch_select_indices(copies)
                logits = logits[copies].float()  # (B, V)
            else:
                logits = model(input_ids=inputs, attention_mask=attention, position_ids=step_positions,
                               logits_to_keep=1, **cached).logits[:, -1].float()  # (cache rows, V)
            writing = alive.nonzero().squeeze(1)  # cache rows still writing, in row order
            if len(writing) < len(alive):
                logits = logits[writing]
            if len(suppressed):
                logits.index_fill_(-1, suppressed, float("-inf"))
            token = logits.argmax(-1) if greedy else self._sample(logits)  # (A,): one draw per writing row
            responses[rows[writing], t] = token
            ended = token == tokenizer.eos_token_id
            alive[writing[ended]] = False
            if not alive.any():
                break
            step_token = torch.full_like(alive, tokenizer.pad_token_id, dtype=torch.long)
            step_token[writing] = token
            if int(alive.sum()) * 4 <= len(alive) * 3:  # a quarter of the cache rows are finished: drop them
                keep = alive.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, alive, step_token = rows[keep], alive[keep], step_token[keep]
                attention_buffer, step_positions = attention_buffer[keep], step_positions[keep]
            filled += 1
            step_positions = step_positions[:, -1:] + 1
            inputs = step_token[:, None]
        return responses

    def _sample(self, logits: Tensor) -> Tensor:
        """One token per row from softmax(logits / temperature), top-p nucleus if top_p < 1. (A, V) -> (A,)"""
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs >= self.top_p  # mass before the token already covers top_p
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
        cumulative = probs.double().cumsum(-1)  # (A, V)
        uniform = torch.rand(len(probs), 1, dtype=torch.float64, device=probs.device) * cumulative[:, -1:]
        return torch.searchsorted(cumulative, uniform, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)


def preallocated_cache(model, width: int):
    """A DynamicCache of `model`'s layers whose plain (full-attention) layers keep their keys and values
    in a buffer of the decode's whole `width`, allocated at the first update: a step writes its
    positions in place and the layer hands out views of the filled columns, so the cache is never
    copied again (DynamicLayer concatenates, a copy of the whole cache per token and layer). The views
    hold the same values as DynamicLayer's tensors. Other layer kinds (sliding windows) are left as they are."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class Layer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                shape = (*key_states.shape[:2], width, key_states.shape[-1])
                self.key_buffer = key_states.new_empty(shape)
                self.value_buffer = value_states.new_empty(shape)
                self.filled = 0
            end = self.filled + key_states.shape[-2]
            self.key_buffer[:, :, self.filled : end] = key_states
            self.value_buffer[:, :, self.filled : end] = value_states
            self.filled = end
            self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:
                self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
                self.keys, self.values = self.key_buffer[:, :, : self.filled], self.value_buffer[:, :, : self.filled]

    cache = DynamicCache(config=model.config)
    cache.layers = [Layer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def cache_keyword(model) -> str:
    """The forward's name for the KV cache: `cache` since transformers 5.24 (the old
    `past_key_values` still works there, with a deprecation warning), `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a LoRA policy
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def response_mask_after_eos(response_ids: Tensor, eos_token_id: int) -> Tensor:
    """1 up to and including the first eos of each row, 0 after it. (B, T) -> (B, T)."""
    is_eos = (response_ids == eos_token_id).long()
    eos_before = is_eos.cumsum(-1) - is_eos  # number of eos strictly before t
    return (eos_before == 0).long()
