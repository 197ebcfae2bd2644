"""Random access to token blocks, and a resumable, deterministic sampler that mixes sources by weight.

The sampler defines one global stream of samples for the whole run: sample g is drawn from a source
chosen with probability proportional to its weight, and within a source blocks are visited in a fresh
seeded permutation per pass. Rank r of W, micro-step m, takes samples (m * W + r) * B ... + B - 1, so a
resumed run (starting at micro-step m0) sees exactly the samples the uninterrupted run would have.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .corpus_format import block_count, check_block_format


class BlockDataset(Dataset):
    """Concatenation of litdata token-block datasets, one per source.

    Items: `input_ids` [T], `labels` [T] (the next tokens), `doc` [T] (document ordinal of each label)
    and `source` (index of the source). Labels of `blocked` documents (source index -> ordinals) are
    IGNORE_INDEX: a blocklisted document still fills its block but is not learned from. With an
    `instance_filter` (max period, min count: lmstack.data.instance_filter), a block of pathological
    repetition gets IGNORE_INDEX throughout, and items carry `filtered` (0 or 1) and its `repetition`
    (period, start, times; zeros when not filtered).
    """

    def __init__(
        self,
        dirs: list[str],
        blocked: dict[int, np.ndarray] | None = None,
        instance_filter: tuple[int, int] | None = None,
    ):
        self.dirs, self.blocked, self.instance_filter = dirs, blocked or {}, instance_filter
        self._datasets = None
        # every block of each source, from its index: litdata's len() is a rank's share under DDP / FSDP while
        # its indices stay global, and the sampler defines one global stream for all ranks
        self.lengths = [block_count(d) for d in dirs]
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
        item = {"input_ids": tokens[:-1], "labels": labels, "doc": doc[1:], "source": src}
        if self.instance_filter:
            from .instance_filter import repetition

            found = repetition(tokens.numpy(), *self.instance_filter)
            if found:
                labels[:] = -100
            item["filtered"] = int(found is not None)
            item["repetition"] = torch.tensor([found[k] if found else 0 for k in ("period", "start", "times")])
        return item


class MixtureStream:
    """The global sample stream of a run, generated window by window from the seed: memory does not grow with
    the run's length (a source's current permutation is the largest thing held).

    Sample g comes from a source drawn with probability proportional to its weight in g's phase (phase p
    covers samples phase_starts[p] .. phase_starts[p+1] - 1, drawn from the generator seeded [seed, 1000 + p]);
    the k-th sample drawn from source s is block perm_j[k mod length] of that source, where perm_j is the
    j = k // length-th seeded permutation [seed, s, j]: each source is walked in a fresh permutation per pass,
    continuing across phases. `take(a, b)` returns samples a .. b-1; calls go forward (a skipped range is only
    counted)."""

    def __init__(self, lengths, weights, seed: int, phase_starts: list[int] | None = None):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        phases = [weights] if np.ndim(weights) == 1 else list(weights)
        self.starts = list(phase_starts or [0])
        if len(self.starts) != len(phases):
            raise ValueError(f"{len(phases)} weight lists but {len(self.starts)} phase starts")
        self.cdfs = []
        for p, w in enumerate(phases):
            w = np.where(self.lengths > 0, np.asarray(w, dtype=np.float64), 0.0)
            if w.sum() <= 0:
                raise ValueError(f"phase {p}: no source with data has a positive weight")
            cdf = (w / w.sum()).cumsum()
            self.cdfs.append(cdf / cdf[-1])
        self.rngs = [np.random.default_rng([seed, 1_000 + p]) for p in range(len(phases))]
        self.seed, self.offsets = seed, np.concatenate([[0], np.cumsum(self.lengths)])
        self.drawn = np.zeros(len(self.lengths), dtype=np.int64)  # samples taken from each source so far
        self.perms: dict[int, tuple[int, np.ndarray]] = {}  # source -> (pass, its permutation)
        self.cursor = 0

    def _choices(self, a: int, b: int) -> np.ndarray:
        """The sources of samples a .. b-1 (a is the cursor)."""
        choice = np.zeros(b - a, dtype=np.int64)
        if len(self.lengths) > 1:
            bounds = [*self.starts, max(b, self.starts[-1])]
            for p, cdf in enumerate(self.cdfs):
                lo, hi = max(a, bounds[p]), min(b, bounds[p + 1])
                if hi > lo:  # numpy's choice with p: uniform draws placed on the cumulative weights
                    choice[lo - a : hi - a] = cdf.searchsorted(self.rngs[p].random(hi - lo), side="right")
        return choice

    def _perm(self, s: int, j: int) -> np.ndarray:
        if self.perms.get(s, (None,))[0] != j:
            self.perms[s] = (j, np.random.default_rng([self.seed, s, j]).permutation(int(self.lengths[s])))
        return self.perms[s][1]

    def take(self, a: int, b: int, chunk: int = 1 << 16) -> np.ndarray:
        if a < self.cursor:
            raise ValueError(f"samples {a}.. were passed already (the stream is at {self.cursor})")
        while self.cursor < a:  # skipped: only counted
            n = min(chunk, a - self.cursor)
            self.drawn += np.bincount(self._choices(self.cursor, self.cursor + n), minlength=len(self.lengths))
            self.cursor += n
        out = np.empty(max(b - a, 0), dtype=np.int64)
        while self.cursor < b:
            n = min(chunk, b - self.cursor)
            choice, base = self._choices(self.cursor, self.cursor + n), self.cursor - a
            for s in np.unique(choice).tolist():
                where = np.flatnonzero(choice == s)
                k = self.drawn[s] + np.arange(len(where))
                length = int(self.lengths[s])
                for j in np.unique(k // length).tolist():
                    sel = k // length == j
                    out[base + where[sel]] = self.offsets[s] + self._perm(s, j)[k[sel] % length]
                self.drawn[s] += len(where)
            self.cursor += n
        return out


def mixture_stream(lengths: list[int], weights, n: int, seed: int, phase_starts: list[int] | None = None) -> np.ndarray:
    """Global indices (into the concatenated sources) of the first n samples of the run (`MixtureStream`)."""
    return MixtureStream(lengths, weights, seed, phase_starts).take(0, n)


class ResumableSampler(Sampler[int]):
    """This rank's share of the global stream from micro-step `start_micro_step` to `total_micro_steps`.

    Its length is the whole run's (`total_micro_steps` batches), wherever it starts: Lightning counts a resumed
    epoch's batches from the checkpoint's, so a loader that reported only the batches left ended the epoch early
    and began the stream again from `start_micro_step` (a resumed run then trained on data it had seen)."""

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
        self.plan = (lengths, weights, seed, phase_starts)  # the stream is generated as it is read
        MixtureStream(*self.plan)  # checks the weights now

    def __len__(self) -> int:
        return self.total * self.batch_size

    def __iter__(self):
        b, w, stream = self.batch_size, self.world_size, MixtureStream(*self.plan)
        for m in range(self.start, self.total):
            base = (m * w + self.rank) * b
            yield from stream.take(base, base + b).tolist()


class StreamLoader(DataLoader):
    """The training DataLoader over a `ResumableSampler`, resumable the way Lightning asks (`state_dict` /
    `load_state_dict`, saved in every checkpoint under the fit loop's `combined_loader`).

    Its state is the global samples the run has trained on, `taken()` micro-batches (Lightning's count of the
    epoch's batches, rescaled by elastic resume) times the samples each takes on all ranks: a count that does
    not depend on the world size, so a run resumed on another number of processes continues the same stream.
    """

    def __init__(self, dataset, sampler: ResumableSampler, taken, **kw):
        super().__init__(dataset, batch_size=sampler.batch_size, sampler=sampler, drop_last=True, **kw)
        self.taken = taken  # () -> micro-batches this rank has trained on

    def _per_batch(self) -> int:
        return self.sampler.batch_size * self.sampler.world_size

    def state_dict(self) -> dict:
        return {"samples": int(self.taken()) * self._per_batch(), "seed": self.sampler.plan[2]}

    def load_state_dict(self, state: dict) -> None:
        samples, per = int(state["samples"]), self._per_batch()
        if samples % per:
            raise ValueError(
                f"the checkpoint's data position ({samples} samples) is not a whole number of micro-batches of "
                f"{per} samples (data.batch_size x world size) on this run"
            )
        if state.get("seed", self.sampler.plan[2]) != self.sampler.plan[2]:
            raise ValueError(f"the checkpoint's data stream has seed {state['seed']}, this run {self.sampler.plan[2]}")
        self.sampler.start = samples // per
