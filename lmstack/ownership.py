"""Folders lmstack writes, and the rule that it never deletes or overwrites what it did not create.

Every output folder (a `lmstack prepare` output, a cached training corpus, an eval or export folder, a
run directory) carries a marker file with a small manifest: what wrote it, when, on which host, from what
inputs, and whether it is complete. lmstack writes into a folder only when it is new, empty, or marked as
its own; otherwise it refuses before any work, naming the folder. Paths are resolved (`..`, symlinks)
before the check, and an output that equals, contains or lies inside an input is refused.

A lock file inside the folder (an `flock`, released by the kernel when the process dies) makes a second
process on the same folder refuse at once, naming the holder, or wait for it (`wait=True`: the corpus
cache, which every rank of a job may ask for). Temporary folders are created inside the owned folder
with unique names (`tempfile.mkdtemp`), never as guessable siblings.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterable

MARKER = ".lmstack.json"
LOCK = ".lmstack.lock"
VERSION = 1


class OwnershipError(RuntimeError):
    """An output lmstack may not write (not its own, overlapping an input, or in use)."""


def resolve(path: str | os.PathLike) -> Path:
    """The absolute path with `~`, `..` and symlinks resolved (what the checks compare)."""
    return Path(os.path.expanduser(str(path))).resolve()


def refuse_overlap(out: Path, inputs: Iterable[str | os.PathLike], what: str = "output") -> None:
    """An output may not be, contain or lie inside an input (replacing it would lose the input)."""
    for item in inputs:
        if "://" in str(item) and not str(item).startswith("file://"):
            continue  # an object in a store cannot be a local output's file
        inp = resolve(item)
        if inp == out or inp.is_relative_to(out) or out.is_relative_to(inp):
            relation = "is" if inp == out else "contains" if inp.is_relative_to(out) else "lies inside"
            raise OwnershipError(f"{what} {out} {relation} the input {inp}; choose a folder apart from the inputs")


def read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("writer") == "lmstack" else None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


class OwnedFolder:
    """`with OwnedFolder(path, kind, inputs) as owned:` claims `path` for this process (see the module
    docstring); `owned.marker` is the manifest, `owned.update(...)` changes it."""

    def __init__(
        self,
        path: str | os.PathLike,
        kind: str,
        inputs: Iterable[str | os.PathLike] = (),
        wait: bool = False,
        foreign_ok: Iterable[str] = (),
    ):
        self.path, self.kind, self.wait = resolve(path), kind, wait
        self.inputs = [str(resolve(i)) for i in inputs]
        self.foreign_ok = set(foreign_ok)  # entries another tool writes first (Hydra's .hydra in a run dir)
        self.marker: dict = {}
        self._lock = None
        self._staged: list[Path] = []  # staging folders this process made (removed if the disk fills)

    # ---- the checks ----------------------------------------------------------------------------------
    def _foreign_entries(self) -> list[str]:
        return sorted(e for e in os.listdir(self.path) if e not in {LOCK, *self.foreign_ok})

    def _check_owner(self) -> dict | None:
        if self.path.exists() and not self.path.is_dir():
            raise OwnershipError(f"{self.path} exists and is not a folder; lmstack will not replace it")
        if not self.path.exists():
            return None
        marker = read_marker(self.path)
        if marker is None:
            entries = self._foreign_entries()
            if entries:
                raise OwnershipError(
                    f"{self.path} is not empty and was not written by lmstack (no {MARKER}; it "
                    f"holds {', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}); "
                    "lmstack never replaces what it did not create: choose a new or empty folder"
                )
        elif marker.get("kind") != self.kind:
            raise OwnershipError(
                f"{self.path} was written by lmstack as a {marker.get('kind')!r} folder, not a "
                f"{self.kind!r} one; choose another folder"
            )
        return marker

    def _acquire(self) -> None:
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise OwnershipError(
                f"{self.path} is in use by {holder}; wait for it to finish or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0
        )
        self._lock = fd

    # ---- the context ----------------------------------------------------------------------------------
    def __enter__(self) -> "OwnedFolder":
        refuse_overlap(self.path, self.inputs)
        self._check_owner()  # before anything is written into the folder
        self.path.mkdir(parents=True, exist_ok=True)
        self._acquire()
        try:
            marker = self._check_owner()  # again, now that no other lmstack process can change it
        except OwnershipError:
            self.__exit__(None, None, None)
            raise
        if marker is None:
            marker = {
                "writer": "lmstack",
                "version": VERSION,
                "kind": self.kind,
                "created": time.time(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "status": "new",
            }
        self.marker = {**marker, "inputs": self.inputs[:1000]}
        _write_json(self.path / MARKER, self.marker)
        return self

    def __exit__(self, kind=None, error=None, tb=None) -> None:
        try:
            if error is not None:
                self._after_failure(error)
        finally:
            if self._lock is not None:
                fcntl.flock(self._lock, fcntl.LOCK_UN)
                os.close(self._lock)
                self._lock = None

    def _after_failure(self, error: BaseException) -> None:
        """A full disk while writing here: this process's staging folders go (what was published stays, and the
        marker still says it is not complete) and the error names the file, or this folder when it named none."""
        from .diskfull import as_disk_full, disk_full

        where = getattr(disk_full(error), "filename", None) or self.path
        full = as_disk_full(error, where, None, self._staged)
        if full is not None and full is not error:
            raise full from error

    # ---- writing inside ----------------------------------------------------------------------------
    def update(self, **fields) -> None:
        self.marker.update(fields, updated=time.time())
        _write_json(self.path / MARKER, self.marker)

    @property
    def complete(self) -> bool:
        return self.marker.get("status") == "complete"

    def staging(self) -> Path:
        """A new folder inside this one, unique to this process, for results before they are published."""
        self._staged.append(Path(tempfile.mkdtemp(prefix=".staging-", dir=self.path)))
        return self._staged[-1]

    def publish(self, staging: Path, last: str | None = None) -> None:
        """The staged results replace the folder's previous results: only what lmstack published here
        before (the marker lists it) and its own work folders (`.work`, `.staging-*`) are removed; an entry
        someone else put in the folder stays, and one that a result would overwrite is refused. The entry
        `last` (the one whose presence means complete) is moved in last."""
        names = sorted(os.listdir(staging), key=lambda n: n == last)
        ours = set(self.marker.get("files") or [])
        clash = [n for n in names if (self.path / n).exists() and n not in ours]
        if clash:
            raise OwnershipError(
                f"{self.path / clash[0]} was not written by lmstack; it would be overwritten, so "
                f"nothing was published (the results are in {staging})"
            )
        self.update(status="publishing")
        for entry in self.path.iterdir():
            if entry == staging or not (
                entry.name in ours or entry.name == ".work" or entry.name.startswith(".staging-")
            ):
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for name in names:
            os.replace(staging / name, self.path / name)
        staging.rmdir()
        self.update(status="complete", finished=time.time(), files=names)
