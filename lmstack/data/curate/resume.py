"""What a rerun of `lmstack prepare` may reuse: each finished input file's results, saved under a key of its
input's fingerprint and the config (loaded back through an allow-list unpickler), and the fingerprints
that say whether a finished output, or a shard, came from the same inputs and config."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .executors import ordered_map
from .readers import file_fingerprint

log = logging.getLogger(__name__)

# Config keys that change how a run is carried out, not what it produces.
RUN_ONLY_KEYS = ("num_workers", "shard_index", "num_shards", "executor", "ray")  # where, not what


def _part_types() -> list:
    """What a saved part holds besides plain values, for torch.load(weights_only=True)'s allow-list: our
    dataclasses, Counter, and numpy arrays (the MinHash band keys)."""
    import numpy as np

    from .readers import Document
    from .stats import StageStats
    from .steps import StepResults

    core = np._core if hasattr(np, "_core") else np.core
    dtypes = [getattr(np.dtypes, n) for n in np.dtypes.__all__]
    return [
        StepResults,
        Document,
        StageStats,
        np.ndarray,
        np.dtype,
        core.multiarray._reconstruct,
        core.multiarray.scalar,
        *dtypes,
    ]


def config_files(cfg: dict) -> list[dict]:
    """Fingerprints of the files the config names (blocklists, a given tokenizer): a changed blocklist
    changes the results as much as a changed input."""
    named = [f for kw in (cfg.get("filters") or {}).values() if isinstance(kw, dict) for f in kw.get("files") or []]
    named += [(cfg.get("tokenize") or {}).get("tokenizer")]
    return [file_fingerprint(os.path.expanduser(f)) for f in named if f and os.path.exists(os.path.expanduser(f))]


def _part_key(fingerprint: dict, cfg: dict, named: list[dict]) -> str:
    """A finished file's result is reused only for the same input content, the same per-file config and
    the same files the config names."""
    import xxhash

    per_file = {k: v for k, v in cfg.items() if k not in RUN_ONLY_KEYS}
    return xxhash.xxh64(json.dumps([fingerprint, per_file, named], sort_keys=True, default=str).encode()).hexdigest()


def parts(
    files: list[str], fingerprints: list[dict], cfg: dict, named: list[dict], num_workers: int, parts_dir: Path, worker
):
    """Per-file results in input order. Each finished file's result is saved in `parts_dir` under a key of
    its input's fingerprint, the config and the files it names (`named`), written with torch.save to a
    temporary name, then renamed; a run started again after an interruption loads those whose key is
    unchanged with torch.load(weights_only=True), so a planted file cannot run code."""
    import torch

    saved = [parts_dir / f"{_part_key(fp, cfg, named)}.pt" for fp in fingerprints]
    todo = [i for i in range(len(files)) if not saved[i].exists()]
    if len(todo) < len(files):
        log.info("resuming: %d of %d input files done", len(files) - len(todo), len(files))
    jobs = [(files[i], cfg) for i in todo]
    ray_address = (cfg.get("ray") or {}).get("address")
    computed = ordered_map(worker, jobs, cfg.get("executor", "local"), num_workers, ray_address)
    try:
        for i in range(len(files)):
            if saved[i].exists():
                with torch.serialization.safe_globals(_part_types()):
                    yield torch.load(saved[i], weights_only=True)
                continue
            part = next(computed)
            partial = saved[i].with_suffix(f".{os.getpid()}.partial")
            torch.save(part, partial)
            os.replace(partial, saved[i])
            yield part
    finally:
        computed.close()


def changes(old: dict | None, new: dict) -> str:
    """What differs between two run fingerprints, for a message: input files and config keys."""
    if not old:
        return "no record of the earlier run's inputs"
    before = {f["path"]: f for f in old.get("inputs", [])}
    after = {f["path"]: f for f in new.get("inputs", [])}
    what = [
        f"input {p} {'added' if p not in before else 'removed' if p not in after else 'changed'}"
        for p in sorted(set(before) | set(after))
        if before.get(p) != after.get(p)
    ]

    def flat(d, key=""):
        return {
            k2: v2
            for k, v in d.items()
            for k2, v2 in (flat(v, f"{key}{k}.").items() if isinstance(v, dict) else [(f"{key}{k}", v)])
        }

    a, b = flat(old.get("config", {})), flat(new.get("config", {}))
    what += [f"prepare.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return "; ".join(what[:8]) + ("; ..." if len(what) > 8 else "") if what else "nothing"


def job_fingerprint(files: list[str], cfg: dict) -> str:
    """The same for every shard of one sharded job (all its inputs, by path/size/mtime, and its config)."""
    import xxhash

    stats = [[file_fingerprint(f, hash_below=0).get(k) for k in ("path", "size", "mtime_ns")] for f in files]
    per_job = {k: v for k, v in cfg.items() if k not in ("num_workers", "shard_index")}
    return xxhash.xxh64(json.dumps([stats, per_job], sort_keys=True, default=str).encode()).hexdigest()
