"""Random access to token blocks, and a resumable, deterministic sampler that mixes sources by weight.

The sampler defines one global stream of samples for the whole run: sample g is drawn from a source
chosen with probability proportional to its weight, and within a source blocks are visited in a fresh
seeded permutation per pass. Rank r of W, micro-step m, takes samples (m * W + r) * B ... + B - 1, so a
resumed run (starting at micro-step m0) sees exactly the samples the uninterrupted run would have.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .corpus_format import check_block_format


class BlockDataset(Dataset):
    """Concatenation of litdata token-block datasets, one per source.

    Items: `input_ids` [T], `labels` [T] (the next tokens), `doc` [T] (document ordinal of each label)
    and `source` (index of the source). Labels of `blocked` documents (source index -> ordinals) are
    IGNORE_INDEX: a blocklisted document still fills its block but is not learned from.
    """

    def __init__(self, dirs: list[str], blocked: dict[int, np.ndarray] | None = None):
        self.dirs, self.blocked = dirs, blocked or {}
        self._datasets = None
        self.lengths = [self._open(d).__len__() for d in dirs]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])

    @staticmethod
    def _open(path: str):
        from litdata import StreamingDataset

        check_block_format(path)
        return StreamingDataset(path)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict:
        if self._datasets is None:  # opened lazily: in each dataloader worker, after fork
            self._datasets = [self._open(d) for d in self.dirs]
        src = int(np.searchsorted(self.offsets, index, side="right") - 1)
        item = self._datasets[src][int(index - self.offsets[src])]
        tokens = torch.from_numpy(np.asarray(item["tokens"], dtype=np.int64))
        doc = torch.from_numpy(np.asarray(item["doc"], dtype=np.int64))
        labels = tokens[1:].clone()
        if len(self.blocked.get(src, ())):
            labels[torch.from_numpy(np.isin(doc[1:].numpy(), self.blocked[src]))] = -100
        return {"input_ids": tokens[:-1], "labels": labels, "doc": doc[1:], "source": src}


def mixture_stream(lengths: list[int], weights, n: int, seed: int, phase_starts: list[int] | None = None) -> np.ndarray:
    """Global indices (into the concatenated sources) of the first n samples of the run.

    `weights` is one weight per source, or one such list per phase; phase p covers samples
    phase_starts[p] .. phase_starts[p+1] - 1 (the curriculum). Each source is walked in a fresh seeded
    permutation per pass, continuing across phases.
    """
    lengths = np.asarray(lengths)
    phases = [weights] if np.ndim(weights) == 1 else list(weights)
    starts = list(phase_starts or [0]) + [n]
    if len(starts) != len(phases) + 1:
        raise ValueError(f"{len(phases)} weight lists but {len(starts) - 1} phase starts")
    choice = np.zeros(n, dtype=np.int64)
    for p, w in enumerate(phases):
        lo, hi = min(starts[p], n), min(starts[p + 1], n)
        w = np.where(lengths > 0, np.asarray(w, dtype=np.float64), 0.0)
        if w.sum() <= 0:
            raise ValueError(f"phase {p}: no source with data has a positive weight")
        if len(lengths) > 1 and hi > lo:
            choice[lo:hi] = np.random.default_rng([seed, 1_000 + p]).choice(len(lengths), size=hi - lo, p=w / w.sum())
    out = np.empty(n, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for s, length in enumerate(lengths):
        where = np.flatnonzero(choice == s)
        if not len(where):
            continue
        passes = (len(where) + length - 1) // length
        order = np.concatenate([np.random.default_rng([seed, s, p]).permutation(length) for p in range(passes)])
        out[where] = offsets[s] + order[: len(where)]
    return out


class ResumableSampler(Sampler[int]):
    """This rank's share of the global stream from micro-step `start_micro_step` to `total_micro_steps`."""

    def __init__(
        self,
        lengths,
        weights,
        batch_size: int,
        total_micro_steps: int,
        start_micro_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        phase_starts: list[int] | None = None,
    ):
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.start, self.total = start_micro_step, total_micro_steps
        self.stream = mixture_stream(lengths, weights, total_micro_steps * world_size * batch_size, seed, phase_starts)

    def __len__(self) -> int:
        return max(self.total - self.start, 0) * self.batch_size

    def __iter__(self):
        b, w = self.batch_size, self.world_size
        for m in range(self.start, self.total):
            base = (m * w + self.rank) * b
            yield from self.stream[base : base + b].tolist()
