"""Exact resume: from every checkpoint of a run (checkpoints more often than validation, validation more often
than the budget, so stops fall inside a validation window and on its boundary), with the default callbacks and
with gradient accumulation, and after `kill -9` at a random moment, a resumed run trains on the same data and
ends at the uninterrupted run's per-step losses and val/bpb."""

from __future__ import annotations

import csv
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import ROOT, SMALL, clean_env, compose_cfg

# 12 optimizer steps; a checkpoint every 2 steps, validation every 5: stops at 2, 4, 6, 8 lie inside a window,
# 10 on its boundary; the default callbacks (spike detection, GC, stability, throughput, anomalies) are on
COMMON = [*SMALL, "logger=csv", "train.ckpt_every_steps=2", "train.val_every_steps=5", "optimizer.lr=1e-2"]
SHAPES = {
    "plain": ["train.max_tokens=3072"],
    "accumulation": ["train.max_tokens=3072", "data.batch_size=2", "trainer.accumulate_grad_batches=2"],
}


def metrics(run_dir: Path) -> tuple[dict[int, float], dict[int, float]]:
    """Per-step train/loss and val/bpb from the run's CSV log."""
    loss, bpb = {}, {}
    with open(run_dir / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                loss[int(row["step"])] = float(row["train/loss"])
            if row.get("val/bpb"):
                bpb[int(row["step"])] = float(row["val/bpb"])
    return loss, bpb


@pytest.fixture(scope="module", params=sorted(SHAPES))
def uninterrupted(request, tmp_path_factory):
    from lmstack.run import run

    tmp = tmp_path_factory.mktemp(f"exact-{request.param}")
    overrides = [*COMMON, *SHAPES[request.param]]
    cfg = compose_cfg(overrides, run_dir=tmp / "full", cache_dir=tmp / "cache")
    result = run(cfg)
    return tmp, overrides, result, Path(cfg.run_dir)


@pytest.mark.slow
def test_resuming_from_every_checkpoint_gives_the_uninterrupted_run(uninterrupted, recwarn):
    from lmstack.run import run

    tmp, overrides, result, full = uninterrupted
    loss, bpb = metrics(full)
    assert sorted(loss) == list(range(12)) and sorted(bpb) == [0, 4, 9, 12]  # before, two windows, the end
    assert len(set(loss.values())) == 12  # the losses do move from step to step
    stops = sorted(full.glob("checkpoints/step*.ckpt"))
    assert [p.name for p in stops] == [f"step{s:06d}.ckpt" for s in (2, 4, 6, 8, 10, 12)]
    for ckpt in stops[:-1]:
        stop = int(ckpt.stem.removeprefix("step"))
        cfg = compose_cfg(overrides, run_dir=tmp / f"from-{stop}", cache_dir=tmp / "cache")
        cfg.ckpt_path = str(ckpt)
        again = run(cfg)
        got_loss, got_bpb = metrics(Path(cfg.run_dir))
        assert sorted(got_loss) == list(range(stop, 12)), stop
        assert got_loss == {s: loss[s] for s in got_loss}, f"resumed at step {stop}"  # bit-identical on CPU
        assert got_bpb == {s: bpb[s] for s in bpb if s >= stop}, f"resumed at step {stop}"
        assert again["val/bpb"] == result["val/bpb"]
    # the data module is resumable the way Lightning asks, so its warning about unreliable results stays silent
    assert not [w for w in recwarn if "not resumable" in str(w.message)]


def test_the_training_loader_state_is_in_the_checkpoint_and_positions_the_stream(uninterrupted):
    """The loader's state is the global samples trained on; loading it starts the sampler there."""
    import torch

    from lmstack.data.dataset import ResumableSampler, StreamLoader

    tmp, overrides, _, full = uninterrupted
    ckpt = torch.load(full / "checkpoints" / "step000006.ckpt", weights_only=True)
    (state,) = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state["samples"] == 6 * 4  # 6 steps of a global batch of 4 sequences, with or without accumulation
    sampler = ResumableSampler([40, 60], [1.0, 1.0], 2, 20, seed=1234)
    loader = StreamLoader(list(range(100)), sampler, taken=lambda: 0)
    loader.load_state_dict(state)
    assert sampler.start == 12 and len(loader) == 20
    full_stream = list(ResumableSampler([40, 60], [1.0, 1.0], 2, 20, seed=1234))
    assert [i for b in loader for i in b.tolist()] == full_stream[24:]
    with pytest.raises(ValueError, match="not a whole number of micro-batches"):
        StreamLoader(list(range(100)), ResumableSampler([40, 60], [1.0, 1.0], 5, 20), taken=lambda: 0).load_state_dict(
            state
        )


@pytest.mark.slow
def test_a_run_killed_at_a_random_moment_resumes_to_the_uninterrupted_run(tmp_path, cache_dir):
    """`kill -9` at a random moment of training (after a random number of checkpoints, then a random fraction of
    a checkpoint interval), then `ckpt_path=RUN_DIR` (its newest readable checkpoint): the resumed run's losses
    and final val/bpb are the uninterrupted run's."""
    from lmstack.run import run

    overrides = [*COMMON, "train.max_tokens=7680", "train.ckpt_every_steps=3", f"paths.cache_dir={cache_dir}"]
    reference = compose_cfg(overrides, run_dir=tmp_path / "reference", cache_dir=cache_dir)
    result = run(reference)
    loss, _ = metrics(Path(reference.run_dir))
    assert sorted(loss) == list(range(30))
    killed = tmp_path / "killed"
    rng = random.Random()
    after, moment = rng.randint(1, 5), rng.uniform(0.0, 0.3)  # at most step 15 of 30
    proc = subprocess.Popen(
        [sys.executable, "train.py", *overrides, f"hydra.run.dir={killed}"],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while len(list(killed.glob("checkpoints/step*.ckpt"))) < after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(moment)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    what = f"killed {moment:.2f} s after checkpoint {after}"
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was {what}"
    resumed = compose_cfg(overrides, run_dir=tmp_path / "resumed", cache_dir=cache_dir)
    resumed.ckpt_path = str(killed)
    again = run(resumed)
    got, _ = metrics(Path(resumed.run_dir))
    assert got and max(got) == 29 and min(got) >= 3, what  # it resumed from a checkpoint inside the run
    assert got == {s: loss[s] for s in got}, what
    assert again["val/bpb"] == result["val/bpb"], what
