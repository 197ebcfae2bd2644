"""Shared fixtures (the helpers they use are in tests/helpers)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .helpers import (
    FSDP_RUN,
    MUON,
    SHARED_DATA,
    SMALL,
    compose_cfg,
    prepare_cfg,
    train_on_ranks,
    write_harness_tasks,
)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One prepared-corpus cache for the whole session."""
    return tmp_path_factory.mktemp("lmstack-cache")


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory):
    """The shared web samples through the whole `lmstack prepare` pipeline, tokenized into 64-token blocks."""
    from lmstack.data.curate.pipeline import run_prepare

    out = tmp_path_factory.mktemp("prepared") / "web"
    cfg = prepare_cfg(**{"tokenize.vocab_size": 512, "tokenize.seq_len": 64, "tokenize.val_fraction": 0.1})
    run_prepare([str(SHARED_DATA / "web" / "*.json*.gz"), str(SHARED_DATA / "web" / "*.warc.gz")], str(out), cfg)
    return out


@pytest.fixture(scope="session")
def prepared_prose_dir(prepared_dir):
    """The Brown Corpus prepared with `prepared_dir`'s tokenizer, so that the two folders can be mixed."""
    from lmstack.data.curate.pipeline import run_prepare

    out = prepared_dir.parent / "brown"
    cfg = prepare_cfg(
        "prose",
        **{
            "tokenize.seq_len": 64,
            "tokenize.val_fraction": 0.1,
            "source": "brown",
            "tokenize.tokenizer": str(prepared_dir / "tokenizer.json"),
        },
    )
    run_prepare([str(SHARED_DATA / "prose" / "brown.jsonl.gz")], str(out), cfg)
    return out


@pytest.fixture(scope="session")
def small_ckpt(tmp_path_factory, cache_dir):
    """A real 2-step run of the SMALL config: the checkpoint adaptation tests start from."""
    from lmstack.run import run

    out = tmp_path_factory.mktemp("small-pretrain")
    run(compose_cfg(SMALL, run_dir=out / "run", cache_dir=cache_dir))
    return out / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def fsdp_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    """10 steps of FSDP2 on 2 ranks with a sharded checkpoint at step 5 and in-loop evals every 5 steps: the
    run the FSDP tests compare against and start from (its folder, with the corpus cache, and its reports)."""
    out = tmp_path_factory.mktemp("fsdp")
    (out / "tasks").mkdir()
    mc, gen = write_harness_tasks(out / "tasks")  # lm-eval tasks too: multiple choice and generate_until
    harness = f"evals.harness={{tasks: [{mc}, {gen}], limit: 15}}"
    return out, train_on_ranks(out / "fsdp", out / "cache", *FSDP_RUN, harness, launcher="lightning")


@pytest.fixture(scope="session")
def ddp_run(fsdp_run, tmp_path_factory) -> list[dict]:
    """The same 10 steps on 2 DDP ranks (fsdp_run's corpus), garbage collection synchronised every 2 steps:
    what FSDP2 must match, and the run GC sync is checked on."""
    out = tmp_path_factory.mktemp("ddp")
    gc_every = ("callbacks.gc.every_n_steps=2", "callbacks.gc.generation=2")
    return train_on_ranks(out / "ddp", fsdp_run[0] / "cache", "strategy=ddp", MUON, *gc_every)


@pytest.fixture
def small_cfg(tmp_path, cache_dir):
    def make(*overrides):
        return compose_cfg([*SMALL, *overrides], run_dir=tmp_path / "run", cache_dir=cache_dir)

    return make


@pytest.fixture(scope="session")
def quality_model(tmp_path_factory) -> Path:
    """A fastText classifier of the Brown Corpus (positive) against nlp-corpus: its folder (model.bin,
    metrics.json, report.md), trained once for the quality tests and the executors' byte-identity test."""
    from lmstack.cli import main

    out = tmp_path_factory.mktemp("quality") / "brown-vs-nlp"
    brown, nlp = SHARED_DATA / "prose" / "brown.jsonl.gz", SHARED_DATA / "prose" / "nlp-corpus.jsonl.gz"
    main(["quality-train", f"positives=[{brown}]", f"negatives=[{nlp}]", f"out={out}", "balance=true",
          "bucket=100000", "epoch=25"])  # fmt: skip
    return out


@pytest.fixture(autouse=True, scope="session")
def _quiet():
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
