"""`prepare.executor`: the same pipeline on processes here (`local`) or as Ray tasks (`ray`, a Ray started
for the job), with 1 or 2 workers, writes the same bytes: documents, token blocks, statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmstack.data.curate.pipeline import run_prepare

from .helpers import SHARED_DATA, prepare_cfg

TIMING = ("seconds", "docs_per_second", "cpu_utilisation")  # how long it took, not what it wrote
STAMPED = ("updated_at",)  # litdata's index.json records when it was written


def outputs(folder: Path) -> dict[str, bytes]:
    """Every file the job wrote, by relative path (stats.json without its timing fields)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if not p.is_file() or rel.startswith(".lmstack") or rel == "report.png" or rel == "report.md":
            continue
        if rel == "stats.json" or rel.endswith("index.json"):
            drop = TIMING if rel == "stats.json" else STAMPED
            content = {k: v for k, v in json.loads(p.read_text()).items() if k not in drop}
            out[rel] = json.dumps(content, sort_keys=True).encode()
        else:
            out[rel] = p.read_bytes()
    return out


@pytest.mark.slow
def test_local_and_ray_executors_write_the_same_bytes(tmp_path, capfd):
    inputs = [str(SHARED_DATA / "web" / "*.json*.gz")]
    base = {"tokenize.vocab_size": 512, "tokenize.seq_len": 64, "filters.language": "null"}
    results = {}
    for executor, workers in (("local", 1), ("local", 2), ("ray", 2)):
        cfg = prepare_cfg(**base, executor=executor, num_workers=workers)
        out = tmp_path / f"{executor}-{workers}"
        capfd.readouterr()
        stats = run_prepare(inputs, str(out), cfg)
        if executor == "ray":  # the tasks really went through a Ray of the job's own, shut down after it
            import ray

            assert "Started a local Ray instance" in capfd.readouterr().err and not ray.is_initialized()
        assert stats["files"] > 2 and stats["docs_out"] > 0
        results[(executor, workers)] = outputs(out)
    reference = results[("local", 1)]
    assert "documents.jsonl.gz" in reference and any(k.endswith(".bin") for k in reference)
    for key, got in results.items():
        assert got.keys() == reference.keys(), key
        assert [k for k in got if got[k] != reference[k]] == [], key
