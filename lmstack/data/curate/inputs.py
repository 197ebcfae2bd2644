"""Which input files a job reads (paths, globs with `**`, folders, URLs) and what identifies their content
(the fingerprints that decide whether earlier results may be reused)."""

from __future__ import annotations

import fnmatch
import glob
import json
import os
from pathlib import Path
from typing import Iterator

from .. import storage


def _walk(root: str, parts: list[str]) -> Iterator[str]:
    """Paths under `root` matching the glob components `parts` (`**`: any depth). Directory symlinks
    are followed, but a folder already visited for the same remaining pattern (by its device and
    inode) is not entered again, so a symlink loop ends. Hidden entries match only a pattern that
    starts with a dot, as with glob."""
    seen: set[tuple[int, int, tuple]] = set()

    def visit(folder: str, rest: tuple):
        try:
            st = os.stat(folder)
            entries = sorted(os.listdir(folder))
        except OSError:
            return
        if (st.st_dev, st.st_ino, rest) in seen:
            return
        seen.add((st.st_dev, st.st_ino, rest))
        if rest[0] != "**":
            yield from match(folder, rest, entries)
            return
        visible = [e for e in entries if not e.startswith(".")]
        if rest[1:]:
            yield from match(folder, rest[1:], entries)
        else:
            yield from (os.path.join(folder, e) for e in visible if not os.path.isdir(os.path.join(folder, e)))
        for e in visible:
            if os.path.isdir(os.path.join(folder, e)):
                yield from visit(os.path.join(folder, e), rest)

    def match(folder: str, rest: tuple, entries: list[str]):
        head, tail = rest[0], rest[1:]
        for e in entries:
            if not fnmatch.fnmatchcase(e, head) or (e.startswith(".") and not head.startswith(".")):
                continue
            path = os.path.join(folder, e)
            if not tail:
                yield path
            elif os.path.isdir(path):
                yield from visit(path, tail)

    yield from visit(root, tuple(parts))


def _glob(pattern: str) -> list[str]:
    if "**" not in pattern:
        return sorted(glob.glob(pattern))
    parts = Path(pattern).parts
    first = next(i for i, p in enumerate(parts) if glob.has_magic(p))
    root = str(Path(*parts[:first])) if first else "."
    found = _walk(root, list(parts[first:]))
    return sorted(found if first else (os.path.relpath(p) for p in found))


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files named by paths, globs (`**` recursive, safe from symlink loops) and folders (a folder's .txt
    files count as one input); each file listed once, by its real path, in the order first named."""
    files, seen = [], set()
    for pat in patterns:
        if storage.is_url(pat):  # s3://, gs://, hf://...: objects, by their URL
            matched = storage.glob(pat)
            if not matched:
                raise FileNotFoundError(f"input {pat!r} matches no object")
            files += [f for f in matched if f not in seen]
            seen.update(matched)
            continue
        matched = _glob(storage.local(pat))
        if not matched:
            raise FileNotFoundError(f"input {pat!r} matches no file")
        for f in matched:
            real = os.path.realpath(f)
            if real not in seen:
                seen.add(real)
                files.append(f)
    return files


def file_fingerprint(path: str, hash_below: int = 64 << 20) -> dict:
    """What identifies an input's content: path, size, modification time, and (for files under
    `hash_below` bytes, where it is cheap) an xxhash of the bytes. Folders: their .txt files."""
    import xxhash

    if storage.is_url(path):
        return storage.fingerprint(path)
    if os.path.isdir(path):
        h = xxhash.xxh64()
        for f in sorted(Path(path).rglob("*.txt")):
            if f.is_file():
                h.update(json.dumps(file_fingerprint(str(f), hash_below), sort_keys=True).encode())
        return {"path": os.path.realpath(path), "folder": h.hexdigest()}
    try:
        st = os.stat(path)
    except OSError as e:  # the reader makes it a reject; the fingerprint only records it
        return {"path": os.path.realpath(path), "unreadable": type(e).__name__}
    fp = {"path": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if not os.path.isfile(path):
        return fp | {"kind": "not a regular file"}
    if st.st_size < hash_below:
        h = xxhash.xxh64()
        try:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            fp["xxh64"] = h.hexdigest()
        except OSError as e:
            fp["unreadable"] = type(e).__name__
    return fp
