"""Deduplication across the whole corpus by hash-partitioned keys: each task writes its documents' keys
sorted (`keys.npy`, with the document index `local.npy` and, for paragraphs, `para.npy`, for MinHash
`band.npy`); partition p of P takes the keys in its share of the 64-bit range from every task and decides
them alone, so no process holds all keys, and the answer does not depend on P.

A document's position is (task << 32) | index: input order, the order a one-process run sees them in. URL
and exact dedup keep the first position of each key; paragraph dedup keeps the first (position, paragraph)
of each paragraph key; MinHash emits, per bucket (band, key), an edge from its first position to each other
one (the pairs the components stage joins)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import xxhash

from .dedup import ExactDedup, MinHashDedup, ParagraphDedup, UrlDedup, normalise
from .quality import QualityClassifier

KEYS_PER_PARTITION = 4_000_000  # about 100 MB of keys and positions in one partition task
PARAGRAPH = re.compile(r"\n\s*\n")


def as_u64(key) -> int:
    return key if isinstance(key, int) else xxhash.xxh64_intdigest(str(key).encode())


def paragraph_keys(text: str, min_chars: int) -> list[tuple[int, int]]:
    """(paragraph index, key) of the paragraphs long enough to be deduplicated (as ParagraphDedup splits)."""
    return [
        (j, xxhash.xxh64_intdigest(normalise(p).encode()))
        for j, p in enumerate(PARAGRAPH.split(text))
        if len(p.strip()) >= min_chars
    ]


def drop_paragraphs(text: str, drop: set[int]) -> str:
    return "\n\n".join(p for j, p in enumerate(PARAGRAPH.split(text)) if j not in drop).strip()


def write_keys(folder: Path, step, docs: list) -> None:
    """The keys of `docs` [(index, Document)] for one dedup step, sorted by key."""
    cols: dict[str, list] = {"keys": [], "local": []}
    if isinstance(step, (UrlDedup, ExactDedup, QualityClassifier)):
        for i, d in docs:
            k = step.key(d)
            if k is not None:
                cols["keys"].append(as_u64(k))
                cols["local"].append(i)
    elif isinstance(step, ParagraphDedup):
        cols["para"] = []
        for i, d in docs:
            for j, k in paragraph_keys(d.text, step.min_chars):
                cols["keys"].append(k), cols["local"].append(i), cols["para"].append(j)
    elif isinstance(step, MinHashDedup):
        keys = step.band_keys([d.text for _, d in docs]) if docs else np.zeros((0, step.bands), np.uint64)
        cols["keys"] = keys.reshape(-1)
        cols["local"] = np.repeat([i for i, _ in docs], step.bands)
        cols["band"] = np.tile(np.arange(step.bands), len(docs))
    else:
        raise TypeError(f"{type(step).__name__} has no partitioned form")
    arrays = {
        "keys": np.asarray(cols["keys"], dtype=np.uint64),
        "local": np.asarray(cols["local"], dtype=np.int64),
        **{c: np.asarray(cols[c], dtype=np.int64) for c in ("para", "band") if c in cols},
    }
    order = np.argsort(arrays["keys"], kind="stable")
    for name, a in arrays.items():
        np.save(folder / f"{name}.npy", a[order])


def key_count(folder: Path) -> int:
    return int(np.load(folder / "keys.npy", mmap_mode="r").shape[0])


def num_partitions(total_keys: int) -> int:
    return max(1, -(-total_keys // KEYS_PER_PARTITION))


def _bounds(p: int, n: int) -> tuple[int, int | None]:
    return (p << 64) // n, None if p == n - 1 else ((p + 1) << 64) // n


def gather(task_folders: list[str], p: int, n: int, extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Partition p's keys from every task: `keys`, `pos` and the extra columns, in task order."""
    lo, hi = _bounds(p, n)
    parts: dict[str, list] = {"keys": [], "pos": [], **{c: [] for c in extra}}
    for t, folder in enumerate(task_folders):
        keys = np.load(Path(folder) / "keys.npy", mmap_mode="r")
        a = int(np.searchsorted(keys, np.uint64(lo)))
        b = len(keys) if hi is None else int(np.searchsorted(keys, np.uint64(hi)))
        parts["keys"].append(np.asarray(keys[a:b]))
        parts["pos"].append((np.asarray(np.load(Path(folder) / "local.npy", mmap_mode="r")[a:b]) + (t << 32)))
        for c in extra:
            parts[c].append(np.asarray(np.load(Path(folder) / f"{c}.npy", mmap_mode="r")[a:b]))
    return {c: np.concatenate(v) if v else np.zeros(0, np.int64) for c, v in parts.items()}


def first_seen(g: dict) -> np.ndarray:
    """Positions that are not the first of their key (URL, exact text), sorted."""
    order = np.lexsort((g["pos"], g["keys"]))
    keys = g["keys"][order]
    later = np.concatenate([[False], keys[1:] == keys[:-1]]) if len(keys) else np.zeros(0, bool)
    return np.sort(g["pos"][order][later])


def paragraphs_seen(g: dict) -> np.ndarray:
    """(position, paragraph) rows of paragraphs seen earlier in input order, sorted."""
    order = np.lexsort((g["para"], g["pos"], g["keys"]))
    keys = g["keys"][order]
    later = np.concatenate([[False], keys[1:] == keys[:-1]]) if len(keys) else np.zeros(0, bool)
    rows = np.stack([g["pos"][order][later], g["para"][order][later]], axis=1)
    return rows[np.lexsort((rows[:, 1], rows[:, 0]))] if len(rows) else rows.reshape(0, 2)


def bucket_edges(g: dict) -> np.ndarray:
    """Unique (first, other) position pairs of every MinHash bucket (band, key) with more than one document."""
    order = np.lexsort((g["pos"], g["band"], g["keys"]))
    keys, band, pos = g["keys"][order], g["band"][order], g["pos"][order]
    if not len(keys):
        return np.zeros((0, 2), np.int64)
    new = np.concatenate([[True], (keys[1:] != keys[:-1]) | (band[1:] != band[:-1])])
    first = pos[np.flatnonzero(new)][np.cumsum(new) - 1]
    edges = np.stack([first[~new], pos[~new]], axis=1)
    return np.unique(edges, axis=0) if len(edges) else edges.reshape(0, 2)


def of_task(rows: np.ndarray, t: int) -> np.ndarray:
    """The rows (sorted by position, first column) of task t, with positions turned into document indices."""
    col = rows if rows.ndim == 1 else rows[:, 0]
    a, b = np.searchsorted(col, t << 32), np.searchsorted(col, (t + 1) << 32)
    out = np.array(rows[a:b])
    if out.ndim == 1:
        return out - (t << 32)
    out[:, 0] -= t << 32
    return out
