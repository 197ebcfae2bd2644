"""The LightningDataModule: prepares (or reuses) the corpus, then serves token blocks.

Training batches come from a `ResumableSampler` through a `StreamLoader`, whose state (the samples trained
on) is in every checkpoint, so resuming continues the data exactly where it stopped. Validation walks each
source's held-out blocks in order.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from lmstack.config.schema import DataSection, SourceSection

from .corpus_cache import prepare_corpus
from .corpus_format import PreparedCorpus, block_count, load_prepared, tokenizer_digest
from .dataset import BlockDataset, MixtureStream, ResumableSampler, StreamLoader
from .tokenizer import token_byte_lengths


class LMDataModule(L.LightningDataModule):
    """Sources are either raw (files or builtin, prepared together into one cached corpus with one
    tokenizer) or folders written by `lmstack prepare`, which can be mixed when they share a tokenizer."""

    def __init__(
        self,
        data: DataSection,
        sources: list[SourceSection],
        cache_dir: str,
        seed: int = 0,
        total_micro_steps: int | None = None,
        phases: list[dict] | None = None,
        tokenizer: str | None = None,
    ):
        """`data` and `sources`: the checked config sections (the one place their defaults live)."""
        super().__init__()
        self.data, self.sources, self.cache_dir = data, list(sources), cache_dir
        self.seq_len, self.batch_size, self.num_workers = data.seq_len, data.batch_size, data.num_workers
        self.seed, self.total_micro_steps = seed, total_micro_steps
        # curriculum: [{"start_sample": int, "weights": {source: weight}}], the first phase is the sources'
        self.phases = phases or []
        self.tokenizer = tokenizer  # a tokenizer.json every source must use (init_from's), or None
        self.corpus: PreparedCorpus | None = None  # the (first) corpus: its tokenizer is the run's
        # (index of the configured source, its corpus, the source's name in it, share of the source's weight)
        self.parts: list[tuple[int, PreparedCorpus, str, float]] = []

    def prepare_data(self) -> None:
        if self.parts:  # prepared already: Lightning calls this for every fit and validate of the run
            return
        if any(s.prepared for s in self.sources):
            self._load_prepared()
            return
        d = self.data
        self.corpus = prepare_corpus(
            [asdict(s) for s in self.sources],  # as mappings: what the cache key hashes
            self.cache_dir,
            d.seq_len,
            d.val_fraction,
            d.vocab_size,
            d.min_frequency,
            d.tokenizer_train_bytes,
            d.max_docs,
            tokenizer=self.tokenizer,
        )
        self.parts = [(i, self.corpus, s.name, 1.0) for i, s in enumerate(self.sources)]

    def _load_prepared(self) -> None:
        """Each configured folder's sources (one, for a folder `lmstack prepare` wrote, or its quality buckets),
        or the one its `part` names; a folder's weight is shared among its sources in proportion to their
        training blocks."""
        self.parts = []
        first = None
        for i, src in enumerate(self.sources):
            corpus = load_prepared(src.prepared, self.seq_len, self.cache_dir)
            digest = tokenizer_digest(corpus.tokenizer_path)
            if first is None and self.tokenizer and digest != tokenizer_digest(Path(self.tokenizer)):
                raise ValueError(
                    f"data_mix: {src.prepared} was tokenized with another tokenizer than the "
                    f"checkpoint's (init_from); prepare it again with "
                    f"prepare.tokenize.tokenizer={self.tokenizer}"
                )
            if first is None:
                self.corpus, first = corpus, digest
            elif digest != first:
                raise ValueError(
                    f"data_mix: {src.prepared} was tokenized with another tokenizer than "
                    f"{self.corpus.root}; prepare it again with "
                    f"prepare.tokenize.tokenizer={self.corpus.tokenizer_path}"
                )
            blocks = {n: m["blocks"]["train"] for n, m in corpus.meta["sources"].items()}
            if src.part is not None:
                if src.part not in blocks:
                    raise ValueError(
                        f"data_mix.sources ({src.name}): {src.prepared} has no source {src.part!r}; "
                        f"its sources are {sorted(blocks)}"
                    )
                blocks = {src.part: blocks[src.part]}
            total = sum(blocks.values()) or 1
            self.parts += [(i, corpus, n, b / total) for n, b in blocks.items()]

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is None:  # other ranks: the corpus is on disk already, this only finds it
            self.prepare_data()
        self.train_set = BlockDataset(
            [c.split_dir(n, "train") for _, c, n, _ in self.parts], self._blocked(), self.data.instance_filter_rule
        )
        self.val_set = BlockDataset([c.split_dir(n, "val") for _, c, n, _ in self.parts])

    def _blocked(self) -> dict[int, np.ndarray] | None:
        """Document ordinals per source whose ids are on the blocklist: their tokens get no loss."""
        if not self.data.blocklist:
            return None
        from .curate.blocklists import read_list

        ids = read_list(self.data.blocklist)
        blocked = {}
        for src, path in enumerate(self.document_files):
            with open(path) as f:
                hits = [row["ordinal"] for row in map(json.loads, f) if row["id"] in ids]
            blocked[src] = np.asarray(hits, dtype=np.int64)
        return blocked

    @property
    def document_files(self) -> list:
        """Per dataset source (the `source` index in batches), the file mapping document ordinals to ids."""
        return [c.root / n / "documents.jsonl" for _, c, n, _ in self.parts]

    def source_weights(self) -> list[list[float]]:
        """One weight list per phase (the sources' own weights first, then each curriculum phase's)."""
        phases = [[s.weight for s in self.sources]]
        phases += [[p["weights"].get(s.name, 0.0) for s in self.sources] for p in self.phases]
        return [[w[i] * share for i, _, _, share in self.parts] for w in phases]

    def epochs(self, world_size: int) -> dict[str, float]:
        """Passes over each source's training blocks that the run's samples make, counted on the sampler's own
        stream: above 1, the source's documents repeat (an upsampled quality bucket, a small source)."""
        if not self.total_micro_steps:
            return {}
        lengths = [block_count(c.split_dir(n, "train")) for _, c, n, _ in self.parts]
        starts = [0] + [p["start_sample"] for p in self.phases]
        stream = MixtureStream(lengths, self.source_weights(), self.seed, starts)
        samples = self.total_micro_steps * self.batch_size * world_size
        stream.take(samples, samples)  # the samples before are only counted
        many = Counter(i for i, *_ in self.parts)
        return {
            (self.sources[i].name if many[i] == 1 else f"{self.sources[i].name}/{n}"): int(d) / max(length, 1)
            for (i, _, n, _), d, length in zip(self.parts, stream.drawn, lengths)
        }

    @property
    def tokenizer_vocab_size(self) -> int:
        return self.corpus.meta["vocab_size"]

    def token_bytes(self) -> torch.Tensor:
        return torch.from_numpy(token_byte_lengths(self.corpus.tokenizer()))

    def _loader(self, dataset, **kw) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.batch_size, num_workers=self.num_workers, persistent_workers=False, **kw
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        accum = trainer.accumulate_grad_batches if trainer else 1
        # the checkpoint's loader state sets the start (StreamLoader.load_state_dict); the global step is the
        # same place for checkpoints written before the loader had a state
        start = trainer.global_step * accum if trainer else 0
        total = self.total_micro_steps or max(start + 1, len(self.train_set) // self.batch_size)
        sampler = ResumableSampler(
            self.train_set.lengths,
            self.source_weights(),
            self.batch_size,
            total,
            start,
            trainer.global_rank if trainer else 0,
            trainer.world_size if trainer else 1,
            self.seed,
            [0] + [p["start_sample"] for p in self.phases],
        )
        return StreamLoader(
            self.train_set,
            sampler,
            taken=lambda: trainer.fit_loop.epoch_loop.batch_progress.current.ready if trainer else 0,
            num_workers=self.num_workers,
            persistent_workers=False,
        )

    def val_dataloader(self) -> DataLoader:
        n = len(self.val_set)
        idx = np.arange(n)
        most = self.data.val_max_blocks
        if most and n > most:  # an even spread over all sources' held-out blocks, the same every time
            idx = np.unique(np.linspace(0, n - 1, most).round().astype(int))
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:  # each rank scores its share; the module sums
            idx = idx[trainer.global_rank :: trainer.world_size]
        return self._loader(Subset(self.val_set, idx.tolist()))
