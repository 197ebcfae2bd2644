"""`lmstack prepare-merge`: the stages of a sharded `lmstack prepare` job that need every shard."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np

from .pipeline import _minhash, _minhash_stage, _tokenize, _write_documents
from .readers import Document
from .stats import Accounting, StageStats
from .steps import Removed, Sizer


def check_shards(dirs: list[Path]) -> list[dict]:
    """The shards' stats, in shard order, if the folders are every shard of one finished sharded job:
    no folder twice, no shard missing or twice, none from another job (inputs or config)."""
    from lmstack.ownership import read_marker, resolve

    real = [resolve(d) for d in dirs]
    twice = sorted({str(d) for d in real if real.count(d) > 1})
    if twice:
        raise ValueError(f"prepare-merge: {twice[0]} is named twice")
    stats = []
    for d in real:
        marker = read_marker(d)
        if not (d / "stats.json").is_file() or not marker or marker.get("status") != "complete":
            raise ValueError(f"prepare-merge: {d} is not a finished `lmstack prepare` shard (no complete stats.json)")
        st = json.loads((d / "stats.json").read_text())
        if st.get("num_shards") is None or st.get("shard_index") is None or st.get("job") is None:
            raise ValueError(f"prepare-merge: {d} is not a shard of a sharded job (prepare.num_shards unset)")
        stats.append(st | {"_dir": d})
    jobs = sorted({s["job"] for s in stats})
    if len(jobs) > 1:
        other = next(s["_dir"] for s in stats if s["job"] != stats[0]["job"])
        raise ValueError(
            f"prepare-merge: {other} comes from another job than {stats[0]['_dir']} (other inputs or "
            "config); merge the shards of one job"
        )
    n = stats[0]["num_shards"]
    by_index: dict[int, Path] = {}
    for st in stats:
        if st["shard_index"] in by_index:
            raise ValueError(
                f"prepare-merge: {by_index[st['shard_index']]} and {st['_dir']} are both shard {st['shard_index']}"
            )
        by_index[st["shard_index"]] = st["_dir"]
    missing = sorted(set(range(n)) - set(by_index))
    if missing:
        raise ValueError(
            f"prepare-merge: shard{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {n} missing"
        )
    return sorted(stats, key=lambda st: st["shard_index"])


def merge_shards(shard_dirs: list[str], output_dir: str, cfg: dict) -> dict:
    """`lmstack prepare-merge`: the last stages over the folders of a sharded `lmstack prepare` job.

    MinHash clusters are found across all shards from the band keys each shard saved (only those small
    arrays are loaded together), duplicates are dropped, the accounting of every shard is summed, and
    the kept documents are tokenized into one corpus."""
    from lmstack.ownership import OwnedFolder

    from .pipeline import check_config

    check_config(cfg)
    stats = check_shards([Path(d) for d in shard_dirs])
    dirs = [st.pop("_dir") for st in stats]
    with OwnedFolder(output_dir, "prepare", dirs) as owned:
        owned.update(status="running", fingerprint={"shards": [str(d) for d in dirs], "job": stats[0]["job"]})
        tmp = owned.staging()
        acct = _merge(dirs, stats, cfg, tmp)
        acct.write(tmp)
        owned.publish(tmp, last="stats.json")
        return acct.to_dict()


def _merge(dirs: list[Path], stats: list[dict], cfg: dict, tmp: Path) -> Accounting:
    t0 = time.time()
    acct = Accounting()
    stages: dict[str, StageStats] = {}
    for st in stats:
        acct.docs_in += st["docs_in"]
        acct.rejected += st["rejected"]
        acct.removed.update(st["removed"])
        for raw in st["stages"]:
            stages.setdefault(raw["name"], StageStats(raw["name"])).add(StageStats(**raw))
    acct.stages = list(stages.values())
    with open(tmp / "rejects.jsonl", "w") as f:
        for d in dirs:
            f.write((d / "rejects.jsonl").read_text())
    kept = []
    for d in dirs:
        with gzip.open(d / "documents.jsonl.gz", "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                kept.append(Document(row["id"], row["text"], row["source"], row.get("metadata") or {}))
    removed = Removed(tmp / "removed" if cfg.get("keep_removed") else None)
    mh = _minhash(cfg)
    if mh and kept:
        keys = np.concatenate([np.load(d / "band_keys.npy") for d in dirs if (d / "band_keys.npy").exists()])
        if len(keys) != len(kept):
            raise ValueError(f"band keys for {len(keys)} documents but {len(kept)} documents in the shards")
        kept = _minhash_stage(kept, keys, acct, removed, Sizer.from_cfg(cfg))
    removed.close()
    _write_documents(tmp / "documents.jsonl.gz", kept)
    _tokenize(kept, tmp, cfg, acct)
    acct.extra.update(shards=len(dirs), seconds=round(time.time() - t0, 2))
    return acct
