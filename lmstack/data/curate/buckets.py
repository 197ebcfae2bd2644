"""Quality buckets (`prepare.tokenize.buckets`): the tokenized corpus split by one classifier's score into
sources of its own, `<source>_q0` (the lowest scores) to `<source>_qN` (the highest), cut at job-wide quantiles
of the score, so that a data mix can weight them (DCLM, FineWeb-Edu and OLMo 2 upsample their best bucket).

The cuts need every document's score first: each output task keeps its documents' scores (`scores.npy`), the
driver takes the quantiles over all of them, and every tokenize task puts each document in its bucket. The
cuts depend on the multiset of scores only, so any split into tasks gives the same buckets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .build import quality_classifiers

SCORES = "scores.npy"  # an output task's file: its documents' scores, in its documents' order


def check_buckets(cfg) -> None:
    """A bucket section names a configured classifier and increasing quantiles strictly between 0 and 1."""
    buckets = cfg.tokenize.buckets if cfg.tokenize is not None else None
    if buckets is None:
        return
    names = [c.classifier for c in quality_classifiers(cfg)]
    if buckets.by not in names:
        raise ValueError(
            f"prepare.tokenize.buckets.by={buckets.by!r} names no prepare.quality classifier (configured: {names}); "
            "add one, e.g. +prepare.quality.NAME={model: PATH}"
        )
    q = buckets.quantiles
    if not q or any(not 0.0 < x < 1.0 for x in q) or any(b <= a for a, b in zip(q, q[1:])):
        raise ValueError(f"prepare.tokenize.buckets.quantiles={q}: increasing shares strictly between 0 and 1")


def names(source: str, buckets) -> list[str]:
    """The sources a job writes: its one source, or one per bucket, lowest scores first."""
    return [source] if buckets is None else [f"{source}_q{k}" for k in range(len(buckets.quantiles) + 1)]


def write_scores(folder: Path, docs: list, by: str) -> None:
    """An output task's scores of classifier `by`, in its documents' order."""
    np.save(folder / SCORES, np.array([d.metadata["quality"][by] for _, d in docs], dtype=np.float64))


def cuts(folders: list[Path], quantiles: list[float]) -> list[float]:
    """The scores at the job-wide quantiles, over every output task's documents."""
    scores = np.concatenate([np.load(Path(f) / SCORES) for f in folders])
    return np.quantile(scores, quantiles).tolist() if len(scores) else [0.0] * len(quantiles)


def bucket(score: float, edges: list[float]) -> int:
    """Bucket k holds the scores from edge k-1 (included) up to edge k (excluded)."""
    return int(np.searchsorted(edges, score, side="right"))


def describe(by: str, quantiles: list[float], edges: list[float], k: int) -> dict:
    """meta.json's record of bucket k: the classifier, the quantile range and the score range it covers."""
    q, e = [0.0, *quantiles, 1.0], [None, *edges, None]
    return {"by": by, "quantiles": [q[k], q[k + 1]], "scores": [e[k], e[k + 1]]}
