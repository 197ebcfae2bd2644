"""The adaptation stages' data modules: packed SFT rows, preference pairs padded per batch, and task prompts
for RLVR; each shuffles per epoch and splits over ranks with a DistributedSampler."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler


class RepeatedBatches(Sampler):
    """Each batch of `batches` `times` times in a row (GRPO's several updates on one rollout)."""

    def __init__(self, batches: BatchSampler, times: int):
        self.batches, self.times = batches, times

    def __iter__(self):
        for batch in self.batches:
            for _ in range(self.times):
                yield batch

    def __len__(self) -> int:
        return len(self.batches) * self.times

    def set_epoch(self, epoch: int) -> None:  # Lightning reshuffles the wrapped DistributedSampler per epoch
        self.batches.sampler.set_epoch(epoch)


def ranked_loader(trainer, ds, batch_size: int, seed: int, shuffle: bool, collate=None, repeat: int = 1) -> DataLoader:
    """This rank's share of ds; shuffled per epoch (and the tail dropped) for training, in order for validation;
    each batch `repeat` times in a row."""
    sampler = DistributedSampler(
        ds,
        num_replicas=trainer.world_size if trainer else 1,
        rank=trainer.global_rank if trainer else 0,
        shuffle=shuffle,
        seed=seed,
        drop_last=shuffle,
    )
    if repeat > 1:
        batches = RepeatedBatches(BatchSampler(sampler, batch_size, drop_last=shuffle), repeat)
        return DataLoader(ds, batch_sampler=batches, collate_fn=collate)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=shuffle, collate_fn=collate)


class Rows(Dataset):
    def __init__(self, rows: dict[str, torch.Tensor]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows["input_ids"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.rows.items()}


class RowsDataModule(L.LightningDataModule):
    """Packed rows, shuffled per epoch and split over ranks; held-out rows for validation."""

    def __init__(self, train: dict, val: dict, batch_size: int, seed: int):
        super().__init__()
        self.train, self.val, self.batch_size, self.seed = Rows(train), Rows(val), batch_size, seed
        self.seq_len = train["input_ids"].shape[1]

    def _loader(self, ds, shuffle: bool) -> DataLoader:
        return ranked_loader(self.trainer, ds, self.batch_size, self.seed, shuffle, self.collate)

    collate = None  # DataLoader's default: stack the rows

    def train_dataloader(self):
        return self._loader(self.train, True)

    def val_dataloader(self):
        return self._loader(self.val, False)


class PairsDataModule(RowsDataModule):
    """Encoded preference pairs (lists of dicts), padded per batch."""

    def __init__(self, train: list[dict], val: list[dict], batch_size: int, seed: int, seq_len: int):
        L.LightningDataModule.__init__(self)
        self.train, self.val, self.batch_size, self.seed, self.seq_len = train, val, batch_size, seed, seq_len

    @staticmethod
    def collate(items):
        from .pairs import collate_pairs

        return collate_pairs(items)


class PromptsDataModule(L.LightningDataModule):
    """Task examples (prompts with their verifiers' keys), shuffled per epoch and split over ranks; each batch
    `repeat` times in a row, once for every update GRPO takes on its rollout."""

    def __init__(self, examples: list, batch_size: int, seed: int, seq_len: int, repeat: int = 1):
        super().__init__()
        self.examples, self.batch_size, self.seed, self.seq_len = examples, batch_size, seed, seq_len
        self.repeat = repeat

    def train_dataloader(self):
        return ranked_loader(self.trainer, self.examples, self.batch_size, self.seed, True, list, self.repeat)
