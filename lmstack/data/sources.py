"""Where documents come from. A document is a dict with `id`, `text` and `source`.

The built-in `python_stdlib` corpus (the source files of the running interpreter's standard library)
exists on every machine, so the default pipeline needs no download. Files (jsonl, jsonl.gz / .zst, json.gz,
parquet, WARC, .txt and folders of them) are read by the curation pipeline's readers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sysconfig
from pathlib import Path
from typing import Iterator

BUILTIN_SOURCES = ("python_stdlib",)


def stdlib_files() -> list[Path]:
    """The interpreter's standard-library .py files, sorted, without site-packages."""
    return list(_stdlib_files())


@functools.cache
def _stdlib_files() -> tuple[Path, ...]:
    """Walked once per process (about 0.6 s): the running interpreter's library does not change under it."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts]
    return tuple(sorted(files))


def _read_stdlib(name: str) -> Iterator[dict]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield {"id": str(path.relative_to(root)), "text": text, "source": name}


def read_source(
    name: str, builtin: str | None = None, paths: list[str] | None = None, text_field: str = "text"
) -> Iterator[dict]:
    """Documents of one configured source, in a deterministic order."""
    if builtin:
        if builtin not in BUILTIN_SOURCES:
            raise ValueError(f"unknown builtin source {builtin!r}; allowed: {list(BUILTIN_SOURCES)}")
        yield from _read_stdlib(name)
        return
    from .curate.inputs import expand_inputs
    from .curate.readers import Reject, read_inputs

    for item in read_inputs(expand_inputs(paths or []), name, text_field):
        if isinstance(item, Reject):
            where = f"{item.file}:{item.line}" if item.line else item.file
            raise ValueError(
                f"{where}: {item.reason} (curate such input with `lmstack prepare`, which sets "
                "bad documents aside in rejects.jsonl)"
            )
        yield {"id": item.id, "text": item.text, "source": name}


def source_files(builtin: str | None, paths: list[str] | None) -> list[str]:
    """The files a configured source reads."""
    from .curate.inputs import expand_inputs

    return [str(p) for p in stdlib_files()] if builtin else expand_inputs(paths or [])


def source_fingerprint(builtin: str | None, paths: list[str] | None) -> str:
    """Changes when the source's files change (paths, sizes, modification times, content hashes)."""
    from .curate.inputs import file_fingerprint

    h = hashlib.sha256()
    for f in source_files(builtin, paths):
        h.update(json.dumps(file_fingerprint(f), sort_keys=True).encode())
    return h.hexdigest()[:16]


def is_validation(doc_id: str, val_fraction: float) -> bool:
    """Hold out a document by a hash of its id: stable across runs, machines and orderings."""
    bucket = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64
    return bucket < val_fraction
