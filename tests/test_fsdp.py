"""FSDP2 on 2 CPU processes (gloo) through the Trainer: the same losses as DDP, and sharded checkpoints
that resume exactly. Each run is `tests/workers/run_worker.py` in a subprocess (the launcher starts rank 1)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import SHARED_DATA, SMALL, SMALL_EVALS, clean_env, compose_cfg

ROOT = Path(__file__).resolve().parents[1]
TWO_RANKS = ["trainer.devices=2", "train.max_tokens=5120"]  # 10 steps of 2 ranks x 4 x 64 tokens


def train(out: Path, cache: Path, *overrides: str, timeout: int = 600, ranks: int = 2) -> list[dict]:
    """Runs 2 processes (or `ranks`); returns each rank's report (and rank 0's output as `stdout`)."""
    out.mkdir(parents=True)
    launch = TWO_RANKS if ranks == 2 else [f"trainer.devices={ranks}", TWO_RANKS[1]]
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "workers" / "run_worker.py"), str(out), *launch, *overrides],
        cwd=ROOT,
        timeout=timeout,
        env=clean_env(LMSTACK_TEST_CACHE=str(cache)),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]
    reports[0]["stdout"] = done.stdout
    return reports


def losses(report: dict) -> dict[int, float]:
    return {s["step"]: s["loss"] for s in report["steps"]}


@pytest.mark.slow
def test_fsdp_matches_ddp_and_resumes_from_a_sharded_checkpoint(tmp_path):
    cache = tmp_path / "cache"
    ddp = train(tmp_path / "ddp", cache, "strategy=ddp")
    fsdp = train(
        tmp_path / "fsdp",
        cache,
        "strategy=fsdp",
        "train.activation_checkpointing=true",  # applied before sharding (lmstack.train.parallelize): same math
        "callbacks.checkpoint.every_n_train_steps=5",
        *SMALL_EVALS,
        "evals.every_steps=5",
    )
    from litdata import StreamingDataset

    (blocks_dir,) = cache.glob("corpora/*/*/train")
    blocks = len(StreamingDataset(str(blocks_dir)))  # one process: every block
    for rank in range(2):  # both ranks sample from every block of the corpus (litdata's len() is a rank's share)
        assert ddp[rank]["train_blocks"] == fsdp[rank]["train_blocks"] == [blocks]
    for rank in range(2):
        assert fsdp[rank]["world_size"] == 2 and len(fsdp[rank]["steps"]) == 10
        a, b = losses(ddp[rank]), losses(fsdp[rank])
        for step in range(1, 6):  # the first 5 steps, on each rank's own micro-batches
            assert b[step] == pytest.approx(a[step], abs=1e-5), (rank, step)
    ckpt = tmp_path / "fsdp" / "run" / "checkpoints" / "step000005.ckpt"
    assert ckpt.is_dir() and any(ckpt.glob("*.distcp"))  # sharded: each rank wrote its part
    assert (ckpt / "lmstack-checkpoint.json").is_file()  # published whole, under lmstack's manifest
    assert not [p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    from lmstack.checkpoint import load_checkpoint

    model, tok, state = load_checkpoint(str(ckpt))  # gathered into one process for generation or export
    assert state["global_step"] == 5 and tok is not None
    assert all(p.isfinite().all() for p in model.parameters())
    check_inloop_evals(fsdp, model, tok, state)
    resumed = train(tmp_path / "resumed", cache, "strategy=fsdp", f"ckpt_path={ckpt}")
    for rank in range(2):
        a, b = losses(fsdp[rank]), losses(resumed[rank])
        assert sorted(b) == list(range(6, 11))
        for step in b:
            assert b[step] == pytest.approx(a[step], abs=1e-5), (rank, step)
    assert fsdp[0]["result"]["val/bpb"] == pytest.approx(resumed[0]["result"]["val/bpb"], abs=1e-5)
    check_elastic_resume(tmp_path, cache, ckpt, fsdp)


def check_elastic_resume(tmp_path: Path, cache: Path, ckpt: Path, uninterrupted: list[dict]) -> None:
    """The 2-process checkpoint resumed on 1 process: accumulation 2 keeps the global batch, micro-batch k of
    step s is what rank k drew at step s, and the losses and the final val/bpb are the uninterrupted run's."""
    from lmstack.config.schema import ConfigError

    one = train(tmp_path / "elastic", cache, "strategy=fsdp", f"ckpt_path={ckpt}", ranks=1)[0]
    assert one["world_size"] == 1 and len(one["steps"]) == 10  # 5 steps of 2 micro-batches
    assert one["steps"][-1]["step"] == 10
    for i, micro in enumerate(one["steps"]):
        step, rank = 6 + i // 2, i % 2
        assert micro["loss"] == pytest.approx(losses(uninterrupted[rank])[step], abs=1e-5), (step, rank)
    assert one["result"]["val/bpb"] == pytest.approx(uninterrupted[0]["result"]["val/bpb"], abs=1e-5)
    from lmstack.run import run

    cfg = compose_cfg(  # 8 sequences a step cannot be kept with micro-batches of 3
        [*SMALL, "train.max_tokens=5120", "data.batch_size=3", f"ckpt_path={ckpt}"],
        run_dir=tmp_path / "refused",
        cache_dir=cache,
    )
    refused = r"global batch is 8 sequences .*data.batch_size values that can: \[1, 2, 4, 8\]"
    with pytest.raises(ConfigError, match=refused):
        run(cfg)


def check_inloop_evals(reports: list[dict], model, tok, state) -> None:
    """Each rank scored its share (uneven: 15 questions, 6 documents) and the reduced numbers are the ones
    one process gets from the gathered step-5 checkpoint."""
    import torch

    from lmstack.data.tokenizer import token_byte_lengths
    from lmstack.eval.suite import evaluate, load_suite

    assert reports[0]["evals"] == reports[1]["evals"]
    assert [r["step"] for r in reports[0]["evals"]] == [5, 10]
    sets = {"c4": {"jsonl": [str(SHARED_DATA / "web" / f"c4-sample.0{i}.json.gz") for i in (1, 2, 3)], "max_docs": 6}}
    tasks = {t: {"path": str(SHARED_DATA / "evals" / t), "limit": 15} for t in ("arc_easy", "copa")}
    suite = load_suite(sets, tasks, tok, state["tokenizer_json"], 64)
    alone = evaluate(model, suite, torch.from_numpy(token_byte_lengths(tok)), 16)
    inloop = reports[0]["evals"][0]
    assert inloop["c4"]["bpb"] == pytest.approx(alone["c4"]["bpb"], rel=1e-5)
    assert inloop["c4"]["tokens"] == alone["c4"]["tokens"]
    for t in tasks:
        assert inloop[t] == alone[t]


@pytest.mark.slow
def test_the_end_of_run_sample_works_on_two_fsdp_ranks(tmp_path):
    """The default run ends with a sample; under FSDP2 every rank must join its forward passes (rank 0 alone
    made the other rank's process group close under it: `Connection closed by peer`, exit code 1)."""
    reports = train(tmp_path / "fsdp", tmp_path / "cache", "strategy=fsdp", "train.sample_tokens=12", timeout=300)
    assert "sample:\n" in reports[0]["stdout"] and all(r["world_size"] == 2 for r in reports)


@pytest.mark.slow
def test_async_sharded_checkpoints_hold_the_same_state_and_resume_exactly(tmp_path):
    """train.async_checkpoint=true: the shards are written in the background (DCP async_save) while training
    goes on; each checkpoint holds the state of its step (the weights equal a synchronous run's), is published
    whole, and resumes to the uninterrupted run's losses; the stall per checkpoint is reported."""
    import torch

    from lmstack.checkpoint import load_checkpoint

    cache, every = tmp_path / "cache", "callbacks.checkpoint.every_n_train_steps=5"
    sync = train(tmp_path / "sync", cache, "strategy=fsdp", every)
    async_ = train(tmp_path / "async", cache, "strategy=fsdp", every, "train.async_checkpoint=true")
    for rank in range(2):
        assert losses(async_[rank]) == losses(sync[rank])  # writing in the background changes nothing
        assert [step for step, _ in async_[rank]["checkpoint_stalls"]] == [5, 5, 10, 10]  # step and last
    folder = tmp_path / "async" / "run" / "checkpoints"
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # every write finished and published
    for name in ("step000005.ckpt", "step000010.ckpt", "last.ckpt"):
        a, _, state = load_checkpoint(str(folder / name))
        b, _, _ = load_checkpoint(str(tmp_path / "sync" / "run" / "checkpoints" / name))
        assert state["global_step"] == (10 if name != "step000005.ckpt" else 5)
        for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), (name, key)
    for f in (folder / "step000010.ckpt").iterdir():  # last.ckpt of that step: the same files, not a second write
        assert (folder / "last.ckpt" / f.name).stat().st_ino == f.stat().st_ino
    resumed = train(tmp_path / "resumed", cache, "strategy=fsdp", f"ckpt_path={folder / 'step000005.ckpt'}")
    for rank in range(2):
        a, b = losses(async_[rank]), losses(resumed[rank])
        assert sorted(b) == list(range(6, 11))
        for step in b:
            assert b[step] == pytest.approx(a[step], abs=1e-5), (rank, step)
    from lmstack.config.schema import ConfigError
    from lmstack.run import run

    cfg = compose_cfg(
        [*SMALL, "strategy=ddp", "train.async_checkpoint=true"], run_dir=tmp_path / "ddp", cache_dir=cache
    )
    with pytest.raises(ConfigError, match="train.async_checkpoint=true .* needs strategy=fsdp"):
        run(cfg)
