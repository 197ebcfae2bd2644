"""Where documents come from. A document is a dict with `id`, `text` and `source`.

The built-in `python_stdlib` corpus (the source files of the running interpreter's standard library)
exists on every machine, so the default pipeline needs no download. jsonl / jsonl.gz / json.gz files
(one object per line) and folders of .txt files are read too; the full curation pipeline plugs in here.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import sysconfig
from pathlib import Path
from typing import Iterator

BUILTIN_SOURCES = ("python_stdlib",)


def stdlib_files() -> list[Path]:
    """The interpreter's standard-library .py files, sorted, without site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts]
    return sorted(files)


def _read_stdlib(name: str) -> Iterator[dict]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield {"id": str(path.relative_to(root)), "text": text, "source": name}


def _open_text(path: str):
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def _read_jsonl(path: str, name: str, text_field: str) -> Iterator[dict]:
    with _open_text(path) as f:
        for line_no, line in enumerate(f):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no + 1}: not valid JSON ({e.msg})") from None
            text = obj.get(text_field)
            if not isinstance(text, str):
                raise ValueError(f"{path}:{line_no + 1}: no string field {text_field!r}")
            doc_id = obj.get("id") or f"{os.path.basename(path)}:{line_no}"
            yield {"id": str(doc_id), "text": text, "source": name}


def _expand(patterns: list[str]) -> list[str]:
    files = []
    for pat in patterns:
        matched = sorted(glob.glob(os.path.expanduser(pat), recursive=True))
        if not matched:
            raise FileNotFoundError(f"data source path {pat!r} matches no file")
        files.extend(matched)
    return files


def read_source(name: str, builtin: str | None = None, paths: list[str] | None = None,
                text_field: str = "text") -> Iterator[dict]:
    """Documents of one configured source, in a deterministic order."""
    if builtin:
        if builtin not in BUILTIN_SOURCES:
            raise ValueError(f"unknown builtin source {builtin!r}; allowed: {list(BUILTIN_SOURCES)}")
        yield from _read_stdlib(name)
        return
    for path in _expand(paths or []):
        if os.path.isdir(path):
            for txt in sorted(Path(path).rglob("*.txt")):
                yield {"id": str(txt), "text": txt.read_text(encoding="utf-8", errors="replace"), "source": name}
        elif path.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".json")):
            yield from _read_jsonl(path, name, text_field)
        elif path.endswith(".txt"):
            yield {"id": path, "text": Path(path).read_text(encoding="utf-8", errors="replace"), "source": name}
        else:
            raise ValueError(f"{path}: unsupported file type; use .jsonl, .jsonl.gz, .json.gz, .txt or a folder")


def source_fingerprint(builtin: str | None, paths: list[str] | None) -> str:
    """Changes when the source's files change (paths, sizes, modification times)."""
    files = [str(p) for p in stdlib_files()] if builtin else _expand(paths or [])
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{f}:{st.st_size}:{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]


def is_validation(doc_id: str, val_fraction: float) -> bool:
    """Hold out a document by a hash of its id: stable across runs, machines and orderings."""
    bucket = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64
    return bucket < val_fraction
