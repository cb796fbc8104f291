"""Inference forwards of a model's linear layers through oneDNN, with weights reordered once.

PyTorch's CPU `F.linear` calls MKL's sgemm, which packs the weight matrix into its blocked layout
on every call, as GEMM libraries do. A decode step multiplies a few rows by every weight of the
model, so the packing is most of the work: on this kind of machine (2 cores, AVX-512)
SmolLM2-135M at 16 rows spent 81% of its decode in `aten::mm`, 0.44 ms for a 576 x 1536 weight
and 25 ms for the 49,152-row LM head, where oneDNN with the weight reordered ahead of time
(`torch.ops.mkldnn._reorder_linear_weight`, then `_linear_pointwise`, ops torch.compile's CPU
backend also uses) takes 0.22 ms and 6.5 ms (weights cold). At 1,152 rows (a pi_ref forward) it is
10-14% faster.

`onednn_linears(model)` is a context in which every `nn.Linear` of `model` runs that way whenever
no gradient is being recorded, and a peft LoRA layer with its adapters on runs as one such layer
whose weight is W + B A * scaling, formed once per context (SmolLM2 with rank-16 adapters on every
layer, 16 rows x 64 tokens: 4.04 s a decode against 5.53 s through peft's two extra multiplies per
layer). With autograd on, under autocast, or for inputs of another dtype or device, a layer runs
its own forward. The weights are reordered lazily, once per context, and dropped at its end,
because a policy's weights change between contexts without a trace (fused AdamW updates them in
place without bumping their version counters); a `store` dict passed by an owner whose weights
never change (the frozen reference) keeps them from one context to the next, checked against the
weight's storage and version counter (loading a checkpoint bumps it).

The products are the same up to rounding, not bit for bit (the sums run in another order): a
trajectory sampled this way differs from one sampled with `F.linear` as runs on two processors
differ. `model.onednn=false` turns it off."""
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DTYPES = (torch.float32, torch.bfloat16)


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def enabled(model) -> bool:
    """Whether `model` asked for oneDNN inference (models/build.py `prepare_policy`, `model.onednn`)."""
    return bool(getattr(model, "onednn_inference", False)) and available()


@contextmanager
def onednn_linears(model, store: dict | None = None):
    """Run `model`'s linear layers through oneDNN without autograd while the context is open (a no-op
    unless `enabled(model)`). `store`: reordered weights kept across contexts, for weights that only
    change by a visible write (see the module docstring). A peft LoRA layer runs as one linear layer
    whose weight is its base weight plus its adapters' B A * scaling, formed once per context."""
    layers, lora_layers = [], []
    if enabled(model):
        layers = [layer for layer in model.modules() if type(layer) is nn.Linear and "forward" not in vars(layer)]
        lora_type = _lora_linear()
        lora_layers = [layer for layer in model.modules() if type(layer) is lora_type and "forward" not in vars(layer)]
    store = {} if store is None else store
    merged = {}  # adapters change with every step: never kept past the context
    for layer in layers:
        layer.forward = partial(_forward, layer, store)
    for layer in lora_layers:
        layer.forward = partial(_lora_forward, layer, merged)
    try:
        yield model
    finally:
        for layer in layers + lora_layers:
            del layer.forward


def _runs_plain(weight: Tensor, x: Tensor) -> bool:
    return (torch.is_grad_enabled() or x.dtype != weight.dtype or weight.device.type != "cpu"
            or weight.dtype not in DTYPES or torch.is_autocast_enabled("cpu"))


def _forward(layer: nn.Linear, store: dict, x: Tensor) -> Tensor:
    weight = layer.weight
    if _runs_plain(weight, x):
        return F.linear(x, weight, layer.bias)
    stamp = (weight.data_ptr(), 0 if weight.is_inference() else weight._version)
    kept = store.get(id(weight))
    if kept is None or kept[0] != stamp:
        kept = store[id(weight)] = (stamp, torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
    return torch.ops.mkldnn._linear_pointwise(x, kept[1], layer.bias, "none", [], "")


def _lora_linear():
    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:
        return None
    return Linear


def _lora_forward(layer, merged: dict, x: Tensor, *args, **kwargs) -> Tensor:
    """A LoRA layer as one multiply by W + sum of its active adapters' delta weights (plain LoRA,
    no dropout in effect); anything else (adapters off or merged, variants such as DoRA, autograd,
    mixed-adapter batches) takes peft's own forward, whose base layer is itself patched."""
    base = layer.base_layer
    adapters = [name for name in layer.active_adapters if name in layer.lora_A]
    if (args or kwargs or layer.disable_adapters or layer.merged or layer.lora_variant or type(base) is not nn.Linear
            or _runs_plain(base.weight, x) or any(layer.lora_A[name].weight.dtype != base.weight.dtype for name in adapters)
            or (layer.training and not all(isinstance(layer.lora_dropout[name], nn.Identity) for name in adapters))):
        return type(layer).forward(layer, x, *args, **kwargs)
    if id(layer) not in merged:
        weight = base.weight.detach()
        for name in adapters:
            weight = weight + layer.get_delta_weight(name)
        merged[id(layer)] = torch.ops.mkldnn._reorder_linear_weight(weight)
    return torch.ops.mkldnn._linear_pointwise(x, merged[id(layer)], base.bias, "none", [], "")
