"""`lmstack prepare-merge`: the stages of a sharded `lmstack prepare` job that need every shard."""

from __future__ import annotations

import gzip
import json
import shutil
import time
from pathlib import Path

import numpy as np

from .pipeline import Sizer, _minhash, _minhash_stage, _Removed, _tokenize, _write_documents, publish
from .readers import Document
from .stats import Accounting, StageStats


def merge_shards(shard_dirs: list[str], output_dir: str, cfg: dict) -> dict:
    """`lmstack prepare-merge`: the last stages over the folders of a sharded `lmstack prepare` job.

    MinHash clusters are found across all shards from the band keys each shard saved (only those small
    arrays are loaded together), duplicates are dropped, the accounting of every shard is summed, and
    the kept documents are tokenized into one corpus."""
    dirs = [Path(d) for d in shard_dirs]
    stats = [json.loads((d / "stats.json").read_text()) for d in dirs]
    expected = {s.get("num_shards") for s in stats}
    if len(expected) != 1 or None in expected or len(dirs) != expected.pop():
        raise ValueError(f"prepare-merge needs every shard of one sharded job; got {len(dirs)} folders "
                         f"with num_shards {sorted(str(s.get('num_shards')) for s in stats)}")
    out = Path(output_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
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
    removed = _Removed(tmp / "removed" if cfg.get("keep_removed") else None)
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
    acct.write(tmp)
    publish(tmp, out)
    return acct.to_dict()
