"""Prompt loaders: a datasets.Dataset of rows -> batches of row dicts (list[dict])."""
import torch
from torch.utils.data import DataLoader


def as_rows(batch: list[dict]) -> list[dict]:
    return batch


def prompt_loader(dataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """Training loaders shuffle with their own seeded generator and drop the last partial batch.

    Every loader has its own generator, even one that does not shuffle: a DataLoader draws a seed
    for each new iterator from its generator, or from the global RNG if it has none, and a validation
    would then shift every later sample, so results would depend on how often one validates."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=shuffle, drop_last=shuffle,
                      collate_fn=as_rows, generator=generator)
