"""The read stage's tasks: an input file, or a byte range of a big JSONL file, so that one 10 GB file is many
tasks. Plain JSONL is cut at line starts near every `task_bytes`, and each range's first line number comes from
a parallel count of the ranges before it (ids and rejects name the same lines as a whole-file read). A
compressed JSONL file is cut by offsets in its decompressed stream, estimated from its size: each task
decompresses from the start and skips what is not its own (decompression is a small share of a task's work,
the filters are most of it). Other formats (parquet, WARC, text folders) are one task per file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .. import storage
from .readers import JSONL_SUFFIXES, compressed

COMPRESSION_GUESS = 4  # decompressed bytes per compressed byte assumed when cutting a compressed file


@dataclass(frozen=True)
class InputTask:
    path: str
    start: int = 0
    stop: Optional[int] = None  # None: to the end
    first_line: Optional[int] = None  # the number of the line at `start` (plain files)

    @property
    def span(self) -> Optional[tuple]:
        return None if (self.start, self.stop) == (0, None) else (self.start, self.stop, self.first_line)

    def key(self) -> dict:
        return {"start": self.start, "stop": self.stop}


def _line_start_after(f, offset: int) -> int:
    """The first line start at or after `offset` in an open binary file."""
    if offset == 0:
        return 0
    f.seek(offset - 1)
    if f.read(1) == b"\n":
        return offset
    f.readline()
    return f.tell()


def count_newlines(job: tuple) -> int:
    path, start, stop = job
    n = 0
    with storage.open_binary(path) as f:
        f.seek(start)
        left = stop - start
        while left > 0 and (chunk := f.read(min(left, 8 << 20))):
            n += chunk.count(b"\n")
            left -= len(chunk)
    return n


def plan_tasks(files: list[str], task_bytes: int, ex) -> list[InputTask]:
    """Every input file as one or more tasks, in input order; `ex` runs the line counts of plain files."""
    tasks, counts = [], []
    for path in files:
        size = storage.size(path) if storage.isfile(path) else 0
        if not path.endswith(JSONL_SUFFIXES) or size * (COMPRESSION_GUESS if compressed(path) else 1) <= task_bytes:
            tasks.append([InputTask(path)])
            continue
        if compressed(path):
            n = -(-size * COMPRESSION_GUESS // task_bytes)
            tasks.append(
                [InputTask(path, i * task_bytes, None if i == n - 1 else (i + 1) * task_bytes) for i in range(n)]
            )
            continue
        with storage.open_binary(path) as f:
            cuts = sorted({_line_start_after(f, o) for o in range(0, size, task_bytes)} | {size})
        ranges = [(a, b) for a, b in zip(cuts, cuts[1:]) if a < b]
        tasks.append([InputTask(path, a, b) for a, b in ranges])
        counts += [(path, a, b) for a, b in ranges]
    newlines = dict(zip(counts, ex.map(count_newlines, counts)))
    out = []
    for file_tasks in tasks:
        line = 1
        for t in file_tasks:
            if (t.path, t.start, t.stop) in newlines:
                out.append(InputTask(t.path, t.start, t.stop, line))
                line += newlines[(t.path, t.start, t.stop)]
            else:
                out.append(t)
    return out
