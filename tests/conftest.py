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

# The files whose tests take longest in all (seconds summed per file, measured on 2 workers: 260, 230, 187, 179,
# 164, 113, 103, 92, 79, 74, 65, 57), started first: a file runs whole on one worker (--dist loadfile), so the
# two workers end together only when no long file is left for the end. The rest keep their order.
LONGEST_FIRST = ("test_fsdp.py", "test_prepare_executors.py", "test_sweep.py", "test_fit_options.py",
                 "test_stability.py", "test_harness.py", "test_curate_pipeline.py", "test_hf.py",
                 "test_multinode.py", "test_hardening.py", "test_resume_exact.py", "test_quality.py")  # fmt: skip


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder of an expensive session fixture, built once per test run: under pytest-xdist by the first
    worker that asks (the others wait on a file lock and reuse it), else in this process. `build(folder)`
    fills the (existing, empty) folder."""
    import json

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    from filelock import FileLock

    folder = tmp_path_factory.getbasetemp().parent / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").exists():
            import shutil

            shutil.rmtree(folder, ignore_errors=True)  # a worker that died while building left it half done
            folder.mkdir()
            build(folder)
            (folder / ".built").write_text(json.dumps({"by": worker}))
    return folder


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One prepared-corpus cache for the whole run (lmstack's cache locks a corpus while one process builds it)."""
    return built_once(tmp_path_factory, "lmstack-cache", lambda folder: None)


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory):
    """The shared web samples through the whole `lmstack prepare` pipeline, tokenized into 64-token blocks."""
    from lmstack.data.curate.pipeline import run_prepare

    def build(folder: Path) -> None:
        cfg = prepare_cfg(**{"tokenize.vocab_size": 512, "tokenize.seq_len": 64, "tokenize.val_fraction": 0.1})
        web = [str(SHARED_DATA / "web" / "*.json*.gz"), str(SHARED_DATA / "web" / "*.warc.gz")]
        run_prepare(web, str(folder / "web"), cfg)

    return built_once(tmp_path_factory, "prepared", build) / "web"


@pytest.fixture(scope="session")
def prepared_prose_dir(tmp_path_factory, prepared_dir):
    """The Brown Corpus prepared with `prepared_dir`'s tokenizer, so that the two folders can be mixed."""
    from lmstack.data.curate.pipeline import run_prepare

    def build(folder: Path) -> None:
        cfg = prepare_cfg("prose", **{"tokenize.seq_len": 64, "tokenize.val_fraction": 0.1, "source": "brown",
                                      "tokenize.tokenizer": str(prepared_dir / "tokenizer.json")})  # fmt: skip
        run_prepare([str(SHARED_DATA / "prose" / "brown.jsonl.gz")], str(folder / "brown"), cfg)

    return built_once(tmp_path_factory, "prepared-brown", build) / "brown"


@pytest.fixture(scope="session")
def small_ckpt(tmp_path_factory, cache_dir):
    """A real 2-step run of the SMALL config: the checkpoint adaptation tests start from."""
    from lmstack.run import run

    folder = built_once(
        tmp_path_factory, "small-pretrain", lambda f: run(compose_cfg(SMALL, run_dir=f / "run", cache_dir=cache_dir))
    )
    return folder / "run" / "checkpoints" / "last.ckpt"


def _reports(tmp_path_factory, name: str, train) -> tuple[Path, list[dict]]:
    """A multi-rank run built once (`built_once`), its folder and its ranks' reports."""
    import json

    def build(folder: Path) -> None:
        (folder / "reports.json").write_text(json.dumps(train(folder)))

    folder = built_once(tmp_path_factory, name, build)
    return folder, json.loads((folder / "reports.json").read_text())


@pytest.fixture(scope="session")
def fsdp_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    """10 steps of FSDP2 on 2 ranks with a sharded checkpoint at step 5 and in-loop evals every 5 steps: the
    run the FSDP tests compare against and start from (its folder, with the corpus cache, and its reports)."""

    def train(out: Path) -> list[dict]:
        (out / "tasks").mkdir()
        mc, gen = write_harness_tasks(out / "tasks")  # lm-eval tasks too: multiple choice and generate_until
        harness = f"evals.harness={{tasks: [{mc}, {gen}], limit: 15}}"
        return train_on_ranks(out / "fsdp", out / "cache", *FSDP_RUN, harness, launcher="lightning")

    return _reports(tmp_path_factory, "fsdp", train)


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory, cache_dir) -> list[dict]:
    """The same 10 steps on 2 DDP ranks (the same corpus, from the session's cache: no wait for fsdp_run on
    another worker), garbage collection synchronised every 2 steps: what FSDP2 must match, and the run GC
    sync is checked on."""
    gc_every = ("callbacks.gc.every_n_steps=2", "callbacks.gc.generation=2")

    def train(out: Path) -> list[dict]:
        return train_on_ranks(out / "ddp", cache_dir, "strategy=ddp", MUON, *gc_every)

    return _reports(tmp_path_factory, "ddp", train)[1]


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

    brown, nlp = SHARED_DATA / "prose" / "brown.jsonl.gz", SHARED_DATA / "prose" / "nlp-corpus.jsonl.gz"

    def build(folder: Path) -> None:
        main(["quality-train", f"positives=[{brown}]", f"negatives=[{nlp}]", f"out={folder / 'brown-vs-nlp'}",
              "balance=true", "bucket=100000", "epoch=25"])  # fmt: skip

    return built_once(tmp_path_factory, "quality", build) / "brown-vs-nlp"


@pytest.fixture(autouse=True, scope="session")
def _quiet():
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # workers side by side: one compute thread each, subprocesses too
        import torch  # (OpenMP threads of two processes on the same cores wait on each other at every barrier)

        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
