"""Decoding with a model sharded over ranks (FSDP2, 2 gloo processes): every rank runs the same number of
forward passes until all are done, so a rank that reaches its end token first does not leave the others
waiting in a parameter gather (GRPO's rollouts on several ranks)."""

from __future__ import annotations

import json

import pytest

from .helpers import run_worker_on_ranks


@pytest.mark.slow
def test_ranks_decode_in_lockstep_and_match_the_unsharded_model(tmp_path):
    run_worker_on_ranks("lockstep_worker.py", tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["got"] == r["expected"] for r in ranks), ranks
    assert len(ranks[0]["got"]) < len(ranks[1]["got"]) == 12  # rank 0 stopped early, rank 1 went on
