"""Stability plugins on real training runs: spike forensics and skipping, non-finite steps."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import lightning as L
import pytest
import torch

from lmstack.data.sources import is_validation
from lmstack.run import run
from lmstack.train.hooks import StepHooks, StepRecord

from .helpers import SHARED_DATA, SMALL, compose_cfg, train_on_ranks

STEPS, SPIKE_STEP, TPS = 30, 25, 4 * 64


def planted_corpus(tmp_path: Path) -> tuple[Path, Path, str]:
    """Brown Corpus documents, and a source holding a document of random characters (plus a held-out one,
    so the source has a validation split)."""
    with gzip.open(SHARED_DATA / "prose" / "brown.jsonl.gz", "rt") as f:
        prose = [json.loads(line) for line in f][:120]
    rng = random.Random(0)
    noise = lambda: "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(800))  # noqa: E731
    train_id = next(f"planted-{i}" for i in range(100) if not is_validation(f"planted-{i}", 0.1))
    val_id = next(f"planted-{i}" for i in range(100) if is_validation(f"planted-{i}", 0.1))
    (tmp_path / "prose.jsonl").write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in prose))
    (tmp_path / "planted.jsonl").write_text(
        json.dumps({"id": train_id, "text": noise()}) + "\n" + json.dumps({"id": val_id, "text": noise()}) + "\n"
    )
    return tmp_path / "prose.jsonl", tmp_path / "planted.jsonl", train_id


def spike_overrides(
    tmp_path: Path, mode: str, tps: int = TPS, steps: int = STEPS, spike: int = SPIKE_STEP
) -> list[str]:
    """Prose only, except that step `spike`'s batch is drawn from the planted source alone (tps: the tokens of
    a step, over all ranks), for `steps` steps."""
    prose, planted, _ = planted_corpus(tmp_path)
    return [
        "data_mix=prose_curriculum",
        f"data_mix.sources=[{{name:prose,paths:[{prose}]}},{{name:planted,paths:[{planted}],weight:0}}]",
        f"data_mix.phases=[{{start_tokens:{spike * tps},weights:{{planted:1}}}},"
        f"{{start_tokens:{(spike + 1) * tps},weights:{{prose:1}}}}]",
        f"train.max_tokens={steps * tps}",
        "callbacks.spike.window=20",
        "callbacks.spike.min_history=10",
        f"callbacks.spike.mode={mode}",
        "callbacks.checkpoint.every_n_train_steps=10",
    ]


class WeightsPerStep(L.Callback):
    """The largest weight change of each step, and whether the module skipped its update."""

    def __init__(self):
        self.changes = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before = [p.detach().clone() for p in module.parameters()]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        change = max((p.detach() - b).abs().max().item() for p, b in zip(module.parameters(), self.before))
        self.changes[trainer.global_step - 1] = (change, module.skip_update)


def spikes_of(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "spikes.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def spike_runs(tmp_path_factory, cache_dir) -> tuple[Path, dict]:
    """The planted corpus trained once per spike mode (skip_step with the weights watched, rewind, log):
    mode -> (result, spikes, run_dir, the watcher's per-step weight changes)."""
    import lmstack.stages.base as run_mod

    root = tmp_path_factory.mktemp("spikes")
    over = spike_overrides(root, "skip_step")[:-2]  # one planted corpus for every mode
    runs = {}
    for mode in ("skip_step", "rewind", "log"):
        watcher = WeightsPerStep()
        build = run_mod.build_trainer
        cfg = compose_cfg(
            [*SMALL, *over, f"callbacks.spike.mode={mode}", "callbacks.checkpoint.every_n_train_steps=10"],
            run_dir=root / mode,
            cache_dir=cache_dir,
        )
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(run_mod, "build_trainer", lambda spec, **kw: build(spec, [watcher], **kw))
            result = run(cfg)
        runs[mode] = (result, spikes_of(cfg.run_dir), Path(cfg.run_dir), watcher.changes)
    return root, runs


@pytest.mark.slow
def test_a_planted_noise_batch_is_detected_named_and_skipped(spike_runs):
    root, runs = spike_runs
    result, spikes, run_dir, changes = runs["skip_step"]
    assert result["steps"] == STEPS
    _, _, planted_id = planted_corpus(root)
    assert spikes and spikes[0]["step"] == SPIKE_STEP, [s["step"] for s in spikes]
    first = spikes[0]
    assert first["action"] == "skipped" and max(first["loss_z"], first["grad_norm_z"]) > 6
    assert first["documents"][0]["id"] == planted_id and first["documents"][0]["source"] == "planted"
    assert first["documents"][0]["preview"]
    assert planted_id in (run_dir / "spike_blocklist.txt").read_text().split()
    change, skipped = changes[SPIKE_STEP]
    assert skipped and change == 0.0  # the weights after the step equal those before it
    # every other step moved the weights (step 0 too, but warmup gives it a learning rate of 0)
    assert all(c > 0 for s, (c, skip) in changes.items() if not skip and s > 0), changes


@pytest.mark.slow
def test_rewind_equals_skipping_log_only_records_and_the_window_is_checkpointed(spike_runs):
    """`rewind` restarts from the checkpoint before the spike and skips that step on the way forward, so it
    ends exactly where `skip_step` ends; `log` keeps the update; checkpoints carry the warm window."""
    root, runs = spike_runs
    (skip, _, skip_dir, _), (rewind, rewind_spikes, _, _), (logged, log_spikes, _, _) = (
        runs[m] for m in ("skip_step", "rewind", "log")
    )
    assert rewind_spikes[0]["step"] == SPIKE_STEP and rewind_spikes[0]["action"].startswith("rewind to ")
    assert rewind_spikes[0]["action"].endswith("step000020.ckpt")
    assert rewind["steps"] == skip["steps"] == STEPS
    assert rewind["val/bpb"] == pytest.approx(skip["val/bpb"], abs=1e-5)
    assert log_spikes[0]["step"] == SPIKE_STEP and log_spikes[0]["action"] == "logged"
    assert abs(logged["val/bpb"] - skip["val/bpb"]) > 1e-4  # the noise batch's update was kept
    state = torch.load(skip_dir / "checkpoints" / "last.ckpt", weights_only=False)
    spike_state = next(v for k, v in state["callbacks"].items() if "SpikeDetection" in k)
    assert len(spike_state["windows"]["loss"]) == 20 and spike_state["spikes"] >= 1


@pytest.mark.slow
def test_rewind_on_two_fsdp_ranks_equals_skipping(tmp_path, cache_dir):
    """Both ranks decide on the reduced loss, rewind together to the same sharded checkpoint and skip the
    step on the way forward: the same end as `skip_step` on 2 ranks; the spike is recorded once."""
    runs, steps, spike = {}, 20, 15  # a spike at 15 of 20 steps: the rewind goes back to step 10's checkpoint
    for mode in ("skip_step", "rewind"):
        (tmp_path / mode).mkdir()
        over = spike_overrides(tmp_path / mode, mode, 2 * TPS, steps, spike)  # 2 ranks x 4 x 64 tokens a step
        runs[mode] = train_on_ranks(tmp_path / mode / "out", cache_dir, "strategy=fsdp", *over, timeout=600)
    skip, rewind = runs["skip_step"], runs["rewind"]
    for rank in range(2):
        assert skip[rank]["result"]["steps"] == rewind[rank]["result"]["steps"] == steps
        assert rewind[rank]["steps"][-1]["step"] == steps
    assert rewind[0]["result"]["val/bpb"] == pytest.approx(skip[0]["result"]["val/bpb"], abs=1e-5)
    spikes = spikes_of(tmp_path / "rewind" / "out" / "run")
    assert [s["step"] for s in spikes] == [spike]  # written once, by rank 0
    assert spikes[0]["action"].startswith("rewind to ") and spikes[0]["action"].endswith("step000010.ckpt")
    assert spikes[0]["documents"][0]["source"] == "planted"


@pytest.mark.slow
def test_the_spike_blocklist_is_accepted_by_training_and_by_prepare(spike_runs, small_cfg, tmp_path):
    from lmstack.data.curate.blocklists import IdBlocklist
    from lmstack.data.curate.readers import Document

    root, runs = spike_runs
    blocklist = runs["log"][2] / "spike_blocklist.txt"
    _, _, planted_id = planted_corpus(root)
    assert IdBlocklist([str(blocklist)])(Document(planted_id, "x", "s")) == "listed"
    again = small_cfg(
        *spike_overrides(root, "log"),
        "train.max_tokens=" + str((SPIKE_STEP + 1) * TPS),
        f"data.blocklist=[{blocklist}]",
    )
    run(again)
    assert not spikes_of(again.run_dir)  # the planted document's tokens carry no loss now


class NaNGradients(L.Callback):
    """Makes the gradients non-finite from step `start` on."""

    def __init__(self, start: int):
        self.start = start

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if trainer.global_step >= self.start:
            next(module.parameters()).grad.fill_(float("nan"))


def test_non_finite_steps_are_skipped_then_the_run_checkpoints_and_stops(tmp_path, small_cfg, monkeypatch):
    import lmstack.stages.base as run_mod
    from lmstack.train.step_guard import TrainingStopped

    watcher = WeightsPerStep()
    build = run_mod.build_trainer
    monkeypatch.setattr(run_mod, "build_trainer", lambda spec, **kw: build(spec, [NaNGradients(4), watcher], **kw))
    cfg = small_cfg("train.max_tokens=5120", "train.max_nonfinite_steps=3")
    with pytest.raises(TrainingStopped, match="3 steps in a row had a non-finite loss or gradient norm"):
        run(cfg)
    assert [s for s, (c, skip) in watcher.changes.items() if skip] == [4, 5, 6]
    assert all(c == 0.0 for s, (c, skip) in watcher.changes.items() if skip)
    ckpt = Path(cfg.run_dir) / "checkpoints" / "nonfinite-step000007.ckpt"
    assert ckpt.exists() and torch.load(ckpt, weights_only=False)["step_guard"]["nonfinite_steps"] == 3


def scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for events in Path(run_dir).rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return out


def test_stability_and_throughput_scalars_reach_tensorboard(small_cfg):
    import math

    cfg = small_cfg(
        "train.max_tokens=2560",
        "callbacks.stability.every_n_steps=3",
        "callbacks.throughput.every_n_steps=3",
        "callbacks.gc.every_n_steps=2",
    )
    run(cfg)
    s = scalars(cfg.run_dir)
    n_layers = cfg.model.n_layers
    for i in range(n_layers):
        assert 0.005 < s[f"stability/block{i}/resid_rms"][0] < 100  # ~ the 0.02 init std at step 0
        assert math.isfinite(s[f"stability/block{i}/attn_max_logit"][0])
    assert s["stability/grad_norm/decay"][0] > 0 and s["stability/grad_norm/no_decay"][0] > 0
    assert s["stability/embed_norm"][0] > 0
    assert all(0 < r < 1 for r in s["stability/update_ratio"][1:])  # step 0 has a learning rate of 0
    assert len(s["stability/update_ratio"]) == 4 and len(s["perf/mfu"]) == 3  # steps 0, 3, 6, 9; 3, 6, 9
    assert all(t > 0 for t in s["perf/tokens_per_s"]) and all(0 < m < 2 for m in s["perf/mfu"])
    assert s["perf/flops_per_token"][0] > 6 * 1e5 and all(m > 0.05 for m in s["perf/peak_memory_gb"])
    assert all(0 <= w < 1 for w in s["perf/data_wait_fraction"])
    assert s["gc/collections"] == [1, 2, 3, 4, 5] and s["gc/seconds"][-1] >= 0  # after steps 2, 4, 6, 8, 10


@pytest.mark.slow
def test_gc_sync_collects_at_the_same_steps_on_two_ddp_ranks(ddp_run):
    import gc

    ranks = ddp_run  # every 2 steps, generation 2
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["gc_collected_at"] == ranks[1]["gc_collected_at"] == [2, 4, 6, 8, 10]  # 5120 / (2 x 4 x 64)
    for r in ranks:
        assert len(r["steps"]) == 10 and not any(s["gc_enabled"] for s in r["steps"])
        assert r["gc_enabled_after"] is True
    assert gc.isenabled()


def test_the_global_batch_guard_warns_or_fails(small_cfg, caplog):
    from lmstack.config import ConfigError

    with pytest.raises(ConfigError, match=r"global batch is 256 tokens .* above train.max_global_batch_tokens=128"):
        run(small_cfg("train.max_global_batch_tokens=128", "train.batch_guard=fail"))
    with caplog.at_level("WARNING", logger="lmstack"):
        assert run(small_cfg("train.max_global_batch_tokens=128"))["steps"] == 2
    assert "above train.max_global_batch_tokens=128" in caplog.text


class SkipOddSteps(StepHooks, L.Callback):
    """A step plugin written against the declared contract only (lmstack.train.hooks): it skips the update of
    odd steps and keeps what each step record carried."""

    records: list = []

    def on_step_stats(self, trainer, module, record: StepRecord) -> bool:
        batch = record.micro_batches[0]["batch"]
        files = [Path(f) for f in record.document_files]
        SkipOddSteps.records.append(
            (record.step, record.finite, bool(record.tokenizer_json), sorted(batch), all(f.exists() for f in files))
        )
        return record.step % 2 == 1


def test_a_step_plugin_sees_the_step_record_and_can_skip_updates(small_cfg):
    import json

    SkipOddSteps.records.clear()
    cfg = small_cfg("train.max_tokens=1024", "+callbacks.probe._target_=tests.test_stability.SkipOddSteps")
    result = run(cfg)
    assert [r[0] for r in SkipOddSteps.records] == [0, 1, 2, 3] and result["steps"] == 4
    assert all(r[1] and r[2] and r[4] for r in SkipOddSteps.records)
    assert {"input_ids", "labels", "doc", "source"} <= set(SkipOddSteps.records[0][3])
    done = json.loads((Path(cfg.run_dir) / "result.json").read_text())
    assert done["skipped_steps"] == 2  # steps 1 and 3: the plugin's decision, taken by the module
