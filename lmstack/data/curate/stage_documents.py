"""How a task's documents wait between stages: one JSON line each in `docs.jsonl` (with `i`, the document's
index among what its read task kept, so positions stay fixed through every stage), its byte offset in
`offsets.npy` for random access (verification reads only the documents of candidate pairs), and the gzip
members that become the outputs (`documents.jsonl.gz`, `removed/RULE.jsonl.gz`): members are concatenated
in task order, and a gzip member without a time in its header makes the same bytes on every run."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .readers import Document


def write_docs(folder: Path, docs: Iterable[tuple[int, Document]]) -> int:
    offsets, index = [], []
    with open(folder / "docs.jsonl", "wb") as f:
        for i, d in docs:
            offsets.append(f.tell())
            index.append(i)
            row = {"i": i, "id": d.id, "source": d.source, "text": d.text, "metadata": d.metadata}
            row["origin"] = list(d.origin)
            for key in ("size", "size+tokens"):  # what the Sizer measured, still valid for this text
                hit = d.cache.get(key)
                if hit is not None and hit[0] is d.text:
                    row["size"] = [key, *hit[1]]
            f.write(json.dumps(row).encode() + b"\n")
    np.save(folder / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(folder / "index.npy", np.asarray(index, dtype=np.int64))
    return len(index)


def _document(row: dict) -> Document:
    d = Document(row["id"], row["text"], row["source"], row.get("metadata") or {})
    d.origin = tuple(row.get("origin") or ("", None))
    if "size" in row:
        key, *size = row["size"]
        d.cache[key] = (d.text, tuple(size))
    return d


def read_docs(folder: Path) -> Iterator[tuple[int, Document]]:
    with open(folder / "docs.jsonl", "rb") as f:
        for line in f:
            row = json.loads(line)
            yield row["i"], _document(row)


def read_some(folder: Path, wanted: np.ndarray) -> dict[int, str]:
    """The texts of the documents with these indices (random access through the offsets)."""
    index, offsets = np.load(folder / "index.npy"), np.load(folder / "offsets.npy")
    rows = np.searchsorted(index, wanted)
    out = {}
    with open(folder / "docs.jsonl", "rb") as f:
        for i, r in zip(wanted.tolist(), rows.tolist()):
            f.seek(int(offsets[r]))
            out[i] = json.loads(f.readline())["text"]
    return out


class Members:
    """Gzip members of one task, one per output file name (written only if something goes in)."""

    def __init__(self, folder: Path):
        self.folder, self.files = folder, {}

    def write(self, name: str, row: dict) -> None:
        if name not in self.files:
            path = self.folder / "members" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            self.files[name] = io.TextIOWrapper(gzip.GzipFile(path, "wb", mtime=0), encoding="utf-8")
        self.files[name].write(json.dumps(row) + "\n")

    def close(self) -> list[str]:
        for f in self.files.values():
            f.close()
        return sorted(self.files)


def document_row(d: Document) -> dict:
    return {"id": d.id, "source": d.source, "text": d.text, "metadata": d.metadata}


def removed_row(d: Document) -> dict:
    """A removed document for removed/RULE.jsonl.gz, with what matched when a rule says (decontamination) and
    its quality scores."""
    row = {"id": d.id, "source": d.source, "text": d.text}
    if "decontamination" in d.metadata:
        row["matched"] = d.metadata["decontamination"]
    if isinstance(d.metadata.get("quality"), dict):
        row["quality"] = d.metadata["quality"]
    return row


def concat_members(folders: Iterable[Path], name: str, out: Path) -> None:
    """One output file from the tasks' members of that name, in task order (a valid multi-member gzip)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        for folder in folders:
            part = folder / "members" / name
            if part.is_file():
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 20):
                        f.write(chunk)
