"""The LightningDataModule: prepares (or reuses) the corpus, then serves token blocks.

Training batches come from a `ResumableSampler` positioned by the trainer's global step, so resuming
from a checkpoint continues the data exactly where it stopped. Validation walks each source's held-out
blocks in order.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from .dataset import BlockDataset, ResumableSampler
from .prepare import PreparedCorpus, load_prepared, prepare_corpus
from .tokenizer import token_byte_lengths


class LMDataModule(L.LightningDataModule):
    def __init__(self, sources: list[dict], cache_dir: str, seq_len: int, batch_size: int, vocab_size: int,
                 val_fraction: float = 0.02, val_max_blocks: int | None = None, min_frequency: int = 2,
                 tokenizer_train_bytes: int = 20_000_000, max_docs: int | None = None, num_workers: int = 0,
                 seed: int = 0, total_micro_steps: int | None = None, phases: list[dict] | None = None):
        super().__init__()
        self.sources, self.cache_dir, self.seq_len = sources, cache_dir, seq_len
        self.batch_size, self.vocab_size, self.val_fraction = batch_size, vocab_size, val_fraction
        self.val_max_blocks, self.min_frequency = val_max_blocks, min_frequency
        self.tokenizer_train_bytes, self.max_docs = tokenizer_train_bytes, max_docs
        self.num_workers, self.seed, self.total_micro_steps = num_workers, seed, total_micro_steps
        # curriculum: [{"start_sample": int, "weights": {source: weight}}], the first phase is the sources'
        self.phases = phases or []
        self.corpus: PreparedCorpus | None = None

    def prepare_data(self) -> None:
        prepared = [s["prepared"] for s in self.sources if s.get("prepared")]
        if prepared:
            self.corpus = load_prepared(prepared[0], self.seq_len)
            return
        self.corpus = prepare_corpus(
            self.sources, self.cache_dir, self.seq_len, self.val_fraction, self.vocab_size,
            self.min_frequency, self.tokenizer_train_bytes, self.max_docs,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is None:  # other ranks: the corpus is on disk already, this only finds it
            self.prepare_data()
        names = self.source_names
        self.train_set = BlockDataset([str(self.corpus.split_dir(n, "train")) for n in names])
        self.val_set = BlockDataset([str(self.corpus.split_dir(n, "val")) for n in names])

    @property
    def source_names(self) -> list[str]:
        """Folder names of the sources inside the corpus (a prepared folder names its own)."""
        if any(s.get("prepared") for s in self.sources):
            return list(self.corpus.meta["sources"])
        return [s["name"] for s in self.sources]

    def source_weights(self) -> list[list[float]]:
        """One weight list per phase (the sources' own weights first, then each curriculum phase's)."""
        if any(s.get("prepared") for s in self.sources):
            return [[1.0] * len(self.source_names)]
        base = [s.get("weight", 1.0) for s in self.sources]
        return [base] + [[p["weights"].get(s["name"], 0.0) for s in self.sources] for p in self.phases]

    @property
    def tokenizer_vocab_size(self) -> int:
        return self.corpus.meta["vocab_size"]

    def token_bytes(self) -> torch.Tensor:
        return torch.from_numpy(token_byte_lengths(self.corpus.tokenizer()))

    def _loader(self, dataset, **kw) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                          persistent_workers=False, **kw)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        accum = trainer.accumulate_grad_batches if trainer else 1
        start = trainer.global_step * accum if trainer else 0
        total = self.total_micro_steps or max(start + 1, len(self.train_set) // self.batch_size)
        sampler = ResumableSampler(
            self.train_set.lengths, self.source_weights(), self.batch_size, total,
            start, trainer.global_rank if trainer else 0, trainer.world_size if trainer else 1, self.seed,
            [0] + [p["start_sample"] for p in self.phases],
        )
        return self._loader(self.train_set, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        n = len(self.val_set)
        idx = np.arange(n)
        if self.val_max_blocks and n > self.val_max_blocks:
            # An even spread over all sources' held-out blocks, the same every time.
            idx = np.unique(np.linspace(0, n - 1, self.val_max_blocks).round().astype(int))
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:  # each rank scores its share; the module sums
            idx = idx[trainer.global_rank :: trainer.world_size]
        return self._loader(Subset(self.val_set, idx.tolist()))
