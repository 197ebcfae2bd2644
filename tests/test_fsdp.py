"""FSDP2 on 2 CPU processes (gloo) through the Trainer: the same losses as DDP, and sharded checkpoints
that resume exactly. Each run is `tests/workers/run_worker.py` in a subprocess (the shared run's rank 0 starts
rank 1 through Lightning's launcher, the others start under torchrun)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from .helpers import FSDP_RUN, MUON, SHARED_DATA, SMALL, compose_cfg, losses, train_on_ranks

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fsdp_matches_ddp_and_resumes_from_a_sharded_checkpoint(fsdp_run, ddp_run, tmp_path, capsys):
    out, fsdp = fsdp_run
    cache = out / "cache"
    ddp = ddp_run
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
    ckpt = out / "fsdp" / "run" / "checkpoints" / "step000005.ckpt"
    assert ckpt.is_dir() and any(ckpt.glob("*.distcp"))  # sharded: each rank wrote its part
    assert (ckpt / "lmstack-checkpoint.json").is_file()  # published whole, under lmstack's manifest
    assert not [p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    from lmstack.checkpoint import load_checkpoint

    model, tok, state = load_checkpoint(str(ckpt))  # gathered into one process for generation or export
    assert state["global_step"] == 5 and tok is not None
    assert all(p.isfinite().all() for p in model.parameters())
    check_inloop_evals(fsdp, model, tok, state, out / "tasks")
    check_commands_read_sharded(ckpt, fsdp[0]["evals"][0], model, tok, tmp_path, capsys)
    resumed = train_on_ranks(tmp_path / "resumed", cache, "strategy=fsdp", MUON, f"ckpt_path={ckpt}")
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

    one = train_on_ranks(tmp_path / "elastic", cache, "strategy=fsdp", MUON, f"ckpt_path={ckpt}", ranks=1)[0]
    assert one["world_size"] == 1 and len(one["steps"]) == 10  # 5 steps of 2 micro-batches
    assert one["steps"][-1]["step"] == 10
    for i, micro in enumerate(one["steps"]):
        step, rank = 6 + i // 2, i % 2
        assert micro["loss"] == pytest.approx(losses(uninterrupted[rank])[step], abs=1e-5), (step, rank)
    assert one["result"]["val/bpb"] == pytest.approx(uninterrupted[0]["result"]["val/bpb"], abs=1e-5)
    from lmstack.run import run

    cfg = compose_cfg(  # 8 sequences a step cannot be kept with micro-batches of 3
        [*SMALL, MUON, "train.max_tokens=5120", "data.batch_size=3", f"ckpt_path={ckpt}"],
        run_dir=tmp_path / "refused",
        cache_dir=cache,
    )
    refused = r"global batch is 8 sequences .*data.batch_size values that can: \[1, 2, 4, 8\]"
    with pytest.raises(ConfigError, match=refused):
        run(cfg)


def check_commands_read_sharded(ckpt: Path, inloop: dict, model, tok, tmp_path: Path, capsys) -> None:
    """`lmstack eval` of the sharded checkpoint scores what the 2 ranks scored in the loop at that step, and
    `lmstack generate` continues as the gathered model does."""
    import json

    from lmstack.cli import main
    from lmstack.generate import generate

    tasks = ",".join(str(SHARED_DATA / "evals" / t) for t in ("arc_easy", "copa"))
    main(["eval", f"ckpt={ckpt}", f"tasks=[{tasks}]", "limit=15", f"out={tmp_path / 'eval'}"])
    scored = json.loads((tmp_path / "eval" / "eval.json").read_text())
    for t in ("arc_easy", "copa"):
        assert scored[t] == pytest.approx(inloop[t], rel=1e-6), t
    capsys.readouterr()
    main(["generate", f"ckpt={ckpt}", "prompt='def main('", "max_new_tokens=12", "temperature=0"])
    expected = "def main(" + tok.decode(generate(model, tok.encode("def main(").ids, 12, temperature=0))
    assert capsys.readouterr().out == expected + "\n"


def check_inloop_evals(reports: list[dict], model, tok, state, harness_tasks: Path) -> None:
    """Each rank scored its share (uneven: 15 questions, 6 documents) and the reduced numbers are the ones
    one process gets from the gathered step-5 checkpoint; lm-eval's tasks too (its own split of the
    documents over the ranks, generation in lockstep)."""
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
    for t in tasks:  # counts exactly; the likelihood metrics to float rounding (sums over a different split)
        assert {k: inloop[t][k] for k in ("acc", "len_norm", "questions")} == {
            k: alone[t][k] for k in ("acc", "len_norm", "questions")
        }
        for k in ("bpb", "correct_prob"):
            assert inloop[t][k] == pytest.approx(alone[t][k], rel=1e-9), (t, k)
    from lmstack.eval.harness import LmstackLM
    from lmstack.eval.harness_tasks import run_harness

    yamls = [str(harness_tasks / "olmes_copa.yaml"), str(harness_tasks / "brown_continue.yaml")]
    one = run_harness(LmstackLM(model=model, tok=tok, batch_size=16), yamls, limit=15)
    assert inloop["harness"]["olmes_copa"]["acc"] == one["olmes_copa"]["acc"] == alone["copa"]["acc"]
    assert inloop["harness"]["brown_continue"]["chrf"] == pytest.approx(one["brown_continue"]["chrf"], rel=1e-9)
    assert inloop["harness"]["brown_continue"]["samples"] == 10


@pytest.mark.slow
def test_the_end_of_run_sample_and_the_validation_metrics_on_two_fsdp_ranks(fsdp_run):
    """The default run ends with a sample; under FSDP2 every rank must join its forward passes (rank 0 alone
    made the other rank's process group close under it: `Connection closed by peer`, exit code 1). Validation
    metrics are logged as reduced over the ranks (Lightning warned that val/bpb was not)."""
    _, reports = fsdp_run
    assert "sample:\n" in reports[0]["stdout"] and all(r["world_size"] == 2 for r in reports)
    assert "sync_dist=True" not in reports[0]["stderr"]


def same_state(a, b, where: str = "") -> None:
    """Nested checkpoint contents equal: tensors exactly (DTensor shards gathered by the reader), the rest as values."""
    import torch

    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            same_state(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same_state(x, y, f"{where}/{i}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.slow
def test_async_sharded_checkpoints_hold_the_same_state_and_resume_exactly(fsdp_run, tmp_path):
    """train.async_checkpoint=true: the shards are written in the background (DCP async_save) while training
    goes on; each checkpoint holds the state of its step, the synchronous run's exactly (weights, Muon's and
    AdamW's optimizer state, the data position, the loops: so it resumes as the synchronous one does, which
    test_fsdp_matches_ddp_and_resumes_from_a_sharded_checkpoint resumes), and is published whole; the stall per
    checkpoint is reported."""
    from lmstack.checkpoint import read_checkpoint

    (root, sync), cache = fsdp_run, fsdp_run[0] / "cache"  # the shared run: synchronous checkpoints
    async_ = train_on_ranks(tmp_path / "async", cache, *FSDP_RUN, "train.async_checkpoint=true")
    for rank in range(2):
        assert losses(async_[rank]) == losses(sync[rank])  # writing in the background changes nothing
        assert [step for step, _ in async_[rank]["checkpoint_stalls"]] == [5, 5, 10, 10]  # step and last
    folder = tmp_path / "async" / "run" / "checkpoints"
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # every write finished and published
    for name in ("step000005.ckpt", "step000010.ckpt", "last.ckpt"):
        a = read_checkpoint(str(folder / name))
        b = read_checkpoint(str(root / "fsdp" / "run" / "checkpoints" / name))
        assert a["global_step"] == (10 if name != "step000005.ckpt" else 5)
        assert a["optimizer_0"]["state"] and a["state_dict"]
        where = {"callbacks", "hyper_parameters"}  # they name the run's folders, which differ
        same_state({k: v for k, v in a.items() if k not in where}, {k: v for k, v in b.items() if k not in where})
    for f in (folder / "step000010.ckpt").iterdir():  # last.ckpt of that step: the same files, not a second write
        assert (folder / "last.ckpt" / f.name).stat().st_ino == f.stat().st_ino
    from lmstack.config.schema import ConfigError
    from lmstack.run import run

    cfg = compose_cfg(
        [*SMALL, "strategy=ddp", "train.async_checkpoint=true"], run_dir=tmp_path / "ddp", cache_dir=cache
    )
    with pytest.raises(ConfigError, match="train.async_checkpoint=true .* needs strategy=fsdp"):
        run(cfg)


ADAPT = {  # each stage a few steps on 2 ranks, from the FSDP run's last (sharded) checkpoint
    "sft": ["stage=sft", "stage.train_examples=32", "stage.test_examples=8", "data.batch_size=4"],
    "dpo": ["stage=dpo", "stage.train_examples=32", "stage.test_examples=8", "data.batch_size=4"]
    + ["stage.rejected_samples=2"],
    "rlvr": ["stage=rlvr", "stage.train_examples=16", "stage.test_examples=4", "data.batch_size=2"]
    + ["stage.group_size=4", "stage.eval_samples=2", "stage.lora={rank: 4}", "stage.beta=0.05"],
}


def adapt(fsdp_run, out: Path, stage: str, strategy: str) -> list[dict]:
    root, _ = fsdp_run
    init = f"init_from={root / 'fsdp' / 'run' / 'checkpoints' / 'last.ckpt'}"
    return train_on_ranks(out, root / "cache", f"strategy={strategy}", init, *ADAPT[stage], timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_sft_and_dpo_on_two_ranks_train_on_their_own_rows_and_sft_matches_ddp(stage, fsdp_run, tmp_path):
    """Each rank trains on its own rows, the held-out numbers are rank 0's alone (one recipe.json); for SFT,
    FSDP2 and DDP compute the same losses (DPO's step is SFT's with a second forward: FSDP2 alone)."""
    import json

    runs = {s: adapt(fsdp_run, tmp_path / s, stage, s) for s in (("ddp", "fsdp") if stage == "sft" else ("fsdp",))}
    steps = runs["fsdp"][0]["result"]["steps"]
    for rank in range(2):
        b = losses(runs["fsdp"][rank])
        assert sorted(b) == list(range(1, steps + 1)) and all(map(math.isfinite, b.values()))
        for step in losses(runs["ddp"][rank]) if "ddp" in runs else ():
            assert b[step] == pytest.approx(losses(runs["ddp"][rank])[step], abs=1e-5), (stage, rank, step)
    assert losses(runs["fsdp"][0]) != losses(runs["fsdp"][1])  # the ranks' rows differ
    assert not [s for s, r in runs.items() if "sync_dist=True" in r[0]["stderr"]]  # epoch metrics logged as reduced
    recipe = json.loads((tmp_path / "fsdp" / "run" / "recipe.json").read_text())[stage]
    assert recipe["held_out"] == 8 and recipe["steps"] == steps and "exact_match" not in runs["fsdp"][1]["result"]
    assert runs["fsdp"][0]["result"]["exact_match"] == recipe["exact_match"]
    if stage == "dpo":
        assert 0 <= recipe["preference_accuracy"] <= 1


@pytest.mark.slow
def test_lora_grpo_on_two_fsdp_ranks_runs_every_step(fsdp_run, tmp_path):
    """GRPO's rollouts decode a different group on each rank through the sharded model: every rank runs the
    same forward passes until all groups are done, so no rank waits alone in a parameter gather. With LoRA
    (stage.lora) on the sharded model: only the adapters train, the KL reference is the sharded policy with
    its adapters off, and the sharded checkpoint holds the adapters alone, which merge onto the base."""
    import torch

    from lmstack.checkpoint import load_checkpoint, read_checkpoint

    reports = adapt(fsdp_run, tmp_path / "rlvr", "rlvr", "fsdp")
    assert [len(r["steps"]) for r in reports] == [reports[0]["result"]["steps"]] * 2 == [4, 4]  # 16 / (2 x 2)
    assert "mean sampled reward" in reports[0]["stdout"] and "parameters train (LoRA rank 4)" in reports[0]["stdout"]
    last = tmp_path / "rlvr" / "run" / "checkpoints" / "last.ckpt"
    assert last.is_dir()  # sharded
    state = read_checkpoint(last)["state_dict"]
    assert state and all(".lora_A." in k or ".lora_B." in k or "trainable_tokens_delta" in k for k in state)
    merged, _, _ = load_checkpoint(str(last))
    base, _, _ = load_checkpoint(str(fsdp_run[0] / "fsdp" / "run" / "checkpoints" / "last.ckpt"))
    assert torch.equal(merged.norm.weight, base.norm.weight)
