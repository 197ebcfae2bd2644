"""Where lmstack reads and writes: local paths, or fsspec URLs (`s3://`, `gs://`, `hf://`, `file://`, ...).

A URL's file system comes from fsspec with its own configuration (for S3: the AWS_* environment variables,
AWS_ENDPOINT_URL for an S3-compatible store, or ~/.aws); `file://` is a local path. Local paths keep using
the operating system directly, so the embedded default does not depend on fsspec.
"""

from __future__ import annotations

import os
import posixpath
from typing import IO


def is_url(path) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def local(path) -> str:
    """A local path for a path or `file://` URL."""
    path = str(path)
    return os.path.expanduser(path[len("file://") :] if path.startswith("file://") else path)


def fs_of(url: str):
    """(file system, path inside it) of a URL."""
    from fsspec.core import url_to_fs

    return url_to_fs(url)


def _with_protocol(url: str, path: str) -> str:
    return f"{url.split('://', 1)[0]}://{path}"


def open_binary(path) -> IO[bytes]:
    if is_url(path):
        fs, p = fs_of(str(path))
        return fs.open(p, "rb")
    return open(local(path), "rb")


def isfile(path) -> bool:
    if is_url(path):
        fs, p = fs_of(str(path))
        return fs.isfile(p)
    return os.path.isfile(local(path))


def size(path) -> int:
    if is_url(path):
        fs, p = fs_of(str(path))
        return int(fs.size(p))
    return os.path.getsize(local(path))


def glob(pattern: str) -> list[str]:
    """The files a URL or URL glob names, as URLs, sorted."""
    fs, p = fs_of(pattern)
    found = fs.glob(p) if any(c in p for c in "*?[") else ([p] if fs.exists(p) else [])
    return sorted(_with_protocol(pattern, f) for f in found if fs.isfile(f))


def fingerprint(url: str) -> dict:
    """What identifies an object's content: its URL, size and the store's version tag (ETag, or mtime)."""
    fs, p = fs_of(url)
    try:
        info = fs.info(p)
    except OSError as e:
        return {"path": url, "unreadable": type(e).__name__}
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or info.get("md5")
    return {"path": url, "size": info.get("size"), "tag": str(tag)}


def join(root, *parts: str) -> str:
    """A path under `root`, for a URL or a local path."""
    if is_url(root):
        return posixpath.join(str(root), *parts)
    return os.path.join(local(root), *parts)


def read_text(path) -> str:
    with open_binary(path) as f:
        return f.read().decode("utf-8")


def upload(folder: str, url: str, names: list[str]) -> None:
    """Copy these files (relative paths) of a local folder to a URL prefix."""
    fs, root = fs_of(url)
    for name in names:
        fs.put_file(os.path.join(folder, name), posixpath.join(root, name))


def remove(url: str, names: list[str]) -> None:
    fs, root = fs_of(url)
    paths = [posixpath.join(root, n) for n in names]
    existing = [p for p in paths if fs.exists(p)]
    if existing:
        fs.rm(existing)


def listing(url: str) -> list[str]:
    """Relative names of every object under a URL prefix."""
    fs, root = fs_of(url)
    if not fs.exists(root):
        return []
    return sorted(posixpath.relpath(f, root) for f in fs.find(root))
