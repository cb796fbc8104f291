"""Data parallelism (trainer=ddp): the few collectives ptlab adds to Lightning's strategies so that
a run split over W processes computes what one process computes on the global batch. Every
function here is the identity in one process, and imports nothing of ptlab (algorithms/ use it).

Lightning starts the processes, wraps the module in DistributedDataParallel and averages the
gradients in every `manual_backward`. What ptlab adds, and where:
  - prompts (training/data.py): each optimiser step takes prompts_per_step x W prompts from the one
    seeded order, rank r the r-th slice; a group never leaves its rank;
  - loss normalisers (training/module.py): a rank's loss is divided by the global batch's
    (rows, tokens) and multiplied by W, so DDP's average is the global batch's gradient;
  - batch statistics (algorithms/advantages.py: advantage_norm=batch, PPO's whitening): their sums
    are all-reduced;
  - metrics and budget (training/module.py): averaged over ranks (maxima: max), counters summed;
  - validation (training/module.py): rank r scores prompts r, r+W, ..., and the per-prompt results
    are gathered, so metrics cover every prompt once;
  - files (run.py): rank 0 alone writes config, summary, samples and the exported policy, after
    checking that every rank ends with the same weights.
"""
import hashlib

import torch
import torch.distributed as dist
from torch import Tensor


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's global rank; before the process group exists, the one Lightning's launcher
    put in the environment (RANK, LOCAL_RANK, SLURM_PROCID: 0 in a plain run)."""
    if active():
        return dist.get_rank()
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank


def all_sum(tensor: Tensor) -> Tensor:
    """The sum over ranks (in place, returned)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_max(tensor: Tensor) -> Tensor:
    """The elementwise maximum over ranks (in place, returned)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on one: decisions that every rank must take together
    (skip an update, stop at a signal), or the others would wait for a collective forever."""
    return bool(all_max(torch.tensor([float(flag)])).item()) if active() else flag


def gather_objects(value) -> list:
    """[value of rank 0, value of rank 1, ...] on every rank (any picklable value)."""
    if not active():
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's trainable parameters, in name order."""
    sha = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        if parameter.requires_grad:
            sha.update(name.encode())
            sha.update(parameter.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def average_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Per-rank metrics -> the same dict on every rank: means over ranks, maxima for *_max keys.
    Every rank must pass the same keys."""
    if not active():
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[key]) for key in keys], dtype=torch.float64)
    means, maxima = all_sum(values.clone()) / world_size(), all_max(values.clone())
    return {key: (maxima if key.endswith("_max") else means)[i].item() for i, key in enumerate(keys)}


def shard(rows: list, rank_: int | None = None, world: int | None = None) -> list:
    """This rank's share of a list: rows r, r + W, r + 2W, ..."""
    rank_ = rank() if rank_ is None else rank_
    return rows[rank_ :: world or world_size()]


def gather_shards(values: Tensor, total: int) -> Tensor:
    """The inverse of `shard` for per-row values (n_r, ...): every rank gets all `total` rows, in
    the order they were before sharding. (n_r, ...) -> (total, ...)"""
    world = world_size()
    if world == 1:
        return values
    longest = -(-total // world)
    padded = values.new_zeros((longest, *values.shape[1:]))
    padded[: len(values)] = values
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    whole = values.new_empty((total, *values.shape[1:]))
    for source, part in enumerate(parts):
        whole[source::world] = part[: len(range(source, total, world))]
    return whole
