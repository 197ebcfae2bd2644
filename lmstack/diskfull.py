"""A full disk (or a spent quota), said as what it is: the file that could not be written, the bytes it was
writing and the space left, instead of the riddle the writer raised (torch.save's `unexpected pos`, a bare
`[Errno 28]` from deep inside a library).

`writing(path, nbytes)` wraps one write: when it fails for lack of space its own temporary files are removed
and `DiskFull` is raised in its place. `disk_full(exc)` finds an out-of-space error anywhere in an exception's
chain, for the command boundaries (`lmstack.failures`) that turn it into one line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

OUT_OF_SPACE = {errno.ENOSPC, errno.EDQUOT}


class DiskFull(OSError):
    """Writing `path` failed for lack of space: the message names it, the bytes written or to write, and the
    space left on its file system."""

    def __init__(
        self, path, nbytes: int | None, free: int | None, reason: str = "no space left on device", written=None
    ):
        self.path, self.nbytes, self.free, self.reason, self.written = str(path), nbytes, free, reason, written
        if nbytes is not None:
            size = f"{nbytes:,} bytes to write"
        elif written is not None:
            size = f"{written:,} bytes written when the disk filled"
        else:
            size = "its size unknown"
        left = f"{free:,} bytes free" if free is not None else "free space unknown"
        super().__init__(errno.ENOSPC, f"disk full ({reason}): could not write {path} ({size}, {left} there)")

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):  # raised in a worker process, re-raised in the parent
        return (DiskFull, (self.path, self.nbytes, self.free, self.reason, self.written))


def chain(exc: BaseException | None):
    """`exc`, its causes and contexts, and the per-rank failures a DCP CheckpointException carries."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        for failure in (getattr(exc, "failures", None) or {}).values():
            inner = getattr(failure, "exc", failure)  # DCP wraps each rank's exception with its traceback
            if isinstance(inner, BaseException):
                yield from chain(inner)
        exc = exc.__cause__ or exc.__context__


def disk_full(exc: BaseException | None) -> OSError | None:
    """The out-of-space OSError behind `exc` (anywhere in its `chain`), or None."""
    for e in chain(exc):
        if isinstance(e, OSError) and e.errno in OUT_OF_SPACE:
            return e
        for code in OUT_OF_SPACE:  # a Rust writer's error (safetensors) carries the errno in its text only
            if f"(os error {code})" in str(e):
                return OSError(code, os.strerror(code))
    return None


def short_write(exc: BaseException | None) -> bool:
    """torch.save into a stream that another writer owns (DCP's shard files) reports a full disk only as a
    short write, `[enforce fail at inline_container.cc] . unexpected pos`, with no OSError behind it."""
    return any("unexpected pos" in str(e) and "inline_container" in str(e) for e in chain(exc))


def free_bytes(path) -> int | None:
    """Free bytes on the file system that holds `path` (its nearest existing parent)."""
    p = Path(os.path.abspath(os.path.expanduser(str(path))))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def tensor_bytes(obj) -> int:
    """The bytes of the tensors and arrays in a nested checkpoint-like object: what a write of it needs at least."""
    import numpy as np
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    if isinstance(obj, (str, bytes)):
        return len(obj)
    return 0


def size_of(path: Path) -> int:
    """Bytes in a file or a folder's files (0 when gone)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def as_disk_full(error: BaseException, path, nbytes: int | None = None, temporary=()) -> DiskFull | None:
    """`error` as a `DiskFull` naming `path` (None when it is not one), once `temporary` (the write's own files
    or folders) is removed; a `DiskFull` already is one (its temporaries go too)."""
    err = disk_full(error)
    if err is None and not short_write(error) and not isinstance(error, DiskFull):
        return None
    written = sum(size_of(Path(t)) for t in temporary)
    for t in temporary:
        _remove(Path(t))
    if isinstance(error, DiskFull):
        return error
    free = free_bytes(path)
    if err is None and not (nbytes is not None and free is not None and free < nbytes):
        return None  # a short write with room to spare: not a full disk
    reason = "disk quota exceeded" if err is not None and err.errno == errno.EDQUOT else "no space left on device"
    return DiskFull(path, nbytes, free, reason, written if temporary else None)


@contextlib.contextmanager
def writing(path, nbytes: int | None = None, temporary=()):
    """Run a write of `path` (`nbytes` when known); if it fails for lack of space, remove `temporary` and raise
    `DiskFull` naming `path` (`as_disk_full`)."""
    try:
        yield
    except BaseException as e:
        full = as_disk_full(e, path, nbytes, temporary)
        if full is None or full is e:
            raise
        raise full from e


def describe(exc: BaseException, where: str | None = None) -> str | None:
    """One line for an out-of-space failure (None for any other): a `DiskFull`'s own message from the chain, else
    the file the OSError names, else `where` (the folder the command was writing)."""
    err = disk_full(exc)
    if err is None:
        return None
    found = next((e for e in chain(exc) if isinstance(e, DiskFull)), None)
    if found is not None:
        return str(found)
    path = err.filename or where or "a file"
    return str(DiskFull(path, None, free_bytes(path) if path != "a file" else None, err.strerror.lower()))
