"""`lmstack prepare` into object storage (`output_dir=s3://bucket/prefix`): the job runs in a local work folder
(`prepare.work_dir`, or one in lmstack's cache named for the URL), then its outputs are uploaded, the marker
last. The prefix is lmstack's own only when empty or holding lmstack's marker: objects lmstack did not write
are never overwritten, and only the objects an earlier upload listed are replaced."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from lmstack.ownership import MARKER, OwnershipError

from .. import storage


def default_work_dir(url: str) -> str:
    import xxhash

    base = os.environ.get("LMSTACK_CACHE") or "~/.cache/lmstack"
    return os.path.join(os.path.expanduser(base), "prepare", xxhash.xxh64(url.encode()).hexdigest())


def _remote_marker(url: str) -> dict | None:
    """The marker of an lmstack upload at this prefix, None when the prefix is empty; refuses otherwise."""
    names = storage.listing(url)
    if not names:
        return None
    if MARKER not in names:
        raise OwnershipError(f"{url} holds objects not written by lmstack ({names[0]}, ...); choose an empty prefix")
    marker = json.loads(storage.read_text(storage.join(url, MARKER)))
    if marker.get("kind") != "prepare":
        raise OwnershipError(f"{url} was written by lmstack as a {marker.get('kind')!r} folder, not a 'prepare' one")
    return marker


def refuse_overlap(url: str, inputs: list[str]) -> None:
    prefix = url.rstrip("/") + "/"
    for inp in inputs:
        if inp.startswith(prefix) or prefix.startswith(inp.rstrip("/") + "/") or inp.rstrip("/") == url.rstrip("/"):
            raise OwnershipError(f"output {url} overlaps the input {inp}; choose a prefix apart from the inputs")


def prepare_to_url(inputs: list[str], url: str, cfg, run_local) -> dict:
    """Run `run_local(inputs, folder, cfg)` in a local folder, then upload what it wrote to `url`."""
    from .inputs import expand_inputs

    refuse_overlap(url, expand_inputs(inputs))
    before = _remote_marker(url)  # before any work: a prefix that is not ours is refused at once
    folder = storage.local(cfg.work_dir or default_work_dir(url))
    stats = run_local(inputs, folder, replace(cfg, work_dir=None))
    local_marker = json.loads((Path(folder) / MARKER).read_text())
    if before and before.get("fingerprint") == local_marker.get("fingerprint") and before.get("status") == "complete":
        return stats  # this upload is there already
    names = sorted(
        str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith(".lmstack")
    )
    old = sorted(set((before or {}).get("files", [])) - set(names))  # the earlier upload's, not replaced
    # while uploading, the marker says so and lists every object that may be there (ours, all of them)
    _write_marker(url, {**local_marker, "status": "uploading", "files": sorted({*names, *old})})
    storage.remove(url, old)
    storage.upload(folder, url, names)
    _write_marker(url, {**local_marker, "files": names, "uploaded_from": folder})
    return stats


def _write_marker(url: str, marker: dict) -> None:
    fs, root = storage.fs_of(url)
    fs.pipe_file(f"{root.rstrip('/')}/{MARKER}", json.dumps(marker, indent=2).encode())
