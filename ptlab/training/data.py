"""Prompt loaders: a datasets.Dataset of rows -> batches of row dicts (list[dict])."""
import torch
from torch.utils.data import DataLoader, Sampler

from ptlab import parallel


def as_rows(batch: list[dict]) -> list[dict]:
    return batch


class PromptOrder(Sampler):
    """Batches of row indices in the order Lightning draws them from `DataLoader(shuffle=True,
    drop_last=True)` with a generator seeded `seed` (per epoch: the loader's base-seed draw, then
    the permutation; Lightning stops at the epoch's length, so the sampler's empty tail permutation
    is never drawn), but resumable: `position` is the number of batches already trained on, and a
    new iterator starts after them. A resumed run sees the prompts in the order an uninterrupted
    one does (a test checks the order against Lightning's over three epochs).

    Under data parallelism (W processes) a step takes batch_size x W prompts from the same order and
    rank r trains on the r-th batch_size of them, so the W ranks together see what one process with
    batch_size x W would see. W and r are read when iteration starts (the process group exists by then)."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.position = 0

    def __len__(self) -> int:
        return self.size // (self.batch_size * parallel.world_size())

    def permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(epoch + 1):
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            order = torch.randperm(self.size, generator=generator)
        return order.tolist()

    def __iter__(self):
        epoch, offset = divmod(self.position, len(self))
        order = self.permutation(epoch)
        step = self.batch_size * parallel.world_size()
        start = parallel.rank() * self.batch_size
        for batch in range(offset, len(self)):
            self.position = epoch * len(self) + batch + 1
            yield order[batch * step + start : batch * step + start + self.batch_size]


def prompt_loader(dataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """Training loaders shuffle (PromptOrder) and drop the last partial batch.

    Every loader has its own generator, even one that does not shuffle: a DataLoader draws a seed
    for each new iterator from its generator, or from the global RNG if it has none, and a validation
    would then shift every later sample, so results would depend on how often one validates."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, len(dataset))
    if shuffle:
        return DataLoader(dataset, batch_sampler=PromptOrder(len(dataset), batch_size, seed), collate_fn=as_rows,
                          generator=generator)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=as_rows, generator=generator)
