"""The instance filter (OLMo-core's rule): blocks of pathological repetition get no loss, are counted in
TensorBoard and listed with their documents; ordinary prose is never filtered."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from lmstack.data.instance_filter import repetition
from lmstack.data.sources import is_validation
from lmstack.run import run

from .helpers import SHARED_DATA


def test_the_rule_counts_back_to_back_copies_of_short_ngrams():
    rng = np.random.default_rng(0)
    noise = lambda n: rng.integers(1000, 2000, n)  # noqa: E731  (no repetition of its own)
    gram = np.arange(13)
    at = lambda copies, g=gram: np.concatenate([noise(50), np.tile(g, copies), noise(50)])  # noqa: E731
    assert repetition(at(32)) == {"period": 13, "start": 50, "times": 32}
    assert repetition(at(31)) is None  # one copy short
    assert repetition(at(40, np.arange(14))) is None  # the period is above 13
    assert repetition(at(40, np.arange(14)), max_period=14) == {"period": 14, "start": 50, "times": 40}
    assert repetition(np.full(40, 7)) == {"period": 1, "start": 0, "times": 40}
    assert repetition(noise(4096)) is None
    assert repetition(at(8, np.arange(3)), min_count=8)["period"] == 3


@pytest.mark.slow
def test_repetitive_blocks_get_no_loss_are_counted_and_listed(tmp_path, small_cfg):
    from lmstack.data.dataset import BlockDataset

    with gzip.open(SHARED_DATA / "prose" / "brown.jsonl.gz", "rt") as f:
        prose = [json.loads(line) for line in f][:120]
    (tmp_path / "prose.jsonl").write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in prose))
    ids = [f"loop-{i}" for i in range(400)]  # 28 looping pages for training, 2 held out
    ids = [i for i in ids if not is_validation(i, 0.1)][:28] + [i for i in ids if is_validation(i, 0.1)][:2]
    rows = [{"id": i, "text": f"page {i}\n" + "the same line again\n" * 400} for i in ids]
    (tmp_path / "loops.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = small_cfg(
        "data_mix=prose",
        f"data_mix.sources=[{{name:prose,paths:[{tmp_path / 'prose.jsonl'}]}},"
        f"{{name:loops,paths:[{tmp_path / 'loops.jsonl'}],weight:0.5}}]",
        "data.instance_filter=true",
        "data.seq_len=256",  # the rule wants 32 copies: blocks of 64 tokens hold 12 of a 5-token line
        "train.max_tokens=20480",  # 20 steps of 4 blocks
    )
    result = run(cfg)
    run_dir = Path(cfg.run_dir)
    listed = [json.loads(line) for line in (run_dir / "filtered_instances.jsonl").read_text().splitlines()]
    assert listed and all(d["id"].startswith("loop-") for r in listed for d in r["documents"])
    assert all(r["times"] >= 32 and r["period"] <= 13 and "the same line" in r["preview"] for r in listed)
    from .test_stability import scalars

    counted = scalars(run_dir)["data/filtered_instances"]
    assert counted[-1] == len(listed) and result["steps"] == 20

    # over the whole corpus: every block of a looping page is filtered, no block of prose is
    (loops,) = Path(cfg.paths.cache_dir).glob("corpora/*/loops")  # the corpus this run prepared
    corpus = loops.parent
    train = BlockDataset([str(corpus / s / "train") for s in ("prose", "loops")], instance_filter=(13, 32))
    filtered = [train[i]["filtered"] for i in range(len(train))]
    prose_blocks = train.lengths[0]
    assert sum(filtered[:prose_blocks]) == 0
    assert sum(filtered[prose_blocks:]) >= train.lengths[1] - 30  # but for a block at a page's end
    assert all(train[i]["labels"].max() == -100 for i in range(prose_blocks, len(train)) if filtered[i])
    assert all((train[i]["labels"] >= 0).any() for i in range(prose_blocks))
