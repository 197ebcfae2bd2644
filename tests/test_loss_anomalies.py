"""Per-sequence loss anomalies on a real run: a planted block of random rare-script characters among
ordinary prose is named (with its document, in anomalies.jsonl and the blocklist) although the batch loss
shows no spike; mode=drop leaves it out of that step's loss."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
import torch

from lmstack.data.sources import is_validation
from lmstack.run import run

from .helpers import SHARED_DATA

CUNEIFORM = [chr(c) for c in range(0x12000, 0x12399)]
PLANTED = "planted-cuneiform"


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """Brown prose, and one document of random cuneiform signs (a few blocks of it) in a source of its own."""
    root = tmp_path_factory.mktemp("planted")
    with gzip.open(SHARED_DATA / "prose" / "brown.jsonl.gz", "rt") as f:
        prose = [json.loads(line) for line in f][:120]
    (root / "prose.jsonl").write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in prose))
    rng = random.Random(0)
    signs = lambda: " ".join("".join(rng.choice(CUNEIFORM) for _ in range(rng.randint(2, 6))) for _ in range(60))  # noqa: E731
    held_out = next(f"held-out-{i}" for i in range(100) if is_validation(f"held-out-{i}", 0.1))
    assert not is_validation(PLANTED, 0.1)  # a training document; the source needs one held out too
    rows = [{"id": PLANTED, "text": signs()}, {"id": held_out, "text": signs()}]
    (root / "noise.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def train(small_cfg, root: Path, *extra: str, run_dir: Path | None = None):
    cfg = small_cfg(
        "data_mix=prose",
        f"data_mix.sources=[{{name:prose,paths:[{root / 'prose.jsonl'}]}},"
        f"{{name:noise,paths:[{root / 'noise.jsonl'}],weight:0.015}}]",
        "data.batch_size=16",
        "train.max_tokens=40960",  # 40 steps of 16 x 64 tokens
        "callbacks.anomalies.min_history=64",
        "callbacks.spike.min_history=8",
        *extra,
    )
    if run_dir is not None:
        cfg.run_dir = str(run_dir)
    return cfg, run(cfg)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_a_planted_block_is_named_without_a_batch_spike_and_drop_leaves_it_out(planted, small_cfg, tmp_path):
    from .test_stability import scalars

    cfg, _ = train(small_cfg, planted)
    run_dir = Path(cfg.run_dir)
    found = read_jsonl(run_dir / "anomalies.jsonl")
    assert found, "the planted block was not named"
    assert all(a["documents"][0]["id"] == PLANTED for a in found)  # no prose sequence named
    assert all(a["z"] > 6 and a["action"] == "logged" for a in found)
    assert not (run_dir / "spikes.jsonl").exists()  # the batch loss did not spike
    blocklist = (run_dir / "spike_blocklist.txt").read_text().split("\n")
    assert PLANTED in blocklist
    logged = scalars(run_dir)
    assert logged["train/loss_anomalies"][-1] == len(found)

    # mode=drop: the same stream; at the first anomaly the step's loss leaves that sequence out
    first = found[0]["step"]
    cfg2, _ = train(small_cfg, planted, "callbacks.anomalies.mode=drop", run_dir=tmp_path / "drop")
    again = read_jsonl(Path(cfg2.run_dir) / "anomalies.jsonl")
    assert again[0]["step"] == first and again[0]["action"] == "dropped"
    loss, loss_dropped = logged["train/loss"], scalars(Path(cfg2.run_dir))["train/loss"]  # index: the step
    assert loss_dropped[first] < loss[first] - 0.05  # without the planted block's high loss
    for step in range(first):
        assert loss_dropped[step] == pytest.approx(loss[step], abs=1e-6)


def test_the_score_is_the_sequence_mean_or_a_long_enough_documents_mean():
    from lmstack.plugins.callbacks.loss_anomalies import sequence_scores

    losses = torch.tensor([[1.0] * 8 + [5.0] * 8, [2.0] * 16])
    labels = torch.ones(2, 16, dtype=torch.long)
    labels[1, :8] = -100  # half of row 1 is not learned
    doc = torch.tensor([[7] * 8 + [9] * 8, [3] * 16])
    scores = sequence_scores({"labels": labels, "doc": doc}, losses, min_doc_tokens=8)
    assert scores.tolist() == [[3.0, 5.0], [2.0, 2.0]]  # row 0: document 9 alone has mean 5
    assert sequence_scores({"labels": labels, "doc": doc}, losses, min_doc_tokens=9)[0].tolist() == [3.0, 3.0]
    labels[0] = -100
    assert sequence_scores({"labels": labels, "doc": doc}, losses, 8)[0].isnan().all()
