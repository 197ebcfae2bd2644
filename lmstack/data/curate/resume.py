"""What a rerun of `lmstack prepare` may reuse: the keys of its finished tasks (a read task's: its input's
fingerprint, byte range and the config; the later stages': every read task and the config), and the
fingerprint that says whether a finished output came from the same inputs and config."""

from __future__ import annotations

import json
import logging
import os

from .inputs import file_fingerprint

log = logging.getLogger(__name__)

# Config keys that change how a run is carried out, not what it produces.
RUN_ONLY_KEYS = ("num_workers", "executor", "ray")  # where tasks run, not what they produce


def config_files(cfg) -> list[dict]:
    """Fingerprints of the files the config names (blocklists, a given tokenizer, eval sets to decontaminate
    against): a changed blocklist changes the results as much as a changed input."""
    named = [f for kw in (cfg.filters or {}).values() if isinstance(kw, dict) for f in kw.get("files") or []]
    named += [cfg.tokenize.tokenizer if cfg.tokenize is not None else None]
    named += [kw.get("model") for kw in (cfg.quality or {}).values() if isinstance(kw, dict)]
    evals = cfg.decontaminate.tasks if cfg.decontaminate is not None else []
    for task in evals:  # an eval set is a file or a task folder
        named.append(os.path.join(task, "requests.jsonl.gz") if os.path.isdir(os.path.expanduser(task)) else task)
    return [file_fingerprint(os.path.expanduser(f)) for f in named if f and os.path.exists(os.path.expanduser(f))]


def _digest(value) -> str:
    import xxhash

    return xxhash.xxh64(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def produced_by(cfg) -> dict:
    """The prepare section (a PrepareSection) as a mapping, without the keys that say only where tasks run
    (and without `imports`, `quality` and `tokenize.buckets` when there are none, as before the options existed:
    the same fingerprints)."""
    from dataclasses import asdict

    later = ("imports", "quality")
    out = {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY_KEYS and (k not in later or v)}
    if out["tokenize"] is not None and out["tokenize"]["buckets"] is None:
        del out["tokenize"]["buckets"]
    return out


def task_key(fingerprint: dict, span: dict, cfg, named: list[dict]) -> str:
    """A finished read task is reused only for the same input content and byte range, the same config (what
    is not where-to-run) and the same files the config names."""
    return _digest([fingerprint, span, produced_by(cfg), named])


def job_key(task_keys: list[str], cfg) -> str:
    """The stages after reading depend on every read task and the whole config."""
    return _digest([task_keys, produced_by(cfg)])


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
