"""Rows of the small JSON-lines (or parquet) files users hand to commands: eval text, eval sets to decontaminate
against, chat and preference datasets. One reader, so every such file accepts the same formats (.jsonl,
.jsonl.gz, .json.gz, .parquet) and a bad line is refused the same way, naming it. Corpora go through
`lmstack.data.curate.readers` instead, which turns bad records into rejects and goes on."""

from __future__ import annotations

import gzip
import json
import os
from typing import Iterator


def iter_rows(path: str) -> Iterator[tuple[int, object]]:
    """(line number, value) of each non-blank line of a JSON-lines file, gzip or plain."""
    path = os.path.expanduser(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {n}: not JSON ({e})") from None


def read_rows(path: str) -> list:
    """Every row of a JSON-lines file or, for .parquet, of the table."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(os.path.expanduser(path)).to_pylist()
    return [row for _, row in iter_rows(path)]
